//! Errors of this crate, and the classification of raw TSS response codes into the few cases a
//! caller acts on differently (connection lost, lockout, TPM memory exhausted).

use std::fmt;
use std::io;
use std::path::PathBuf;

use bitfield::BitRange;
use tss_esapi::constants::response_code::Tss2ResponseCode;

/// TPM_RC_LOCKOUT: the dictionary-attack protection refuses DA-protected objects.
pub const RC_LOCKOUT: u32 = 0x921;
/// TPM_RC_OBJECT_MEMORY: no free transient object slot.
pub const RC_OBJECT_MEMORY: u32 = 0x902;
/// TPM_RC_SESSION_MEMORY: no free loaded-session slot.
pub const RC_SESSION_MEMORY: u32 = 0x903;
/// TPM_RC_MEMORY: the TPM ran out of some other memory.
pub const RC_MEMORY: u32 = 0x904;
/// TSS2_TCTI_RC_IO_ERROR: the transport to the TPM failed mid-command.
pub const RC_TCTI_IO_ERROR: u32 = 0xA000A;
/// TSS2_ESYS_RC_BAD_SEQUENCE: the ESYS context is stuck after an interrupted command.
pub const RC_ESYS_BAD_SEQUENCE: u32 = 0x70007;

const LAYER_ESYS: u32 = 7;
const LAYER_TCTI: u32 = 10;
const BASE_BAD_SEQUENCE: u32 = 7;
const BASE_IO_ERROR: u32 = 10;
const BASE_NO_CONNECTION: u32 = 8;
/// TPM_RC_REFERENCE_H0..H6: a handle names an object or session the TPM no longer holds, as
/// after the TPM restarted between two commands.
const RC_REFERENCE_H0: u32 = 0x910;
const RC_REFERENCE_H6: u32 = 0x916;

/// An error from the TPM software stack, shown with its raw response code (tss-esapi prints
/// layer-coded TCTI and ESYS codes only as "response code not recognized").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TssError {
    error: tss_esapi::Error,
}

impl TssError {
    /// The raw TSS2_RC, when the error came from the TSS or the TPM rather than from the
    /// tss-esapi wrapper.
    pub fn code(&self) -> Option<u32> {
        raw_code(&self.error)
    }

    /// The error as tss-esapi reported it.
    pub fn inner(&self) -> tss_esapi::Error {
        self.error
    }

    /// Whether the connection to the TPM broke or the TPM lost our objects: recreating the
    /// context and reloading the keys may succeed.
    pub fn is_connection_lost(&self) -> bool {
        let Some(code) = self.code() else {
            return false;
        };
        let layer = (code >> 16) & 0xff;
        let base = code & 0xffff;
        ((layer == LAYER_TCTI || layer == LAYER_ESYS)
            && matches!(base, BASE_IO_ERROR | BASE_BAD_SEQUENCE | BASE_NO_CONNECTION))
            || (RC_REFERENCE_H0..=RC_REFERENCE_H6).contains(&code)
    }
}

impl From<tss_esapi::Error> for TssError {
    fn from(error: tss_esapi::Error) -> Self {
        TssError { error }
    }
}

impl fmt::Display for TssError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(code) => match software_stack_error(code) {
                Some(text) => write!(f, "{text} (TSS2_RC {code:#x})"),
                None => write!(f, "{} (TSS2_RC {code:#x})", self.error),
            },
            None => write!(f, "{}", self.error),
        }
    }
}

/// Words for the codes of the software stack's own layers, which tss-esapi leaves unnamed.
fn software_stack_error(code: u32) -> Option<String> {
    let layer = match (code >> 16) & 0xff {
        6 => "FAPI",
        7 => "ESYS",
        8 => "SYS",
        9 => "marshalling",
        10 => "TCTI",
        11 | 12 => "resource manager",
        _ => return None,
    };
    let what = match code & 0xffff {
        1 => "general failure",
        2 => "not implemented",
        3 => "bad context",
        5 => "bad reference",
        6 => "buffer too small",
        7 => "called out of sequence (an earlier command was interrupted)",
        8 => "no connection to the TPM",
        9 => "timed out, try again",
        10 => "I/O error talking to the TPM (connection refused or closed)",
        11 => "bad value",
        12 => "not permitted",
        16 => "bad size",
        17 => "malformed response",
        19 => "response too short",
        20 => "incompatible TCTI",
        21 => "not supported",
        23 => "out of memory",
        24 => "invalid ESYS handle",
        27 => "response HMAC from the TPM did not verify",
        other => return Some(format!("{layer} error {other}")),
    };
    Some(format!("{layer}: {what}"))
}

