//! TPM 2.0 wire structures, parsed by hand from their big-endian marshalling.
//!
//! This module owns the byte layout of what a TPM hands out for attestation: public areas
//! (`TPMT_PUBLIC`, `TPM2B_PUBLIC`) and object names, attestation structures (`TPMS_ATTEST`
//! for quotes and certifications), signatures (`TPMT_SIGNATURE`), PCR selections, and the
//! PCR dump tpm2-tools writes beside a quote. It also turns an RSA or ECC public area into the
//! forms other code needs: ring verification components and a DER `SubjectPublicKeyInfo`.
//!
//! Parsers never panic: every error names the structure, the field and the byte offset.
//! Whether a parsed structure is *trustworthy* (signature, nonce, PCRs) is decided in
//! [`crate::quote`]; this module only says what the bytes mean. Each structure can be
//! marshalled back, which tests use to build synthetic quotes.

mod attest;
mod pcr;
mod public;
mod signature;
mod wire;

pub use attest::{Attest, AttestBody, ClockInfo};
pub use pcr::{PcrBankSelection, PcrDump, PcrSelection, PcrSet, PcrValues, PcrValuesError};
pub use public::{
    EccCurve, EccPublic, ObjectAttributes, Public, RsaPublic, Scheme, SymmetricDef, TpmKey,
};
pub use signature::{SigAlg, Signature, SignatureBody};

/// TPM_ALG_ID values used by the structures this module parses.
pub mod alg_id {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const HMAC: u16 = 0x0005;
    pub const AES: u16 = 0x0006;
    pub const KEYEDHASH: u16 = 0x0008;
    pub const XOR: u16 = 0x000a;
    pub const SHA256: u16 = 0x000b;
    pub const SHA384: u16 = 0x000c;
    pub const SHA512: u16 = 0x000d;
    pub const NULL: u16 = 0x0010;
    pub const SM3_256: u16 = 0x0012;
    pub const SM4: u16 = 0x0013;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAES: u16 = 0x0015;
    pub const RSAPSS: u16 = 0x0016;
    pub const OAEP: u16 = 0x0017;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDH: u16 = 0x0019;
    pub const ECDAA: u16 = 0x001a;
    pub const SM2: u16 = 0x001b;
    pub const ECSCHNORR: u16 = 0x001c;
    pub const ECMQV: u16 = 0x001d;
    pub const KDF1_SP800_56A: u16 = 0x0020;
    pub const KDF2: u16 = 0x0021;
    pub const KDF1_SP800_108: u16 = 0x0022;
    pub const ECC: u16 = 0x0023;
    pub const SYMCIPHER: u16 = 0x0025;
    pub const CAMELLIA: u16 = 0x0026;
    pub const CFB: u16 = 0x0043;
}

/// TPM_ST values for attestation structures.
pub mod st {
    pub const ATTEST_CERTIFY: u16 = 0x8017;
    pub const ATTEST_QUOTE: u16 = 0x8018;
}

/// Why bytes could not be read as a TPM structure. Every variant names the structure, the
/// field (dotted for nested fields) and the byte offset from the start of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "{structure}.{field} at byte {offset}: truncated, needs {needed} bytes but {available} remain"
    )]
    Truncated {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("{structure}.{field} at byte {offset}: {value:#x} is not {expected}")]
    Invalid {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        value: u64,
        expected: &'static str,
    },
    #[error("{structure}.{field} at byte {offset}: size {size} exceeds the maximum {max}")]
    TooLarge {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        size: usize,
        max: usize,
    },
    #[error("{structure} at byte {offset}: {count} unexpected trailing bytes")]
    Trailing { structure: &'static str, offset: usize, count: usize },
}

impl Error {
    /// The byte offset the error refers to.
    pub fn offset(&self) -> usize {
        match self {
            Error::Truncated { offset, .. }
            | Error::Invalid { offset, .. }
            | Error::TooLarge { offset, .. }
            | Error::Trailing { offset, .. } => *offset,
        }
    }

    /// The structure being parsed, e.g. `TPMS_ATTEST`.
    pub fn structure(&self) -> &'static str {
        match self {
            Error::Truncated { structure, .. }
            | Error::Invalid { structure, .. }
            | Error::TooLarge { structure, .. }
            | Error::Trailing { structure, .. } => structure,
        }
    }
}

/// The largest digest a TPM2B_DIGEST may hold (SHA-512).
pub(crate) const MAX_DIGEST: usize = 64;
/// TPM2B_NAME holds an algorithm id and a digest.
pub(crate) const MAX_NAME: usize = 2 + MAX_DIGEST;
/// TPM2B_DATA holds at most a TPMT_HA.
pub(crate) const MAX_DATA: usize = 2 + MAX_DIGEST;
/// RSA keys up to 8192 bits, the most any verifier here accepts.
pub(crate) const MAX_RSA_BYTES: usize = 1024;
/// ECC coordinates up to P-521.
pub(crate) const MAX_ECC_BYTES: usize = 66;

pub(crate) use public::strip_leading_zeros_to;
pub use signature::UnknownSigAlg;
