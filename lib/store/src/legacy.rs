//! Record layouts of earlier schema versions, kept to migrate the files and databases that
//! hold them. A layout here never changes: postcard records carry no field names, so a stored
//! record is read back only with the layout that wrote it.

use serde::{Deserialize, Serialize};

pub(crate) use crate::registrar::Timestamp;
use crate::verifier::{AgentEntry, EventRecord, FindingRecord, HistoryRecord, VerdictRecord};

/// [`AgentEntry`] as verifier schema version 1 stored it: without `payload_digest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AgentEntryV1 {
    pub agent_id: String,
    pub contact_ip: String,
    pub contact_port: u16,
    pub ak_public: Vec<u8>,
    pub agent_certificate: Vec<u8>,
    pub runtime_policy: String,
    pub measured_boot_policy: String,
    pub pcr_policy_json: String,
    pub v_key_half: Vec<u8>,
    pub key_delivered: bool,
    pub accept_hash_algorithms: Vec<String>,
    pub accept_signing_algorithms: Vec<String>,
    pub hash_algorithm: String,
    pub state: i32,
    pub attestation_count: u64,
    pub enrolled_at: Timestamp,
    pub last_attestation_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub last_verdict_json: String,
    pub attestation_state_json: String,
    pub ima_offset: u64,
    pub reset_count: u32,
    pub consecutive_errors: u32,
    pub history_sequence: u64,
}

/// [`AgentEntry`] as verifier schema version 2 (PostgreSQL versions 1 to 3) stored it: the last
/// verdict as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AgentEntryV2 {
    pub agent_id: String,
    pub contact_ip: String,
    pub contact_port: u16,
    pub ak_public: Vec<u8>,
    pub agent_certificate: Vec<u8>,
    pub runtime_policy: String,
    pub measured_boot_policy: String,
    pub pcr_policy_json: String,
    pub v_key_half: Vec<u8>,
    pub key_delivered: bool,
    pub accept_hash_algorithms: Vec<String>,
    pub accept_signing_algorithms: Vec<String>,
    pub hash_algorithm: String,
    pub state: i32,
    pub attestation_count: u64,
    pub enrolled_at: Timestamp,
    pub last_attestation_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub last_verdict_json: String,
    pub attestation_state_json: String,
    pub ima_offset: u64,
    pub reset_count: u32,
    pub consecutive_errors: u32,
    pub history_sequence: u64,
    pub payload_digest: String,
}

impl From<AgentEntryV1> for AgentEntryV2 {
    fn from(old: AgentEntryV1) -> AgentEntryV2 {
        AgentEntryV2 {
            agent_id: old.agent_id,
            contact_ip: old.contact_ip,
            contact_port: old.contact_port,
            ak_public: old.ak_public,
            agent_certificate: old.agent_certificate,
            runtime_policy: old.runtime_policy,
            measured_boot_policy: old.measured_boot_policy,
            pcr_policy_json: old.pcr_policy_json,
            v_key_half: old.v_key_half,
            key_delivered: old.key_delivered,
            accept_hash_algorithms: old.accept_hash_algorithms,
            accept_signing_algorithms: old.accept_signing_algorithms,
            hash_algorithm: old.hash_algorithm,
            state: old.state,
            attestation_count: old.attestation_count,
            enrolled_at: old.enrolled_at,
            last_attestation_at: old.last_attestation_at,
            last_success_at: old.last_success_at,
            last_verdict_json: old.last_verdict_json,
            attestation_state_json: old.attestation_state_json,
            ima_offset: old.ima_offset,
            reset_count: old.reset_count,
            consecutive_errors: old.consecutive_errors,
            history_sequence: old.history_sequence,
            payload_digest: String::new(),
        }
    }
}