impl std::error::Error for TssError {}

fn raw_code(error: &tss_esapi::Error) -> Option<u32> {
    match error {
        tss_esapi::Error::WrapperError(_) => None,
        tss_esapi::Error::Tss2Error(rc) => Some(match rc {
            Tss2ResponseCode::Success => 0,
            Tss2ResponseCode::FormatZero(rc) => rc.bit_range(31, 0),
            Tss2ResponseCode::FormatOne(rc) => rc.bit_range(31, 0),
        }),
    }
}

/// Everything that can go wrong talking to the TPM or handling its key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    #[error("tcti {tcti:?}: {reason} (expected device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT)")]
    InvalidTcti { tcti: String, reason: String },

    #[error("tcti {tcti:?}: no TPM device at {}: {source}", path.display())]
    NoDevice { tcti: String, path: PathBuf, source: io::Error },

    #[error("tcti {tcti:?}: cannot connect to the TPM: {source}")]
    Connect { tcti: String, source: TssError },

    #[error(
        "{operation}: the TPM is in dictionary-attack lockout (TPM_RC_LOCKOUT {RC_LOCKOUT:#x}); \
         wait for its recovery time, or clear it with `tpm2_dictionarylockout --clear-lockout` \
         (tcti {tcti:?})"
    )]
    Lockout { operation: &'static str, tcti: String },

    #[error(
        "{operation}: the TPM has no free {slots} slot ({code:#x}); another client holds TPM \
         objects or sessions (a TPM without a resource manager, such as swtpm, has 3 of each)"
    )]
    OutOfMemory { operation: &'static str, slots: &'static str, code: u32 },

    #[error(
        "tcti {tcti:?}: the TPM answers with a different EK than before (cleared or replaced); \
         the agent must register again"
    )]
    EkChanged { tcti: String },

    #[error("{operation}: the connection to the TPM (tcti {tcti:?}) was lost: {source}")]
    ConnectionLost { operation: &'static str, tcti: String, source: TssError },

    #[error("{operation}: {source}")]
    Command { operation: &'static str, source: TssError },

    #[error("nonce is {len} bytes; a TPM quote takes at most 64")]
    NonceTooLong { len: usize },

    #[error("PCR {index} does not exist (PCRs are numbered 0 to 23)")]
    PcrIndex { index: u32 },

    #[error("the digest for PCR {index} of bank {bank} is {len} bytes, the bank needs {expected}")]
    PcrDigestLength { index: u32, bank: kl_core::alg::HashAlg, len: usize, expected: usize },

    #[error("the TPM returned no value for PCR {index} of bank {bank} (is the bank active?)")]
    PcrMissing { index: u32, bank: kl_core::alg::HashAlg },

    #[error("PCR values kept changing during the quote: digest mismatch after {attempts} attempts")]
    PcrsUnstable { attempts: u32 },

    #[error("the TPM answered {what} with unexpected data: {reason}")]
    UnexpectedResponse { what: &'static str, reason: String },

    #[error("no AK is loaded: call Tpm::load_or_create_ak first")]
    NoAk,

    #[error("AK file {}: {source}", path.display())]
    AkFile { path: PathBuf, source: io::Error },

    #[error("AK file {}: {reason}", path.display())]
    AkBlob { path: PathBuf, reason: String },

    #[error("AK files in {} hold a {found} key, but {wanted} was asked for", dir.display())]
    AkAlgorithm { dir: PathBuf, found: &'static str, wanted: &'static str },

    #[error("{field} is not a valid {what}: {reason}")]
    InvalidInput { field: &'static str, what: &'static str, reason: String },
}

impl TpmError {
    /// Whether this error means the TPM connection broke (the caller may retry later).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, TpmError::ConnectionLost { .. })
    }

    /// Sorts a failed TPM command into the cases a caller handles differently.
    pub(crate) fn from_tss(operation: &'static str, tcti: &str, error: tss_esapi::Error) -> Self {
        let source = TssError::from(error);
        if source.is_connection_lost() {
            return TpmError::ConnectionLost { operation, tcti: tcti.to_owned(), source };
        }
        match source.code() {
            Some(RC_LOCKOUT) => TpmError::Lockout { operation, tcti: tcti.to_owned() },
            Some(code @ RC_OBJECT_MEMORY) => {
                TpmError::OutOfMemory { operation, slots: "transient object", code }
            }
            Some(code @ RC_SESSION_MEMORY) => {
                TpmError::OutOfMemory { operation, slots: "session", code }
            }
            Some(code @ RC_MEMORY) => TpmError::OutOfMemory { operation, slots: "memory", code },
            _ => TpmError::Command { operation, source },
        }
    }
}

/// A failed step inside an operation: a TSS error still to be classified (and maybe
/// recovered from by reconnecting), or an error that is final as it stands.
#[derive(Debug)]
pub(crate) enum Failure {
    Tss(tss_esapi::Error),
    Tpm(TpmError),
}

impl From<tss_esapi::Error> for Failure {
    fn from(error: tss_esapi::Error) -> Self {
        Failure::Tss(error)
    }
}

impl From<TpmError> for Failure {
    fn from(error: TpmError) -> Self {
        Failure::Tpm(error)
    }
}

impl Failure {
    pub(crate) fn is_connection_lost(&self) -> bool {
        match self {
            Failure::Tss(e) => TssError::from(*e).is_connection_lost(),
            Failure::Tpm(e) => e.is_connection_lost(),
        }
    }

    pub(crate) fn into_error(self, operation: &'static str, tcti: &str) -> TpmError {
        match self {
            Failure::Tss(e) => TpmError::from_tss(operation, tcti, e),
            Failure::Tpm(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::constants::response_code::Tss2ResponseCode;

    fn tss(code: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(code))
    }

    #[test]
    fn raw_codes_survive_the_wrapper() {
        for code in [0x921, 0x902, 0x18b, 0x1df, RC_TCTI_IO_ERROR, RC_ESYS_BAD_SEQUENCE] {
            assert_eq!(TssError::from(tss(code)).code(), Some(code));
        }
        let wrapper = tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam);
        assert_eq!(TssError::from(wrapper).code(), None);
    }

    #[test]
    fn classification() {
        let t = "swtpm:host=127.0.0.1,port=1";
        assert!(matches!(
            TpmError::from_tss("quote", t, tss(RC_TCTI_IO_ERROR)),
            TpmError::ConnectionLost { .. }
        ));
        assert!(matches!(
            TpmError::from_tss("quote", t, tss(RC_ESYS_BAD_SEQUENCE)),
            TpmError::ConnectionLost { .. }
        ));
        assert!(matches!(
            TpmError::from_tss("quote", t, tss(0x910)),
            TpmError::ConnectionLost { .. }
        ));
        let lockout = TpmError::from_tss("load AK", t, tss(RC_LOCKOUT));
        assert!(matches!(lockout, TpmError::Lockout { .. }));
        let text = lockout.to_string();
        assert!(text.contains("tpm2_dictionarylockout") && text.contains("0x921"), "{text}");
        let memory = TpmError::from_tss("create AK", t, tss(RC_OBJECT_MEMORY));
        assert!(memory.to_string().contains("transient object"), "{memory}");
        assert!(matches!(
            TpmError::from_tss("start session", t, tss(RC_SESSION_MEMORY)),
            TpmError::OutOfMemory { slots: "session", .. }
        ));
        let io = TpmError::from_tss("quote", t, tss(RC_TCTI_IO_ERROR)).to_string();
        assert!(io.contains("TCTI: I/O error") && io.contains("0xa000a"), "{io}");
        let other = TpmError::from_tss("activate credential", t, tss(0x1df));
        assert!(matches!(other, TpmError::Command { .. }));
        assert!(other.to_string().contains("0x1df"), "{other}");
    }
}
