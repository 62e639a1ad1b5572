//! Verdicts: the outcome of appraising evidence against policy.
//!
//! A verdict passes when it has no findings. Each finding carries a stable rule id (see
//! [`rule`]) that scripts and alerting can match on, a human-readable message, and whichever
//! evidence references apply (PCR index, event number, IMA line and path, expected and actual
//! values). `checked` records what was actually evaluated, so a policy input that was supplied
//! but not enforced shows up as a finding (`coverage.not_enforced`) rather than as silence.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stable rule ids. Renaming one is a breaking change for users' scripts.
pub mod rule {
    pub const QUOTE_SIGNATURE: &str = "quote.signature";
    pub const QUOTE_NONCE: &str = "quote.nonce";
    pub const QUOTE_PCR_DIGEST: &str = "quote.pcr_digest";
    pub const QUOTE_MALFORMED: &str = "quote.malformed";
    pub const QUOTE_ALGORITHM: &str = "quote.algorithm";
    pub const QUOTE_SELECTION: &str = "quote.selection";
    pub const QUOTE_CLOCK: &str = "quote.clock";
    pub const QUOTE_REPLAYED: &str = "quote.replayed";
    pub const PCR_MISMATCH: &str = "pcr.mismatch";
    pub const PCR_MISSING: &str = "pcr.missing";
    pub const PCR_BANK: &str = "pcr.bank";
    pub const IMA_NOT_IN_POLICY: &str = "ima.not_in_policy";
    pub const IMA_DIGEST_MISMATCH: &str = "ima.digest_mismatch";
    pub const IMA_PCR10_MISMATCH: &str = "ima.pcr10_mismatch";
    pub const IMA_TEMPLATE_HASH: &str = "ima.template_hash";
    pub const IMA_WRONG_PCR: &str = "ima.wrong_pcr";
    pub const IMA_SIGNATURE: &str = "ima.signature";
    pub const IMA_TOMTOU: &str = "ima.tomtou";
    pub const IMA_KEYRING: &str = "ima.keyring";
    pub const IMA_BUF: &str = "ima.buf_not_in_policy";
    pub const IMA_HASH_ALG: &str = "ima.hash_alg";
    pub const IMA_OFFSET: &str = "ima.offset";
    pub const IMA_MALFORMED: &str = "ima.malformed";
    pub const IMA_LOG_MISSING: &str = "ima.log_missing";
    pub const MB_EVENT_LOG_MISSING: &str = "mb.event_log_missing";
    pub const MB_EVENT_LOG_MALFORMED: &str = "mb.event_log_malformed";
    pub const COVERAGE_NOT_ENFORCED: &str = "coverage.not_enforced";
    pub const MB_SECUREBOOT_DISABLED: &str = "mb.secureboot_disabled";
    pub const MB_FIRMWARE_NOT_ALLOWED: &str = "mb.firmware_not_allowed";
    pub const MB_BOOTLOADER_NOT_ALLOWED: &str = "mb.bootloader_not_allowed";
    pub const MB_KERNEL_NOT_ALLOWED: &str = "mb.kernel_not_allowed";
    pub const MB_CMDLINE_NOT_ALLOWED: &str = "mb.cmdline_not_allowed";
    pub const MB_DB_MISSING: &str = "mb.db_missing";
    pub const MB_DBX_MISSING: &str = "mb.dbx_missing";
    pub const MB_PCR_MISMATCH: &str = "mb.pcr_mismatch";
    pub const MB_PCR_MISSING: &str = "mb.pcr_missing";
    pub const MB_BANK_MISSING: &str = "mb.bank_missing";
    pub const MB_DIGEST_MISMATCH: &str = "mb.digest_mismatch";
    pub const MB_EVENT_ORDER: &str = "mb.event_order";
    /// The agent answered the verifier's request with an error, or with no usable quote.
    pub const AGENT_ERROR: &str = "agent.error";
    /// The verifier cannot build the agent's appraisal inputs (a policy it cannot use).
    pub const VERIFIER_POLICY: &str = "verifier.policy";
    /// The verifier's appraisal did not finish (it panicked or was cancelled).
    pub const VERIFIER_INTERNAL: &str = "verifier.internal";
}

/// One reason an attestation did not pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable rule id, e.g. `ima.not_in_policy`.
    pub rule: String,
    /// What went wrong, for humans.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr: Option<u32>,
    /// Event number in a UEFI event log (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<u64>,
    /// Line number in an IMA log (1-based, counted from the start of the full log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Value>,
}

impl Finding {
    pub fn new(rule: &str, message: impl Into<String>) -> Finding {
        Finding {
            rule: rule.to_owned(),
            message: message.into(),
            pcr: None,
            event: None,
            line: None,
            path: None,
            expected: None,
            actual: None,
        }
    }

    pub fn pcr(mut self, pcr: u32) -> Self {
        self.pcr = Some(pcr);
        self
    }

    pub fn event(mut self, event: u64) -> Self {
        self.event = Some(event);
        self
    }

    pub fn line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn expected(mut self, expected: impl Into<Value>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    pub fn actual(mut self, actual: impl Into<Value>) -> Self {
        self.actual = Some(actual.into());
        self
    }
}

/// A finding's `expected` or `actual` value as the verifier's API carries it: JSON text.
pub fn value_to_text(value: &Value) -> String {
    value.to_string()
}

/// A value back from [`value_to_text`]; text that is not JSON is taken as a string.
pub fn value_from_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The outcome of one appraisal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    /// What was evaluated, e.g. `quote`, `pcrs`, `ima`, `measured_boot`.
    #[serde(default)]
    pub checked: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }

    pub fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    pub fn checked(&mut self, what: &str) {
        if !self.checked.iter().any(|c| c == what) {
            self.checked.push(what.to_owned());
        }
    }

    /// Records a finding for each input in `supplied` that is missing from `checked`.
    pub fn require_coverage(&mut self, supplied: &[&str]) {
        for input in supplied {
            if !self.checked.iter().any(|c| c == input) {
                self.push(Finding::new(
                    rule::COVERAGE_NOT_ENFORCED,
                    format!("{input} was supplied but not evaluated"),
                ));
            }
        }
    }

    pub fn merge(&mut self, other: Verdict) {
        self.findings.extend(other.findings);
        for c in other.checked {
            self.checked(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_json_omits_absent_fields() {
        let f = Finding::new(rule::IMA_NOT_IN_POLICY, "not allowed").line(3).path("/bin/x");
        let json = serde_json::to_value(&f).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"rule": "ima.not_in_policy", "message": "not allowed", "line": 3, "path": "/bin/x"})
        );
    }

    #[test]
    fn values_survive_their_text_and_other_text_is_a_string() {
        for value in [serde_json::json!(["ab", "cd"]), serde_json::json!("sha1"), Value::Null] {
            assert_eq!(value_from_text(&value_to_text(&value)), value);
        }
        assert_eq!(value_from_text("not json"), serde_json::json!("not json"));
    }

    #[test]
    fn uncovered_input_fails() {
        let mut v = Verdict::default();
        v.checked("quote");
        v.require_coverage(&["quote"]);
        assert!(v.passed());
        v.require_coverage(&["ima"]);
        assert!(!v.passed());
        assert_eq!(v.findings[0].rule, rule::COVERAGE_NOT_ENFORCED);
    }
}
