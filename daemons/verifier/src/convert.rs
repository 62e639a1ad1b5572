//! Between stored records, kl-core verdicts and the API's messages (and the JSON of webhooks
//! and revocation notices).

use kl_core::verdict::{Finding, Verdict};
use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{AgentEntry, EventRecord, HistoryRecord, PolicyName, Timestamp};
use serde_json::{Value, json};

use crate::policies::pcr_policy_proto;

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
        expected_json: f.expected.as_ref().map(Value::to_string),
        actual_json: f.actual.as_ref().map(Value::to_string),
    }
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

pub(crate) fn verdict(stored: &str) -> Option<pb::Verdict> {
    let stored: StoredVerdict = serde_json::from_str(stored).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
