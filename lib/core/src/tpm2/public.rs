//! Public areas (`TPMT_PUBLIC`, `TPM2B_PUBLIC`) of RSA and ECC keys, object names, the
//! attribute rules an attestation key must satisfy, and conversion to other key encodings.

use std::fmt;

use ring::signature::RsaPublicKeyComponents;

use super::wire::{Reader, Writer};
use super::{Error, MAX_DIGEST, MAX_ECC_BYTES, MAX_RSA_BYTES, alg_id};
use crate::alg::HashAlg;
use crate::key::{self, KeyError};
use crate::oid;

/// `TPMA_OBJECT`, the attribute bits of an object.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;

    pub fn contains(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

impl fmt::Debug for ObjectAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectAttributes({:#010x})", self.0)
    }
}

/// The attributes an attestation key must have, with their names from the TPM specification.
/// Together they say: a signing key that only signs TPM-generated structures, was generated
/// inside the TPM and can never leave it.
pub(crate) const AK_REQUIRED_ATTRIBUTES: [(u32, &str); 5] = [
    (ObjectAttributes::FIXED_TPM, "fixedTPM"),
    (ObjectAttributes::FIXED_PARENT, "fixedParent"),
    (ObjectAttributes::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    (ObjectAttributes::RESTRICTED, "restricted"),
    (ObjectAttributes::SIGN, "sign"),
];

/// `TPMI_ECC_CURVE`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EccCurve(pub u16);

impl EccCurve {
    pub const NIST_P192: EccCurve = EccCurve(0x0001);
    pub const NIST_P224: EccCurve = EccCurve(0x0002);
    pub const NIST_P256: EccCurve = EccCurve(0x0003);
    pub const NIST_P384: EccCurve = EccCurve(0x0004);
    pub const NIST_P521: EccCurve = EccCurve(0x0005);

    /// The coordinate size in bytes of the NIST curves this crate can encode.
    pub fn coordinate_len(self) -> Option<usize> {
        match self {
            EccCurve::NIST_P256 => Some(32),
            EccCurve::NIST_P384 => Some(48),
            EccCurve::NIST_P521 => Some(66),
            _ => None,
        }
    }

    fn oid(self) -> Option<&'static [u8]> {
        match self {
            EccCurve::NIST_P256 => Some(oid::P256),
            EccCurve::NIST_P384 => Some(oid::P384),
            EccCurve::NIST_P521 => Some(oid::P521),
            _ => None,
        }
    }
}

impl fmt::Display for EccCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EccCurve::NIST_P192 => f.write_str("NIST P-192"),
            EccCurve::NIST_P224 => f.write_str("NIST P-224"),
            EccCurve::NIST_P256 => f.write_str("NIST P-256"),
            EccCurve::NIST_P384 => f.write_str("NIST P-384"),
            EccCurve::NIST_P521 => f.write_str("NIST P-521"),
            EccCurve(id) => write!(f, "curve {id:#06x}"),
        }
    }
}

impl fmt::Debug for EccCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `TPMT_SYM_DEF_OBJECT`: the symmetric algorithm of a storage key, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymmetricDef {
    Null,
    Cipher { algorithm: u16, key_bits: u16, mode: u16 },
}

/// A signing, encryption or KDF scheme with its hash (`TPMT_RSA_SCHEME`, `TPMT_ECC_SCHEME`,
/// `TPMT_KDF_SCHEME`); `count` is only marshalled for ECDAA. `None` where one is used means
/// `TPM_ALG_NULL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub scheme: u16,
    /// `TPM_ALG_NULL` for schemes without a hash (RSAES).
    pub hash_alg: u16,
    pub count: u16,
}

/// The RSA part of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic {
    pub symmetric: SymmetricDef,
    pub scheme: Option<Scheme>,
    pub key_bits: u16,
    /// As marshalled: 0 means the default exponent 65537 (see [`RsaPublic::exponent`]).
    pub raw_exponent: u32,
    /// The modulus `n`, big-endian.
    pub modulus: Vec<u8>,
}

impl RsaPublic {
    pub fn exponent(&self) -> u32 {
        if self.raw_exponent == 0 { 65537 } else { self.raw_exponent }
    }

