//! Secure payloads (DESIGN §4): the bootstrap key K split into halves U and V, the payload
//! encrypted under K, each half sealed to the agent's identity key, and the archive checks the
//! agent applies before anything is written to disk.
//!
//! - `K` is 32 random bytes, `V` 32 random bytes, `U = K xor V`. Neither half alone says
//!   anything about K. kctl sends U with `HMAC-SHA256(K, agent id)` (the auth tag) after a
//!   fresh identity quote; the verifier sends V after the first passing attestation; the agent
//!   combines them and accepts K only if the tag matches (constant-time).
//! - The payload is AES-256-GCM under K: 12-byte random nonce first, 16-byte tag last.
//! - A half travels sealed to the agent identity key (P-256): an ephemeral P-256 key agrees a
//!   secret with it (ECDH), HKDF-SHA256 (salt = ephemeral point || recipient point, info
//!   `keylime key half`) makes an AES-256-GCM key, which encrypts the half.
//! - [`unpack`] reads a zip archive in memory and refuses absolute paths, `..`, links, device
//!   files and anything over the size limits, before the caller writes a single byte.
//!
//! Pure: randomness comes from the caller's RNG argument where tests need it, from ring's
//! system RNG otherwise; nothing here touches the file system.

mod archive;
mod seal;

pub use archive::{Limits, PayloadFile, pack, unpack};
pub use seal::{SealedHalf, open_half, seal_half};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of K, U and V.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    #[error("encrypted payload: {0}")]
    Decrypt(&'static str),
    #[error("key half: {0}")]
    KeyHalf(String),
    #[error("the combined key does not match the auth tag (wrong or mismatched key halves)")]
    AuthTag,
    #[error("payload archive: {0}")]
    Archive(String),
    #[error("payload archive entry {name:?}: {problem}")]
    Entry { name: String, problem: String },
    #[error("system random number generator failed")]
    Random,
}

/// The bootstrap key and its two halves.
#[derive(Clone, PartialEq, Eq)]
pub struct SplitKey {
    pub k: [u8; KEY_LEN],
    pub u: [u8; KEY_LEN],
    pub v: [u8; KEY_LEN],
}

impl std::fmt::Debug for SplitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material is never printed.
        f.write_str("SplitKey { .. }")
    }
}

impl SplitKey {
    /// A fresh K and V from the system RNG, and U = K xor V.
    pub fn generate() -> Result<SplitKey, PayloadError> {
        let rng = SystemRandom::new();
        let mut k = [0u8; KEY_LEN];
        let mut v = [0u8; KEY_LEN];
        rng.fill(&mut k).map_err(|_| PayloadError::Random)?;
        rng.fill(&mut v).map_err(|_| PayloadError::Random)?;
        Ok(SplitKey { k, u: xor(&k, &v), v })
    }

    /// `HMAC-SHA256(K, agent id)`: lets the agent tell the right U/V pair.
    pub fn auth_tag(&self, agent_id: &str) -> [u8; 32] {
        auth_tag(&self.k, agent_id)
    }
}

/// `a xor b`.
pub(crate) fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

pub fn auth_tag(k: &[u8; KEY_LEN], agent_id: &str) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
    let tag = ring::hmac::sign(&key, agent_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Combines U and V and checks the result against the auth tag in constant time.
pub fn combine(
    u: &[u8; KEY_LEN],
    v: &[u8; KEY_LEN],
    agent_id: &str,
    tag: &[u8],
) -> Result<[u8; KEY_LEN], PayloadError> {
    let k = xor(u, v);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k);
    ring::hmac::verify(&key, agent_id.as_bytes(), tag).map_err(|_| PayloadError::AuthTag)?;
    Ok(k)
}

/// Encrypts a payload under K: nonce || ciphertext || tag.
pub fn encrypt(k: &[u8; KEY_LEN], plaintext: &[u8]) -> Result<Vec<u8>, PayloadError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| PayloadError::Random)?;
    let key = aead_key(k)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
        .map_err(|_| PayloadError::Decrypt("encryption failed"))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decrypts what [`encrypt`] produced; a wrong key or any changed byte is an error.
pub fn decrypt(k: &[u8; KEY_LEN], sealed: &[u8]) -> Result<Vec<u8>, PayloadError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(PayloadError::Decrypt("shorter than a nonce and a tag"));
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| PayloadError::Decrypt("bad nonce"))?;
    let mut body = body.to_vec();
    let plain = aead_key(k)?
        .open_in_place(nonce, Aad::empty(), &mut body)
        .map_err(|_| PayloadError::Decrypt("authentication failed: wrong key or modified data"))?;
    let len = plain.len();
    body.truncate(len);
    Ok(body)
}

fn aead_key(k: &[u8; KEY_LEN]) -> Result<LessSafeKey, PayloadError> {
    let unbound = UnboundKey::new(&AES_256_GCM, k).map_err(|_| PayloadError::Decrypt("bad key"))?;
    Ok(LessSafeKey::new(unbound))
}

#[cfg(test)]
mod tests;
