//! The ASCII measurement list (`ascii_runtime_measurements`): one entry per line,
//! `<pcr> <template-hash hex> <template-name> <fields...>`.
//!
//! Fields are separated by single spaces, but paths may contain spaces. For `ima` and `ima-ng`
//! the path is everything after the digest. For `ima-sig` and `ima-buf` the kernel writes the
//! trailing hex field after one more space (a blank one when empty), so the last space splits
//! path from hex. A line of `ima-sig` whose last word is not hex is read as a path without a
//! signature (logs whose trailing blank was trimmed). Any misreading would not survive the
//! template-hash check, which recomputes the hash from the fields as read.

use super::entry::{Blob, Entry, FileDigest, IMA_NAME_FIELD_LEN, Position, Template, TemplateKind};
use super::entry::{decode_hex, is_hex};
use super::{Defect, ImaError};
use crate::alg::{Digest, HashAlg, MAX_DIGEST_LEN};

/// An iterator over the entries of an ASCII log. It stops after the first error.
#[derive(Debug, Clone)]
pub struct AsciiLog<'a> {
    text: &'a [u8],
    pos: usize,
    /// Index (0-based) of the next entry in the full log.
    index: u64,
    done: bool,
}

impl<'a> AsciiLog<'a> {
    /// Parses a log whose first line is entry 0.
    pub fn new(text: &'a [u8]) -> AsciiLog<'a> {
        AsciiLog::starting_at(text, 0)
    }

    /// Parses lines that start at entry `first_index` of the full log (an agent answering from
    /// an offset); line numbers in entries and errors count from the start of the full log.
    pub fn starting_at(text: &'a [u8], first_index: u64) -> AsciiLog<'a> {
        AsciiLog { text, pos: 0, index: first_index, done: false }
    }
}

impl<'a> Iterator for AsciiLog<'a> {
    type Item = Result<Entry<'a>, ImaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.text.len() {
            return None;
        }
        let rest = &self.text[self.pos..];
        let (line, advance) = match memchr::memchr(b'\n', rest) {
            Some(n) => (&rest[..n], n + 1),
            None => (rest, rest.len()),
        };
        self.pos += advance;
        let index = self.index;
        self.index += 1;
        let result = parse_line(line, index).map_err(|defect| {
            self.done = true;
            ImaError::Malformed { position: Position::Line(index + 1), defect }
        });
        Some(result)
    }
}

fn split_space(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = memchr::memchr(b' ', s)?;
    Some((&s[..n], &s[n + 1..]))
}

fn rsplit_space(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = memchr::memrchr(b' ', s)?;
    Some((&s[..n], &s[n + 1..]))
}

fn utf8<'a>(field: &'static str, s: &'a [u8]) -> Result<&'a str, Defect> {
    std::str::from_utf8(s).map_err(|_| Defect::NotUtf8(field))
}