    /// The exponent as minimal big-endian bytes.
    pub fn exponent_bytes(&self) -> Vec<u8> {
        let be = self.exponent().to_be_bytes();
        let skip = be.iter().take_while(|&&b| b == 0).count();
        be[skip..].to_vec()
    }

    /// The modulus without leading zero bytes, refusing an all-zero modulus.
    pub fn modulus_magnitude(&self) -> Result<&[u8], KeyError> {
        let first = self.modulus.iter().position(|&b| b != 0).ok_or(KeyError::EmptyModulus)?;
        Ok(&self.modulus[first..])
    }

    /// The key as ring verifies with it: `n` and `e` without leading zeros. Refuses what no
    /// RSA verification could accept (a zero modulus, an even or too small exponent).
    pub fn ring_components(&self) -> Result<RsaPublicKeyComponents<Vec<u8>>, KeyError> {
        let e = self.exponent();
        if e < 3 || e.is_multiple_of(2) {
            return Err(KeyError::BadExponent(e));
        }
        Ok(RsaPublicKeyComponents {
            n: self.modulus_magnitude()?.to_vec(),
            e: self.exponent_bytes(),
        })
    }

    /// The modulus size in bits.
    pub fn modulus_bits(&self) -> Result<usize, KeyError> {
        let n = self.modulus_magnitude()?;
        Ok(n.len() * 8 - n[0].leading_zeros() as usize)
    }
}

/// The ECC part of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPublic {
    pub symmetric: SymmetricDef,
    pub scheme: Option<Scheme>,
    pub curve: EccCurve,
    pub kdf: Option<Scheme>,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

impl EccPublic {
    /// The SEC1 uncompressed point `04 || x || y`, coordinates left-padded to the curve size.
    pub fn uncompressed_point(&self) -> Result<Vec<u8>, KeyError> {
        let size = self.curve.coordinate_len().ok_or(KeyError::UnsupportedCurve(self.curve))?;
        let mut point = Vec::with_capacity(1 + 2 * size);
        point.push(0x04);
        for (coordinate, value) in [("x", &self.x), ("y", &self.y)] {
            let value = strip_leading_zeros_to(value, size).ok_or(KeyError::CoordinateTooLong {
                coordinate,
                len: value.len(),
                size,
                curve: self.curve,
            })?;
            point.resize(point.len() + size - value.len(), 0);
            point.extend_from_slice(value);
        }
        Ok(point)
    }
}

/// `value` without leading zeros beyond `size` bytes, or `None` if it does not fit.
pub(crate) fn strip_leading_zeros_to(value: &[u8], size: usize) -> Option<&[u8]> {
    let mut v = value;
    while v.len() > size {
        match v.split_first() {
            Some((0, rest)) => v = rest,
            _ => return None,
        }
    }
    Some(v)
}

/// The type-specific part of a public area: the parameters and unique value of an RSA or ECC
/// key, as the TPM describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmKey {
    Rsa(RsaPublic),
    Ecc(EccPublic),
}

impl TpmKey {
    pub fn type_name(&self) -> &'static str {
        match self {
            TpmKey::Rsa(_) => "RSA",
            TpmKey::Ecc(_) => "ECC",
        }
    }

    pub fn scheme(&self) -> Option<Scheme> {
        match self {
            TpmKey::Rsa(k) => k.scheme,
            TpmKey::Ecc(k) => k.scheme,
        }
    }
}

/// A parsed `TPMT_PUBLIC` of an RSA or ECC key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    pub name_alg: HashAlg,
    pub attributes: ObjectAttributes,
    pub auth_policy: Vec<u8>,
    pub key: TpmKey,
}

const TPMT_PUBLIC: &str = "TPMT_PUBLIC";
const TPM2B_PUBLIC: &str = "TPM2B_PUBLIC";