impl From<AgentEntryV2> for AgentEntry {
    fn from(old: AgentEntryV2) -> AgentEntry {
        AgentEntry {
            agent_id: old.agent_id,
            contact_ip: old.contact_ip,
            contact_port: old.contact_port,
            ak_public: old.ak_public,
            agent_certificate: old.agent_certificate,
            runtime_policy: old.runtime_policy,
            measured_boot_policy: old.measured_boot_policy,
            pcr_policy_json: old.pcr_policy_json,
            v_key_half: old.v_key_half,
            key_delivered: old.key_delivered,
            accept_hash_algorithms: old.accept_hash_algorithms,
            accept_signing_algorithms: old.accept_signing_algorithms,
            hash_algorithm: old.hash_algorithm,
            state: old.state,
            attestation_count: old.attestation_count,
            enrolled_at: old.enrolled_at,
            last_attestation_at: old.last_attestation_at,
            last_success_at: old.last_success_at,
            last_verdict: verdict_from_text(&old.last_verdict_json),
            attestation_state_json: old.attestation_state_json,
            ima_offset: old.ima_offset,
            reset_count: old.reset_count,
            consecutive_errors: old.consecutive_errors,
            history_sequence: old.history_sequence,
            payload_digest: old.payload_digest,
            revision: 0,
        }
    }
}

/// [`HistoryRecord`] with the verdict as JSON text (verifier schema version 2 and before,
/// PostgreSQL 3 and before).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HistoryRecordV1 {
    pub sequence: u64,
    pub at: Timestamp,
    pub verdict_json: String,
    pub reset_count: u32,
    pub restart_count: u32,
    pub clock: u64,
    pub ima_entries: u64,
    pub duration_us: u64,
}

impl From<HistoryRecordV1> for HistoryRecord {
    fn from(old: HistoryRecordV1) -> HistoryRecord {
        HistoryRecord {
            sequence: old.sequence,
            at: old.at,
            verdict: verdict_from_text(&old.verdict_json),
            reset_count: old.reset_count,
            restart_count: old.restart_count,
            clock: old.clock,
            ima_entries: old.ima_entries,
            duration_us: old.duration_us,
        }
    }
}

/// [`EventRecord`] with the findings as a JSON array (verifier schema version 2 and before,
/// PostgreSQL 3 and before).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EventRecordV1 {
    pub cursor: u64,
    pub at: Timestamp,
    pub kind: i32,
    pub agent_id: String,
    pub state: i32,
    pub previous_state: i32,
    pub findings_json: String,
    pub message: String,
}

impl From<EventRecordV1> for EventRecord {
    fn from(old: EventRecordV1) -> EventRecord {
        EventRecord {
            cursor: old.cursor,
            at: old.at,
            kind: old.kind,
            agent_id: old.agent_id,
            state: old.state,
            previous_state: old.previous_state,
            findings: findings_from_text(&old.findings_json),
            message: old.message,
        }
    }
}

/// The JSON text verifiers wrote for a verdict: `{"verdict": {"findings": [...], "checked":
/// [...]}, "at": {"seconds": .., "nanos": ..}}`.
#[derive(Deserialize)]
struct VerdictText {
    verdict: VerdictBodyText,
    at: Timestamp,
}

#[derive(Deserialize)]
struct VerdictBodyText {
    findings: Vec<FindingText>,
    #[serde(default)]
    checked: Vec<String>,
}

/// A finding as JSON text: absent fields are `None`; expected and actual are any JSON value.
#[derive(Deserialize)]
struct FindingText {
    rule: String,
    message: String,
    #[serde(default)]
    pcr: Option<u32>,
    #[serde(default)]
    event: Option<u64>,
    #[serde(default)]
    line: Option<u64>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    expected: Option<serde_json::Value>,
    #[serde(default)]
    actual: Option<serde_json::Value>,
}

impl From<FindingText> for FindingRecord {
    fn from(f: FindingText) -> FindingRecord {
        FindingRecord {
            rule: f.rule,
            message: f.message,
            pcr: f.pcr,
            event: f.event,
            line: f.line,
            path: f.path,
            expected_json: f.expected.map(|v| v.to_string()),
            actual_json: f.actual.map(|v| v.to_string()),
        }
    }
}