/// Parses one line (without its newline) as entry `index`.
pub(crate) fn parse_line(line: &[u8], index: u64) -> Result<Entry<'_>, Defect> {
    if line.is_empty() {
        return Err(Defect::EmptyLine);
    }
    let (pcr, rest) = split_space(line).ok_or(Defect::MissingField("template hash"))?;
    let pcr = parse_pcr(pcr)?;
    let (hash, rest) = split_space(rest).ok_or(Defect::MissingField("template name"))?;
    let template_hash = parse_template_hash(hash)?;
    let (name, rest) = split_space(rest).ok_or(Defect::MissingField("file digest"))?;
    let kind = TemplateKind::from_name(name)
        .ok_or_else(|| Defect::UnknownTemplate(String::from_utf8_lossy(name).into_owned()))?;
    let (digest, rest) = match kind {
        TemplateKind::Ima => {
            let (d, rest) = split_space(rest).ok_or(Defect::MissingField("path"))?;
            let alg = match d.len() {
                40 => "sha1",
                32 => "md5",
                _ => return Err(Defect::FileDigest(excerpt(d))),
            };
            (FileDigest::from_hex(alg, d).ok_or_else(|| Defect::FileDigest(excerpt(d)))?, rest)
        }
        _ => {
            let (d, rest) = split_space(rest).ok_or(Defect::MissingField("path"))?;
            (parse_digest_ng(d)?, rest)
        }
    };
    let (name, template) = match kind {
        TemplateKind::Ima => {
            if rest.len() >= IMA_NAME_FIELD_LEN {
                return Err(Defect::TooLong { field: "path", len: rest.len(), max: 255 });
            }
            (rest, Template::Ima)
        }
        TemplateKind::ImaNg => (rest, Template::ImaNg),
        TemplateKind::ImaSig => match rsplit_space(rest) {
            Some((path, sig)) if is_hex(sig) => {
                (path, Template::ImaSig { signature: Blob::Hex(sig) })
            }
            _ => (rest, Template::ImaSig { signature: Blob::Hex(b"") }),
        },
        TemplateKind::ImaBuf => {
            let (name, buf) = rsplit_space(rest).ok_or(Defect::MissingField("buf"))?;
            if !is_hex(buf) {
                return Err(Defect::NotHex("buf"));
            }
            (name, Template::ImaBuf { buf: Blob::Hex(buf) })
        }
    };
    let field = if kind == TemplateKind::ImaBuf { "name" } else { "path" };
    let name = utf8(field, name)?;
    // The kernel never writes NUL into a name; with the `ima` template's zero padding, a path
    // with NULs appended would hash like the path itself.
    if name.contains('\0') {
        return Err(Defect::NulInName(field));
    }
    Ok(Entry {
        index,
        position: Position::Line(index + 1),
        pcr,
        template_hash,
        digest,
        name,
        template,
    })
}

fn parse_pcr(s: &[u8]) -> Result<u32, Defect> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return Err(Defect::Pcr(excerpt(s)));
    }
    let v = s.iter().fold(0u64, |acc, &c| acc * 10 + u64::from(c - b'0'));
    u32::try_from(v).map_err(|_| Defect::Pcr(excerpt(s)))
}

fn parse_template_hash(s: &[u8]) -> Result<Digest, Defect> {
    let alg = HashAlg::from_len(s.len() / 2)
        .filter(|_| s.len().is_multiple_of(2))
        .ok_or_else(|| Defect::TemplateHash(excerpt(s)))?;
    let mut raw = [0u8; MAX_DIGEST_LEN];
    decode_hex(s, &mut raw[..alg.len()]).ok_or_else(|| Defect::TemplateHash(excerpt(s)))?;
    Digest::from_bytes(alg, &raw[..alg.len()]).ok_or_else(|| Defect::TemplateHash(excerpt(s)))
}

/// `d-ng` as printed: `<alg>:<hex>`.
fn parse_digest_ng(s: &[u8]) -> Result<FileDigest<'_>, Defect> {
    let bad = || Defect::FileDigest(excerpt(s));
    let (alg, hex) =
        s.iter().position(|&b| b == b':').map(|n| (&s[..n], &s[n + 1..])).ok_or_else(bad)?;
    if !valid_alg_name(alg) {
        return Err(bad());
    }
    let alg = std::str::from_utf8(alg).map_err(|_| bad())?;
    FileDigest::from_hex(alg, hex).ok_or_else(bad)
}

