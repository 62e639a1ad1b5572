//! Hash algorithms as the TPM, IMA and Keylime name them, and PCR extension.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hash algorithm usable for a PCR bank, an IMA digest or a policy digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// The largest digest any supported algorithm produces.
pub(crate) const MAX_DIGEST_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown or unsupported hash algorithm {0:?} (expected sha1, sha256, sha384 or sha512)")]
pub struct UnknownHashAlg(pub String);

impl HashAlg {
    pub const ALL: [HashAlg; 4] =
        [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];

    /// The lowercase name used in IMA logs, Keylime policies and this project's JSON.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// The digest length in bytes.
    #[allow(clippy::len_without_is_empty)] // an algorithm, not a container
    pub const fn len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The TPM_ALG_ID of the algorithm.
    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000b,
            HashAlg::Sha384 => 0x000c,
            HashAlg::Sha512 => 0x000d,
        }
    }

    pub const fn from_tpm_alg_id(id: u16) -> Option<HashAlg> {
        match id {
            0x0004 => Some(HashAlg::Sha1),
            0x000b => Some(HashAlg::Sha256),
            0x000c => Some(HashAlg::Sha384),
            0x000d => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// The algorithm whose digests have this length, if exactly one has.
    pub const fn from_len(len: usize) -> Option<HashAlg> {
        match len {
            20 => Some(HashAlg::Sha1),
            32 => Some(HashAlg::Sha256),
            48 => Some(HashAlg::Sha384),
            64 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            HashAlg::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &ring::digest::SHA256,
            HashAlg::Sha384 => &ring::digest::SHA384,
            HashAlg::Sha512 => &ring::digest::SHA512,
        }
    }

    /// Hashes `data` in one call.
    ///
    /// SHA-1 and SHA-256 go through the RustCrypto `sha1`/`sha2` crates, which use the CPU's
    /// SHA extensions when present (detected at run time): on the short messages of the hot
    /// paths (IMA template data, PCR extends, event digests) they cost about half of ring's
    /// call, whose SHA-1 has no hardware path. Signatures stay with ring.
    pub fn digest(self, data: &[u8]) -> Digest {
        use sha2::Digest as _;
        match self {
            HashAlg::Sha1 => Digest::from_raw(self, sha1::Sha1::digest(data).as_slice()),
            HashAlg::Sha256 => Digest::from_raw(self, sha2::Sha256::digest(data).as_slice()),
            _ => Digest::from_ring(ring::digest::digest(self.ring(), data)),
        }
    }

    /// Starts an incremental hash.
    pub fn hasher(self) -> Hasher {
        Hasher(ring::digest::Context::new(self.ring()))
    }

    /// The all-zero value a PCR of this bank holds after reset.
    pub fn zero(self) -> Digest {
        Digest::zero(self)
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlg {
    type Err = UnknownHashAlg;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(HashAlg::Sha1),
            "sha256" => Ok(HashAlg::Sha256),
            "sha384" => Ok(HashAlg::Sha384),
            "sha512" => Ok(HashAlg::Sha512),
            _ => Err(UnknownHashAlg(s.to_owned())),
        }
    }
}

/// An incremental hash computation.
pub struct Hasher(ring::digest::Context);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Hasher").field(&self.0.algorithm()).finish()
    }
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest::from_ring(self.0.finish())
    }
}

/// A digest of any supported algorithm, stored inline (no heap allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    alg: HashAlg,
    bytes: [u8; MAX_DIGEST_LEN],
}

impl Digest {
    pub fn zero(alg: HashAlg) -> Digest {
        Digest { alg, bytes: [0; MAX_DIGEST_LEN] }
    }

    /// A digest of `alg` with every byte set to `byte` (IMA writes 0xff.. for violations).
    pub fn filled(alg: HashAlg, byte: u8) -> Digest {
        let mut bytes = [0; MAX_DIGEST_LEN];
        bytes[..alg.len()].fill(byte);
        Digest { alg, bytes }
    }

    /// Wraps raw bytes; `None` when the length is not that of `alg`.
    pub fn from_bytes(alg: HashAlg, raw: &[u8]) -> Option<Digest> {
        if raw.len() != alg.len() {
            return None;
        }
        let mut bytes = [0; MAX_DIGEST_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(Digest { alg, bytes })
    }

    /// Parses lowercase or uppercase hex of the right length for `alg`.
    pub fn from_hex(alg: HashAlg, text: &str) -> Option<Digest> {
        let mut bytes = [0; MAX_DIGEST_LEN];
        let len = alg.len();
        if text.len() != 2 * len {
            return None;
        }
        hex::decode_to_slice(text, &mut bytes[..len]).ok()?;
        Some(Digest { alg, bytes })
    }

    fn from_raw(alg: HashAlg, raw: &[u8]) -> Digest {
        let mut bytes = [0; MAX_DIGEST_LEN];
        bytes[..alg.len()].copy_from_slice(&raw[..alg.len()]);
        Digest { alg, bytes }
    }

    fn from_ring(d: ring::digest::Digest) -> Digest {
        let raw = d.as_ref();
        let alg = HashAlg::from_len(raw.len()).expect("ring digest of a supported algorithm");
        let mut bytes = [0; MAX_DIGEST_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Digest { alg, bytes }
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.alg.len()]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// PCR extension: `self = H(self || measurement)`.
    pub fn extend(&mut self, measurement: &[u8]) {
        let mut h = self.alg.hasher();
        h.update(self.as_bytes());
        h.update(measurement);
        *self = h.finish();
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_round_trip() {
        for alg in HashAlg::ALL {
            assert_eq!(alg.name().parse::<HashAlg>(), Ok(alg));
            assert_eq!(HashAlg::from_tpm_alg_id(alg.tpm_alg_id()), Some(alg));
            assert_eq!(HashAlg::from_len(alg.len()), Some(alg));
            assert_eq!(alg.digest(b"").as_bytes().len(), alg.len());
        }
        assert!("md5".parse::<HashAlg>().is_err());
    }

    #[test]
    fn one_shot_digests_agree_with_incremental_ones() {
        for alg in HashAlg::ALL {
            for len in [0usize, 1, 55, 56, 64, 100, 1000] {
                let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut h = alg.hasher();
                h.update(&data);
                assert_eq!(alg.digest(&data), h.finish(), "{alg} {len}");
            }
        }
    }

    #[test]
    fn extend_matches_definition() {
        let mut pcr = HashAlg::Sha256.zero();
        let m = HashAlg::Sha256.digest(b"measurement");
        pcr.extend(m.as_bytes());
        let mut concat = vec![0u8; 32];
        concat.extend_from_slice(m.as_bytes());
        assert_eq!(pcr, HashAlg::Sha256.digest(&concat));
        assert_eq!(
            HashAlg::Sha256.digest(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_parsing_checks_length() {
        assert!(Digest::from_hex(HashAlg::Sha1, "00").is_none());
        assert!(Digest::from_hex(HashAlg::Sha1, &"zz".repeat(20)).is_none());
        let d = Digest::from_hex(HashAlg::Sha1, &"ab".repeat(20)).expect("valid");
        assert_eq!(d.to_hex(), "ab".repeat(20));
    }
}
