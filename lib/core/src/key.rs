//! Public keys as certificates and key files carry them: the crate's one reader of
//! SubjectPublicKeyInfo (in an X.509 certificate, a PEM `PUBLIC KEY` block or base64 DER), its
//! one [`PublicKey`] and its one [`KeyError`], and the SubjectPublicKeyInfo encodings it writes
//! (to compare a TPM public area with the key in a certificate).
//!
//! What a key is then used for lives with its user: EK chains in [`crate::ekcert`], IMA
//! signature keys in [`crate::ima`], signed-policy keys in [`crate::policy`].

pub use crate::der::DerError;
use crate::der::{
    self, Reader, TAG_BIT_STRING, TAG_BOOLEAN, TAG_INTEGER, TAG_NULL, TAG_OCTET_STRING, TAG_OID,
    TAG_SEQUENCE, Tlv, oid_to_string,
};
use crate::pem::{self, PemError};
use crate::tpm2::EccCurve;
use crate::{alg::HashAlg, oid};

/// An elliptic curve of a certificate or key-file key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    /// Only IMA signature keys use it.
    Secp256k1,
}

impl Curve {
    /// Bytes of one coordinate.
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
        }
    }

    fn from_oid(curve: &[u8]) -> Option<Curve> {
        match curve {
            oid::P256 => Some(Curve::P256),
            oid::P384 => Some(Curve::P384),
            oid::SECP256K1 => Some(Curve::Secp256k1),
            _ => None,
        }
    }
}

/// A public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Big-endian modulus and exponent, without leading zero bytes.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// A SEC1 point as encoded (`04 || x || y` in certificates).
    Ec { curve: Curve, point: Vec<u8> },
}

/// A SubjectPublicKeyInfo: its DER encoding and the key it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPublicKey {
    /// The SubjectPublicKeyInfo DER, as found in the certificate.
    pub spki_der: Vec<u8>,
    pub key: PublicKey,
    /// The BIT STRING contents (RSAPublicKey DER or EC point), which is what ring verifies with
    /// and what IMA key ids hash.
    pub(crate) key_bytes: Vec<u8>,
}

/// Why bytes are not a usable public key, or a key is not usable for what it was offered for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("malformed DER {0}")]
    Malformed(DerError),
    #[error("{0}")]
    Pem(PemError),
    #[error("not an X.509 certificate, SubjectPublicKeyInfo, PKCS#1 RSA public key or PEM of one")]
    Unrecognised,
    #[error("unsupported public key algorithm (OID {oid})")]
    Algorithm { offset: usize, oid: String },
    #[error("unsupported elliptic curve (OID {oid}); supported: P-256, P-384, secp256k1")]
    Curve { offset: usize, oid: String },
    #[error("invalid {0} public key")]
    Invalid(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("policy signing key: {0}")]
    PolicySigningKey(Box<KeyError>),
    #[error("AK objectAttributes {attributes:#010x}: {missing} not set")]
    MissingAttributes { attributes: u32, missing: String },
    #[error(
        "AK objectAttributes {attributes:#010x}: decrypt is set, an AK must be a signing-only key"
    )]
    Decrypt { attributes: u32 },
    #[error("ECC curve {0} is not supported here")]
    UnsupportedCurve(EccCurve),
    #[error("ECC point coordinate {coordinate} is {len} bytes, more than the {size} of {curve}")]
    CoordinateTooLong { coordinate: &'static str, len: usize, size: usize, curve: EccCurve },
    #[error("RSA modulus is empty or zero")]
    EmptyModulus,
    #[error("RSA exponent {0} is not an odd number of at least 3")]
    BadExponent(u32),
    #[error("RSA modulus of {bits} bits is outside the supported range {min}..={max}")]
    ModulusSize { bits: usize, min: usize, max: usize },
    #[error("key type {0} cannot sign {1}")]
    WrongKeyType(&'static str, &'static str),
}

impl KeyError {
    /// The error as a DER error at the byte it concerns (certificate readers report those).
    pub(crate) fn into_der(self) -> DerError {
        match self {
            KeyError::Malformed(e) => e,
            KeyError::Algorithm { offset, oid } => {
                DerError::new(offset, format!("unsupported public key algorithm {oid}"))
            }
            KeyError::Curve { offset, oid } => {
                DerError::new(offset, format!("unsupported elliptic curve {oid}"))
            }
            other => DerError::new(0, other.to_string()),
        }
    }
}

