//! Software TPM2_MakeCredential for RSA and ECC endorsement keys, and the registrar's check of
//! the activation proof.
//!
//! The registrar proves that an AK lives in the same TPM as an EK by encrypting a secret to the
//! EK, bound to the AK's name; only that TPM can run TPM2_ActivateCredential to recover it. This
//! module builds the two blobs the agent hands to ActivateCredential (TPM 2.0 Part 1, §24), using
//! the EK's name algorithm for every hash:
//!
//! - seed: RSA EKs encrypt a random seed with RSA-OAEP (label `IDENTITY\0`); ECC EKs derive it
//!   with an ephemeral ECDH and KDFe (SP 800-56A concatenation KDF);
//! - `symKey = KDFa(seed, "STORAGE", akName)`, `encIdentity = AES-CFB(symKey, IV = 0)(TPM2B credential)`;
//! - `hmacKey = KDFa(seed, "INTEGRITY")`, `outerHMAC = HMAC(hmacKey, encIdentity || akName)`.
//!
//! The randomness comes from the caller, so tests can be deterministic. Supported EKs: RSA
//! (2048 to 4096 bits), ECC P-256 and P-384, with name algorithm SHA-256, SHA-384 or SHA-512
//! and AES-128 or AES-256.

use aes::{Aes128, Aes256};
use cfb_mode::Encryptor;
use cfb_mode::cipher::KeyIvInit;
use p256::elliptic_curve::Generate;
use rand::CryptoRng;
use rsa::sha2::{Sha256, Sha384, Sha512};
use rsa::{BoxedUint, Oaep};

use crate::alg::HashAlg;
use crate::key::{Curve, PublicKey, SubjectPublicKey};

/// The OAEP label and KDFe use of TPM2_MakeCredential (the label includes the terminating NUL).
const IDENTITY_LABEL: &[u8] = b"IDENTITY\0";

/// Why a credential could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    #[error("EK public key: {0}")]
    EkKey(String),
    #[error(
        "EK name algorithm {0} is not supported for MakeCredential (expected sha256, sha384 or sha512)"
    )]
    NameAlg(HashAlg),
    #[error("AK name ({len} bytes, starting {prefix}): {reason}")]
    AkName { len: usize, prefix: String, reason: String },
    #[error(
        "credential is {len} bytes; it must be 1 to {max} bytes (the EK name algorithm's digest size)"
    )]
    CredentialSize { len: usize, max: usize },
    #[error("RSA-OAEP encryption of the seed failed: {0}")]
    Encryption(String),
}

/// The symmetric algorithm of the EK's template (AES-128 for the default RSA-2048 and P-256
/// templates, AES-256 for the high-range RSA-3072+ and P-384+ templates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkSymmetric {
    Aes128,
    Aes256,
}

impl EkSymmetric {
    fn key_bits(self) -> u32 {
        match self {
            EkSymmetric::Aes128 => 128,
            EkSymmetric::Aes256 => 256,
        }
    }
}

/// The public part of an EK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkPublicKey {
    /// Big-endian modulus and the public exponent.
    Rsa { modulus: Vec<u8>, exponent: u32 },
    /// Big-endian affine coordinates.
    Ecc { curve: Curve, x: Vec<u8>, y: Vec<u8> },
}

/// An EK as MakeCredential needs it: public key, name algorithm and symmetric algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkKey {
    pub public: EkPublicKey,
    pub name_alg: HashAlg,
    pub symmetric: EkSymmetric,
}

impl EkKey {
    /// An RSA EK from its TPMT_PUBLIC fields; an exponent of 0 means 65537, as in the TPM.
    pub fn rsa(modulus: &[u8], exponent: u32, name_alg: HashAlg, symmetric: EkSymmetric) -> EkKey {
        let exponent = if exponent == 0 { 65_537 } else { exponent };
        EkKey {
            public: EkPublicKey::Rsa { modulus: modulus.to_vec(), exponent },
            name_alg,
            symmetric,
        }
    }

    /// An ECC EK from its TPMS_ECC_POINT coordinates.
    pub fn ecc(
        curve: Curve,
        x: &[u8],
        y: &[u8],
        name_alg: HashAlg,
        symmetric: EkSymmetric,
    ) -> EkKey {
        EkKey {
            public: EkPublicKey::Ecc { curve, x: x.to_vec(), y: y.to_vec() },
            name_alg,
            symmetric,
        }
    }

