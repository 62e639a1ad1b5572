//! Big-endian TPM marshalling: a bounds-checked reader whose errors carry the structure, the
//! field and the byte offset, and the matching writer used to build structures.

use super::Error;

/// Reads TPM-marshalled (big-endian) values from a byte slice, never panicking.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the caller's input, so nested structures report absolute offsets.
    base: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], structure: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, base: 0, structure }
    }

    /// The absolute offset of the next byte to read.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Switches the structure name used in errors (for nested structures).
    pub(crate) fn set_structure(&mut self, structure: &'static str) {
        self.structure = structure;
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Error> {
        if self.remaining() < n {
            return Err(Error::Truncated {
                structure: self.structure,
                field,
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Error> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A TPM2B: a u16 size followed by that many bytes, at most `max`.
    pub(crate) fn tpm2b(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], Error> {
        let offset = self.offset();
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(self.too_large(field, offset, size, max));
        }
        self.bytes(size, field)
    }

    /// A sub-reader over the next `n` bytes, reporting offsets in this reader's frame.
    pub(crate) fn sub(&mut self, n: usize, field: &'static str) -> Result<Reader<'a>, Error> {
        let base = self.offset();
        let buf = self.bytes(n, field)?;
        Ok(Reader { buf, pos: 0, base, structure: self.structure })
    }

    pub(crate) fn invalid(
        &self,
        field: &'static str,
        offset: usize,
        value: u64,
        expected: &'static str,
    ) -> Error {
        Error::Invalid { structure: self.structure, field, offset, value, expected }
    }

    pub(crate) fn too_large(
        &self,
        field: &'static str,
        offset: usize,
        size: usize,
        max: usize,
    ) -> Error {
        Error::TooLarge { structure: self.structure, field, offset, size, max }
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.remaining() != 0 {
            return Err(Error::Trailing {
                structure: self.structure,
                offset: self.offset(),
                count: self.remaining(),
            });
        }
        Ok(())
    }
}

/// Appends TPM-marshalled (big-endian) values.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Writes a TPM2B. Lengths above `u16::MAX` are truncated to it; they cannot come from a
    /// parsed structure, and a test building one gets a structure that fails to parse back.
    pub(crate) fn tpm2b(&mut self, b: &[u8]) {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.buf.extend_from_slice(&b[..usize::from(len)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_names_field_and_offset() {
        let mut r = Reader::new(&[0, 1, 2], "TPMS_TEST");
        assert_eq!(r.u16("a"), Ok(1));
        let err = r.u32("b").expect_err("must fail");
        assert_eq!(err.to_string(), "TPMS_TEST.b at byte 2: truncated, needs 4 bytes but 1 remain");
    }

    #[test]
    fn sub_reader_reports_absolute_offsets() {
        let data = [0u8, 0, 0, 1];
        let mut r = Reader::new(&data, "TPMS_TEST");
        r.u16("pad").expect("two bytes");
        let mut sub = r.sub(2, "inner").expect("two bytes");
        sub.u8("x").expect("one byte");
        assert_eq!(sub.offset(), 3);
        assert!(r.finish().is_ok());
        assert_eq!(sub.finish().expect_err("must fail").offset(), 3);
    }

    #[test]
    fn tpm2b_respects_maximum() {
        let mut r = Reader::new(&[0, 5, 1, 2, 3, 4, 5], "TPMS_TEST");
        let err = r.tpm2b("buffer", 4).expect_err("must fail");
        assert!(err.to_string().contains("size 5 exceeds the maximum 4"), "{err}");
    }
}
