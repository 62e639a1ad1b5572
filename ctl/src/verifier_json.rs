//! The JSON kctl prints for verifier objects. `show` output is what `apply`/`enroll` accept,
//! so automation can compare dicts: names for policies, hex for PCR values, RFC 3339 times.

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

pub fn finding(f: &Finding) -> Value {
    let mut m = Map::new();
    m.insert("rule".into(), json!(f.rule));
    m.insert("message".into(), json!(f.message));
    if let Some(p) = f.pcr {
        m.insert("pcr".into(), json!(p));
    }
    if let Some(e) = f.event {
        m.insert("event".into(), json!(e));
    }
    if let Some(l) = f.line {
        m.insert("line".into(), json!(l));
    }
    if let Some(p) = &f.path {
        m.insert("path".into(), json!(p));
    }
    for (key, raw) in [("expected", &f.expected_json), ("actual", &f.actual_json)] {
        if let Some(raw) = raw {
            m.insert(key.into(), serde_json::from_str(raw).unwrap_or_else(|_| json!(raw)));
        }
    }
    Value::Object(m)
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
        "contact_ip": contact.map(|c| c.ip.clone()),
        "contact_port": contact.map(|c| c.port),
        "runtime_policy": a.runtime_policy,
        "measured_boot_policy": a.measured_boot_policy,
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
        "uuid": e.agent_id,
        "state": state_name(e.state),
        "previous_state": state_name(e.previous_state),
        "findings": e.findings.iter().map(finding).collect::<Vec<_>>(),
        "message": e.message,
    })
}
