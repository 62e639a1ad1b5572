#!/usr/bin/env python3
"""Generates the inputs of the offline IMA benchmark (scripts/bench-keylime.sh).

Writes into OUT_DIR:
  runtime-policy.json   a Keylime runtime policy (meta.version 1) with --paths paths
  ascii_runtime_measurements
                        an ascii IMA log of --entries ima-ng / ima-sig lines whose entries
                        the policy allows (or its excludes let through)
  pcr10.sha256          the sha256-bank PCR 10 value the log replays to (hex)

The paths imitate a distribution's file tree (libraries, binaries, Python modules and their
caches, kernel modules, firmware, configuration), each with a random sha256 digest; about 5 %
of the paths have two or three allowed digests (files updated by a package upgrade). The log
starts with boot_aggregate, measures packages in a random order and the files of a package in
order, uses an allowed digest of each path (sometimes not the first), re-measures about 2 % of
the files, adds about 1.5 % entries under excluded directories (not in the policy), and writes
every tenth entry with the ima-sig template (no signature, as the kernel logs unsigned files).
Template hashes are SHA-1 of the template data, as Keylime's log_hash_alg "sha1" expects.

Deterministic: the same arguments give the same bytes.
"""

import argparse
import hashlib
import json
import os
import random
import struct
import sys

SYLLABLES = [
    "ab", "ac", "al", "am", "an", "ar", "as", "at", "ba", "be", "bi", "bo", "ca", "ce", "ci",
    "co", "cu", "da", "de", "di", "do", "el", "em", "en", "er", "es", "ex", "fa", "fi", "fo",
    "ga", "ge", "gi", "go", "ha", "he", "hi", "ho", "id", "il", "im", "in", "io", "is", "it",
    "ka", "ke", "ki", "la", "le", "li", "lo", "lu", "ma", "me", "mi", "mo", "mu", "na", "ne",
    "ni", "no", "nu", "ob", "od", "on", "op", "or", "os", "pa", "pe", "pi", "po", "pu", "qu",
    "ra", "re", "ri", "ro", "ru", "sa", "se", "si", "so", "su", "ta", "te", "ti", "to", "tu",
    "ul", "um", "un", "ur", "us", "va", "ve", "vi", "vo", "xa", "xe", "ya", "za", "ze", "zo",
]

EXCLUDES = [
    "/tmp/.*",
    "/var/tmp/.*",
    "/var/log/.*",
    "/run/.*",
    "/var/lib/containers/.*",
    "/home/[^/]+/\\.cache/.*",
]

EXCLUDED_DIRS = ["/tmp/", "/var/tmp/", "/var/log/journal/", "/run/user/1000/"]


def word(rng, lo=1, hi=3):
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(lo, hi)))


