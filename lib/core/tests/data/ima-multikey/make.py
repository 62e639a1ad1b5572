#!/usr/bin/env python3
"""Regenerates this directory: keys, an ima-sig log signed by three keys, and two policies.

Needs python3-cryptography (OpenSSL). Run from anywhere: python3 make.py
Keys are kept when present, so rerunning only re-signs (ECDSA signatures are randomised).
"""
import base64
import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

HERE = os.path.dirname(os.path.abspath(__file__))
HASH_ALGO_SHA256 = 4  # the kernel's HASH_ALGO_SHA256
EVM_IMA_XATTR_DIGSIG = 3


def key(name, make):
    path = os.path.join(HERE, "keys", name + ".pem")
    if os.path.exists(path):
        with open(path, "rb") as f:
            k = serialization.load_pem_private_key(f.read(), None)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        k = make()
        with open(path, "wb") as f:
            f.write(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    with open(os.path.join(HERE, "keys", name + ".pub.pem"), "wb") as f:
        f.write(k.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    return k


def keyid(k):
    """evmctl's v2 key id: last 4 bytes of SHA-1 of the PKCS#1 key or the uncompressed point."""
    pub = k.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        raw = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raw = pub.public_bytes(serialization.Encoding.X962,
                               serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha1(raw).digest()[-4:]


def sign(k, digest):
    pre = utils.Prehashed(hashes.SHA256())
    if isinstance(k, rsa.RSAPrivateKey):
        return k.sign(digest, padding.PKCS1v15(), pre)
    return k.sign(digest, ec.ECDSA(pre))


def sig_field(k, digest, claimed_keyid=None):
    s = sign(k, digest)
    kid = claimed_keyid if claimed_keyid is not None else keyid(k)
    return bytes([EVM_IMA_XATTR_DIGSIG, 2, HASH_ALGO_SHA256]) + kid + struct.pack(">H", len(s)) + s


def line(path, digest, sig):
    d_ng = b"sha256:\0" + digest
    name = path.encode() + b"\0"
    data = (struct.pack("<I", len(d_ng)) + d_ng + struct.pack("<I", len(name)) + name
            + struct.pack("<I", len(sig)) + sig)
    th = hashlib.sha1(data).hexdigest()
    fields = f"sha256:{digest.hex()} {path}"
    if sig:
        fields += " " + sig.hex()
    return f"10 {th} ima-sig {fields}\n"


def main():
    rsa_key = key("rsa2048", lambda: rsa.generate_private_key(65537, 2048))
    p256 = key("p256", lambda: ec.generate_private_key(ec.SECP256R1()))
    p384 = key("p384", lambda: ec.generate_private_key(ec.SECP384R1()))
    outsider = key("outsider-p256", lambda: ec.generate_private_key(ec.SECP256R1()))

    boot = hashlib.sha256(b"boot aggregate of a test machine").digest()
    files = {
        "/usr/bin/rsa-signed": (rsa_key, b"#!/bin/sh\necho signed with RSA-2048\n"),
        "/usr/bin/p256-signed": (p256, b"#!/bin/sh\necho signed with ECDSA P-256\n"),
        "/usr/lib64/libp384-signed.so": (p384, b"\x7fELF signed with ECDSA P-384"),
        "/usr/sbin/rsa-signed-too": (rsa_key, b"#!/bin/sh\necho second RSA file\n"),
    }
    good = [line("boot_aggregate", boot, b"")]
    for path, (k, content) in files.items():
        d = hashlib.sha256(content).digest()
        good.append(line(path, d, sig_field(k, d)))

    original = hashlib.sha256(b"#!/bin/sh\necho original\n").digest()
    modified = hashlib.sha256(b"#!/bin/sh\necho modified\n").digest()
    foreign = hashlib.sha256(b"#!/bin/sh\necho signed by a key the policy does not hold\n").digest()
    swapped = hashlib.sha256(b"#!/bin/sh\necho RSA signature, P-256 key id\n").digest()
    claims = hashlib.sha256(b"#!/bin/sh\necho foreign signature, RSA key id\n").digest()
    bad = good + [
        # Content changed after signing: the signature was made over the original digest.
        line("/usr/bin/modified", modified, sig_field(p256, original)),
        # Signed by a key missing from the policy.
        line("/usr/bin/outsider", foreign, sig_field(outsider, foreign)),
        # A valid RSA signature whose header names the P-256 key.
        line("/usr/bin/wrong-keyid", swapped, sig_field(rsa_key, swapped, keyid(p256))),
        # A signature by the missing key whose header names the policy's RSA key.
        line("/usr/bin/claims-rsa", claims, sig_field(outsider, claims, keyid(rsa_key))),
    ]
    with open(os.path.join(HERE, "signed-good"), "w") as f:
        f.writelines(good)
    with open(os.path.join(HERE, "signed-bad"), "w") as f:
        f.writelines(bad)

    keys = [rsa_key, p256, p384]
    spki = [k.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
            for k in keys]
    pem = [k.public_key().public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
           for k in keys]
    vkeys = {"meta": {"version": 1},
             "keyids": [int.from_bytes(keyid(k), "big") for k in keys],
             "pubkeys": [base64.b64encode(d).decode() for d in spki]}
    keylime = {"meta": {"version": 1, "generator": 0}, "release": 0,
               "digests": {"boot_aggregate": [boot.hex()]},
               "excludes": [], "keyrings": {},
               "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
               "ima-buf": {},
               "verification-keys": json.dumps(vkeys)}
    with open(os.path.join(HERE, "policy-keylime.json"), "w") as f:
        json.dump(keylime, f, indent=1)
        f.write("\n")
    native = {"version": 1, "kind": "runtime",
              "files": {"boot_aggregate": ["sha256:" + boot.hex()]},
              "signing_keys": pem}
    with open(os.path.join(HERE, "policy-native.json"), "w") as f:
        json.dump(native, f, indent=2)
        f.write("\n")
    for k, name in [(rsa_key, "rsa2048"), (p256, "p256"), (p384, "p384"), (outsider, "outsider-p256")]:
        print(f"{name}: key id {keyid(k).hex()}")


main()
