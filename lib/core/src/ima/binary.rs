//! The binary measurement list (`binary_runtime_measurements`), in the kernel's native byte
//! order, which is little-endian on every platform this project supports (and always so when
//! the kernel runs with `ima_canonical_fmt`).
//!
//! Each entry: `u32 pcr | template hash (20 bytes for the SHA-1 list) | u32 name length | name |
//! template data`. For every template but `ima` the template data is `u32 length | fields`,
//! each field `u32 length | bytes`, exactly the bytes the template hash covers. The `ima`
//! template has no overall length: a raw 20-byte digest, then `u32 length | path` without the
//! terminating NUL.

use super::ascii::valid_alg_name;
use super::entry::{Blob, Entry, FileDigest, IMA_NAME_FIELD_LEN, Position, Template, TemplateKind};
use super::{Defect, ImaError};
use crate::alg::{Digest, HashAlg};

/// Upper bound on the template name length; the kernel's are short.
const MAX_TEMPLATE_NAME_LEN: usize = 64;

/// An iterator over the entries of a binary log. It stops after the first error.
#[derive(Debug, Clone)]
pub struct BinaryLog<'a> {
    data: &'a [u8],
    pos: usize,
    index: u64,
    template_hash_alg: HashAlg,
    done: bool,
}

impl<'a> BinaryLog<'a> {
    /// Parses a SHA-1 list whose first entry is entry 0.
    pub fn new(data: &'a [u8]) -> BinaryLog<'a> {
        BinaryLog::starting_at(data, 0)
    }

    /// Parses entries that start at entry `first_index` of the full list; errors report byte
    /// offsets within `data`.
    pub fn starting_at(data: &'a [u8], first_index: u64) -> BinaryLog<'a> {
        BinaryLog {
            data,
            pos: 0,
            index: first_index,
            template_hash_alg: HashAlg::Sha1,
            done: false,
        }
    }

    /// For the kernel's per-algorithm lists (`binary_runtime_measurements_sha256`, ...), whose
    /// template hashes have that algorithm's length.
    pub fn with_template_hash_alg(mut self, alg: HashAlg) -> BinaryLog<'a> {
        self.template_hash_alg = alg;
        self
    }
}

impl<'a> Iterator for BinaryLog<'a> {
    type Item = Result<Entry<'a>, ImaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.data.len() {
            return None;
        }
        let mut cur = Cursor { data: self.data, pos: self.pos };
        let start = self.pos;
        let index = self.index;
        match parse_entry(&mut cur, index, self.template_hash_alg) {
            Ok(mut entry) => {
                entry.position = Position::Offset(start as u64);
                self.pos = cur.pos;
                self.index += 1;
                Some(Ok(entry))
            }
            Err(defect) => {
                self.done = true;
                Some(Err(ImaError::Malformed {
                    position: Position::Offset(cur.pos as u64),
                    defect,
                }))
            }
        }
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Defect> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Defect::Truncated(what)),
        }
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Defect> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `u32 length | bytes` field.
    fn field(&mut self, what: &'static str) -> Result<&'a [u8], Defect> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

fn parse_entry<'a>(
    cur: &mut Cursor<'a>,
    index: u64,
    hash_alg: HashAlg,
) -> Result<Entry<'a>, Defect> {
    let pcr = cur.u32("PCR index")?;
    let hash = cur.take(hash_alg.len(), "template hash")?;
    let template_hash =
        Digest::from_bytes(hash_alg, hash).ok_or(Defect::Truncated("template hash"))?;
    let name_len = cur.u32("template name length")? as usize;
    if name_len == 0 || name_len > MAX_TEMPLATE_NAME_LEN {
        return Err(Defect::TooLong {
            field: "template name",
            len: name_len,
            max: MAX_TEMPLATE_NAME_LEN,
        });
    }
    let name = cur.take(name_len, "template name")?;
    let kind = TemplateKind::from_name(name)
        .ok_or_else(|| Defect::UnknownTemplate(String::from_utf8_lossy(name).into_owned()))?;
    let (digest, name, template) = if kind == TemplateKind::Ima {
        let d = cur.take(20, "ima digest")?;
        let digest = FileDigest::new("sha1", d).ok_or(Defect::Truncated("ima digest"))?;
        let path = cur.field("ima path")?;
        if path.len() >= IMA_NAME_FIELD_LEN {
            return Err(Defect::TooLong { field: "path", len: path.len(), max: 255 });
        }
        (digest, path, Template::Ima)
    } else {
        let len = cur.u32("template data length")? as usize;
        if len > cur.remaining() {
            return Err(Defect::Truncated("template data"));
        }
        let data = cur.take(len, "template data")?;
        let mut fields = Cursor { data, pos: 0 };
        let digest = parse_digest_ng(fields.field("d-ng field")?)?;
        let n = fields.field("n-ng field")?;
        let name = match n.split_last() {
            Some((0, name)) => name,
            _ => return Err(Defect::NameNotTerminated),
        };
        let template = match kind {
            TemplateKind::ImaSig => {
                Template::ImaSig { signature: Blob::Raw(fields.field("sig field")?) }
            }
            TemplateKind::ImaBuf => Template::ImaBuf { buf: Blob::Raw(fields.field("buf field")?) },
            _ => Template::ImaNg,
        };
        if fields.remaining() != 0 {
            return Err(Defect::TrailingData(fields.remaining()));
        }
        (digest, name, template)
    };
    let field = if kind == TemplateKind::ImaBuf { "name" } else { "path" };
    let name = std::str::from_utf8(name).map_err(|_| Defect::NotUtf8(field))?;
    if name.contains('\0') {
        return Err(Defect::NulInName(field));
    }
    Ok(Entry { index, position: Position::Offset(0), pcr, template_hash, digest, name, template })
}

