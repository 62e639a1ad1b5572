//! DER: the crate's one reader of tag-length-value items (X.509 certificates, public keys) and
//! the few encodings it writes (SubjectPublicKeyInfo, see [`crate::key`]).
//!
//! The reader reads tag-length-value items and keeps every item's raw bytes and absolute byte offset, so
//! a signature can be checked over the exact bytes that were signed and an error can say where
//! the input went wrong. It is lenient where real TPM vendor certificates are sloppy: it accepts
//! non-minimal length encodings, SET elements in any order, and leaves trailing bytes after the
//! outermost item to the caller. It rejects what it cannot read unambiguously: indefinite
//! lengths, multi-byte tag numbers, and lengths that run past the end of their container.

use std::fmt;

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_GENERALIZED_TIME: u8 = 0x18;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;
pub(crate) const TAG_NULL: u8 = 0x05;

/// What went wrong in a DER input, and at which absolute byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerError {
    pub offset: usize,
    pub reason: String,
}

impl DerError {
    pub(crate) fn new(offset: usize, reason: impl Into<String>) -> DerError {
        DerError { offset, reason: reason.into() }
    }
}

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

/// One tag-length-value item.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    /// Absolute offset of the tag byte in the whole input.
    pub offset: usize,
    /// Absolute offset of the first value byte.
    pub value_offset: usize,
    /// The value (contents) bytes.
    pub value: &'a [u8],
    /// Tag, length and value bytes, exactly as encoded.
    pub raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// A reader over the contents of this (constructed) item.
    pub(crate) fn contents(&self) -> Reader<'a> {
        Reader { data: self.value, pos: 0, base: self.value_offset }
    }

    /// The contents of a BIT STRING without its unused-bits byte; only whole-byte strings.
    pub(crate) fn bit_string_bytes(&self) -> Result<&'a [u8], DerError> {
        match self.value.split_first() {
            Some((0, rest)) => Ok(rest),
            Some((n, _)) => Err(DerError::new(
                self.value_offset,
                format!("BIT STRING with {n} unused bits where whole bytes were expected"),
            )),
            None => Err(DerError::new(self.offset, "empty BIT STRING")),
        }
    }

    /// A BIT STRING as (unused bits, bytes), for flag sets like keyUsage.
    pub(crate) fn bit_flags(&self) -> Result<&'a [u8], DerError> {
        match self.value.split_first() {
            Some((n, rest)) if *n < 8 => Ok(rest),
            Some(_) => {
                Err(DerError::new(self.value_offset, "BIT STRING unused-bits count above 7"))
            }
            None => Err(DerError::new(self.offset, "empty BIT STRING")),
        }
    }

    /// A BOOLEAN; any non-zero byte is true (BER leniency).
    pub(crate) fn boolean(&self) -> Result<bool, DerError> {
        match self.value {
            [b] => Ok(*b != 0),
            _ => Err(DerError::new(self.offset, "BOOLEAN with a length other than 1")),
        }
    }

    /// A non-negative INTEGER that fits in a u64.
    pub(crate) fn small_uint(&self) -> Result<u64, DerError> {
        let bytes = self.value;
        if bytes.is_empty() {
            return Err(DerError::new(self.offset, "empty INTEGER"));
        }
        if bytes[0] & 0x80 != 0 {
            return Err(DerError::new(
                self.value_offset,
                "negative INTEGER where a count was expected",
            ));
        }
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let significant = &bytes[start..];
        if significant.len() > 8 {
            return Err(DerError::new(self.value_offset, "INTEGER too large"));
        }
        Ok(significant.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

/// Reads consecutive items from a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Absolute offset of `data[0]` in the whole input.
    base: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0, base: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Absolute offset of the next unread byte.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes left unread.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    /// Reads the next item, whatever its tag.
    pub(crate) fn read_any(&mut self) -> Result<Tlv<'a>, DerError> {
        let start = self.pos;
        let abs = self.base + start;
        let tag = *self
            .data
            .get(start)
            .ok_or_else(|| DerError::new(abs, "unexpected end of data, expected a tag"))?;
        if tag & 0x1f == 0x1f {
            return Err(DerError::new(
                abs,
                format!("multi-byte tag number (tag byte 0x{tag:02x}) is not supported"),
            ));
        }
        let first = *self
            .data
            .get(start + 1)
            .ok_or_else(|| DerError::new(abs + 1, "unexpected end of data, expected a length"))?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else if first == 0x80 {
            return Err(DerError::new(abs + 1, "indefinite length is not allowed in DER"));
        } else {
            let n = usize::from(first & 0x7f);
            if n > 4 {
                return Err(DerError::new(abs + 1, format!("length of {n} bytes is too large")));
            }
            let bytes = self
                .data
                .get(start + 2..start + 2 + n)
                .ok_or_else(|| DerError::new(abs + 2, "unexpected end of data inside a length"))?;
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        let value_start = start + header;
        let end = value_start.checked_add(len).filter(|end| *end <= self.data.len()).ok_or_else(
            || {
                DerError::new(
                    abs,
                    format!(
                        "item with tag 0x{tag:02x} claims {len} bytes but only {} remain",
                        self.data.len() - value_start.min(self.data.len())
                    ),
                )
            },
        )?;
        self.pos = end;
        Ok(Tlv {
            tag,
            offset: abs,
            value_offset: self.base + value_start,
            value: &self.data[value_start..end],
            raw: &self.data[start..end],
        })
    }

    /// Reads the next item and checks its tag.
    pub(crate) fn read(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, DerError> {
        let offset = self.offset();
        let tlv = self
            .read_any()
            .map_err(|e| DerError::new(e.offset, format!("{what}: {}", e.reason)))?;
        if tlv.tag != tag {
            return Err(DerError::new(
                offset,
                format!("{what}: expected tag 0x{tag:02x}, found 0x{:02x}", tlv.tag),
            ));
        }
        Ok(tlv)
    }

    /// Reads the next item if it has this tag.
    pub(crate) fn read_optional(
        &mut self,
        tag: u8,
        what: &str,
    ) -> Result<Option<Tlv<'a>>, DerError> {
        if self.peek_tag() == Some(tag) { self.read(tag, what).map(Some) } else { Ok(None) }
    }

    /// Fails if anything is left: used inside structures, where extra items mean a misparse.
    pub(crate) fn finish(&self, what: &str) -> Result<(), DerError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DerError::new(
                self.offset(),
                format!("{what}: {} unexpected bytes", self.remaining()),
            ))
        }
    }
}