impl From<DerError> for KeyError {
    fn from(e: DerError) -> KeyError {
        KeyError::Malformed(e)
    }
}

impl PublicKey {
    /// An RSA key from TPMT_PUBLIC fields; an exponent of 0 means 65537, as in the TPM.
    pub fn rsa(modulus: &[u8], exponent: u32) -> PublicKey {
        let exponent = if exponent == 0 { 65_537 } else { exponent };
        let e = exponent.to_be_bytes();
        PublicKey::Rsa { modulus: strip_zeros(modulus), exponent: strip_zeros(&e) }
    }

    /// An ECC key from TPMS_ECC_POINT coordinates (left-padded to the curve size). Coordinates
    /// longer than the curve size are kept as they are, so they never match a real key.
    pub fn ecc(curve: Curve, x: &[u8], y: &[u8]) -> PublicKey {
        let size = curve.coordinate_len();
        let mut point = vec![0x04];
        for coordinate in [x, y] {
            point.extend(std::iter::repeat_n(0, size - coordinate.len().min(size)));
            point.extend_from_slice(coordinate);
        }
        PublicKey::Ec { curve, point }
    }
}

impl SubjectPublicKey {
    /// Parses a DER SubjectPublicKeyInfo (e.g. a PEM "PUBLIC KEY" block, decoded) holding a key
    /// as certificates carry them: RSA, or an uncompressed point on P-256 or P-384.
    pub fn from_spki_der(der: &[u8]) -> Result<SubjectPublicKey, DerError> {
        let mut reader = Reader::new(der);
        let tlv = reader.read(TAG_SEQUENCE, "SubjectPublicKeyInfo")?;
        reader.finish("after the SubjectPublicKeyInfo")?;
        SubjectPublicKey::certificate_key(&tlv)
    }

    /// [`SubjectPublicKey::from_spki_der`] of an item read from a larger input.
    pub(crate) fn certificate_key(spki: &Tlv<'_>) -> Result<SubjectPublicKey, DerError> {
        let key = SubjectPublicKey::from_tlv(spki).map_err(KeyError::into_der)?;
        if let PublicKey::Ec { curve: Curve::Secp256k1, .. } = key.key {
            return Err(DerError::new(
                spki.value_offset,
                format!("unsupported elliptic curve {}", oid_to_string(oid::SECP256K1)),
            ));
        }
        if let PublicKey::Ec { curve, point } = &key.key {
            let len = 1 + 2 * curve.coordinate_len();
            if point.len() != len || point[0] != 0x04 {
                // The point's offset: the SubjectPublicKeyInfo ends with it.
                let offset = spki.value_offset + spki.value.len() - point.len();
                return Err(DerError::new(
                    offset,
                    format!("EC public key is not an uncompressed {len}-byte point"),
                ));
            }
        }
        Ok(key)
    }

    /// Parses a SubjectPublicKeyInfo item read from a larger input (offsets stay absolute).
    pub(crate) fn from_tlv(spki: &Tlv<'_>) -> Result<SubjectPublicKey, KeyError> {
        let mut r = spki.contents();
        let alg = r.read(TAG_SEQUENCE, "subjectPublicKeyInfo.algorithm")?;
        let mut a = alg.contents();
        let alg_oid = a.read(TAG_OID, "algorithm")?;
        let params = if a.is_empty() { None } else { Some(a.read_any()?) };
        a.finish("AlgorithmIdentifier")?;
        let bits = r.read(TAG_BIT_STRING, "subjectPublicKey")?;
        r.finish("subjectPublicKeyInfo")?;
        let key_bytes = bits.bit_string_bytes()?;
        let key_offset = bits.value_offset + 1;
        let shift = |e: DerError| DerError::new(e.offset + key_offset, e.reason);
        let key = match alg_oid.value {
            oid::RSA_ENCRYPTION => {
                let seq =
                    Reader::new(key_bytes).read(TAG_SEQUENCE, "RSAPublicKey").map_err(shift)?;
                let mut k = seq.contents();
                let n = k.read(TAG_INTEGER, "modulus").map_err(shift)?;
                let e = k.read(TAG_INTEGER, "publicExponent").map_err(shift)?;
                PublicKey::Rsa { modulus: strip_zeros(n.value), exponent: strip_zeros(e.value) }
            }
            oid::EC_PUBLIC_KEY => {
                let curve_oid = match params {
                    Some(p) if p.tag == TAG_OID => p.value,
                    Some(p) => {
                        return Err(DerError::new(
                            p.offset,
                            format!("namedCurve: expected tag 0x06, found 0x{:02x}", p.tag),
                        )
                        .into());
                    }
                    None => {
                        return Err(DerError::new(
                            alg.value_offset + alg.value.len(),
                            "namedCurve: unexpected end of data, expected a tag",
                        )
                        .into());
                    }
                };
                let curve = Curve::from_oid(curve_oid).ok_or_else(|| KeyError::Curve {
                    offset: alg.offset,
                    oid: oid_to_string(curve_oid),
                })?;
                PublicKey::Ec { curve, point: key_bytes.to_vec() }
            }
            other => {
                return Err(KeyError::Algorithm { offset: alg.offset, oid: oid_to_string(other) });
            }
        };
        Ok(SubjectPublicKey { spki_der: spki.raw.to_vec(), key, key_bytes: key_bytes.to_vec() })
    }