/// `d-ng` as stored: `<alg>:\0<digest>`.
fn parse_digest_ng(field: &[u8]) -> Result<FileDigest<'_>, Defect> {
    let bad = || Defect::FileDigest(super::ascii::excerpt(field));
    let colon = field.windows(2).position(|w| w == b":\0").ok_or_else(bad)?;
    let alg = &field[..colon];
    if !valid_alg_name(alg) {
        return Err(bad());
    }
    let alg = std::str::from_utf8(alg).map_err(|_| bad())?;
    FileDigest::new(alg, &field[colon + 2..]).ok_or_else(bad)
}

/// Encodes `entry` as a binary list entry (SHA-1 template hash list or another algorithm's,
/// depending on the entry's template hash). Used to build binary logs from ASCII ones.
pub fn encode_entry(entry: &Entry<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&entry.pcr.to_le_bytes());
    out.extend_from_slice(entry.template_hash.as_bytes());
    let name = entry.kind().name().as_bytes();
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name);
    if entry.kind() == TemplateKind::Ima {
        out.extend_from_slice(entry.digest.as_bytes());
        out.extend_from_slice(&(entry.name.len() as u32).to_le_bytes());
        out.extend_from_slice(entry.name.as_bytes());
    } else {
        let mut data = Vec::new();
        entry.template_data(&mut data);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ima::AsciiLog;

    const LINES: &str = "10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-ng sha1:0000000000000000000000000000000000000000 boot_aggregate\n\
10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima 00112233445566778899aabbccddeeff00112233 /init\n\
10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-sig sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff /a b 0302\n\
10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-buf sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff .ima 3082\n";

    fn to_binary(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for e in AsciiLog::new(text.as_bytes()) {
            encode_entry(&e.expect("valid"), &mut out);
        }
        out
    }

    #[test]
    fn binary_and_ascii_agree() {
        let bin = to_binary(LINES);
        let ascii: Vec<_> = AsciiLog::new(LINES.as_bytes()).map(|e| e.expect("valid")).collect();
        let binary: Vec<_> = BinaryLog::new(&bin).map(|e| e.expect("valid")).collect();
        assert_eq!(ascii.len(), binary.len());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (x, y) in ascii.iter().zip(&binary) {
            assert_eq!(x.index, y.index);
            assert_eq!(
                (x.pcr, x.template_hash, x.digest, x.name),
                (y.pcr, y.template_hash, y.digest, y.name)
            );
            assert_eq!(x.template_data(&mut a), y.template_data(&mut b));
        }
        assert_eq!(
            binary[1].position,
            Position::Offset((4 + 20 + 4 + 6 + 4 + (4 + 6 + 20) + (4 + 15)) as u64)
        );
    }

    #[test]
    fn truncation_names_the_offset() {
        let bin = to_binary(LINES);
        let first_len = match BinaryLog::new(&bin).nth(1).expect("second").expect("valid").position
        {
            Position::Offset(o) => o as usize,
            Position::Line(_) => unreachable!(),
        };
        let cut = &bin[..first_len + 10];
        let results: Vec<_> = BinaryLog::new(cut).collect();
        assert_eq!(results.len(), 2);
        let err = results[1].clone().expect_err("truncated");
        assert_eq!(
            err.to_string(),
            format!("IMA binary log byte offset {}: truncated in template hash", first_len + 4)
        );
    }

    #[test]
    fn unknown_template_and_trailing_bytes() {
        let mut bin = Vec::new();
        bin.extend_from_slice(&10u32.to_le_bytes());
        bin.extend_from_slice(&[0; 20]);
        bin.extend_from_slice(&10u32.to_le_bytes());
        bin.extend_from_slice(b"ima-modsig");
        let err = BinaryLog::new(&bin).next().expect("item").expect_err("unknown");
        assert!(err.to_string().contains("unknown template \"ima-modsig\""), "{err}");

        let mut bin = to_binary(LINES.lines().next().expect("line"));
        // Grow the template data length by one and append a byte: a field is left over.
        let len_at = 4 + 20 + 4 + 6;
        let len = u32::from_le_bytes(bin[len_at..len_at + 4].try_into().expect("4")) + 1;
        bin[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        bin.push(0);
        let err = BinaryLog::new(&bin).next().expect("item").expect_err("trailing");
        assert!(err.to_string().contains("1 trailing bytes"), "{err}");
    }
}
