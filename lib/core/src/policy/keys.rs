//! Public keys in policies: PEM and base64 decoding, a minimal DER walker for
//! SubjectPublicKeyInfo and X.509 certificates, and ECDSA verification keys for signed policies.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Standard base64, accepting input with or without `=` padding.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// Reads one DER element: `(tag, contents, rest)`.
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated DER element")?;
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("unsupported or truncated DER length".into());
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(format!("DER element of {len} bytes runs past the end"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let (t, body, rest) = der_element(input)?;
    if t != tag {
        return Err(format!("{what}: expected DER tag {tag:#04x}, found {t:#04x}"));
    }
    Ok((body, rest))
}

/// A parsed SubjectPublicKeyInfo: algorithm OID, parameters element, key bits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spki<'a> {
    pub(crate) algorithm: &'a [u8],
    pub(crate) parameters: &'a [u8],
    pub(crate) key: &'a [u8],
}

/// Parses a DER SubjectPublicKeyInfo (the whole input must be one element).
pub(crate) fn parse_spki(der: &[u8]) -> Result<Spki<'_>, String> {
    let (body, rest) = expect(der, 0x30, "SubjectPublicKeyInfo")?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after SubjectPublicKeyInfo", rest.len()));
    }
    let (alg, body) = expect(body, 0x30, "AlgorithmIdentifier")?;
    let (algorithm, parameters) = expect(alg, 0x06, "algorithm OID")?;
    let (bits, _) = expect(body, 0x03, "subjectPublicKey")?;
    let (&unused, key) = bits.split_first().ok_or("empty subjectPublicKey")?;
    if unused != 0 {
        return Err("subjectPublicKey has unused bits".into());
    }
    Ok(Spki { algorithm, parameters, key })
}

/// Returns the DER SubjectPublicKeyInfo of an X.509 certificate.
pub(crate) fn spki_of_certificate(der: &[u8]) -> Result<&[u8], String> {
    let (cert, _) = expect(der, 0x30, "Certificate")?;
    let (mut tbs, _) = expect(cert, 0x30, "TBSCertificate")?;
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        tbs = der_element(tbs)?.2;
    }
    let (tag, _, rest) = der_element(tbs)?;
    if tag != 0x30 {
        return Err("certificate has no SubjectPublicKeyInfo".into());
    }
    Ok(&tbs[..tbs.len() - rest.len()])
}

/// Decodes every PEM block of `text`: `(label, DER bytes)`.
pub(crate) fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(label) =
            line.trim().strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim() == end {
                closed = true;
                break;
            }
            b64.push_str(l.trim());
        }
        if !closed {
            return Err(format!("line {}: PEM block {label} has no END line", n + 1));
        }
        let der = BASE64
            .decode(b64.as_bytes())
            .map_err(|e| format!("line {}: PEM block {label}: invalid base64: {e}", n + 1))?;
        out.push((label.to_owned(), der));
    }
    Ok(out)
}

/// Parses a public key given as PEM (`PUBLIC KEY` or `CERTIFICATE`) or as base64 of a DER
/// SubjectPublicKeyInfo, returning the DER SubjectPublicKeyInfo.
pub(crate) fn spki_from_text(text: &str) -> Result<Vec<u8>, String> {
    let der = if text.trim_start().starts_with("-----BEGIN") {
        let blocks = pem_blocks(text)?;
        let (label, der) = blocks.into_iter().next().ok_or("no PEM block")?;
        match label.as_str() {
            "PUBLIC KEY" => der,
            "CERTIFICATE" => spki_of_certificate(&der)?.to_vec(),
            other => return Err(format!("PEM block {other} is not a public key or certificate")),
        }
    } else {
        BASE64.decode(text.trim().as_bytes()).map_err(|e| format!("invalid base64: {e}"))?
    };
    parse_spki(&der)?;
    Ok(der)
}