impl Public {
    /// Parses a `TPMT_PUBLIC` that fills `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Public, Error> {
        let mut r = Reader::new(bytes, TPMT_PUBLIC);
        let public = Public::read(&mut r)?;
        r.finish()?;
        Ok(public)
    }

    /// Parses a `TPM2B_PUBLIC` (u16 size, then the `TPMT_PUBLIC`) that fills `bytes` exactly.
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<Public, Error> {
        let mut r = Reader::new(bytes, TPM2B_PUBLIC);
        let offset = r.offset();
        let size = usize::from(r.u16("size")?);
        if size == 0 {
            return Err(r.invalid("size", offset, 0, "a non-empty public area"));
        }
        let mut inner = r.sub(size, "publicArea")?;
        inner.set_structure(TPMT_PUBLIC);
        let public = Public::read(&mut inner)?;
        inner.finish()?;
        r.finish()?;
        Ok(public)
    }

    fn read(r: &mut Reader<'_>) -> Result<Public, Error> {
        let offset = r.offset();
        let object_type = r.u16("type")?;
        if object_type != alg_id::RSA && object_type != alg_id::ECC {
            return Err(r.invalid(
                "type",
                offset,
                object_type.into(),
                "TPM_ALG_RSA or TPM_ALG_ECC",
            ));
        }
        let offset = r.offset();
        let name_alg_id = r.u16("nameAlg")?;
        let name_alg = HashAlg::from_tpm_alg_id(name_alg_id).ok_or_else(|| {
            r.invalid("nameAlg", offset, name_alg_id.into(), "SHA-1, SHA-256, SHA-384 or SHA-512")
        })?;
        let attributes = ObjectAttributes(r.u32("objectAttributes")?);
        let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
        let key = if object_type == alg_id::RSA {
            let symmetric = read_symmetric(r)?;
            let scheme = read_scheme(r, "parameters.scheme")?;
            let key_bits = r.u16("parameters.keyBits")?;
            let raw_exponent = r.u32("parameters.exponent")?;
            let modulus = r.tpm2b("unique.rsa", MAX_RSA_BYTES)?.to_vec();
            TpmKey::Rsa(RsaPublic { symmetric, scheme, key_bits, raw_exponent, modulus })
        } else {
            let symmetric = read_symmetric(r)?;
            let scheme = read_scheme(r, "parameters.scheme")?;
            let curve = EccCurve(r.u16("parameters.curveID")?);
            let kdf = read_scheme(r, "parameters.kdf")?;
            let x = r.tpm2b("unique.ecc.x", MAX_ECC_BYTES)?.to_vec();
            let y = r.tpm2b("unique.ecc.y", MAX_ECC_BYTES)?.to_vec();
            TpmKey::Ecc(EccPublic { symmetric, scheme, curve, kdf, x, y })
        };
        Ok(Public { name_alg, attributes, auth_policy, key })
    }

    /// Marshals the `TPMT_PUBLIC`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match &self.key {
            TpmKey::Rsa(_) => w.u16(alg_id::RSA),
            TpmKey::Ecc(_) => w.u16(alg_id::ECC),
        }
        w.u16(self.name_alg.tpm_alg_id());
        w.u32(self.attributes.0);
        w.tpm2b(&self.auth_policy);
        match &self.key {
            TpmKey::Rsa(k) => {
                write_symmetric(&mut w, k.symmetric);
                write_scheme(&mut w, k.scheme);
                w.u16(k.key_bits);
                w.u32(k.raw_exponent);
                w.tpm2b(&k.modulus);
            }
            TpmKey::Ecc(k) => {
                write_symmetric(&mut w, k.symmetric);
                write_scheme(&mut w, k.scheme);
                w.u16(k.curve.0);
                write_scheme(&mut w, k.kdf);
                w.tpm2b(&k.x);
                w.tpm2b(&k.y);
            }
        }
        w.buf
    }

    /// Marshals the `TPM2B_PUBLIC`.
    pub fn to_tpm2b_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.tpm2b(&self.to_bytes());
        w.buf
    }

    /// The object's Name: `nameAlg` (2 bytes, big-endian) followed by `H_nameAlg(TPMT_PUBLIC)`.
    pub fn name(&self) -> Vec<u8> {
        let digest = self.name_alg.digest(&self.to_bytes());
        let mut name = Vec::with_capacity(2 + digest.as_bytes().len());
        name.extend_from_slice(&self.name_alg.tpm_alg_id().to_be_bytes());
        name.extend_from_slice(digest.as_bytes());
        name
    }

    /// Checks the attributes of an attestation key: restricted, sign, fixedTPM, fixedParent
    /// and sensitiveDataOrigin set, decrypt clear.
    pub fn check_ak_attributes(&self) -> Result<(), KeyError> {
        let attributes = self.attributes.0;
        let missing: Vec<&str> = AK_REQUIRED_ATTRIBUTES
            .iter()
            .filter(|(bit, _)| attributes & bit == 0)
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(KeyError::MissingAttributes { attributes, missing: missing.join(", ") });
        }
        if attributes & ObjectAttributes::DECRYPT != 0 {
            return Err(KeyError::Decrypt { attributes });
        }
        Ok(())
    }

    /// The DER `SubjectPublicKeyInfo` of the key, as found in a certificate for it.
    pub fn spki_der(&self) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            TpmKey::Rsa(k) => Ok(key::rsa_spki(k.modulus_magnitude()?, &k.exponent_bytes())),
            TpmKey::Ecc(k) => {
                let oid = k.curve.oid().ok_or(KeyError::UnsupportedCurve(k.curve))?;
                Ok(key::ec_spki(oid, &k.uncompressed_point()?))
            }
        }
    }
}