    /// An EK from a SubjectPublicKeyInfo (e.g. the EK certificate's), assuming the TCG default
    /// template for its key type: SHA-256 and AES-128 for RSA-2048 and P-256, SHA-384 and
    /// AES-256 for P-384 and larger RSA keys (templates H-3, H-6 and H-7).
    pub fn from_spki_der(der: &[u8]) -> Result<EkKey, CredentialError> {
        let spki = SubjectPublicKey::from_spki_der(der)
            .map_err(|e| CredentialError::EkKey(format!("SubjectPublicKeyInfo {e}")))?;
        EkKey::from_subject_public_key(&spki)
    }

    /// The key in the form an EK certificate's key is compared with.
    pub fn public_key(&self) -> PublicKey {
        match &self.public {
            EkPublicKey::Rsa { modulus, exponent } => PublicKey::rsa(modulus, *exponent),
            EkPublicKey::Ecc { curve, x, y } => PublicKey::ecc(*curve, x, y),
        }
    }

    /// Like [`EkKey::from_spki_der`], from an already parsed key.
    pub fn from_subject_public_key(spki: &SubjectPublicKey) -> Result<EkKey, CredentialError> {
        match &spki.key {
            PublicKey::Rsa { modulus, exponent } => {
                if exponent.len() > 4 || exponent.is_empty() {
                    return Err(CredentialError::EkKey(format!(
                        "RSA exponent of {} bytes",
                        exponent.len()
                    )));
                }
                let e = exponent.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
                let (name_alg, symmetric) = if modulus.len() <= 256 {
                    (HashAlg::Sha256, EkSymmetric::Aes128)
                } else {
                    (HashAlg::Sha384, EkSymmetric::Aes256)
                };
                Ok(EkKey::rsa(modulus, e, name_alg, symmetric))
            }
            PublicKey::Ec { curve: Curve::P256, point } => Ok(EkKey::ecc(
                Curve::P256,
                &point[1..33],
                &point[33..65],
                HashAlg::Sha256,
                EkSymmetric::Aes128,
            )),
            PublicKey::Ec { curve: Curve::P384, point } => Ok(EkKey::ecc(
                Curve::P384,
                &point[1..49],
                &point[49..97],
                HashAlg::Sha384,
                EkSymmetric::Aes256,
            )),
            PublicKey::Ec { curve: Curve::Secp256k1, .. } => {
                Err(CredentialError::EkKey("ECC secp256k1 is not a TPM EK curve".to_owned()))
            }
        }
    }
}

/// The two TPM2B contents (without their size prefix) that go to TPM2_ActivateCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT contents: `u16 digest size || outerHMAC || encIdentity`.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the OAEP ciphertext, or the ephemeral TPMS_ECC_POINT.
    pub encrypted_secret: Vec<u8>,
}

/// Software TPM2_MakeCredential: encrypts `credential` to `ek`, bound to the AK name `ak_name`
/// (`u16 nameAlg || digest`, as the TPM returns it).
pub fn make_credential<R: CryptoRng + ?Sized>(
    ek: &EkKey,
    ak_name: &[u8],
    credential: &[u8],
    rng: &mut R,
) -> Result<MadeCredential, CredentialError> {
    let name_alg = ek.name_alg;
    if name_alg == HashAlg::Sha1 {
        return Err(CredentialError::NameAlg(name_alg));
    }
    check_ak_name(ak_name)?;
    if credential.is_empty() || credential.len() > name_alg.len() {
        return Err(CredentialError::CredentialSize { len: credential.len(), max: name_alg.len() });
    }
    let (seed, encrypted_secret) = match &ek.public {
        EkPublicKey::Rsa { modulus, exponent } => rsa_seed(name_alg, modulus, *exponent, rng)?,
        EkPublicKey::Ecc { curve: Curve::P256, x, y } => p256_seed(name_alg, x, y, rng)?,
        EkPublicKey::Ecc { curve: Curve::P384, x, y } => p384_seed(name_alg, x, y, rng)?,
        EkPublicKey::Ecc { curve: Curve::Secp256k1, .. } => {
            return Err(CredentialError::EkKey("ECC secp256k1 is not a TPM EK curve".to_owned()));
        }
    };
    let id_object = seal(name_alg, ek.symmetric, &seed, ak_name, credential)?;
    Ok(MadeCredential { id_object, encrypted_secret })
}

