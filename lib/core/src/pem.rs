//! PEM (RFC 7468): the crate's one reader of `-----BEGIN LABEL-----` blocks, for certificates,
//! certificate bundles and public keys.
//!
//! It is line-based and forgiving where real files are sloppy: text outside blocks is ignored,
//! RFC 1421 header lines (`Proc-Type: ...`) inside a block are skipped, and an END line glued to
//! the next BEGIN line (`cat *.pem` of files without a final newline) is split. A block's base64
//! is decoded only when asked ([`Block::decode`]), so a caller that wants certificates is not
//! stopped by a key block it skips. Errors carry the 1-based line number.

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Standard base64, accepting input with or without `=` padding.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a PEM text could not be read, and on which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PemError {
    pub line: usize,
    pub reason: String,
}

/// One `BEGIN`/`END` block, its base64 body not yet decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Block<'a> {
    pub label: &'a str,
    /// The line of the BEGIN line.
    pub line: usize,
    base64: String,
}

impl fmt::Debug for Block<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({}, line {})", self.label, self.line)
    }
}

impl Block<'_> {
    /// The DER bytes of the block.
    pub fn decode(&self) -> Result<Vec<u8>, PemError> {
        BASE64.decode(self.base64.as_bytes()).map_err(|e| PemError {
            line: self.line,
            reason: format!("invalid base64 in the block starting here: {e}"),
        })
    }
}

/// The blocks of a PEM text, in order. Fails on a block that is never closed, an END line
/// without a BEGIN, or a BEGIN inside a block.
pub fn blocks(text: &str) -> Result<Vec<Block<'_>>, PemError> {
    let mut out = Vec::new();
    match scan(text, &mut out) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The blocks of a PEM text up to the first structural error, for readers that take whatever
/// usable keys a file holds.
pub(crate) fn blocks_lenient(text: &str) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    scan(text, &mut out);
    out
}

/// Collects blocks into `out`; returns the first error, if any.
fn scan<'a>(text: &'a str, out: &mut Vec<Block<'a>>) -> Option<PemError> {
    let err = |line: usize, reason: String| Some(PemError { line, reason });
    let mut open: Option<Block<'a>> = None;
    // Vendor PEM files often lack a final newline, so `cat *.pem` glues an END line to the
    // next BEGIN line: split such lines, keeping their line number.
    let lines = text.lines().enumerate().flat_map(|(i, line)| {
        let (first, second) = match line.find("----------BEGIN ") {
            Some(at) => (&line[..at + 5], Some(&line[at + 5..])),
            None => (line, None),
        };
        std::iter::once((i + 1, first)).chain(second.map(|s| (i + 1, s)))
    });
    for (line_no, line) in lines {
        let line = line.trim();
        if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----"))
        {
            if let Some(block) = &open {
                return err(
                    line_no,
                    format!("BEGIN inside the block opened at line {}", block.line),
                );
            }
            open = Some(Block { label, line: line_no, base64: String::new() });
        } else if let Some(rest) = line.strip_prefix("-----END ") {
            let Some(block) = open.take() else {
                return err(line_no, "END without BEGIN".to_owned());
            };
            let label = rest.strip_suffix("-----").unwrap_or(rest);
            if label != block.label {
                return err(
                    line_no,
                    format!(
                        "END {label:?} closes the {:?} block opened at line {}",
                        block.label, block.line
                    ),
                );
            }
            out.push(block);
        } else if let Some(block) = open.as_mut() {
            // Skip RFC 1421 headers such as "Proc-Type: ...".
            if !line.contains(':') {
                block.base64.push_str(line);
            }
        }
    }
    open.and_then(|block| err(block.line, "block is never closed".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_blocks_in_order_with_their_lines() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keylime/ima/keys/secp256k1.pem"
        ));
        let blocks = blocks(text).expect("two blocks");
        let labels: Vec<_> = blocks.iter().map(|b| b.label).collect();
        assert_eq!(labels, ["EC PARAMETERS", "EC PRIVATE KEY"]);
        assert_eq!(blocks[0].line, 1);
        assert_eq!(blocks[0].decode().expect("base64"), [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]);
    }

    #[test]
    fn splits_glued_lines_and_skips_headers() {
        let text = "-----BEGIN A-----\nProc-Type: 4,ENCRYPTED\nAQI=\n-----END A----------BEGIN B-----\nAw\n-----END B-----";
        let blocks = blocks(text).expect("two blocks");
        assert_eq!(blocks[0].decode().expect("a"), [1, 2]);
        assert_eq!((blocks[1].label, blocks[1].line), ("B", 4));
        assert_eq!(blocks[1].decode().expect("unpadded b"), [3]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = blocks("x\n-----BEGIN A-----\nAQI=\n").expect_err("open");
        assert_eq!(e.to_string(), "line 2: block is never closed");
        let e = blocks("-----END A-----").expect_err("no begin");
        assert_eq!(e.line, 1);
        let e = blocks("-----BEGIN A-----\n-----BEGIN B-----").expect_err("nested");
        assert!(e.reason.contains("opened at line 1"), "{e}");
        let e = blocks("-----BEGIN A-----\nAQI=\n-----END B-----").expect_err("other label");
        assert_eq!(e.to_string(), "line 3: END \"B\" closes the \"A\" block opened at line 1");
        let b = blocks("-----BEGIN A-----\n!!\n-----END A-----").expect("structure is fine");
        assert_eq!(b[0].decode().expect_err("bad base64").line, 1);
        let lenient = blocks_lenient("-----BEGIN A-----\nAQI=\n-----END A-----\n-----END B-----");
        assert_eq!(lenient.len(), 1);
    }
}
