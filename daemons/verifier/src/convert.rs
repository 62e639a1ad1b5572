//! Between stored records, kl-core types and the API's messages (and the JSON of webhooks
//! and revocation notices).
//!
//! A verdict is kl-core's [`Verdict`] from appraisal to here; the store keeps it as a
//! [`VerdictRecord`] (and the findings of an `attestation_failed` event as [`FindingRecord`]s),
//! whose expected and actual values are JSON text, as the API carries them ([`finding`]). A PCR
//! policy is kl-core's [`PcrPolicy`], stored as its own document.

use kl_core::policy::PcrPolicy;
use kl_core::verdict::{Finding, Verdict, value_from_text, value_to_text};
use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{
    AgentEntry, EventRecord, FindingRecord, HistoryRecord, PolicyName, Timestamp, VerdictRecord,
};
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

/// A verdict as the store keeps it, recorded at `at`.
pub(crate) fn verdict_record(verdict: Verdict, at: Timestamp) -> VerdictRecord {
    VerdictRecord {
        at,
        checked: verdict.checked,
        findings: verdict.findings.into_iter().map(finding_record).collect(),
    }
}

/// A finding as the store keeps it: its expected and actual values as JSON text.
pub(crate) fn finding_record(f: Finding) -> FindingRecord {
    FindingRecord {
        rule: f.rule,
        message: f.message,
        pcr: f.pcr,
        event: f.event,
        line: f.line,
        path: f.path,
        expected_json: f.expected.as_ref().map(value_to_text),
        actual_json: f.actual.as_ref().map(value_to_text),
    }
}

pub(crate) fn finding(f: &FindingRecord) -> pb::Finding {
    pb::Finding {
        rule: f.rule.clone(),
        message: f.message.clone(),
        pcr: f.pcr,
        event: f.event,
        line: f.line,
        path: f.path.clone(),
        expected_json: f.expected_json.clone(),
        actual_json: f.actual_json.clone(),
    }
}

/// A finding in the JSON of webhooks and revocation notices: kl-core's form of a finding
/// (absent fields left out, expected and actual as JSON values).
fn finding_json(f: &FindingRecord) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("rule".to_owned(), json!(f.rule));
    object.insert("message".to_owned(), json!(f.message));
    let optional = [
        ("pcr", f.pcr.map(Value::from)),
        ("event", f.event.map(Value::from)),
        ("line", f.line.map(Value::from)),
        ("path", f.path.as_deref().map(Value::from)),
        ("expected", f.expected_json.as_deref().map(value_from_text)),
        ("actual", f.actual_json.as_deref().map(value_from_text)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            object.insert(name.to_owned(), value);
        }
    }
    Value::Object(object)
}

pub(crate) fn verdict(stored: &VerdictRecord) -> pb::Verdict {
    pb::Verdict {
        passed: stored.passed(),
        findings: stored.findings.iter().map(finding).collect(),
        checked: stored.checked.clone(),
        at: Some(timestamp(&stored.at)),
    }
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
        last_verdict: entry.last_verdict.as_ref().map(verdict),
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
        findings: e.findings.iter().map(finding).collect(),
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
        "findings": e.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "message": e.message,
    })
}

pub(crate) fn attestation(h: &HistoryRecord) -> pb::Attestation {
    pb::Attestation {
        sequence: h.sequence,
        at: Some(timestamp(&h.at)),
        verdict: h.verdict.as_ref().map(verdict),
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
    use kl_core::verdict::rule;

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
    fn findings_keep_their_values_from_appraisal_to_the_api_and_webhooks() {
        let verdict = Verdict {
            findings: vec![
                Finding::new(rule::PCR_MISMATCH, "PCR 7 differs")
                    .pcr(7)
                    .expected(json!(["ab", "cd"]))
                    .actual("ef"),
                Finding::new(rule::MB_EVENT_ORDER, "bad event").event(3).expected(json!({"a": 1})),
            ],
            checked: vec!["quote".to_owned(), "pcrs".to_owned()],
        };
        let at = Timestamp { seconds: 9, nanos: 0 };
        let stored = verdict_record(verdict, at);
        let api = self::verdict(&stored);
        assert!(!api.passed);
        assert_eq!(api.checked, ["quote", "pcrs"]);
        assert_eq!(api.findings[0].expected_json.as_deref(), Some(r#"["ab","cd"]"#));
        assert_eq!(api.findings[0].actual_json.as_deref(), Some(r#""ef""#));
        assert_eq!((api.findings[1].event, api.findings[1].pcr), (Some(3), None));
        // Webhooks carry kl-core's JSON form: values as JSON, absent fields left out.
        assert_eq!(
            finding_json(&stored.findings[0]),
            json!({"rule": rule::PCR_MISMATCH, "message": "PCR 7 differs", "pcr": 7,
                   "expected": ["ab", "cd"], "actual": "ef"})
        );
        assert_eq!(
            finding_json(&stored.findings[1]),
            json!({"rule": rule::MB_EVENT_ORDER, "message": "bad event", "event": 3,
                   "expected": {"a": 1}})
        );
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