fn read_symmetric(r: &mut Reader<'_>) -> Result<SymmetricDef, Error> {
    let offset = r.offset();
    let algorithm = r.u16("parameters.symmetric.algorithm")?;
    match algorithm {
        alg_id::NULL => Ok(SymmetricDef::Null),
        alg_id::AES | alg_id::SM4 | alg_id::CAMELLIA => Ok(SymmetricDef::Cipher {
            algorithm,
            key_bits: r.u16("parameters.symmetric.keyBits")?,
            mode: r.u16("parameters.symmetric.mode")?,
        }),
        other => Err(r.invalid(
            "parameters.symmetric.algorithm",
            offset,
            other.into(),
            "TPM_ALG_NULL, AES, SM4 or CAMELLIA",
        )),
    }
}

fn write_symmetric(w: &mut Writer, sym: SymmetricDef) {
    match sym {
        SymmetricDef::Null => w.u16(alg_id::NULL),
        SymmetricDef::Cipher { algorithm, key_bits, mode } => {
            w.u16(algorithm);
            w.u16(key_bits);
            w.u16(mode);
        }
    }
}

fn read_scheme(r: &mut Reader<'_>, field: &'static str) -> Result<Option<Scheme>, Error> {
    let offset = r.offset();
    let scheme = r.u16(field)?;
    match scheme {
        alg_id::NULL => Ok(None),
        alg_id::RSAES => Ok(Some(Scheme { scheme, hash_alg: alg_id::NULL, count: 0 })),
        alg_id::ECDAA => {
            let hash_alg = r.u16(field)?;
            let count = r.u16(field)?;
            Ok(Some(Scheme { scheme, hash_alg, count }))
        }
        alg_id::RSASSA
        | alg_id::RSAPSS
        | alg_id::OAEP
        | alg_id::ECDSA
        | alg_id::ECDH
        | alg_id::SM2
        | alg_id::ECSCHNORR
        | alg_id::ECMQV
        | alg_id::KDF1_SP800_56A
        | alg_id::KDF2
        | alg_id::KDF1_SP800_108 => Ok(Some(Scheme { scheme, hash_alg: r.u16(field)?, count: 0 })),
        other => Err(r.invalid(field, offset, other.into(), "a known scheme or TPM_ALG_NULL")),
    }
}