/// A stored verdict text as a record; `None` for "" (no verdict yet) and for a text that is
/// not a verdict (which earlier versions could not show either).
pub(crate) fn verdict_from_text(text: &str) -> Option<VerdictRecord> {
    let parsed: VerdictText = serde_json::from_str(text).ok()?;
    Some(VerdictRecord {
        at: parsed.at,
        checked: parsed.verdict.checked,
        findings: parsed.verdict.findings.into_iter().map(FindingRecord::from).collect(),
    })
}

/// The stored findings of an event; none for "" and for a text that is not a findings array.
pub(crate) fn findings_from_text(text: &str) -> Vec<FindingRecord> {
    serde_json::from_str::<Vec<FindingText>>(text)
        .map(|findings| findings.into_iter().map(FindingRecord::from).collect())
        .unwrap_or_default()
}

/// Re-encodes a PostgreSQL `verifier_agents` record of schema version 3 in version 4's layout.
pub(crate) fn agent_record_v4(bytes: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    let old: AgentEntryV2 = postcard::from_bytes(bytes)?;
    postcard::to_allocvec(&AgentEntry::from(old))
}

/// Re-encodes a PostgreSQL `verifier_history` record of schema version 3 in version 4's layout.
pub(crate) fn history_record_v4(bytes: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    let old: HistoryRecordV1 = postcard::from_bytes(bytes)?;
    postcard::to_allocvec(&HistoryRecord::from(old))
}

/// Re-encodes a PostgreSQL `verifier_events` record of schema version 3 in version 4's layout.
pub(crate) fn event_record_v4(bytes: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    let old: EventRecordV1 = postcard::from_bytes(bytes)?;
    postcard::to_allocvec(&EventRecord::from(old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_texts_of_earlier_versions_become_records() {
        // As verifiers wrote them: a pass, and a failure whose values are a string, an array
        // and an object.
        let passed = r#"{"verdict":{"findings":[],"checked":["quote","pcrs","ima"]},"at":{"seconds":1795756037,"nanos":5}}"#;
        let record = verdict_from_text(passed).expect("a verdict");
        assert!(record.passed());
        assert_eq!(record.checked, ["quote", "pcrs", "ima"]);
        assert_eq!(record.at, Timestamp { seconds: 1_795_756_037, nanos: 5 });
        let failed = r#"{"verdict":{"findings":[
            {"rule":"pcr.mismatch","message":"PCR 7 differs","pcr":7,"expected":["ab"],"actual":"cd"},
            {"rule":"mb.event","message":"bad","event":3,"expected":{"a":1}},
            {"rule":"ima.not_in_policy","message":"no","line":12,"path":"/bin/x"}]},
            "at":{"seconds":1,"nanos":0}}"#;
        let record = verdict_from_text(failed).expect("a verdict");
        assert!(!record.passed());
        assert!(record.checked.is_empty(), "verdicts without `checked` read as none");
        let first = &record.findings[0];
        assert_eq!(
            (
                first.rule.as_str(),
                first.pcr,
                first.expected_json.as_deref(),
                first.actual_json.as_deref()
            ),
            ("pcr.mismatch", Some(7), Some(r#"["ab"]"#), Some(r#""cd""#))
        );
        assert_eq!(record.findings[1].expected_json.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(record.findings[1].event, Some(3));
        let third = &record.findings[2];
        assert_eq!(
            (third.line, third.path.as_deref(), third.expected_json.as_deref()),
            (Some(12), Some("/bin/x"), None)
        );
        assert_eq!(verdict_from_text(""), None);
        assert_eq!(verdict_from_text("{}"), None);
        assert_eq!(verdict_from_text("not json"), None);
    }

    #[test]
    fn finding_texts_of_earlier_versions_become_records() {
        let findings = findings_from_text(
            r#"[{"rule":"ima.not_in_policy","message":"m","actual":"sha256:00"}]"#,
        );
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].actual_json.as_deref(), Some(r#""sha256:00""#));
        assert!(findings_from_text("").is_empty());
        assert!(findings_from_text("{}").is_empty());
    }
}
