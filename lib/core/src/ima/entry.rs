//! The entry model shared by the ASCII and binary parsers, and the exact template data bytes
//! the kernel hashes for each entry.
//!
//! Entries borrow their path, name, signature and buffer from the log the caller handed in;
//! digests are stored inline, so parsing an entry allocates nothing.

use std::fmt;

use crate::alg::{Digest, HashAlg};

/// The longest file digest a template may carry (SHA-512, SHA3-512, Streebog-512).
pub(crate) const MAX_FILE_DIGEST_LEN: usize = 64;

/// The `ima` template hashes its name field as this many bytes, zero padded.
pub(crate) const IMA_NAME_FIELD_LEN: usize = 256;

/// The IMA templates this crate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemplateKind {
    /// `d|n`: SHA-1 (or MD5) file digest and a path of at most 255 bytes.
    Ima,
    /// `d-ng|n-ng`.
    ImaNg,
    /// `d-ng|n-ng|sig`.
    ImaSig,
    /// `d-ng|n-ng|buf`.
    ImaBuf,
}

impl TemplateKind {
    pub const fn name(self) -> &'static str {
        match self {
            TemplateKind::Ima => "ima",
            TemplateKind::ImaNg => "ima-ng",
            TemplateKind::ImaSig => "ima-sig",
            TemplateKind::ImaBuf => "ima-buf",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<TemplateKind> {
        match name {
            b"ima" => Some(TemplateKind::Ima),
            b"ima-ng" => Some(TemplateKind::ImaNg),
            b"ima-sig" => Some(TemplateKind::ImaSig),
            b"ima-buf" => Some(TemplateKind::ImaBuf),
            _ => None,
        }
    }
}

impl fmt::Display for TemplateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A file (or buffer) digest as a template records it: the kernel's algorithm name and the raw
/// bytes. The algorithm is kept by name because the kernel may use algorithms this crate cannot
/// compute (md5, sha224, sm3-256, streebog, ...); the digest can still be looked up in a policy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileDigest<'a> {
    alg: &'a str,
    len: u8,
    bytes: [u8; MAX_FILE_DIGEST_LEN],
}

impl<'a> FileDigest<'a> {
    /// `None` when `raw` is longer than `MAX_FILE_DIGEST_LEN`.
    pub fn new(alg: &'a str, raw: &[u8]) -> Option<FileDigest<'a>> {
        if raw.len() > MAX_FILE_DIGEST_LEN {
            return None;
        }
        let mut bytes = [0; MAX_FILE_DIGEST_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(FileDigest { alg, len: raw.len() as u8, bytes })
    }

    /// Decodes hex (validated by the caller or rejected here).
    pub(crate) fn from_hex(alg: &'a str, hex: &[u8]) -> Option<FileDigest<'a>> {
        if !hex.len().is_multiple_of(2) || hex.len() > 2 * MAX_FILE_DIGEST_LEN {
            return None;
        }
        let mut bytes = [0; MAX_FILE_DIGEST_LEN];
        decode_hex(hex, &mut bytes[..hex.len() / 2])?;
        Some(FileDigest { alg, len: (hex.len() / 2) as u8, bytes })
    }

    /// The kernel's name of the algorithm, e.g. `sha256`.
    pub fn alg_name(&self) -> &'a str {
        self.alg
    }

    /// The algorithm, when it is one this crate computes and the length fits it.
    pub fn hash_alg(&self) -> Option<HashAlg> {
        let alg: HashAlg = self.alg.parse().ok()?;
        (alg.len() == self.len as usize).then_some(alg)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl fmt::Debug for FileDigest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, self.to_hex())
    }
}

impl fmt::Display for FileDigest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, self.to_hex())
    }
}

/// A variable-length field (signature, buffer) either raw (binary log) or as validated hex
/// (ASCII log), decoded only when needed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Blob<'a> {
    Raw(&'a [u8]),
    /// Even-length, valid hex; checked by the parser.
    Hex(&'a [u8]),
}

impl Blob<'_> {
    /// The decoded length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Blob::Raw(b) => b.len(),
            Blob::Hex(h) => h.len() / 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the decoded bytes to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            Blob::Raw(b) => out.extend_from_slice(b),
            Blob::Hex(h) => {
                let start = out.len();
                out.resize(start + h.len() / 2, 0);
                // Validated at parse time; an invalid digit would decode as zero.
                let _ = decode_hex(h, &mut out[start..]);
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.append_to(&mut out);
        out
    }
}

impl fmt::Debug for Blob<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blob::Raw(b) => write!(f, "{}", hex::encode(b)),
            Blob::Hex(h) => write!(f, "{}", String::from_utf8_lossy(h)),
        }
    }
}

/// The template-specific part of an entry beyond digest and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template<'a> {
    Ima,
    ImaNg,
    /// The `sig` field: a `signature_v2_hdr` or empty.
    ImaSig {
        signature: Blob<'a>,
    },
    /// The `buf` field: measured data, e.g. a key loaded into a keyring.
    ImaBuf {
        buf: Blob<'a>,
    },
}

/// Where an entry was read: a line of an ASCII log or a byte offset in a binary log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// 1-based line number counted from the start of the full log.
    Line(u64),
    /// Byte offset within the buffer handed to the parser.
    Offset(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(l) => write!(f, "line {l}"),
            Position::Offset(o) => write!(f, "byte offset {o}"),
        }
    }
}

/// One measurement list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// 0-based index of the entry in the full measurement list.
    pub index: u64,
    pub position: Position,
    pub pcr: u32,
    /// The template hash column: SHA-1 unless the kernel wrote a per-algorithm log.
    pub template_hash: Digest,
    /// The `d`/`d-ng` field.
    pub digest: FileDigest<'a>,
    /// The `n`/`n-ng` field: a path, or for `ima-buf` the buffer's name (e.g. a keyring).
    pub name: &'a str,
    pub template: Template<'a>,
}