fn check_ak_name(name: &[u8]) -> Result<(), CredentialError> {
    let err = |reason: String| CredentialError::AkName {
        len: name.len(),
        prefix: hex::encode(&name[..name.len().min(4)]),
        reason,
    };
    let Some((alg, digest)) = name.split_first_chunk::<2>() else {
        return Err(err("shorter than a name algorithm id".to_owned()));
    };
    let id = u16::from_be_bytes(*alg);
    let alg = HashAlg::from_tpm_alg_id(id)
        .ok_or_else(|| err(format!("unknown name algorithm 0x{id:04x}")))?;
    if digest.len() != alg.len() {
        return Err(err(format!("{alg} name with a {}-byte digest", digest.len())));
    }
    Ok(())
}

/// Builds the ID object from the seed: encIdentity under symKey, then the outer HMAC.
fn seal(
    name_alg: HashAlg,
    symmetric: EkSymmetric,
    seed: &[u8],
    ak_name: &[u8],
    credential: &[u8],
) -> Result<Vec<u8>, CredentialError> {
    let sym_key = kdfa(name_alg, seed, b"STORAGE", ak_name, &[], symmetric.key_bits());
    let mut enc_identity = Vec::with_capacity(2 + credential.len());
    enc_identity.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    aes_cfb_encrypt(&sym_key, &mut enc_identity)?;
    let hmac_key = kdfa(name_alg, seed, b"INTEGRITY", &[], &[], name_alg.len() as u32 * 8);
    let outer_hmac = hmac(name_alg, &hmac_key, &[&enc_identity, ak_name]);
    let mut id_object = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    id_object.extend_from_slice(&(outer_hmac.len() as u16).to_be_bytes());
    id_object.extend_from_slice(&outer_hmac);
    id_object.extend_from_slice(&enc_identity);
    Ok(id_object)
}

fn rsa_seed<R: CryptoRng + ?Sized>(
    name_alg: HashAlg,
    modulus: &[u8],
    exponent: u32,
    rng: &mut R,
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    let bits = modulus.len() as u32 * 8;
    let n = BoxedUint::from_be_slice(modulus, bits).map_err(|e| {
        CredentialError::EkKey(format!("RSA modulus of {} bytes: {e:?}", modulus.len()))
    })?;
    let key = rsa::PublicKey::new(n, BoxedUint::from(u64::from(exponent))).map_err(|e| {
        CredentialError::EkKey(format!("RSA key ({bits}-bit modulus, exponent {exponent}): {e}"))
    })?;
    let mut seed = vec![0u8; name_alg.len()];
    rng.fill_bytes(&mut seed);
    let label = IDENTITY_LABEL.to_vec();
    let encrypted = match name_alg {
        HashAlg::Sha256 => key.encrypt(rng, Oaep::<Sha256>::new_with_label(label), &seed),
        HashAlg::Sha384 => key.encrypt(rng, Oaep::<Sha384>::new_with_label(label), &seed),
        HashAlg::Sha512 => key.encrypt(rng, Oaep::<Sha512>::new_with_label(label), &seed),
        HashAlg::Sha1 => return Err(CredentialError::NameAlg(name_alg)),
    }
    .map_err(|e| CredentialError::Encryption(e.to_string()))?;
    Ok((seed, encrypted))
}

