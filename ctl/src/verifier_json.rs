//! The JSON kctl prints for verifier objects. `show` output is what `apply`/`enroll` accept,
//! so automation can compare dicts: names for policies, hex for PCR values, RFC 3339 times.
//! Something absent (no policy, no agent, no state) is `null`, never `""`; the agent id is
//! `uuid`.

use kl_core::verdict;
use kl_proto::verifier::v1::{
    AgentState, AgentStatus, Attestation, Event, EventKind, Finding, PcrPolicy, PolicyInfo, Verdict,
};
use serde_json::{Map, Value, json};

use crate::connect::rfc3339;

pub fn state_name(state: i32) -> &'static str {
    match AgentState::try_from(state).unwrap_or(AgentState::Unspecified) {
        AgentState::Unspecified => "unknown",
        AgentState::Pending => "pending",
        AgentState::Passed => "passed",
        AgentState::Failed => "failed",
        AgentState::Unreachable => "unreachable",
        AgentState::Stopped => "stopped",
    }
}

/// `null` for a state the verifier left unspecified (the state before enrolment, after
/// unenrolment, or of an event about no agent).
fn state_or_null(state: i32) -> Value {
    match AgentState::try_from(state) {
        Ok(AgentState::Unspecified) | Err(_) => Value::Null,
        Ok(_) => json!(state_name(state)),
    }
}