def package_files(rng, kind, name):
    """The files of one package of `kind`, in the order a system would measure them."""
    n = rng.randint(3, 40)
    if kind == "python":
        base = f"/usr/lib/python3.12/site-packages/{name}"
        subs = [""] + [word(rng) + "/" for _ in range(rng.randint(0, 3))]
        out = []
        for _ in range(n):
            mod = word(rng, 1, 4)
            sub = rng.choice(subs)
            out.append(f"{base}/{sub}{mod}.py")
            out.append(f"{base}/{sub}__pycache__/{mod}.cpython-312.pyc")
        return out
    if kind == "lib":
        out = []
        for _ in range(max(1, n // 8)):
            lib = f"lib{name}{word(rng, 0, 1)}"
            major = rng.randint(0, 9)
            out.append(f"/usr/lib/x86_64-linux-gnu/{lib}.so.{major}.{rng.randint(0, 40)}.{rng.randint(0, 9)}")
        out.append(f"/usr/bin/{name}")
        out += [f"/usr/libexec/{name}/{word(rng)}" for _ in range(rng.randint(0, 3))]
        out += [f"/usr/lib/x86_64-linux-gnu/{name}/plugins/{word(rng)}.so" for _ in range(rng.randint(0, n))]
        return out
    if kind == "kmod":
        sub = rng.choice(["net/ethernet", "gpu/drm", "scsi", "usb/storage", "media/usb", "hid", "input/misc", "net/wireless"])
        return [f"/usr/lib/modules/6.8.0-49-generic/kernel/drivers/{sub}/{name}/{word(rng)}.ko.zst" for _ in range(n)]
    if kind == "firmware":
        return [f"/usr/lib/firmware/{name}/{word(rng)}-{rng.randint(1, 99)}.bin" for _ in range(n)]
    if kind == "etc":
        return [f"/etc/{name}/{word(rng)}.conf" for _ in range(max(1, n // 4))] + [f"/etc/{name}.conf"]
    if kind == "opt":
        app = word(rng)
        return [f"/opt/{name}/{app}/lib/lib{word(rng)}.so" for _ in range(n)] + [f"/opt/{name}/{app}/bin/{app}"]
    # share: scripts and data read through interpreters
    return [f"/usr/share/{name}/{word(rng)}/{word(rng)}.{rng.choice(['sh', 'pl', 'rb', 'lua', 'js'])}" for _ in range(n)]


KINDS = ["python", "lib", "lib", "kmod", "firmware", "etc", "opt", "share", "python"]


def make_packages(rng, paths_wanted):
    """Packages (lists of unique paths) until there are `paths_wanted` paths in total."""
    seen = set()
    packages = []
    total = 0
    i = 0
    while total < paths_wanted:
        kind = KINDS[i % len(KINDS)]
        name = word(rng, 2, 3) + (str(rng.randint(0, 99)) if rng.random() < 0.2 else "")
        i += 1
        files = []
        for p in package_files(rng, kind, name):
            if p not in seen and total < paths_wanted:
                seen.add(p)
                files.append(p)
                total += 1
        if files:
            packages.append(files)
    return packages


def template_data(digest, path, sig):
    d = b"sha256:\0" + digest
    n = path.encode() + b"\0"
    out = struct.pack("<I", len(d)) + d + struct.pack("<I", len(n)) + n
    if sig:
        out += struct.pack("<I", 0)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--paths", type=int, default=294_000)
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=20261205)
    args = ap.parse_args()
    if args.entries < 2 or args.paths < args.entries // 2:
        sys.exit("--entries must be at least 2 and --paths at least half of --entries")

    rng = random.Random(args.seed)
    packages = make_packages(rng, args.paths)
    digests = {}
    for files in packages:
        for p in files:
            count = 1 + (rng.random() < 0.05) + (rng.random() < 0.01)
            digests[p] = [rng.randbytes(32).hex() for _ in range(count)]
    boot_aggregate = rng.randbytes(32)
    digests["boot_aggregate"] = [boot_aggregate.hex()]

    policy = {
        "meta": {"version": 1, "generator": 0},
        "release": 0,
        "digests": digests,
        "excludes": EXCLUDES,
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }

    # Log order: packages shuffled, each package's files in order.
    order = list(range(len(packages)))
    rng.shuffle(order)
    entries = [("boot_aggregate", boot_aggregate)]
    measured = []
    for pi in order:
        for p in packages[pi]:
            if len(entries) >= args.entries:
                break
            r = rng.random()
            if r < 0.015:
                d = rng.choice(EXCLUDED_DIRS) + f"{word(rng)}-{rng.randint(0, 1 << 20):x}/{word(rng)}"
                entries.append((d, rng.randbytes(32)))
                continue
            if r < 0.035 and measured:
                entries.append(rng.choice(measured))
                continue
            allowed = digests[p]
            e = (p, bytes.fromhex(allowed[-1] if len(allowed) > 1 and rng.random() < 0.5 else allowed[0]))
            entries.append(e)
            measured.append(e)

    os.makedirs(args.out_dir, exist_ok=True)
    pcr = bytes(32)
    lines = []
    for i, (path, digest) in enumerate(entries):
        sig = i % 10 == 9
        data = template_data(digest, path, sig)
        pcr = hashlib.sha256(pcr + hashlib.sha256(data).digest()).digest()
        th = hashlib.sha1(data).hexdigest()
        template = "ima-sig" if sig else "ima-ng"
        # ima-sig keeps the delimiter of its empty signature field.
        lines.append(f"10 {th} {template} sha256:{digest.hex()} {path}{' ' if sig else ''}\n")

    with open(os.path.join(args.out_dir, "runtime-policy.json"), "w") as f:
        json.dump(policy, f)
    with open(os.path.join(args.out_dir, "ascii_runtime_measurements"), "w") as f:
        f.writelines(lines)
    with open(os.path.join(args.out_dir, "pcr10.sha256"), "w") as f:
        f.write(pcr.hex() + "\n")
    multi = sum(1 for v in digests.values() if len(v) > 1)
    print(
        f"{args.out_dir}: policy {len(digests)} paths ({multi} with several digests), "
        f"{len(EXCLUDES)} excludes; log {len(lines)} entries; pcr10 {pcr.hex()}"
    )


if __name__ == "__main__":
    main()
