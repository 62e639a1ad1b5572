#!/usr/bin/env python3
"""Times Keylime's own per-quote work on the benchmark inputs (run by scripts/bench-keylime.sh
with the interpreter of a venv holding keylime==7.14.0).

Rows, each the best of --rounds runs in this process (the module imports are not timed):
  ima           keylime.ima.ima.deserialize_runtime_policy(policy text), then
                process_measurement_list(None, lines, policy, pcr10, hash_alg=sha256)
                with the log read as text beforehand, as the verifier holds it
  policy_load   deserialize_runtime_policy alone (what the pull-mode verifier does per quote)
  quote         keylime.tpm.tpm_main.Tpm._tpm2_checkquote on the fixture quote: AK from its
                TPM2B_PUBLIC, signature, nonce, PCR digest (what check_quote runs first)
  eventlog      keylime.mba.mba.bootlog_parse (tpm2_eventlog, its YAML, replay of the banks)
                on the fixture UEFI log, sha256

Prints one JSON object: {"row": {"seconds": best, "rounds": n, ...}}; the ima row also has
"cpu_seconds", the best CPU time of this (single-threaded) work.
"""

import argparse
import base64
import json
import os
import sys
import time


def best_of(rounds, fn, cpu=None):
    """Best wall time of `rounds` calls of `fn`, and the last result; with a `cpu` dict, the
    best CPU time of this process is stored under "cpu_seconds"."""
    best = None
    result = None
    for _ in range(rounds):
        c = time.process_time()
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        dc = time.process_time() - c
        best = dt if best is None else min(best, dt)
        if cpu is not None:
            cpu["cpu_seconds"] = min(cpu.get("cpu_seconds", dc), dc)
    return best, result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ima-dir", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--small-rounds", type=int, default=200)
    ap.add_argument("--rows", default="ima,policy_load,quote,eventlog")
    args = ap.parse_args()
    rows = set(args.rows.split(","))

    from keylime.common.algorithms import Hash
    from keylime.ima import ima
    from keylime.mba import mba
    from keylime.tpm.tpm_main import Tpm

    out = {}

    if rows & {"ima", "policy_load"}:
        with open(os.path.join(args.ima_dir, "runtime-policy.json"), encoding="utf-8") as f:
            policy_text = f.read()
        with open(os.path.join(args.ima_dir, "ascii_runtime_measurements"), encoding="utf-8") as f:
            log_text = f.read()
        with open(os.path.join(args.ima_dir, "pcr10.sha256"), encoding="utf-8") as f:
            pcr10 = f.read().strip()

    if "ima" in rows:

        def ima_check():
            policy = ima.deserialize_runtime_policy(policy_text)
            return ima.process_measurement_list(
                None, log_text.split("\n"), policy, pcr10, None, None, Hash.SHA256
            )

        cpu = {}
        secs, (running, failure) = best_of(args.rounds, ima_check, cpu)
        if failure or running != pcr10:
            sys.exit(f"Keylime did not pass the IMA log: {failure.get_event_ids()} (PCR 10 {running})")
        out["ima"] = {"seconds": secs, "rounds": args.rounds, "entries": log_text.count("\n"), **cpu}

    if "policy_load" in rows:
        secs, policy = best_of(args.rounds, lambda: ima.deserialize_runtime_policy(policy_text))
        out["policy_load"] = {"seconds": secs, "rounds": args.rounds, "paths": len(policy["digests"])}

    if "quote" in rows:

        def read(name):
            with open(os.path.join(args.fixtures, "quote", name), "rb") as f:
                return f.read()

        ak = base64.b64encode(read("ak.pub")).decode()
        quote = "r" + ":".join(base64.b64encode(read(n)).decode() for n in ("quote.out", "quotesig.out", "quotepcr.out"))
        nonce = base64.b64encode(read("rand.out")).decode()

        def check():
            pcrs, err = Tpm._tpm2_checkquote(ak, quote, nonce, "sha256", False)
            if err:
                sys.exit(f"Keylime rejected the fixture quote: {err}")
            return pcrs

        check()
        secs, _ = best_of(args.small_rounds, check)
        out["quote"] = {"seconds": secs, "rounds": args.small_rounds}

    if "eventlog" in rows:
        mba.load_imports(skip_custom_policies=True)
        with open(os.path.join(args.fixtures, "eventlog", "binary_bios_measurements"), "rb") as f:
            log_b64 = base64.b64encode(f.read()).decode()

        def parse():
            pcrs, _agg, _data, failure = mba.bootlog_parse(log_b64, "sha256")
            if failure:
                sys.exit(f"Keylime could not parse the fixture event log: {failure.get_event_ids()}")
            return pcrs

        pcrs = parse()
        rounds = max(2, args.small_rounds // 10)
        secs, _ = best_of(rounds, parse)
        out["eventlog"] = {"seconds": secs, "rounds": rounds, "pcrs": len(pcrs)}

    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