impl Entry<'_> {
    pub fn kind(&self) -> TemplateKind {
        match self.template {
            Template::Ima => TemplateKind::Ima,
            Template::ImaNg => TemplateKind::ImaNg,
            Template::ImaSig { .. } => TemplateKind::ImaSig,
            Template::ImaBuf { .. } => TemplateKind::ImaBuf,
        }
    }

    /// The 1-based line number of the entry in the full log (also for binary logs, where it is
    /// the entry number), as findings report it.
    pub fn line(&self) -> u64 {
        self.index + 1
    }

    /// A measurement violation (ToMToU, open-writers): the kernel logs an all-zero template hash
    /// and extends PCR 10 with all-ones.
    pub fn is_violation(&self) -> bool {
        self.template_hash.as_bytes().iter().all(|&b| b == 0)
    }

    /// Writes the exact bytes the kernel hashed into the template hash into `out` (cleared
    /// first) and returns them.
    pub fn template_data<'o>(&self, out: &'o mut Vec<u8>) -> &'o [u8] {
        out.clear();
        match self.template {
            Template::Ima => {
                out.extend_from_slice(self.digest.as_bytes());
                let start = out.len();
                out.extend_from_slice(self.name.as_bytes());
                out.resize(start + IMA_NAME_FIELD_LEN.max(self.name.len()), 0);
            }
            Template::ImaNg => self.push_ng_fields(out),
            Template::ImaSig { signature: blob } | Template::ImaBuf { buf: blob } => {
                self.push_ng_fields(out);
                out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
                blob.append_to(out);
            }
        }
        out
    }

    fn push_ng_fields(&self, out: &mut Vec<u8>) {
        let alg = self.digest.alg_name().as_bytes();
        let digest = self.digest.as_bytes();
        out.extend_from_slice(&((alg.len() + 2 + digest.len()) as u32).to_le_bytes());
        out.extend_from_slice(alg);
        out.extend_from_slice(b":\0");
        out.extend_from_slice(digest);
        out.extend_from_slice(&((self.name.len() + 1) as u32).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
    }
}

/// Hex digit values; `INVALID` marks a non-hex byte.
const INVALID: u8 = 0x10;
static HEX_VALUES: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn hex_nibble(c: u8) -> Option<u8> {
    let v = HEX_VALUES[c as usize];
    (v != INVALID).then_some(v)
}

/// Decodes `hex` (exactly `2 * out.len()` digits) into `out`; `None` on a non-hex digit.
pub(crate) fn decode_hex(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != 2 * out.len() {
        return None;
    }
    // Branch-free per byte: any invalid digit sets the INVALID bit in `bad`.
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let hi = HEX_VALUES[pair[0] as usize];
        let lo = HEX_VALUES[pair[1] as usize];
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & INVALID == 0).then_some(())
}

/// Whether `hex` is even-length valid hex.
pub(crate) fn is_hex(hex: &[u8]) -> bool {
    hex.len().is_multiple_of(2) && hex.iter().all(|&c| hex_nibble(c).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(template: Template<'a>, digest: FileDigest<'a>, name: &'a str) -> Entry<'a> {
        Entry {
            index: 0,
            position: Position::Line(1),
            pcr: 10,
            template_hash: HashAlg::Sha1.zero(),
            digest,
            name,
            template,
        }
    }

    #[test]
    fn ima_ng_template_data_layout() {
        let d = FileDigest::new("sha1", &[0xab; 20]).expect("fits");
        let e = entry(Template::ImaNg, d, "/bin/sh");
        let mut out = Vec::new();
        let data = e.template_data(&mut out).to_vec();
        let mut want = vec![26, 0, 0, 0];
        want.extend_from_slice(b"sha1:\0");
        want.extend_from_slice(&[0xab; 20]);
        want.extend_from_slice(&[8, 0, 0, 0]);
        want.extend_from_slice(b"/bin/sh\0");
        assert_eq!(data, want);
    }

    #[test]
    fn ima_template_pads_name_to_256() {
        let d = FileDigest::new("sha1", &[1; 20]).expect("fits");
        let e = entry(Template::Ima, d, "/init");
        let mut out = Vec::new();
        let data = e.template_data(&mut out);
        assert_eq!(data.len(), 20 + 256);
        assert_eq!(&data[20..25], b"/init");
        assert!(data[25..].iter().all(|&b| b == 0));
    }

    #[test]
    fn sig_and_buf_fields_are_length_prefixed() {
        let d = FileDigest::new("sha256", &[2; 32]).expect("fits");
        let e = entry(Template::ImaSig { signature: Blob::Hex(b"0302") }, d, "/x");
        let mut out = Vec::new();
        let data = e.template_data(&mut out);
        assert_eq!(&data[data.len() - 6..], &[2, 0, 0, 0, 3, 2]);
        let e = entry(Template::ImaSig { signature: Blob::Raw(&[]) }, d, "/x");
        let data = e.template_data(&mut out);
        assert_eq!(&data[data.len() - 4..], &[0, 0, 0, 0]);
    }

    #[test]
    fn file_digest_algorithms() {
        let d = FileDigest::from_hex("sha256", "ab".repeat(32).as_bytes()).expect("hex");
        assert_eq!(d.hash_alg(), Some(HashAlg::Sha256));
        let d = FileDigest::from_hex("sha256", b"abcd").expect("hex");
        assert_eq!(d.hash_alg(), None, "wrong length for the algorithm");
        assert!(FileDigest::from_hex("md5", b"zz").is_none());
        assert!(FileDigest::new("x", &[0; 65]).is_none());
    }
}