/// IMA's v2 key id of a public key: the last four bytes of the SHA-1 of the key bits
/// (the PKCS#1 RSAPublicKey or the X9.62 EC point).
pub(crate) fn ima_keyid(spki_der: &[u8]) -> Option<u32> {
    let spki = parse_spki(spki_der).ok()?;
    let d = crate::alg::HashAlg::Sha1.digest(spki.key);
    let b = d.as_bytes();
    Some(u32::from_be_bytes([b[16], b[17], b[18], b[19]]))
}

/// The elliptic curve of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

/// A public key that signed policies (DSSE envelopes) are verified with: ECDSA P-256 or P-384.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationKey {
    curve: Curve,
    point: Vec<u8>,
    spki: Vec<u8>,
}

/// The key given to verify a signed policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy signing key: {0}")]
pub struct KeyError(pub String);

impl VerificationKey {
    /// From PEM text holding a `PUBLIC KEY` or a `CERTIFICATE` (its subject key is used).
    pub fn from_pem(pem: &[u8]) -> Result<VerificationKey, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|e| KeyError(format!("not UTF-8 PEM: {e}")))?;
        if !text.contains("-----BEGIN") {
            return Err(KeyError("no PEM block (expected PUBLIC KEY or CERTIFICATE)".into()));
        }
        let spki = spki_from_text(text).map_err(KeyError)?;
        Self::from_spki_der(&spki)
    }

    /// From a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<VerificationKey, KeyError> {
        let spki = parse_spki(der).map_err(KeyError)?;
        if spki.algorithm != OID_EC_PUBLIC_KEY {
            return Err(KeyError(
                "unsupported key type (signed policies use ECDSA P-256 or P-384)".into(),
            ));
        }
        let (curve_oid, _) = expect(spki.parameters, 0x06, "curve OID").map_err(KeyError)?;
        let curve = match curve_oid {
            OID_P256 => Curve::P256,
            OID_P384 => Curve::P384,
            _ => {
                return Err(KeyError(
                    "unsupported elliptic curve (expected P-256 or P-384)".into(),
                ));
            }
        };
        Ok(VerificationKey { curve, point: spki.key.to_vec(), spki: der.to_vec() })
    }

    /// From a DER X.509 certificate.
    pub fn from_certificate_der(der: &[u8]) -> Result<VerificationKey, KeyError> {
        Self::from_spki_der(spki_of_certificate(der).map_err(KeyError)?)
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Verifies an ECDSA signature (ASN.1 DER or fixed-width `r || s`) over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature as sig;
        let fixed_len = match self.curve {
            Curve::P256 => 64,
            Curve::P384 => 96,
        };
        let algs: &[&sig::EcdsaVerificationAlgorithm] =
            match (self.curve, signature.len() == fixed_len) {
                (Curve::P256, false) => {
                    &[&sig::ECDSA_P256_SHA256_ASN1, &sig::ECDSA_P256_SHA384_ASN1]
                }
                (Curve::P256, true) => &[&sig::ECDSA_P256_SHA256_FIXED],
                (Curve::P384, false) => {
                    &[&sig::ECDSA_P384_SHA384_ASN1, &sig::ECDSA_P384_SHA256_ASN1]
                }
                (Curve::P384, true) => &[&sig::ECDSA_P384_SHA384_FIXED],
            };
        algs.iter().any(|alg| {
            sig::UnparsedPublicKey::new(*alg, &self.point).verify(message, signature).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBKEY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keylime/policy/runtime-policy-pubkey.pub"
    ));

    #[test]
    fn reads_fixture_key() {
        let k = VerificationKey::from_pem(PUBKEY.as_bytes()).expect("P-256 key");
        assert_eq!(k.curve(), Curve::P256);
        assert_eq!(k.point.len(), 65);
        assert!(ima_keyid(k.spki_der()).is_some());
    }

    #[test]
    fn rejects_garbage_keys() {
        assert!(VerificationKey::from_pem(b"hello").is_err());
        assert!(VerificationKey::from_spki_der(&[0x30, 0x05, 0x30]).is_err());
        let truncated = PUBKEY.replace("-----END PUBLIC KEY-----", "");
        let err = VerificationKey::from_pem(truncated.as_bytes()).expect_err("no END");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