/// Formats an OBJECT IDENTIFIER's contents in dotted form, for messages.
pub(crate) fn oid_to_string(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for b in oid {
        acc = acc.saturating_mul(128).saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    let parts: Vec<String> = arcs.iter().map(u64::to_string).collect();
    if parts.is_empty() { "(empty OID)".to_owned() } else { parts.join(".") }
}

/// Encodes one item: `tag`, a minimal length, `content`.
pub(crate) fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn encode_positive_integer(magnitude: &[u8]) -> Vec<u8> {
    let first = magnitude.iter().position(|&b| b != 0).unwrap_or(magnitude.len());
    let digits = &magnitude[first..];
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    encode(TAG_INTEGER, &content)
}

/// A BIT STRING of whole bytes.
pub(crate) fn encode_bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    encode(TAG_BIT_STRING, &content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_nested_items_with_absolute_offsets() {
        let data = [0x30, 0x06, 0x02, 0x01, 0x05, 0x04, 0x01, 0xaa, 0xff];
        let mut r = Reader::new(&data);
        let seq = r.read(TAG_SEQUENCE, "outer").expect("sequence");
        assert_eq!(r.remaining(), 1);
        let mut inner = seq.contents();
        let int = inner.read(TAG_INTEGER, "int").expect("integer");
        assert_eq!(int.small_uint().expect("value"), 5);
        let oct = inner.read(TAG_OCTET_STRING, "octets").expect("octets");
        assert_eq!(oct.value_offset, 7);
        assert_eq!(oct.value, &[0xaa]);
        inner.finish("outer").expect("nothing left");
    }

    #[test]
    fn accepts_non_minimal_length() {
        let data = [0x04, 0x82, 0x00, 0x01, 0x7f];
        let tlv = Reader::new(&data).read_any().expect("lenient length");
        assert_eq!(tlv.value, &[0x7f]);
    }

    #[test]
    fn errors_name_the_offset() {
        let data = [0x30, 0x03, 0x02, 0x05, 0x01];
        let seq = Reader::new(&data).read_any().expect("outer fits");
        let err = seq.contents().read_any().expect_err("inner overruns");
        assert_eq!(err.offset, 2);
        assert!(err.to_string().contains("at byte 2"), "{err}");

        let err = Reader::new(&[0x30, 0x80, 0x00, 0x00]).read_any().expect_err("indefinite");
        assert_eq!(err.offset, 1);
        let err =
            Reader::new(&[0x02, 0x01, 0x01]).read(TAG_SEQUENCE, "tbs").expect_err("wrong tag");
        assert!(err.reason.contains("tbs: expected tag 0x30, found 0x02"), "{err}");
    }

    #[test]
    fn formats_oids() {
        assert_eq!(
            oid_to_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]),
            "1.2.840.113549.1.1.11"
        );
        assert_eq!(oid_to_string(&[0x67, 0x81, 0x05, 0x02, 0x01]), "2.23.133.2.1");
    }

    fn walk(r: &mut Reader<'_>, depth: u32) {
        while !r.is_empty() {
            let Ok(tlv) = r.read_any() else { return };
            if tlv.tag & 0x20 != 0 && depth < 16 {
                walk(&mut tlv.contents(), depth + 1);
            }
            let _ = tlv.small_uint();
            let _ = tlv.bit_string_bytes();
            let _ = tlv.boolean();
        }
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(encode_positive_integer(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(encode_positive_integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(encode_positive_integer(&[]), vec![2, 1, 0]);
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let t = encode(TAG_SEQUENCE, &[0u8; 300]);
        assert_eq!(&t[..4], &[0x30, 0x82, 0x01, 0x2c]);
        assert_eq!(encode(TAG_SEQUENCE, &[0u8; 0x80])[..3], [0x30, 0x81, 0x80]);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            walk(&mut Reader::new(&data), 0);
            let _ = oid_to_string(&data);
        }
    }
}