/// Kernel hash algorithm names: lowercase letters, digits, `-` and `_`.
pub(crate) fn valid_alg_name(alg: &[u8]) -> bool {
    !alg.is_empty()
        && alg.len() <= 64
        && alg
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// A bounded, printable excerpt of untrusted input for error messages.
pub(crate) fn excerpt(s: &[u8]) -> String {
    const MAX: usize = 80;
    let mut out = String::from_utf8_lossy(&s[..s.len().min(MAX)]).into_owned();
    if s.len() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Entry<'_>, ImaError> {
        AsciiLog::new(line.as_bytes()).next().expect("one line")
    }

    #[test]
    fn ima_ng_with_spaces_in_path() {
        let e = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-ng sha1:0000000000000000000000000000000000000000 /tmp/a b c").expect("parses");
        assert_eq!(e.name, "/tmp/a b c");
        assert_eq!(e.digest.alg_name(), "sha1");
        assert_eq!(e.pcr, 10);
        assert_eq!(e.template, Template::ImaNg);
    }

    #[test]
    fn ima_sig_splits_signature_from_path() {
        let e = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-sig sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff /usr/bin/my tool 030204aabbccdd0002abcd").expect("parses");
        assert_eq!(e.name, "/usr/bin/my tool");
        assert_eq!(
            e.template,
            Template::ImaSig { signature: Blob::Hex(b"030204aabbccdd0002abcd") }
        );
        // The kernel's blank for an empty signature.
        let e = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-sig sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff /usr/bin/my tool ").expect("parses");
        assert_eq!(e.name, "/usr/bin/my tool");
        assert_eq!(e.template, Template::ImaSig { signature: Blob::Hex(b"") });
        // Trailing blank trimmed: the last word is not hex, so it belongs to the path.
        let e = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-sig sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff /usr/bin/my tool").expect("parses");
        assert_eq!(e.name, "/usr/bin/my tool");
    }

    #[test]
    fn ima_buf_needs_hex_buf() {
        let e = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-buf sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff kexec-cmdline 726f6f74").expect("parses");
        assert_eq!(e.name, "kexec-cmdline");
        assert_eq!(e.template, Template::ImaBuf { buf: Blob::Hex(b"726f6f74") });
        let err = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-buf sha256:00 name xyz")
            .expect_err("not hex");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn old_ima_template() {
        let e = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima 0000000000000000000000000000000000000000 /init").expect("parses");
        assert_eq!(e.template, Template::Ima);
        assert_eq!(e.name, "/init");
        let long = format!(
            "10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima {} /{}",
            "00".repeat(20),
            "a".repeat(300)
        );
        let err = one(&long).expect_err("too long");
        assert!(matches!(err, ImaError::Malformed { defect: Defect::TooLong { .. }, .. }));
    }

    #[test]
    fn errors_name_the_line() {
        let log = "10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-ng sha1:0000000000000000000000000000000000000000 /a\n10 zz ima-ng sha1:00 /b\n";
        let results: Vec<_> = AsciiLog::new(log.as_bytes()).collect();
        assert_eq!(results.len(), 2);
        let err = results[1].clone().expect_err("bad hash");
        assert_eq!(
            err.to_string(),
            "IMA log line 2: template hash \"zz\" is not 20, 32, 48 or 64 bytes of hex"
        );
        let err =
            AsciiLog::starting_at(b"10 00 ima-ng", 41).next().expect("item").expect_err("bad");
        assert!(err.to_string().starts_with("IMA log line 42:"), "{err}");
        let err = one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-modsig sha1:00 /a")
            .expect_err("unknown");
        assert!(err.to_string().contains("unknown template \"ima-modsig\""), "{err}");
        let err =
            one("x 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-ng sha1:00 /a").expect_err("pcr");
        assert!(err.to_string().contains("PCR index"), "{err}");
        let err =
            one("10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-ng 00 /a").expect_err("digest");
        assert!(err.to_string().contains("file digest"), "{err}");
    }

    #[test]
    fn empty_lines_are_rejected_but_a_final_newline_is_not() {
        let ok = "10 1d8d532d463c9f8c205d0df7787669a85f93e260 ima-ng sha1:00 /a\n";
        assert_eq!(AsciiLog::new(ok.as_bytes()).count(), 1);
        let bad = format!("{ok}\n{ok}");
        let err = AsciiLog::new(bad.as_bytes()).nth(1).expect("item").expect_err("empty");
        assert_eq!(err.to_string(), "IMA log line 2: empty line");
    }
}
