//! IMA file signatures (`ima-sig` entries) and the keys that verify them.
//!
//! A signature field is a `signature_v2_hdr`: `u8 type (3 EVM_IMA_XATTR_DIGSIG, 5
//! EVM_XATTR_PORTABLE_DIGSIG) | u8 version (2) | u8 hash_algo (Linux HASH_ALGO_*) | u32 keyid
//! (big-endian) | u16 sig_size (big-endian) | signature`. The signature is over the file digest
//! itself (prehashed): RSA PKCS#1 v1.5 with the DigestInfo of the hash algorithm, or DER ECDSA.
//!
//! A key id is the last four bytes of the SHA-1 of the PKCS#1 RSAPublicKey DER (RSA) or of the
//! uncompressed X9.62 point (EC), or of an X.509 certificate's SubjectKeyIdentifier when it has
//! one, as `evmctl` and the kernel compute them.
//!
//! ring verifies only messages it hashes itself, so the prehashed checks use the RustCrypto
//! `rsa`, `p256`, `p384` and `k256` crates. They run only for signed entries.

use std::collections::HashMap;
use std::fmt;

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::pkcs1::DecodeRsaPublicKey;

use super::entry::FileDigest;
use crate::der::{Reader, TAG_SEQUENCE};
use crate::key::{self, Curve, KeyError, PublicKey, SubjectPublicKey};
use crate::pem;

pub(crate) const EVM_IMA_XATTR_DIGSIG: u8 = 3;
pub(crate) const EVM_XATTR_PORTABLE_DIGSIG: u8 = 5;
const HEADER_LEN: usize = 9;

/// The kernel's `hash_algo_name[]`, indexed by `HASH_ALGO_*`.
const LINUX_HASH_ALGOS: [&str; 23] = [
    "md4",
    "md5",
    "sha1",
    "rmd160",
    "sha256",
    "sha384",
    "sha512",
    "sha224",
    "rmd128",
    "rmd256",
    "rmd320",
    "wp256",
    "wp384",
    "wp512",
    "tgr128",
    "tgr160",
    "tgr192",
    "sm3",
    "streebog256",
    "streebog512",
    "sha3-256",
    "sha3-384",
    "sha3-512",
];

/// The kernel's name of a `HASH_ALGO_*` id.
pub(crate) fn linux_hash_algo_name(id: u8) -> Option<&'static str> {
    LINUX_HASH_ALGOS.get(id as usize).copied()
}

/// A parsed `signature_v2_hdr` with the signature bytes it frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignatureHeader<'a> {
    pub sig_type: u8,
    pub hash_algo: u8,
    pub keyid: u32,
    pub signature: &'a [u8],
}

/// Why a signature field could not be checked or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("signature field is {0} bytes, shorter than the 9-byte signature_v2_hdr")]
    Short(usize),
    #[error("signature type {0} is not 3 (EVM_IMA_XATTR_DIGSIG) or 5 (EVM_XATTR_PORTABLE_DIGSIG)")]
    Type(u8),
    #[error("signature header version {0}, expected 2")]
    Version(u8),
    #[error("sig_size {declared} does not match the {actual} bytes after the header")]
    Size { declared: u16, actual: usize },
    #[error("unknown hash algorithm id {0} in signature header")]
    HashAlgo(u8),
    #[error("signature hash algorithm {sig} does not match the file digest algorithm {digest}")]
    AlgMismatch { sig: &'static str, digest: String },
    #[error("no verification key with key id {0:08x}")]
    UnknownKey(u32),
    #[error("signature does not verify with key id {0:08x}")]
    Invalid(u32),
}

impl<'a> SignatureHeader<'a> {
    pub fn parse(field: &'a [u8]) -> Result<SignatureHeader<'a>, SignatureError> {
        if field.len() < HEADER_LEN {
            return Err(SignatureError::Short(field.len()));
        }
        let sig_type = field[0];
        if sig_type != EVM_IMA_XATTR_DIGSIG && sig_type != EVM_XATTR_PORTABLE_DIGSIG {
            return Err(SignatureError::Type(sig_type));
        }
        if field[1] != 2 {
            return Err(SignatureError::Version(field[1]));
        }
        let keyid = u32::from_be_bytes([field[3], field[4], field[5], field[6]]);
        let declared = u16::from_be_bytes([field[7], field[8]]);
        let signature = &field[HEADER_LEN..];
        if usize::from(declared) != signature.len() {
            return Err(SignatureError::Size { declared, actual: signature.len() });
        }
        Ok(SignatureHeader { sig_type, hash_algo: field[2], keyid, signature })
    }

    /// The kernel's name of the hash algorithm, e.g. `sha256`.
    pub fn hash_algo_name(&self) -> Option<&'static str> {
        linux_hash_algo_name(self.hash_algo)
    }
}

