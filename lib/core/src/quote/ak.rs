//! Attestation keys prepared once per agent for fast signature checks.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

use crate::alg::HashAlg;
use crate::key::KeyError;
use crate::tpm2::{self, EccCurve, Public, SigAlg, Signature, SignatureBody, TpmKey};

/// The RSA modulus sizes ring verifies.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// Why a public area cannot serve as an attestation key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AkError {
    #[error("AK public area: {0}")]
    Parse(#[from] tpm2::Error),
    #[error("AK: {0}")]
    Key(#[from] KeyError),
}

/// Why a signature did not verify. Every variant is a failed check, never a pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("a {sig} signature cannot come from the {key} AK")]
    WrongKeyType { sig: SigAlg, key: &'static str },
    #[error("signature hash {0:#06x} is not supported")]
    UnsupportedHash(u16),
    #[error("{sig} with {hash} is not supported for {key}")]
    Unsupported { sig: SigAlg, hash: HashAlg, key: String },
    #[error("ECDSA {part} is {len} bytes, longer than the {size} bytes of {curve}")]
    ScalarTooLong { part: &'static str, len: usize, size: usize, curve: EccCurve },
    #[error("the signature does not verify with the AK")]
    Invalid,
}

#[derive(Debug)]
enum VerifyKey {
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    /// P-256 or P-384 with its uncompressed point.
    Ecc {
        curve: EccCurve,
        size: usize,
        point: Vec<u8>,
    },
}

/// An attestation key, parsed and checked once, ready to verify quotes: holds the public area,
/// its Name and the key in the form ring verifies with.
#[derive(Debug)]
pub struct PreparedAk {
    public: Public,
    name: Vec<u8>,
    key: VerifyKey,
}

impl PreparedAk {
    /// Parses a `TPM2B_PUBLIC` (a size-prefixed public area, as tpm2-tools writes it) and
    /// prepares it. The registrar stores a bare `TPMT_PUBLIC`: use `Public::parse` and [`PreparedAk::new`] for that.
    pub fn from_tpm2b_public(bytes: &[u8]) -> Result<PreparedAk, AkError> {
        PreparedAk::new(Public::parse_tpm2b(bytes)?)
    }

    /// Checks the AK attributes (see [`Public::check_ak_attributes`]) and that ring can verify
    /// with the key (RSA 2048..=8192 bits, NIST P-256 or P-384).
    pub fn new(public: Public) -> Result<PreparedAk, AkError> {
        public.check_ak_attributes()?;
        let key = match &public.key {
            TpmKey::Rsa(k) => {
                let bits = k.modulus_bits()?;
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err(KeyError::ModulusSize {
                        bits,
                        min: RSA_MIN_BITS,
                        max: RSA_MAX_BITS,
                    }
                    .into());
                }
                VerifyKey::Rsa(k.ring_components()?)
            }
            TpmKey::Ecc(k) => {
                if k.curve != EccCurve::NIST_P256 && k.curve != EccCurve::NIST_P384 {
                    return Err(KeyError::UnsupportedCurve(k.curve).into());
                }
                let size = k.curve.coordinate_len().ok_or(KeyError::UnsupportedCurve(k.curve))?;
                VerifyKey::Ecc { curve: k.curve, size, point: k.uncompressed_point()? }
            }
        };
        let name = public.name();
        Ok(PreparedAk { public, name, key })
    }

    pub fn public(&self) -> &Public {
        &self.public
    }

    /// The AK's TPM Name (`nameAlg || H(TPMT_PUBLIC)`).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Verifies `signature` over `message` (the marshalled `TPMS_ATTEST`).
    pub fn verify(&self, signature: &Signature, message: &[u8]) -> Result<(), SignatureError> {
        let hash = signature.hash().ok_or(SignatureError::UnsupportedHash(signature.hash_alg))?;
        match (&self.key, &signature.body) {
            (VerifyKey::Rsa(key), SignatureBody::Rsa(sig)) => {
                let params: &signature::RsaParameters = match (signature.alg, hash) {
                    (SigAlg::RsaSsa, HashAlg::Sha1) => {
                        &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
                    }
                    (SigAlg::RsaSsa, HashAlg::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
                    (SigAlg::RsaSsa, HashAlg::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
                    (SigAlg::RsaSsa, HashAlg::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
                    (SigAlg::RsaPss, HashAlg::Sha256) => &signature::RSA_PSS_2048_8192_SHA256,
                    (SigAlg::RsaPss, HashAlg::Sha384) => &signature::RSA_PSS_2048_8192_SHA384,
                    (SigAlg::RsaPss, HashAlg::Sha512) => &signature::RSA_PSS_2048_8192_SHA512,
                    (sig, hash) => {
                        return Err(SignatureError::Unsupported { sig, hash, key: "RSA".into() });
                    }
                };
                key.verify(params, message, sig).map_err(|_| SignatureError::Invalid)
            }
            (VerifyKey::Ecc { curve, size, point }, SignatureBody::Ecc { r, s })
                if signature.alg == SigAlg::Ecdsa =>
            {
                let alg = match (*curve, hash) {
                    (EccCurve::NIST_P256, HashAlg::Sha256) => &signature::ECDSA_P256_SHA256_FIXED,
                    (EccCurve::NIST_P384, HashAlg::Sha384) => &signature::ECDSA_P384_SHA384_FIXED,
                    (curve, hash) => {
                        return Err(SignatureError::Unsupported {
                            sig: signature.alg,
                            hash,
                            key: curve.to_string(),
                        });
                    }
                };
                let mut fixed = Vec::with_capacity(2 * size);
                for (part, value) in [("r", r), ("s", s)] {
                    let value = tpm2::strip_leading_zeros_to(value, *size).ok_or(
                        SignatureError::ScalarTooLong {
                            part,
                            len: value.len(),
                            size: *size,
                            curve: *curve,
                        },
                    )?;
                    fixed.resize(fixed.len() + size - value.len(), 0);
                    fixed.extend_from_slice(value);
                }
                UnparsedPublicKey::new(alg, point)
                    .verify(message, &fixed)
                    .map_err(|_| SignatureError::Invalid)
            }
            _ => Err(SignatureError::WrongKeyType {
                sig: signature.alg,
                key: self.public.key.type_name(),
            }),
        }
    }
}
