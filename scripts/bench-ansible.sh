#!/usr/bin/env bash
# Measures enrolling a fleet with the Ansible collection keylime.attest: the fleet benchmark
# (cargo bench -p kl-verifier --bench fleet) starts a registrar, the real verifier and N
# registered software agents, stores the policy "fleet", then runs scripts/bench/ansible-enrol.sh,
# which enrols every agent with keylime.attest.agent from a playbook and runs it again.
#
#   scripts/bench-ansible.sh            # 1, 10 and 100 agents
#   scripts/bench-ansible.sh 10 1000    # other sizes
#   ANSIBLE_FORKS=20 scripts/bench-ansible.sh 100
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${KEYLIME_ANSIBLE_VENV:-$(pwd)/target/ansible-venv}
[[ -x $venv/bin/ansible-playbook ]] || scripts/install-deps.sh
cargo build --release --quiet -p kctl --bins
export PATH="$(pwd)/target/release:$venv/bin:$PATH"
export KEYLIME_ANSIBLE_VENV=$venv
sizes=("$@")
((${#sizes[@]})) || sizes=(1 10 100)
for count in "${sizes[@]}"; do
    cargo bench --quiet -p kl-verifier --bench fleet -- \
        --agents "$count" --seconds 1 --policy-paths 1000 \
        --enrol-command "$(pwd)/scripts/bench/ansible-enrol.sh" 2>&1 |
        grep -E '^ansible:|enrolled by|rror'
done
