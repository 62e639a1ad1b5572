//! A key half sealed to the agent identity key: ephemeral-static ECDH on P-256, HKDF-SHA256,
//! AES-256-GCM.

use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::DecodePrivateKey;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};

use super::{KEY_LEN, PayloadError};
use crate::key::{Curve, PublicKey, SubjectPublicKey};

/// HKDF info string (DESIGN §4).
const INFO: &[u8] = b"keylime key half";
const POINT_LEN: usize = 65;

/// A sealed key half, as it travels in `DeliverKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedHalf {
    /// Uncompressed SEC1 point of the sender's ephemeral key.
    pub ephemeral_public_key: Vec<u8>,
    /// 12-byte AES-GCM nonce.
    pub nonce: Vec<u8>,
    /// The 32-byte half encrypted, followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

struct AesKeyLen;

impl KeyType for AesKeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn half_key(
    shared: &[u8],
    ephemeral: &[u8],
    recipient: &[u8],
) -> Result<LessSafeKey, PayloadError> {
    let mut salt = Vec::with_capacity(2 * POINT_LEN);
    salt.extend_from_slice(ephemeral);
    salt.extend_from_slice(recipient);
    let prk = Salt::new(HKDF_SHA256, &salt).extract(shared);
    let okm =
        prk.expand(&[INFO], AesKeyLen).map_err(|_| PayloadError::KeyHalf("HKDF failed".into()))?;
    let mut key = [0u8; 32];
    okm.fill(&mut key).map_err(|_| PayloadError::KeyHalf("HKDF failed".into()))?;
    let unbound =
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| PayloadError::KeyHalf("bad key".into()))?;
    Ok(LessSafeKey::new(unbound))
}

/// The recipient's uncompressed P-256 point, from its DER SubjectPublicKeyInfo.
fn recipient_point(spki_der: &[u8]) -> Result<Vec<u8>, PayloadError> {
    match SubjectPublicKey::from_spki_der(spki_der).map(|k| k.key) {
        Ok(PublicKey::Ec { curve: Curve::P256, point }) if point.len() == POINT_LEN => Ok(point),
        _ => Err(PayloadError::KeyHalf(
            "the recipient key is not an uncompressed P-256 public key".into(),
        )),
    }
}

/// Seals `half` to the P-256 key whose SubjectPublicKeyInfo is `recipient_spki_der`.
pub fn seal_half(
    half: &[u8; KEY_LEN],
    recipient_spki_der: &[u8],
) -> Result<SealedHalf, PayloadError> {
    let recipient = recipient_point(recipient_spki_der)?;
    let rng = SystemRandom::new();
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| PayloadError::Random)?;
    let ephemeral_public =
        ephemeral.compute_public_key().map_err(|_| PayloadError::Random)?.as_ref().to_vec();
    let key = agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&ECDH_P256, &recipient),
        |shared| half_key(shared, &ephemeral_public, &recipient),
    )
    .map_err(|_| PayloadError::KeyHalf("key agreement failed".into()))??;
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce).map_err(|_| PayloadError::Random)?;
    let mut ciphertext = half.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&recipient),
        &mut ciphertext,
    )
    .map_err(|_| PayloadError::KeyHalf("encryption failed".into()))?;
    Ok(SealedHalf { ephemeral_public_key: ephemeral_public, nonce: nonce.to_vec(), ciphertext })
}

/// Opens a sealed half with the recipient's private key (PKCS#8 DER, P-256).
pub fn open_half(
    sealed: &SealedHalf,
    recipient_pkcs8_der: &[u8],
) -> Result<[u8; KEY_LEN], PayloadError> {
    let secret = p256::SecretKey::from_pkcs8_der(recipient_pkcs8_der).map_err(|_| {
        PayloadError::KeyHalf("the identity key is not a P-256 PKCS#8 private key".into())
    })?;
    let recipient = secret.public_key().to_sec1_point(false).as_bytes().to_vec();
    let ephemeral = p256::PublicKey::from_sec1_bytes(&sealed.ephemeral_public_key)
        .map_err(|_| PayloadError::KeyHalf("ephemeral_public_key is not a P-256 point".into()))?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), ephemeral.as_affine());
    let key =
        half_key(shared.raw_secret_bytes().as_slice(), &sealed.ephemeral_public_key, &recipient)?;
    let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce)
        .map_err(|_| PayloadError::KeyHalf("nonce must be 12 bytes".into()))?;
    let mut body = sealed.ciphertext.clone();
    let plain = key.open_in_place(nonce, Aad::from(&recipient), &mut body).map_err(|_| {
        PayloadError::KeyHalf("does not decrypt with this agent's identity key".into())
    })?;
    <[u8; KEY_LEN]>::try_from(&*plain)
        .map_err(|_| PayloadError::KeyHalf("a key half is 32 bytes".into()))
}