    /// IMA's v2 key id: the last four bytes of the SHA-1 of the key bits (the PKCS#1
    /// RSAPublicKey or the X9.62 point).
    pub(crate) fn ima_keyid(&self) -> u32 {
        keyid_of(&self.key_bytes)
    }
}

/// The last four bytes of the SHA-1 of `bytes`, as a big-endian number (IMA key ids).
pub(crate) fn keyid_of(bytes: &[u8]) -> u32 {
    let d = HashAlg::Sha1.digest(bytes);
    let b = d.as_bytes();
    u32::from_be_bytes([b[16], b[17], b[18], b[19]])
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

/// The SubjectPublicKeyInfo item and the SubjectKeyIdentifier of a DER X.509 certificate,
/// without reading the rest of it.
pub(crate) fn certificate_spki(der: &[u8]) -> Result<(Tlv<'_>, Option<&[u8]>), DerError> {
    let cert = Reader::new(der).read(TAG_SEQUENCE, "Certificate")?;
    let tbs = cert.contents().read(TAG_SEQUENCE, "tbsCertificate")?;
    let mut t = tbs.contents();
    t.read_optional(0xa0, "version")?;
    for what in ["serialNumber", "signature", "issuer", "validity", "subject"] {
        t.read_any().map_err(|e| DerError::new(e.offset, format!("{what}: {}", e.reason)))?;
    }
    let spki = t.read(TAG_SEQUENCE, "subjectPublicKeyInfo")?;
    let mut ski = None;
    while !t.is_empty() {
        let item = t.read_any()?;
        if item.tag == 0xa3 {
            ski = subject_key_id(&item);
        }
    }
    Ok((spki, ski))
}

fn subject_key_id<'a>(explicit: &Tlv<'a>) -> Option<&'a [u8]> {
    let mut exts = explicit.contents().read(TAG_SEQUENCE, "extensions").ok()?.contents();
    while exts.peek_tag() == Some(TAG_SEQUENCE) {
        let mut ext = exts.read_any().ok()?.contents();
        let id = ext.read(TAG_OID, "extnID").ok()?;
        if id.value != oid::SUBJECT_KEY_ID {
            continue;
        }
        ext.read_optional(TAG_BOOLEAN, "critical").ok()?;
        let value = ext.read(TAG_OCTET_STRING, "extnValue").ok()?;
        let inner = Reader::new(value.value).read(TAG_OCTET_STRING, "keyIdentifier").ok()?;
        return Some(inner.value);
    }
    None
}

/// A public key given as PEM (`PUBLIC KEY` or `CERTIFICATE`, the first block) or as base64 of a
/// DER SubjectPublicKeyInfo; returns the DER SubjectPublicKeyInfo.
pub(crate) fn spki_from_text(text: &str) -> Result<Vec<u8>, KeyError> {
    use base64::Engine as _;
    let der = if text.trim_start().starts_with("-----BEGIN") {
        let blocks = pem::blocks(text).map_err(KeyError::Pem)?;
        let block = blocks.first().ok_or(KeyError::Unsupported("no PEM block".into()))?;
        let der = block.decode().map_err(KeyError::Pem)?;
        match block.label {
            "PUBLIC KEY" => der,
            "CERTIFICATE" => certificate_spki(&der)?.0.raw.to_vec(),
            other => {
                return Err(KeyError::Unsupported(format!(
                    "PEM block {other} is not a public key or certificate"
                )));
            }
        }
    } else {
        pem::BASE64
            .decode(text.trim().as_bytes())
            .map_err(|e| KeyError::Unsupported(format!("invalid base64: {e}")))?
    };
    spki_key_bits(&der)?;
    Ok(der)
}