/// `null` for the empty string the wire uses for "none".
pub fn text_or_null(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

/// A finding as kl-core's [`verdict::Finding`] reads in JSON (absent references left out).
pub fn finding(f: &Finding) -> Value {
    let finding = verdict::Finding {
        rule: f.rule.clone(),
        message: f.message.clone(),
        pcr: f.pcr,
        event: f.event,
        line: f.line,
        path: f.path.clone(),
        expected: f.expected_json.as_deref().map(verdict::value_from_text),
        actual: f.actual_json.as_deref().map(verdict::value_from_text),
    };
    serde_json::to_value(finding).unwrap_or(Value::Null)
}

pub fn verdict(v: Option<&Verdict>) -> Value {
    match v {
        None => Value::Null,
        Some(v) => json!({
            "passed": v.passed,
            "findings": v.findings.iter().map(finding).collect::<Vec<_>>(),
            "checked": v.checked,
            "at": rfc3339(v.at.as_ref()),
        }),
    }
}

pub fn pcr_policy(p: Option<&PcrPolicy>) -> Value {
    let Some(p) = p.filter(|p| !p.pcrs.is_empty()) else { return Value::Null };
    let mut pcrs: Vec<(&u32, Vec<String>)> =
        p.pcrs.iter().map(|(k, v)| (k, v.values.iter().map(hex::encode).collect())).collect();
    pcrs.sort_by_key(|(k, _)| **k);
    let map: Map<String, Value> =
        pcrs.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Value::Object(map)
}

pub fn agent(a: &AgentStatus) -> Value {
    let contact = a.contact.as_ref();
    json!({
        "uuid": a.agent_id,
        "state": state_name(a.state),
        "contact_ip": contact.map_or(Value::Null, |c| text_or_null(&c.ip)),
        "contact_port": contact.map(|c| c.port),
        "runtime_policy": text_or_null(&a.runtime_policy),
        "measured_boot_policy": text_or_null(&a.measured_boot_policy),
        "pcr_policy": pcr_policy(a.pcr_policy.as_ref()),
        "accept_hash_algorithms": a.accept_hash_algorithms,
        "accept_signing_algorithms": a.accept_signing_algorithms,
        "attestation_count": a.attestation_count,
        "enrolled_at": rfc3339(a.enrolled_at.as_ref()),
        "last_attestation_at": rfc3339(a.last_attestation_at.as_ref()),
        "last_success_at": rfc3339(a.last_success_at.as_ref()),
        "last_verdict": verdict(a.last_verdict.as_ref()),
        "ima_offset": a.ima_offset,
        "reset_count": a.reset_count,
        "consecutive_errors": a.consecutive_errors,
        "key_delivered": a.key_delivered,
        "payload_digest": text_or_null(&a.payload_digest),
    })
}

pub fn policy_info(p: &PolicyInfo) -> Value {
    json!({
        "name": p.name,
        "digest": p.digest,
        "entries": p.entries,
        "updated_at": rfc3339(p.updated_at.as_ref()),
        "agents": p.agents,
    })
}

pub fn attestation(a: &Attestation) -> Value {
    json!({
        "sequence": a.sequence,
        "at": rfc3339(a.at.as_ref()),
        "verdict": verdict(a.verdict.as_ref()),
        "reset_count": a.reset_count,
        "restart_count": a.restart_count,
        "clock": a.clock,
        "ima_entries": a.ima_entries,
        "duration_us": a.duration_us,
    })
}

pub fn event(e: &Event) -> Value {
    let kind = match EventKind::try_from(e.kind).unwrap_or(EventKind::Unspecified) {
        EventKind::Unspecified => "unknown",
        EventKind::Enrolled => "enrolled",
        EventKind::Unenrolled => "unenrolled",
        EventKind::StateChanged => "state_changed",
        EventKind::AttestationFailed => "attestation_failed",
        EventKind::Unreachable => "unreachable",
        EventKind::RevocationSent => "revocation_sent",
        EventKind::PolicyChanged => "policy_changed",
    };
    json!({
        "cursor": e.cursor,
        "at": rfc3339(e.at.as_ref()),
        "kind": kind,
        "uuid": text_or_null(&e.agent_id),
        "state": state_or_null(e.state),
        "previous_state": state_or_null(e.previous_state),
        "findings": e.findings.iter().map(finding).collect::<Vec<_>>(),
        "message": text_or_null(&e.message),
    })
}

#[cfg(test)]
mod tests {
    use kl_proto::verifier::v1::{Contact, PcrValues};

    use super::*;

    fn enrolled(runtime: &str, mb: &str) -> AgentStatus {
        AgentStatus {
            agent_id: "d432fbb3-d2f1-4a97-9ef7-75bd81c00000".into(),
            state: AgentState::Passed as i32,
            contact: Some(Contact { ip: "10.0.0.7".into(), port: 9002 }),
            runtime_policy: runtime.into(),
            measured_boot_policy: mb.into(),
            ..AgentStatus::default()
        }
    }

    #[test]
    fn an_agent_without_policies_shows_null_for_each() {
        let doc = agent(&enrolled("", ""));
        assert_eq!(doc["uuid"], "d432fbb3-d2f1-4a97-9ef7-75bd81c00000");
        assert!(doc.get("agent_id").is_none(), "one name for the id: {doc}");
        for key in ["runtime_policy", "measured_boot_policy", "pcr_policy", "last_verdict"] {
            assert_eq!(doc[key], Value::Null, "{key} in {doc}");
            assert!(doc.as_object().is_some_and(|o| o.contains_key(key)), "{key} is present");
        }
        assert_eq!(doc["state"], "passed");
        assert_eq!(
            (doc["contact_ip"].clone(), doc["contact_port"].clone()),
            (json!("10.0.0.7"), json!(9002))
        );
    }

    #[test]
    fn an_agent_with_policies_shows_their_names() {
        let mut status = enrolled("base", "boot");
        status.pcr_policy = Some(PcrPolicy {
            pcrs: [(15, PcrValues { values: vec![vec![0; 32]] })].into_iter().collect(),
        });
        let doc = agent(&status);
        assert_eq!(doc["runtime_policy"], "base");
        assert_eq!(doc["measured_boot_policy"], "boot");
        assert_eq!(doc["pcr_policy"], json!({"15": ["00".repeat(32)]}));
    }

    #[test]
    fn every_agent_state_has_a_name() {
        let names: Vec<&str> = [
            AgentState::Pending,
            AgentState::Passed,
            AgentState::Failed,
            AgentState::Unreachable,
            AgentState::Stopped,
        ]
        .into_iter()
        .map(|s| state_name(s as i32))
        .collect();
        assert_eq!(names, ["pending", "passed", "failed", "unreachable", "stopped"]);
    }

    #[test]
    fn an_event_about_no_agent_has_null_uuid_and_states() {
        let doc = event(&Event {
            cursor: 7,
            kind: EventKind::PolicyChanged as i32,
            message: "runtime policy base is now 00ff".into(),
            ..Event::default()
        });
        assert_eq!(doc["cursor"], 7);
        assert_eq!(doc["kind"], "policy_changed");
        for key in ["uuid", "state", "previous_state", "at"] {
            assert_eq!(doc[key], Value::Null, "{key} in {doc}");
        }
        let enrolled = event(&Event {
            cursor: 8,
            kind: EventKind::Enrolled as i32,
            agent_id: "agent-1".into(),
            state: AgentState::Pending as i32,
            ..Event::default()
        });
        assert_eq!(enrolled["uuid"], "agent-1");
        assert_eq!(enrolled["state"], "pending");
        assert_eq!(enrolled["previous_state"], Value::Null, "nothing before enrolment");
        assert_eq!(enrolled["message"], Value::Null);
    }

    #[test]
    fn findings_show_their_values_as_json_and_leave_absent_references_out() {
        let f = Finding {
            rule: verdict::rule::PCR_MISMATCH.to_owned(),
            message: "PCR 7".to_owned(),
            pcr: Some(7),
            expected_json: Some(r#"["ab"]"#.to_owned()),
            actual_json: Some("not json".to_owned()),
            ..Finding::default()
        };
        assert_eq!(
            finding(&f),
            json!({"rule": "pcr.mismatch", "message": "PCR 7", "pcr": 7, "expected": ["ab"],
                   "actual": "not json"})
        );
    }
}
