//! Between stored records, kl-core types and the API's messages (and the JSON of webhooks
//! and revocation notices).
//!
//! A verdict is kl-core's [`Verdict`] from appraisal to here; the store keeps it as JSON text
//! (a [`StoredVerdict`], and the findings of an `attestation_failed` event), written and read
//! only by this module, and the API carries each finding's expected and actual values as JSON
//! text ([`finding`]). A PCR policy is kl-core's [`PcrPolicy`], stored as its own document.

use kl_core::policy::PcrPolicy;
use kl_core::verdict::{Finding, Verdict, value_to_text};
use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{AgentEntry, EventRecord, HistoryRecord, PolicyName, Timestamp};
use serde_json::{Value, json};

use crate::Error;

pub(crate) fn timestamp(t: &Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.seconds, nanos: i32::try_from(t.nanos).unwrap_or(0) }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-28T05:07:17.123Z`.
pub(crate) fn rfc3339(t: &Timestamp) -> String {
    kl_core::date::rfc3339(t.seconds, Some(t.nanos / 1_000_000))
}

pub(crate) fn state_name(state: i32) -> &'static str {
    match pb::AgentState::try_from(state).unwrap_or(pb::AgentState::Unspecified) {
        pb::AgentState::Unspecified => "unspecified",
        pb::AgentState::Pending => "pending",
        pb::AgentState::Passed => "passed",
        pb::AgentState::Failed => "failed",
        pb::AgentState::Unreachable => "unreachable",
        pb::AgentState::Stopped => "stopped",
    }
}

pub(crate) fn kind_name(kind: i32) -> &'static str {
    match pb::EventKind::try_from(kind).unwrap_or(pb::EventKind::Unspecified) {
        pb::EventKind::Unspecified => "unspecified",
        pb::EventKind::Enrolled => "enrolled",
        pb::EventKind::Unenrolled => "unenrolled",
        pb::EventKind::StateChanged => "state_changed",
        pb::EventKind::AttestationFailed => "attestation_failed",
        pb::EventKind::Unreachable => "unreachable",
        pb::EventKind::RevocationSent => "revocation_sent",
        pb::EventKind::PolicyChanged => "policy_changed",
    }
}

pub(crate) fn finding(f: &Finding) -> pb::Finding {
    pb::Finding {
        rule: f.rule.clone(),
        message: f.message.clone(),
        pcr: f.pcr,
        event: f.event,
        line: f.line,
        path: f.path.clone(),
        expected_json: f.expected.as_ref().map(value_to_text),
        actual_json: f.actual.as_ref().map(value_to_text),
    }
}

/// The stored findings of an event ("" for none).
pub(crate) fn findings_json(findings: &[Finding]) -> String {
    serde_json::to_string(findings).unwrap_or_default()
}

fn findings_from_json(text: &str) -> Vec<Finding> {
    if text.is_empty() {
        return Vec::new();
    }
    serde_json::from_str(text).unwrap_or_default()
}

/// A stored verdict: `{"verdict": {...}, "at": {...}}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredVerdict {
    pub verdict: Verdict,
    pub at: Timestamp,
}

impl StoredVerdict {
    /// Its stored text: `AgentEntry::last_verdict_json` and `HistoryRecord::verdict_json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored text back; `None` for "" (no verdict yet) or a text this version cannot read.
    pub fn from_json(text: &str) -> Option<StoredVerdict> {
        serde_json::from_str(text).ok()
    }
}

pub(crate) fn verdict(stored: &str) -> Option<pb::Verdict> {
    let stored = StoredVerdict::from_json(stored)?;
    Some(pb::Verdict {
        passed: stored.verdict.passed(),
        findings: stored.verdict.findings.iter().map(finding).collect(),
        checked: stored.verdict.checked.clone(),
        at: Some(timestamp(&stored.at)),
    })
}

pub(crate) fn agent_status(entry: &AgentEntry) -> pb::AgentStatus {
    pb::AgentStatus {
        agent_id: entry.agent_id.clone(),
        state: entry.state,
        contact: Some(pb::Contact {
            ip: entry.contact_ip.clone(),
            port: u32::from(entry.contact_port),
        }),
        runtime_policy: entry.runtime_policy.clone(),
        measured_boot_policy: entry.measured_boot_policy.clone(),
        pcr_policy: pcr_policy_proto(&entry.pcr_policy_json),
        accept_hash_algorithms: entry.accept_hash_algorithms.clone(),
        accept_signing_algorithms: entry.accept_signing_algorithms.clone(),
        attestation_count: entry.attestation_count,
        enrolled_at: Some(timestamp(&entry.enrolled_at)),
        last_attestation_at: entry.last_attestation_at.as_ref().map(timestamp),
        last_success_at: entry.last_success_at.as_ref().map(timestamp),
        last_verdict: verdict(&entry.last_verdict_json),
        ima_offset: entry.ima_offset,
        reset_count: entry.reset_count,
        consecutive_errors: entry.consecutive_errors,
        key_delivered: entry.key_delivered,
        payload_digest: entry.payload_digest.clone(),
    }
}