/// A public key that can verify IMA signatures.
#[derive(Clone)]
pub enum SignatureKey {
    Rsa(Box<rsa::PublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Secp256k1(k256::ecdsa::VerifyingKey),
}

impl fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureKey::Rsa(_) => "SignatureKey::Rsa",
            SignatureKey::P256(_) => "SignatureKey::P256",
            SignatureKey::P384(_) => "SignatureKey::P384",
            SignatureKey::Secp256k1(_) => "SignatureKey::Secp256k1",
        })
    }
}

/// The PEM blocks that may hold an IMA key.
fn is_key_block(label: &str) -> bool {
    matches!(label, "CERTIFICATE" | "PUBLIC KEY" | "RSA PUBLIC KEY")
}

impl SignatureKey {
    /// Reads a key from an X.509 certificate, a SubjectPublicKeyInfo or a PKCS#1
    /// RSAPublicKey, DER or PEM (the first usable PEM block). Returns the key and its key id.
    pub fn parse(bytes: &[u8]) -> Result<(SignatureKey, u32), KeyError> {
        if bytes.first() == Some(&0x30) {
            return SignatureKey::parse_der(bytes);
        }
        let text = String::from_utf8_lossy(bytes);
        let mut last = KeyError::Unrecognised;
        for block in pem::blocks_lenient(&text) {
            let Ok(der) = block.decode() else { continue };
            if is_key_block(block.label) {
                match SignatureKey::parse_der(&der) {
                    Ok(k) => return Ok(k),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    fn parse_der(der: &[u8]) -> Result<(SignatureKey, u32), KeyError> {
        if let Ok((spki, ski)) = key::certificate_spki(der) {
            let (key, computed) = SignatureKey::from_spki(&SubjectPublicKey::from_tlv(&spki)?)?;
            let keyid = match ski {
                Some(id) if id.len() >= 4 => u32::from_be_bytes([
                    id[id.len() - 4],
                    id[id.len() - 3],
                    id[id.len() - 2],
                    id[id.len() - 1],
                ]),
                _ => computed,
            };
            return Ok((key, keyid));
        }
        match Reader::new(der).read(TAG_SEQUENCE, "SubjectPublicKeyInfo") {
            Ok(spki) => match SubjectPublicKey::from_tlv(&spki) {
                Ok(spki) => return SignatureKey::from_spki(&spki),
                Err(KeyError::Malformed(_)) => {}
                Err(e) => return Err(e),
            },
            Err(_) => return Err(KeyError::Unrecognised),
        }
        let key = rsa::PublicKey::from_pkcs1_der(der).map_err(|_| KeyError::Unrecognised)?;
        Ok((SignatureKey::Rsa(Box::new(key)), key::keyid_of(der)))
    }

    /// Reads a DER SubjectPublicKeyInfo; returns the key and its computed key id.
    pub fn from_spki_der(der: &[u8]) -> Result<(SignatureKey, u32), KeyError> {
        let spki = Reader::new(der)
            .read(TAG_SEQUENCE, "SubjectPublicKeyInfo")
            .map_err(|_| KeyError::Unrecognised)?;
        let spki = SubjectPublicKey::from_tlv(&spki).map_err(|e| match e {
            KeyError::Malformed(_) => KeyError::Unrecognised,
            other => other,
        })?;
        SignatureKey::from_spki(&spki)
    }

    fn from_spki(spki: &SubjectPublicKey) -> Result<(SignatureKey, u32), KeyError> {
        let point = match &spki.key {
            PublicKey::Rsa { .. } => {
                let key = rsa::PublicKey::from_pkcs1_der(&spki.key_bytes)
                    .map_err(|_| KeyError::Invalid("RSA"))?;
                return Ok((SignatureKey::Rsa(Box::new(key)), spki.ima_keyid()));
            }
            PublicKey::Ec { point, .. } => point.as_slice(),
        };
        // The key id hashes the uncompressed point, whatever form the key came in.
        match spki.key {
            PublicKey::Ec { curve: Curve::P256, .. } => {
                let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map_err(|_| KeyError::Invalid("P-256"))?;
                let id = key::keyid_of(k.to_sec1_point(false).as_bytes());
                Ok((SignatureKey::P256(k), id))
            }
            PublicKey::Ec { curve: Curve::P384, .. } => {
                let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map_err(|_| KeyError::Invalid("P-384"))?;
                let id = key::keyid_of(k.to_sec1_point(false).as_bytes());
                Ok((SignatureKey::P384(k), id))
            }
            _ => {
                let k = k256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map_err(|_| KeyError::Invalid("secp256k1"))?;
                let id = key::keyid_of(k.to_sec1_point(false).as_bytes());
                Ok((SignatureKey::Secp256k1(k), id))
            }
        }
    }

    /// Verifies `signature` over the prehashed `digest` of algorithm `hash` (kernel name).
    pub fn verify_digest(&self, hash: &str, digest: &[u8], signature: &[u8]) -> bool {
        // The digest must be as long as the algorithm it claims to be (checked for RSA by the
        // DigestInfo prefix lookup; ECDSA would accept any length).
        let expected = match hash {
            "sha1" => 20,
            "sha224" => 28,
            "sha256" => 32,
            "sha384" => 48,
            "sha512" => 64,
            _ => 0,
        };
        if expected != 0 && digest.len() != expected {
            return false;
        }
        match self {
            SignatureKey::Rsa(key) => {
                let Some(prefix) = digest_info_prefix(hash, digest.len()) else { return false };
                let mut info = [0u8; 19 + 64];
                let len = prefix.len() + digest.len();
                info[..prefix.len()].copy_from_slice(prefix);
                info[prefix.len()..len].copy_from_slice(digest);
                key.verify(rsa::Pkcs1v15Sign::new_unprefixed(), &info[..len], signature).is_ok()
            }
            SignatureKey::P256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify_prehash(digest, &s).is_ok()),
            SignatureKey::P384(key) => p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify_prehash(digest, &s).is_ok()),
            // k256 insists on low-S; the kernel and OpenSSL accept either.
            SignatureKey::Secp256k1(key) => k256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify_prehash(digest, &s.normalize_s()).is_ok()),
        }
    }
}

/// DER of the DigestInfo before the digest, for PKCS#1 v1.5 signatures.
fn digest_info_prefix(hash: &str, len: usize) -> Option<&'static [u8]> {
    const SHA1: &[u8] =
        &[0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14];
    const fn sha2(total: u8, id: u8, len: u8) -> [u8; 19] {
        [
            0x30, total, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            id, 0x05, 0x00, 0x04, len,
        ]
    }
    const SHA224: [u8; 19] = sha2(0x2d, 0x04, 28);
    const SHA256: [u8; 19] = sha2(0x31, 0x01, 32);
    const SHA384: [u8; 19] = sha2(0x41, 0x02, 48);
    const SHA512: [u8; 19] = sha2(0x51, 0x03, 64);
    let (prefix, want): (&'static [u8], usize) = match hash {
        "sha1" => (SHA1, 20),
        "sha224" => (&SHA224, 28),
        "sha256" => (&SHA256, 32),
        "sha384" => (&SHA384, 48),
        "sha512" => (&SHA512, 64),
        _ => return None,
    };
    (len == want).then_some(prefix)
}