/// The ECC seed: ephemeral ECDH with the EK, then KDFe over the shared x coordinate. A macro
/// because p256 and p384 share an API but not a convenient set of trait bounds.
macro_rules! ecc_seed {
    ($name:ident, $curve:ident, $size:expr) => {
        fn $name<R: CryptoRng + ?Sized>(
            name_alg: HashAlg,
            x: &[u8],
            y: &[u8],
            rng: &mut R,
        ) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
            const SIZE: usize = $size;
            let curve = stringify!($curve);
            if x.len() > SIZE || y.len() > SIZE {
                return Err(CredentialError::EkKey(format!(
                    "{curve} coordinates of {} and {} bytes",
                    x.len(),
                    y.len()
                )));
            }
            let mut sec1 = [0u8; 1 + 2 * SIZE];
            sec1[0] = 0x04;
            sec1[1 + SIZE - x.len()..1 + SIZE].copy_from_slice(x);
            sec1[1 + 2 * SIZE - y.len()..].copy_from_slice(y);
            let ek = $curve::PublicKey::from_sec1_bytes(&sec1).map_err(|_| {
                CredentialError::EkKey(format!("the {curve} point is not on the curve"))
            })?;
            let ephemeral = $curve::ecdh::EphemeralSecret::generate_from_rng(rng);
            let shared = ephemeral.diffie_hellman(&ek);
            let ephemeral_point = ephemeral.public_key().to_sec1_bytes();
            let (ex, ey) = (&ephemeral_point[1..1 + SIZE], &ephemeral_point[1 + SIZE..]);
            let bits = name_alg.len() as u32 * 8;
            let seed = kdfe(
                name_alg,
                shared.raw_secret_bytes(),
                b"IDENTITY",
                ex,
                &sec1[1..1 + SIZE],
                bits,
            );
            // The TPMS_ECC_POINT of the ephemeral key.
            let mut point = Vec::with_capacity(4 + 2 * SIZE);
            for coordinate in [ex, ey] {
                point.extend_from_slice(&(SIZE as u16).to_be_bytes());
                point.extend_from_slice(coordinate);
            }
            Ok((seed, point))
        }
    };
}

ecc_seed!(p256_seed, p256, 32);
ecc_seed!(p384_seed, p384, 48);

fn hmac_algorithm(alg: HashAlg) -> ring::hmac::Algorithm {
    match alg {
        HashAlg::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        HashAlg::Sha256 => ring::hmac::HMAC_SHA256,
        HashAlg::Sha384 => ring::hmac::HMAC_SHA384,
        HashAlg::Sha512 => ring::hmac::HMAC_SHA512,
    }
}

fn hmac(alg: HashAlg, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = ring::hmac::Context::with_key(&ring::hmac::Key::new(hmac_algorithm(alg), key));
    for part in parts {
        ctx.update(part);
    }
    ctx.sign().as_ref().to_vec()
}

/// KDFa (TPM 2.0 Part 1 §11.4.10.2; SP 800-108 counter mode with HMAC):
/// `HMAC(key, u32 i || label || 00 || context_u || context_v || u32 bits)` for i = 1, 2, ...
pub(crate) fn kdfa(
    alg: HashAlg,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(want + alg.len());
    let mut counter: u32 = 1;
    while out.len() < want {
        let block = hmac(
            alg,
            key,
            &[&counter.to_be_bytes(), label, &[0], context_u, context_v, &bits.to_be_bytes()],
        );
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(want);
    out
}

/// KDFe (TPM 2.0 Part 1 §11.4.10.3; SP 800-56A concatenation KDF):
/// `H(u32 i || Z || label || 00 || party_u || party_v)` for i = 1, 2, ...
pub(crate) fn kdfe(
    alg: HashAlg,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(want + alg.len());
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut h = alg.hasher();
        for part in [&counter.to_be_bytes()[..], z, label, &[0], party_u, party_v] {
            h.update(part);
        }
        out.extend_from_slice(h.finish().as_bytes());
        counter += 1;
    }
    out.truncate(want);
    out
}

fn aes_cfb_encrypt(key: &[u8], buf: &mut [u8]) -> Result<(), CredentialError> {
    let iv = [0u8; 16];
    let bad_key = |_| CredentialError::Encryption(format!("AES key of {} bytes", key.len()));
    match key.len() {
        16 => Encryptor::<Aes128>::new_from_slices(key, &iv).map_err(bad_key)?.encrypt(buf),
        _ => Encryptor::<Aes256>::new_from_slices(key, &iv).map_err(bad_key)?.encrypt(buf),
    }
    Ok(())
}

/// The agent's proof of activation: `HMAC-SHA256(key = secret, agent_id)`.
pub fn activation_proof(secret: &[u8], agent_id: &str) -> [u8; 32] {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        agent_id.as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The registrar's check of an activation proof, in constant time.
pub fn verify_activation(secret: &[u8], agent_id: &str, proof: &[u8]) -> bool {
    ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        agent_id.as_bytes(),
        proof,
    )
    .is_ok()
}

#[cfg(test)]
mod tests;