/// The key bits of `der`, which must be exactly one well-formed SubjectPublicKeyInfo (of any
/// algorithm).
pub(crate) fn spki_key_bits(der: &[u8]) -> Result<&[u8], KeyError> {
    let mut r = Reader::new(der);
    let spki = r.read(TAG_SEQUENCE, "SubjectPublicKeyInfo")?;
    r.finish("SubjectPublicKeyInfo")?;
    let mut s = spki.contents();
    let alg = s.read(TAG_SEQUENCE, "AlgorithmIdentifier")?;
    alg.contents().read(TAG_OID, "algorithm OID")?;
    Ok(s.read(TAG_BIT_STRING, "subjectPublicKey")?.bit_string_bytes()?)
}

/// `SubjectPublicKeyInfo` of an RSA key (`n`, `e` as big-endian magnitudes).
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut alg = der::encode(TAG_OID, oid::RSA_ENCRYPTION);
    alg.extend_from_slice(&der::encode(TAG_NULL, &[]));
    let mut key = der::encode_positive_integer(n);
    key.extend_from_slice(&der::encode_positive_integer(e));
    let mut spki = der::encode(TAG_SEQUENCE, &alg);
    spki.extend_from_slice(&der::encode_bit_string(&der::encode(TAG_SEQUENCE, &key)));
    der::encode(TAG_SEQUENCE, &spki)
}

/// `SubjectPublicKeyInfo` of an EC key from its curve OID and uncompressed point.
pub(crate) fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let mut alg = der::encode(TAG_OID, oid::EC_PUBLIC_KEY);
    alg.extend_from_slice(&der::encode(TAG_OID, curve_oid));
    let mut spki = der::encode(TAG_SEQUENCE, &alg);
    spki.extend_from_slice(&der::encode_bit_string(point));
    der::encode(TAG_SEQUENCE, &spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_spki_reads_back() {
        let point: Vec<u8> = [4u8].into_iter().chain(1..=64).collect();
        let spki = SubjectPublicKey::from_spki_der(&ec_spki(oid::P256, &point)).expect("EC");
        assert_eq!(spki.key, PublicKey::Ec { curve: Curve::P256, point: point.clone() });
        let compressed = ec_spki(oid::P256, &point[..33]);
        let err = SubjectPublicKey::from_spki_der(&compressed).expect_err("not uncompressed");
        assert!(err.reason.contains("uncompressed 65-byte point"), "{err}");
        let rsa =
            SubjectPublicKey::from_spki_der(&rsa_spki(&[0x80; 256], &[1, 0, 1])).expect("RSA");
        assert_eq!(rsa.key, PublicKey::rsa(&[0x80; 256], 65_537));
        spki_key_bits(&rsa.spki_der).expect("well-formed");
        let mut trailing = ec_spki(oid::P256, &point);
        trailing.push(0);
        let err = SubjectPublicKey::from_spki_der(&trailing).expect_err("a byte after the key");
        assert!(err.reason.contains("1 unexpected bytes"), "{err}");
    }

    #[test]
    fn unknown_algorithms_and_curves_name_their_oid() {
        // id-Ed25519 (1.3.101.112)
        let ed = hex::decode("302a300506032b6570032100").expect("hex");
        let mut ed = ed;
        ed.extend_from_slice(&[7; 32]);
        let tlv = |der: &[u8]| -> Result<SubjectPublicKey, KeyError> {
            SubjectPublicKey::from_tlv(&Reader::new(der).read_any().expect("item"))
        };
        let err = tlv(&ed).expect_err("Ed25519");
        assert_eq!(err, KeyError::Algorithm { offset: 2, oid: "1.3.101.112".into() });
        let p521 = ec_spki(oid::P521, &[4; 133]);
        let err = tlv(&p521).expect_err("P-521");
        assert!(err.to_string().contains("1.3.132.0.35"), "{err}");
        let err = SubjectPublicKey::from_spki_der(&p521).expect_err("P-521");
        assert_eq!(err.reason, "unsupported elliptic curve 1.3.132.0.35");
    }
}
