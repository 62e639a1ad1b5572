//! Linux IMA measurement lists: parsing, PCR 10 replay, signatures and appraisal.
//!
//! This module owns everything between the bytes of a measurement list and a [`Verdict`]:
//!
//! - [`AsciiLog`] and [`BinaryLog`] parse `ascii_runtime_measurements` and
//!   `binary_runtime_measurements` into one [`Entry`] model (templates `ima`, `ima-ng`,
//!   `ima-sig`, `ima-buf`), borrowing from the caller's buffer. Unknown templates are an error
//!   naming the line (or byte offset) and the template: their fields cannot be reconstructed
//!   from the ASCII form, so neither the template hash nor a non-SHA-1 PCR bank could be checked.
//!   Digest algorithms are carried by name, so a log using one this crate does not compute
//!   (md5, sm3-256, or a made-up one) still parses and replays.
//! - [`replay()`] recomputes PCR 10 in any bank; [`ImaState`] carries the running value between
//!   rounds so each round processes only new entries and accepts the quoted value at any prefix.
//! - `sig` parses `signature_v2_hdr`, computes key ids and verifies RSA and ECDSA signatures
//!   over file digests with a [`VerificationKeys`] set.
//! - [`appraise()`] combines replay, template-hash checks, signature checks and per-entry rule
//!   checks through the [`ImaRules`] trait, which a runtime policy implements;
//!   [`RecordedChecks`] appraises before the rules are loaded and confirms the answers after.
//!
//! [`Verdict`]: crate::verdict::Verdict

mod appraise;
mod ascii;
mod binary;
mod entry;
mod replay;
pub(crate) mod sig;
mod speculate;

#[cfg(test)]
mod sig_tests;
#[cfg(test)]
mod speculate_tests;
#[cfg(test)]
mod tests;

pub use appraise::{
    FileCheck, ImaAppraisal, ImaOptions, ImaRules, KeyringMeasurement, appraise, appraise_log,
};
pub use ascii::AsciiLog;
pub use binary::{BinaryLog, encode_entry};
pub(crate) use entry::decode_hex;
pub use entry::{Blob, Entry, FileDigest, Position, Template, TemplateKind};
pub use replay::{ImaState, LearnedKey, Replayed, replay, replay_log};
pub use sig::{SignatureError, SignatureKey, VerificationKeys};
pub use speculate::RecordedChecks;

/// The PCR the kernel extends IMA measurements into by default.
pub(crate) const IMA_PCR: u32 = 10;

/// Why a measurement list (or stored state) could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImaError {
    #[error("{}: {defect}", describe(position))]
    Malformed { position: Position, defect: Defect },
    #[error("IMA state: {0}")]
    State(String),
}

fn describe(position: &Position) -> String {
    match position {
        Position::Line(_) => format!("IMA log {position}"),
        Position::Offset(_) => format!("IMA binary log {position}"),
    }
}

/// What is wrong with one entry of a measurement list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Defect {
    #[error("empty line")]
    EmptyLine,
    #[error("missing {0} field")]
    MissingField(&'static str),
    #[error("PCR index {0:?} is not a decimal number below 2^32")]
    Pcr(String),
    #[error("template hash {0:?} is not 20, 32, 48 or 64 bytes of hex")]
    TemplateHash(String),
    #[error("unknown template {0:?} (supported: ima, ima-ng, ima-sig, ima-buf)")]
    UnknownTemplate(String),
    #[error("file digest {0:?} is not <alg>:<hex> of at most 64 bytes")]
    FileDigest(String),
    #[error("{0} is not hex")]
    NotHex(&'static str),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{field} is {len} bytes, more than {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("truncated in {0}")]
    Truncated(&'static str),
    #[error("n-ng field is not NUL-terminated")]
    NameNotTerminated,
    #[error("{0} contains a NUL byte")]
    NulInName(&'static str),
    #[error("{0} trailing bytes in template data")]
    TrailingData(usize),
}

/// The format of a measurement list, told apart by its first four bytes: a binary log starts
/// with a little-endian `u32` PCR index (a control character and three zero bytes); anything
/// else is read as text, so that a text file that is not a log gets a line-numbered error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Ascii,
    Binary,
}

impl LogFormat {
    pub fn detect(log: &[u8]) -> LogFormat {
        match log {
            [pcr, 0, 0, 0, ..] if *pcr < 0x20 => LogFormat::Binary,
            _ => LogFormat::Ascii,
        }
    }
}

/// Entries of a log in either format.
#[derive(Debug, Clone)]
pub enum Entries<'a> {
    Ascii(AsciiLog<'a>),
    Binary(BinaryLog<'a>),
}

impl<'a> Entries<'a> {
    /// Parses `log` (format detected) whose first entry is entry `first_index` of the full list.
    pub fn parse(log: &'a [u8], first_index: u64) -> Entries<'a> {
        match LogFormat::detect(log) {
            LogFormat::Ascii => Entries::Ascii(AsciiLog::starting_at(log, first_index)),
            LogFormat::Binary => Entries::Binary(BinaryLog::starting_at(log, first_index)),
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, ImaError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Entries::Ascii(a) => a.next(),
            Entries::Binary(b) => b.next(),
        }
    }
}