fn write_scheme(w: &mut Writer, scheme: Option<Scheme>) {
    let Some(s) = scheme else {
        w.u16(alg_id::NULL);
        return;
    };
    w.u16(s.scheme);
    match s.scheme {
        alg_id::RSAES => {}
        alg_id::ECDAA => {
            w.u16(s.hash_alg);
            w.u16(s.count);
        }
        _ => w.u16(s.hash_alg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecc_ak() -> Public {
        Public {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(0x0005_0072),
            auth_policy: vec![],
            key: TpmKey::Ecc(EccPublic {
                symmetric: SymmetricDef::Null,
                scheme: Some(Scheme { scheme: alg_id::ECDSA, hash_alg: alg_id::SHA256, count: 0 }),
                curve: EccCurve::NIST_P256,
                kdf: None,
                x: vec![1; 32],
                y: vec![2; 31],
            }),
        }
    }

    #[test]
    fn ecc_round_trip_and_padding() {
        let ak = ecc_ak();
        let bytes = ak.to_tpm2b_bytes();
        let parsed = Public::parse_tpm2b(&bytes).expect("parses");
        assert_eq!(parsed, ak);
        let TpmKey::Ecc(k) = &parsed.key else { panic!("ecc") };
        let point = k.uncompressed_point().expect("P-256");
        assert_eq!(point.len(), 65);
        assert_eq!(point[33], 0, "short y is left-padded");
        assert!(parsed.check_ak_attributes().is_ok());
    }

    #[test]
    fn ak_attribute_errors_name_the_attribute() {
        let mut ak = ecc_ak();
        ak.attributes = ObjectAttributes(0x0005_0072 & !ObjectAttributes::RESTRICTED);
        let err = ak.check_ak_attributes().expect_err("must fail");
        assert!(err.to_string().contains("restricted not set"), "{err}");
        ak.attributes = ObjectAttributes(0x0004_0062);
        let err = ak.check_ak_attributes().expect_err("must fail").to_string();
        assert!(err.contains("fixedParent, restricted not set"), "{err}");
        ak.attributes = ObjectAttributes(0x0007_0072);
        let err = ak.check_ak_attributes().expect_err("must fail");
        assert_eq!(err, KeyError::Decrypt { attributes: 0x0007_0072 });
    }

    #[test]
    fn unknown_type_is_rejected_with_offset() {
        let mut bytes = ecc_ak().to_bytes();
        bytes[0..2].copy_from_slice(&alg_id::KEYEDHASH.to_be_bytes());
        let err = Public::parse(&bytes).expect_err("must fail");
        assert_eq!(err.offset(), 0);
        assert!(err.to_string().starts_with("TPMT_PUBLIC.type at byte 0"), "{err}");
    }

    #[test]
    fn tpm2b_size_mismatch_is_an_error() {
        let mut bytes = ecc_ak().to_tpm2b_bytes();
        bytes.push(0);
        let err = Public::parse_tpm2b(&bytes).expect_err("must fail");
        assert!(matches!(err, Error::Trailing { structure: "TPM2B_PUBLIC", .. }), "{err}");
        bytes[1] += 1;
        let err = Public::parse_tpm2b(&bytes).expect_err("must fail");
        assert!(matches!(err, Error::Trailing { structure: "TPMT_PUBLIC", .. }), "{err}");
    }

    #[test]
    fn coordinate_too_long_is_refused() {
        let mut ak = ecc_ak();
        if let TpmKey::Ecc(k) = &mut ak.key {
            k.x = vec![1; 33];
        }
        assert!(matches!(ak.spki_der(), Err(KeyError::CoordinateTooLong { coordinate: "x", .. })));
    }

    #[test]
    fn rsa_exponent_defaults_and_is_checked() {
        let mut k = RsaPublic {
            symmetric: SymmetricDef::Null,
            scheme: None,
            key_bits: 2048,
            raw_exponent: 0,
            modulus: [&[0u8, 0x80][..], &[1; 255]].concat(),
        };
        let c = k.ring_components().expect("default exponent");
        assert_eq!(c.e, vec![1, 0, 1]);
        assert_eq!(c.n.len(), 256, "leading zero dropped");
        assert_eq!(k.modulus_bits(), Ok(2048));
        k.raw_exponent = 3;
        assert_eq!(k.ring_components().expect("e = 3").e, vec![3]);
        k.raw_exponent = 4;
        assert_eq!(k.ring_components().map(drop), Err(KeyError::BadExponent(4)));
        k.modulus = vec![0; 4];
        k.raw_exponent = 0;
        assert_eq!(k.ring_components().map(drop), Err(KeyError::EmptyModulus));
    }
}