/// Verification keys by key id.
#[derive(Debug, Clone, Default)]
pub struct VerificationKeys {
    by_id: HashMap<u32, Vec<SignatureKey>>,
}

impl VerificationKeys {
    pub fn new() -> VerificationKeys {
        VerificationKeys::default()
    }

    pub fn insert(&mut self, keyid: u32, key: SignatureKey) {
        self.by_id.entry(keyid).or_default().push(key);
    }

    /// Adds the key in `bytes` (see [`SignatureKey::parse`]) and returns its key id.
    pub fn add(&mut self, bytes: &[u8]) -> Result<u32, KeyError> {
        let (key, keyid) = SignatureKey::parse(bytes)?;
        self.insert(keyid, key);
        Ok(keyid)
    }

    /// Adds every certificate and public key of a PEM bundle; returns their key ids.
    pub fn add_pem_bundle(&mut self, pem: &[u8]) -> Result<Vec<u32>, KeyError> {
        let mut ids = Vec::new();
        let text = String::from_utf8_lossy(pem);
        for block in pem::blocks_lenient(&text) {
            if let (true, Ok(der)) = (is_key_block(block.label), block.decode()) {
                ids.push(self.add(&der)?);
            }
        }
        if ids.is_empty() {
            return Err(KeyError::Unrecognised);
        }
        Ok(ids)
    }

    pub fn get(&self, keyid: u32) -> &[SignatureKey] {
        self.by_id.get(&keyid).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_id.values().map(Vec::len).sum()
    }

    /// Checks a signature field against a file digest. Returns the key id that verified it.
    pub fn verify(&self, field: &[u8], digest: &FileDigest<'_>) -> Result<u32, SignatureError> {
        verify_with(&[self], field, digest)
    }
}

/// Checks a signature field against a file digest with keys from any of `sets`.
pub(crate) fn verify_with(
    sets: &[&VerificationKeys],
    field: &[u8],
    digest: &FileDigest<'_>,
) -> Result<u32, SignatureError> {
    let header = SignatureHeader::parse(field)?;
    let sig_alg = header.hash_algo_name().ok_or(SignatureError::HashAlgo(header.hash_algo))?;
    if sig_alg != digest.alg_name() {
        return Err(SignatureError::AlgMismatch {
            sig: sig_alg,
            digest: digest.alg_name().to_owned(),
        });
    }
    let mut any = false;
    for set in sets {
        for key in set.get(header.keyid) {
            any = true;
            if key.verify_digest(sig_alg, digest.as_bytes(), header.signature) {
                return Ok(header.keyid);
            }
        }
    }
    Err(if any {
        SignatureError::Invalid(header.keyid)
    } else {
        SignatureError::UnknownKey(header.keyid)
    })
}
