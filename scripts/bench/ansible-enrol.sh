#!/usr/bin/env bash
# Run by the fleet benchmark (--enrol-command, see scripts/bench-ansible.sh): enrols the agents
# listed in $KEYLIME_FLEET_AGENTS with keylime.attest.agent from a playbook whose hosts are the
# agents (local connections, delegate_to: localhost as in the README), then runs it again,
# which must change nothing. Prints one "ansible:" line of wall times.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${KEYLIME_FLEET_DIR:?} tenant=${KEYLIME_FLEET_TENANT_CONFIG:?} agents=${KEYLIME_FLEET_AGENTS:?}
venv=${KEYLIME_ANSIBLE_VENV:-$root/target/ansible-venv}
forks=${ANSIBLE_FORKS:-5}

{
    echo "[agents]"
    i=0
    while read -r id; do
        i=$((i + 1))
        echo "host-$i keylime_agent_uuid=$id"
    done <"$agents"
    echo "[agents:vars]"
    echo "ansible_connection=local"
    echo "ansible_python_interpreter=$venv/bin/python"
} >"$dir/inventory"
n=$(grep -c . "$agents")

cat >"$dir/enrol.yml" <<PLAY
- hosts: agents
  gather_facts: false
  module_defaults:
    group/keylime.attest.all:
      config: "$tenant"
  tasks:
    - name: Enrol each host
      keylime.attest.agent:
        uuid: "{{ keylime_agent_uuid }}"
        runtime_policy: fleet
      delegate_to: localhost
PLAY

# The same hosts running a module that does nothing (no kctl): Ansible's own cost per host.
cat >"$dir/baseline.yml" <<PLAY
- hosts: agents
  gather_facts: false
  tasks:
    - name: Nothing
      ansible.builtin.command: "true"
      changed_when: false
      delegate_to: localhost
PLAY

export ANSIBLE_COLLECTIONS_PATH=$root/ansible ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_LOCAL_TEMP=$dir/tmp ANSIBLE_FORKS=$forks
unset ANSIBLE_CONFIG

run() {
    local start end
    start=$(date +%s.%N)
    "$venv/bin/ansible-playbook" -i "$dir/inventory" "$dir/${2:-enrol}.yml" >"$dir/$1.log" 2>&1 || {
        cat "$dir/$1.log" >&2
        exit 1
    }
    end=$(date +%s.%N)
    awk "BEGIN { print $end - $start }"
}

first=$(run first)
changed=$(grep -c '^host-.*changed=1' "$dir/first.log" || true)
second=$(run second)
unchanged=$(grep -c '^host-.*changed=0' "$dir/second.log" || true)
if [[ $changed != "$n" || $unchanged != "$n" ]]; then
    echo "ansible-enrol.sh: $changed of $n enrolled, $unchanged of $n unchanged on the second run" >&2
    exit 1
fi

baseline=$(run baseline baseline)

# One kctl process start and round trip, and one ansible-playbook start with no hosts.
id=$(head -n 1 "$agents")
start=$(date +%s.%N)
for _ in 1 2 3 4 5; do kctl --config "$tenant" agents show "$id" -o json >/dev/null; done
kctl_show=$(awk "BEGIN { print ($(date +%s.%N) - $start) / 5 }")
start=$(date +%s.%N)
"$venv/bin/ansible-playbook" -i localhost, -c local "$dir/enrol.yml" --list-tasks >/dev/null 2>&1
startup=$(awk "BEGIN { print $(date +%s.%N) - $start }")

printf 'ansible: %d agents, forks %d: enrol %.2f s (%.3f s/agent), repeat %.2f s (%.3f s/agent); no-op module %.2f s (%.3f s/agent); kctl show %.3f s; ansible-playbook start %.2f s\n' \
    "$n" "$forks" "$first" "$(awk "BEGIN { print $first / $n }")" "$second" "$(awk "BEGIN { print $second / $n }")" \
    "$baseline" "$(awk "BEGIN { print $baseline / $n }")" "$kctl_show" "$startup"
