#!/bin/sh
# Regenerates this directory with OpenSSL: an ECDSA P-256 root, an ECDSA P-256 intermediate,
# and two EK certificates it issues (RSA-2048 EK and ECC P-256 EK) in the TCG EK credential
# profile (empty subject, critical subjectAltName with the TPM attributes, EK certificate EKU).
# Also a second root with the same name as the first but another key.
# Fixed validity for every certificate: 2024-01-01 to 2049-12-31.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/ca.cnf" <<CNF
oid_section = tcg
[tcg]
tcgTpmManufacturer = 2.23.133.2.1
tcgTpmModel = 2.23.133.2.2
tcgTpmVersion = 2.23.133.2.3
tcgKpEkCertificate = 2.23.133.8.1
[ca]
default_ca = test_ca
[test_ca]
database = $tmp/index.txt
new_certs_dir = $tmp
serial = $tmp/serial
default_md = sha256
policy = anything
unique_subject = no
email_in_dn = no
[anything]
countryName = optional
organizationName = optional
commonName = optional
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ek_rsa]
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyEncipherment
extendedKeyUsage = tcgKpEkCertificate
subjectAltName = critical, dirName:tpm_attributes
authorityKeyIdentifier = keyid
[ek_ecc]
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyAgreement
extendedKeyUsage = tcgKpEkCertificate
subjectAltName = critical, dirName:tpm_attributes
authorityKeyIdentifier = keyid
[tpm_attributes]
tcgTpmManufacturer = id:54455354
tcgTpmModel = TEST-TPM-P256
tcgTpmVersion = id:00010002
CNF

p256() { openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
# sign CSR EXTENSIONS OUT ISSUER_KEY [ISSUER_CERT]; self-signed without ISSUER_CERT
sign() {
  : > "$tmp/index.txt"
  if [ -n "${5:-}" ]; then issuer="-cert $5"; else issuer=-selfsign; fi
  # shellcheck disable=SC2086
  openssl ca -batch -notext -config "$tmp/ca.cnf" -in "$1" -extensions "$2" -out "$3" \
    -keyfile "$4" $issuer -startdate 20240101000000Z -enddate 20491231235959Z \
    -rand_serial 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
}
csr() { # KEY SUBJECT OUT
  openssl req -new -config "$tmp/ca.cnf" -key "$1" -subj "$2" -out "$3"
}

root_name="/C=XX/O=Test TPM Vendor/CN=Test TPM ECC Root CA"
p256 "$tmp/root.key"
csr "$tmp/root.key" "$root_name" "$tmp/root.csr"
sign "$tmp/root.csr" root root.pem "$tmp/root.key"

# Same name, different key: what an attacker's or a stale root would look like.
p256 "$tmp/other-root.key"
csr "$tmp/other-root.key" "$root_name" "$tmp/other-root.csr"
sign "$tmp/other-root.csr" root other-root.pem "$tmp/other-root.key"

p256 "$tmp/intermediate.key"
csr "$tmp/intermediate.key" "/C=XX/O=Test TPM Vendor/CN=Test TPM ECC Intermediate CA 01" \
  "$tmp/intermediate.csr"
sign "$tmp/intermediate.csr" intermediate intermediate.pem "$tmp/root.key" root.pem

# EK certificates have an empty subject; the TPM is named by the subjectAltName.
openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/ek-rsa.key"
csr "$tmp/ek-rsa.key" / "$tmp/ek-rsa.csr"
sign "$tmp/ek-rsa.csr" ek_rsa "$tmp/ek-rsa.pem" "$tmp/intermediate.key" intermediate.pem
openssl x509 -in "$tmp/ek-rsa.pem" -outform DER -out ek-rsa2048.der

p256 "$tmp/ek-ecc.key"
csr "$tmp/ek-ecc.key" / "$tmp/ek-ecc.csr"
sign "$tmp/ek-ecc.csr" ek_ecc "$tmp/ek-ecc.pem" "$tmp/intermediate.key" intermediate.pem
openssl x509 -in "$tmp/ek-ecc.pem" -outform DER -out ek-eccp256.der

openssl verify -CAfile root.pem -untrusted intermediate.pem -attime 1704067200 \
  "$tmp/ek-rsa.pem" "$tmp/ek-ecc.pem"
