#!/usr/bin/env bash
# Side-by-side timings of this project and Keylime 7.14 on the same inputs; prints a markdown
# table (docs/benchmarks.md shows one). Benchmark only: the test suite does not run it.
#
#   scripts/bench-keylime.sh            # all rows
#   ROUNDS=3 scripts/bench-keylime.sh   # best of 3 instead of 2 for the large rows
#
# What it does:
#  1. a venv in target/keylime-venv with keylime==7.14.0 from PyPI and the modules its
#     ima, tpm and mba packages import (the PyPI package declares no dependencies). `gpg`
#     (GPGME's bindings, not on PyPI) is a stub that fails when used: it only checks
#     GPG-signed allowlists, which no row uses;
#  2. inputs in target/bench-keylime/ima from scripts/bench/gen-ima-inputs.py: a 294,000-path
#     Keylime runtime policy, a 200,000-entry ascii IMA log and its PCR 10 (sha256 bank);
#  3. Keylime's logging configured as it ships (INFO), writing to target/bench-keylime/keylime.log,
#     and a verifier config with ignore_tomtou_errors = True;
#  4. the rows: Keylime in-process (scripts/bench/keylime_rows.py), this project as the
#     release `kctl` process (IMA row) and `cargo bench --bench keylime_side` (other rows).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-2}
OUT=target/bench-keylime
VENV=target/keylime-venv
FIXTURES=lib/core/tests/data/keylime
IMA="$OUT/ima"
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import keylime' 2>/dev/null; then
    echo "== creating $VENV with keylime==7.14.0" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q keylime==7.14.0 jsonschema cryptography pyyaml lark pyasn1 \
        pyasn1-modules packaging typing-extensions
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f "$SITE/gpg.py" ]; then
    cat > "$SITE/gpg.py" <<'PY'
# Stand-in for GPGME's Python bindings: Keylime imports them for GPG-signed allowlists only.
class Context:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("gpg stub: GPG-signed allowlists are not part of this benchmark")
PY
fi

if [ ! -f "$IMA/pcr10.sha256" ]; then
    echo "== generating inputs in $IMA" >&2
    python3 scripts/bench/gen-ima-inputs.py "$IMA" >&2
fi

cat > "$OUT/logging.conf" <<EOF
[loggers]
keys = root,keylime

[handlers]
keys = file

[formatters]
keys = formatter

[formatter_formatter]
format = %(asctime)s.%(msecs)03d - %(name)s - %(levelname)s - %(message)s
datefmt = %Y-%m-%d %H:%M:%S

[logger_root]
level = INFO
handlers = file

[logger_keylime]
level = INFO
qualname = keylime
handlers =

[handler_file]
class = FileHandler
level = INFO
formatter = formatter
args = ('$ROOT/$OUT/keylime.log', 'a')
EOF
printf '[verifier]\nversion = 2.4\nignore_tomtou_errors = True\nmeasured_boot_imports = []\n' \
    > "$OUT/verifier.conf"
export KEYLIME_LOGGING_CONFIG="$ROOT/$OUT/logging.conf"
export KEYLIME_VERIFIER_CONFIG="$ROOT/$OUT/verifier.conf"

ROWS=policy_load,quote,eventlog
if ! command -v tpm2_eventlog >/dev/null; then
    echo "note: tpm2_eventlog is missing (Keylime's event-log parser runs it): no event-log row" >&2
    ROWS=policy_load,quote
fi

echo "== building" >&2
export CARGO_INCREMENTAL=0
cargo build -q --release -p kctl --bin kctl
cargo bench -q -p kl-core --bench keylime_side --no-run 2>/dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# The IMA row alternates the two, one round each at a time, so that both see the same load.
echo "== IMA row: kctl policies test and Keylime, alternating, best of $ROUNDS" >&2
: > "$OUT/keylime-ima-rounds.json"
: > "$OUT/ours-ima-rounds.json"
for _ in $(seq "$ROUNDS"); do
    python3 - "$IMA" >> "$OUT/ours-ima-rounds.json" <<'PY'
import json, resource, subprocess, sys, time
ima = sys.argv[1]
pcr10 = open(f"{ima}/pcr10.sha256").read().strip()
cmd = ["target/release/kctl", "policies", "test", "--runtime-policy", f"{ima}/runtime-policy.json",
       "--ima-log", f"{ima}/ascii_runtime_measurements", "--hash-alg", "sha256", "--pcr10", pcr10,
       "-o", "json"]
