//! Keys of signed policies: ECDSA P-256 or P-384 verification keys for DSSE envelopes, read
//! with the crate's key reader ([`crate::key`]).

use crate::key::{self, Curve, KeyError, PublicKey, SubjectPublicKey};

/// IMA's v2 key id of a DER SubjectPublicKeyInfo: the last four bytes of the SHA-1 of the key
/// bits (the PKCS#1 RSAPublicKey or the X9.62 EC point).
pub(crate) fn ima_keyid(spki_der: &[u8]) -> Option<u32> {
    key::spki_key_bits(spki_der).ok().map(key::keyid_of)
}

/// A public key that signed policies (DSSE envelopes) are verified with: ECDSA P-256 or P-384.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationKey {
    curve: Curve,
    point: Vec<u8>,
    spki: Vec<u8>,
}

/// `error` as the error of a policy signing key.
fn signing_key(error: KeyError) -> KeyError {
    KeyError::PolicySigningKey(Box::new(error))
}

impl VerificationKey {
    /// From PEM text holding a `PUBLIC KEY` or a `CERTIFICATE` (its subject key is used).
    pub fn from_pem(pem: &[u8]) -> Result<VerificationKey, KeyError> {
        let text = std::str::from_utf8(pem)
            .map_err(|e| signing_key(KeyError::Unsupported(format!("not UTF-8 PEM: {e}"))))?;
        if !text.contains("-----BEGIN") {
            return Err(signing_key(KeyError::Unsupported(
                "no PEM block (expected PUBLIC KEY or CERTIFICATE)".into(),
            )));
        }
        let spki = key::spki_from_text(text).map_err(signing_key)?;
        Self::from_spki_der(&spki)
    }

    /// From a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<VerificationKey, KeyError> {
        key::spki_key_bits(der).map_err(signing_key)?;
        let tlv = crate::der::Reader::new(der).read_any().map_err(|e| signing_key(e.into()))?;
        let unsupported = || {
            signing_key(KeyError::Unsupported(
                "unsupported key type (signed policies use ECDSA P-256 or P-384)".into(),
            ))
        };
        let spki = match SubjectPublicKey::from_tlv(&tlv) {
            Ok(spki) => spki,
            Err(KeyError::Curve { .. }) => {
                return Err(signing_key(KeyError::Unsupported(
                    "unsupported elliptic curve (expected P-256 or P-384)".into(),
                )));
            }
            Err(KeyError::Algorithm { .. }) => return Err(unsupported()),
            Err(e) => return Err(signing_key(e)),
        };
        match spki.key {
            PublicKey::Ec { curve: curve @ (Curve::P256 | Curve::P384), point } => {
                Ok(VerificationKey { curve, point, spki: der.to_vec() })
            }
            PublicKey::Ec { .. } => Err(signing_key(KeyError::Unsupported(
                "unsupported elliptic curve (expected P-256 or P-384)".into(),
            ))),
            PublicKey::Rsa { .. } => Err(unsupported()),
        }
    }

    /// From a DER X.509 certificate.
    pub fn from_certificate_der(der: &[u8]) -> Result<VerificationKey, KeyError> {
        let (spki, _) = key::certificate_spki(der).map_err(|e| signing_key(e.into()))?;
        Self::from_spki_der(spki.raw)
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
        let fixed_len = 2 * self.curve.coordinate_len();
        let algs: &[&sig::EcdsaVerificationAlgorithm] =
            match (self.curve, signature.len() == fixed_len) {
                (Curve::Secp256k1, _) => return false,
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
    use base64::Engine as _;

    use super::*;
    use crate::pem;

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
        assert_eq!(pem::BASE64.decode(b"AQI").ok(), Some(vec![1, 2]));
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
