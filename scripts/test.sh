#!/usr/bin/env bash
# Runs every test of the workspace: unit, golden, property and end-to-end tests, then doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export TSS2_LOG=${TSS2_LOG:-all+NONE}
cargo nextest run --workspace --locked --no-fail-fast "$@"
cargo test --workspace --locked --doc --quiet