pub(crate) fn event(e: &EventRecord) -> pb::Event {
    pb::Event {
        cursor: e.cursor,
        at: Some(timestamp(&e.at)),
        kind: e.kind,
        agent_id: e.agent_id.clone(),
        state: e.state,
        previous_state: e.previous_state,
        findings: findings_from_json(&e.findings_json).iter().map(finding).collect(),
        message: e.message.clone(),
    }
}

/// The JSON document of an event, as webhooks and revocation notices carry it.
pub(crate) fn event_json(e: &EventRecord) -> Value {
    json!({
        "cursor": e.cursor,
        "event_time": rfc3339(&e.at),
        "kind": kind_name(e.kind),
        "agent_id": e.agent_id,
        "state": state_name(e.state),
        "previous_state": state_name(e.previous_state),
        "findings": findings_from_json(&e.findings_json),
        "message": e.message,
    })
}

pub(crate) fn attestation(h: &HistoryRecord) -> pb::Attestation {
    pb::Attestation {
        sequence: h.sequence,
        at: Some(timestamp(&h.at)),
        verdict: verdict(&h.verdict_json),
        reset_count: h.reset_count,
        restart_count: h.restart_count,
        clock: h.clock,
        ima_entries: h.ima_entries,
        duration_us: h.duration_us,
    }
}

pub(crate) fn policy_info(p: &PolicyName, agents: u64) -> pb::PolicyInfo {
    pb::PolicyInfo {
        name: p.name.clone(),
        digest: p.digest.clone(),
        entries: p.entries,
        updated_at: Some(timestamp(&p.updated_at)),
        agents,
    }
}

/// The API's PCR policy as its stored document ("" for none), refused when kl-core would
/// refuse it.
pub(crate) fn pcr_policy(proto: Option<&pb::PcrPolicy>) -> Result<String, Error> {
    let Some(proto) = proto.filter(|p| !p.pcrs.is_empty()) else {
        return Ok(String::new());
    };
    let values: std::collections::BTreeMap<u32, Vec<Vec<u8>>> =
        proto.pcrs.iter().map(|(pcr, values)| (*pcr, values.values.clone())).collect();
    let policy =
        PcrPolicy::from_values(values).map_err(|e| Error::invalid("pcr_policy", e.to_string()))?;
    Ok(policy.to_json().to_string())
}

/// The stored PCR policy document back as the API's message.
pub(crate) fn pcr_policy_proto(json: &str) -> Option<pb::PcrPolicy> {
    if json.is_empty() {
        return None;
    }
    let policy = PcrPolicy::from_json(json.as_bytes()).ok()?;
    let pcrs = policy
        .allowed()
        .map(|(pcr, values)| (pcr, pb::PcrValues { values: values.to_vec() }))
        .collect();
    Some(pb::PcrPolicy { pcrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_policies_round_trip_and_bad_values_name_the_field() -> Result<(), Error> {
        let mut proto = pb::PcrPolicy::default();
        proto.pcrs.insert(7, pb::PcrValues { values: vec![vec![1; 32]] });
        proto.pcrs.insert(10, pb::PcrValues { values: vec![vec![2; 20], vec![3; 32]] });
        let json = pcr_policy(Some(&proto))?;
        let (one, two, three) = ("01".repeat(32), "02".repeat(20), "03".repeat(32));
        // The stored document, as verifiers before kl-core's typed constructor wrote it.
        assert_eq!(json, format!(r#"{{"pcrs":{{"10":["{two}","{three}"],"7":["{one}"]}}}}"#));
        assert_eq!(pcr_policy_proto(&json), Some(proto.clone()));
        proto.pcrs.insert(8, pb::PcrValues { values: vec![vec![1; 5]] });
        assert!(matches!(
            pcr_policy(Some(&proto)),
            Err(Error::InvalidArgument { field: "pcr_policy", .. })
        ));
        assert_eq!(pcr_policy(None)?, "");
        Ok(())
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(&Timestamp { seconds: 0, nanos: 0 }), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(&Timestamp { seconds: 1_795_756_037, nanos: 123_000_000 }),
            "2026-11-27T05:07:17.123Z"
        );
        assert_eq!(
            rfc3339(&Timestamp { seconds: 951_782_400, nanos: 0 }),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
