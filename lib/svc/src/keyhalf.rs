//! A payload key half (U or V) sealed to an agent's identity key: an ephemeral P-256 key
//! agrees a secret with the identity key (ECDH, the x coordinate), HKDF-SHA256 (no salt, info
//! `keylime key half`) turns it into an AES-256-GCM key, and AES-256-GCM (random 12-byte nonce,
//! no associated data) encrypts the half. kctl seals U, the verifier seals V, the agent opens
//! both with its identity key.

use p256::pkcs8::DecodePrivateKey;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The HKDF info string.
pub const INFO: &[u8] = b"keylime key half";

/// Why a half could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyHalfError {
    #[error("recipient key: {0}")]
    Recipient(String),
    #[error("identity private key: {0}")]
    PrivateKey(String),
    #[error("ephemeral_public_key: not a P-256 point")]
    EphemeralKey,
    #[error("nonce: expected 12 bytes, got {0}")]
    Nonce(usize),
    #[error("the sealed half does not decrypt with this identity key")]
    Decrypt,
    #[error("random number generator failed")]
    Random,
}

/// The three fields of the agent API's `SealedKeyHalf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedHalf {
    /// Uncompressed SEC1 point (65 bytes).
    pub ephemeral_public_key: Vec<u8>,
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn aead_key(shared_x: &[u8]) -> Result<LessSafeKey, KeyHalfError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(shared_x);
    let mut key = [0u8; 32];
    prk.expand(&[INFO], KeyLen)
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| KeyHalfError::Random)?;
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| KeyHalfError::Random)?;
    Ok(LessSafeKey::new(unbound))
}

/// Seals `half` to the P-256 key in `recipient_spki_der` (DER SubjectPublicKeyInfo).
pub fn seal(recipient_spki_der: &[u8], half: &[u8]) -> Result<SealedHalf, KeyHalfError> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(recipient_spki_der)
        .map_err(|e| KeyHalfError::Recipient(format!("not a SubjectPublicKeyInfo: {e}")))?;
    let point = spki.subject_public_key.data.to_vec();
    let rng = SystemRandom::new();
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| KeyHalfError::Random)?;
    let ephemeral_public =
        ephemeral.compute_public_key().map_err(|_| KeyHalfError::Random)?.as_ref().to_vec();
    let key = agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&ECDH_P256, &point),
        aead_key,
    )
    .map_err(|_| KeyHalfError::Recipient("not a P-256 public key".to_owned()))??;
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce).map_err(|_| KeyHalfError::Random)?;
    let mut ciphertext = half.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut ciphertext,
    )
    .map_err(|_| KeyHalfError::Random)?;
    Ok(SealedHalf { ephemeral_public_key: ephemeral_public, nonce: nonce.to_vec(), ciphertext })
}

/// Opens a sealed half with the identity key (`key_pem`, PKCS#8 PEM).
pub fn open(key_pem: &str, sealed: &SealedHalf) -> Result<Vec<u8>, KeyHalfError> {
    let secret = p256::SecretKey::from_pkcs8_pem(key_pem)
        .map_err(|e| KeyHalfError::PrivateKey(format!("not a PKCS#8 P-256 key: {e}")))?;
    let ephemeral = p256::PublicKey::from_sec1_bytes(&sealed.ephemeral_public_key)
        .map_err(|_| KeyHalfError::EphemeralKey)?;
    let shared = p256::elliptic_curve::ecdh::diffie_hellman(
        secret.to_nonzero_scalar(),
        ephemeral.as_affine(),
    );
    let key = aead_key(shared.raw_secret_bytes().as_ref())?;
    let nonce: [u8; 12] =
        sealed.nonce.as_slice().try_into().map_err(|_| KeyHalfError::Nonce(sealed.nonce.len()))?;
    let mut buffer = sealed.ciphertext.clone();
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buffer)
        .map_err(|_| KeyHalfError::Decrypt)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::AgentIdentity;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_sealed_half_opens_only_with_the_identity_key_and_unchanged() -> TestResult {
        let agent = AgentIdentity::generate("agent", &[])?;
        let half = [7u8; 32];
        let sealed = seal(&agent.spki_der, &half)?;
        assert_eq!(sealed.ephemeral_public_key.len(), 65);
        assert_eq!(open(&agent.key_pem, &sealed)?, half);

        let other = AgentIdentity::generate("other", &[])?;
        assert!(matches!(open(&other.key_pem, &sealed), Err(KeyHalfError::Decrypt)));
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(matches!(open(&agent.key_pem, &flipped), Err(KeyHalfError::Decrypt)));
        Ok(())
    }
}