before = resource.getrusage(resource.RUSAGE_CHILDREN)
t = time.perf_counter()
out = subprocess.run(cmd, capture_output=True)
dt = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_CHILDREN)
if out.returncode != 0 or not json.loads(out.stdout)["passed"]:
    sys.exit(f"kctl did not pass the log: {out.returncode} {out.stderr.decode()}")
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({"seconds": dt, "cpu_seconds": cpu}))
PY
    "$VENV/bin/python" scripts/bench/keylime_rows.py --ima-dir "$IMA" --fixtures "$FIXTURES" \
        --rounds 1 --rows ima 2>>"$OUT/keylime-stderr.log" >> "$OUT/keylime-ima-rounds.json"
done
echo "== this project: policy load, quote, event log" >&2
cargo bench -q -p kl-core --bench keylime_side -- "$ROOT/$IMA" "$ROOT/$FIXTURES" 2>/dev/null \
    | tail -n 1 > "$OUT/ours.json"

echo "== Keylime 7.14: $ROWS" >&2
"$VENV/bin/python" scripts/bench/keylime_rows.py --ima-dir "$IMA" --fixtures "$FIXTURES" \
    --rounds "$ROUNDS" --rows "$ROWS" 2>>"$OUT/keylime-stderr.log" > "$OUT/keylime.json"

load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$OUT" "$load_before" "$load_after" <<'PY'
import json, os, platform, sys
out, before, after = sys.argv[1], sys.argv[2], sys.argv[3]

def best(path, key):
    rounds = [json.loads(line) for line in open(path) if line.strip()]
    rounds = [r.get("ima", r) for r in rounds]
    return min(r[key] for r in rounds)

ours = json.load(open(f"{out}/ours.json"))
kl = json.load(open(f"{out}/keylime.json"))
ours["ima"] = best(f"{out}/ours-ima-rounds.json", "seconds")
ours["ima_cpu"] = best(f"{out}/ours-ima-rounds.json", "cpu_seconds")
kl["ima"] = {"seconds": best(f"{out}/keylime-ima-rounds.json", "seconds")}
kl["ima_cpu"] = {"seconds": best(f"{out}/keylime-ima-rounds.json", "cpu_seconds")}

def fmt(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} µs"

rows = [
    ("IMA check, 200k-entry log, 294k-path policy: wall", "ima", "ima",
     "Keylime: deserialize_runtime_policy + process_measurement_list, in-process; "
     "this project: the whole `kctl policies test` process (reads both files, prints JSON)"),
    ("IMA check, same: CPU time (user + system)", "ima_cpu", "ima_cpu",
     "Keylime uses one core; kctl two (policy load beside the log appraisal)"),
    ("Runtime policy load (37.8 MB Keylime JSON)", "policy_load", "policy_load",
     "Keylime: deserialize_runtime_policy (json.loads); this project: policy::load "
     "(parse, check every digest, index). Keylime's pull verifier repeats it per quote; "
     "this project's verifier does it once per policy"),
    ("Quote verification, fixture quote, AK per quote", "quote", "quote_ak_each_time",
     "Keylime: Tpm._tpm2_checkquote (AK from TPM2B_PUBLIC, signature, nonce, PCR digest); "
     "this project: PreparedAk::from_tpm2b_public + verify_quote (also clock, selection)"),
    ("Quote verification, AK prepared once per agent", "quote", "quote_per_agent_ak",
     "the same Keylime time; this project's verifier keeps the prepared AK per agent"),
    ("UEFI event log, parse + replay (120 events)", "eventlog", "eventlog",
     "Keylime: mba.bootlog_parse (runs tpm2_eventlog, reads its YAML, replays); "
     "this project: EventLog::parse (parses and replays every bank) in-process"),
]
print("| Row | Keylime 7.14 | this project | speed-up | what is timed |")
print("|---|---:|---:|---:|---|")
for label, kkey, okey, note in rows:
    if kkey not in kl or okey not in ours:
        continue
    k, o = kl[kkey]["seconds"], ours[okey]
    print(f"| {label} | {fmt(k)} | {fmt(o)} | {k / o:.1f}x | {note} |")
cpu = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print()
print(f"Machine: {os.cpu_count()} CPUs, {cpu}; Linux {platform.release()}; "
      f"load average {before} before, {after} after.")
PY
