//! Attestation outcomes: pass, failures named by their findings, events, webhooks,
//! revocation notices, reachability and key delivery.

use std::sync::Arc;
use std::sync::atomic::AtomicU16;
use std::time::{Duration, Instant};

use kl_core::payload::{SealedHalf, open_half};
use kl_proto::agent::v1 as agent_pb;
use kl_proto::verifier::v1 as pb;
use kl_svc::notice::{SignedNotice, verify_notice};

use crate::support::{DEADLINE, Fixture, Mode, QUOTE_INTERVAL, TestResult, webhook_receiver};

fn rules(status: &pb::AgentStatus) -> Vec<String> {
    status.last_verdict.iter().flat_map(|v| v.findings.iter().map(|f| f.rule.clone())).collect()
}

#[tokio::test]
async fn unknown_file_fails_within_an_interval_with_event_webhook_and_notices() -> TestResult {
    let (hook, mut deliveries, _server) = webhook_receiver(Arc::new(AtomicU16::new(200))).await?;
    let mut fx = Fixture::start(|c| {
        c.webhook_url = Some(format!("http://{hook}/keylime"));
        c.webhook_secret = Some("s3cret".to_owned());
    })
    .await?;
    let victim = fx.agent().await?;
    let bystander = fx.agent().await?;
    assert!(fx.put_policy("victim", &victim).await?);
    assert!(fx.put_policy("bystander", &bystander).await?);
    fx.enroll(&victim, "victim").await?;
    fx.enroll(&bystander, "bystander").await?;
    let passed = fx.wait_state(&victim.id, pb::AgentState::Passed).await?;
    assert!(passed.last_verdict.as_ref().is_some_and(|v| v.passed));
    assert!(passed.ima_offset >= 3, "the IMA log was read: {passed:?}");
    fx.wait_state(&bystander.id, pb::AgentState::Passed).await?;

    victim.with(|m| m.ima.measure("/tmp/evil.sh", b"evil"));
    let started = Instant::now();
    let failed = fx.wait_state(&victim.id, pb::AgentState::Failed).await?;
    assert!(started.elapsed() < QUOTE_INTERVAL + Duration::from_secs(2), "{:?}", started.elapsed());
    let finding = failed
        .last_verdict
        .as_ref()
        .and_then(|v| v.findings.iter().find(|f| f.rule == "ima.not_in_policy"))
        .ok_or("no ima.not_in_policy finding")?;
    assert_eq!(finding.path.as_deref(), Some("/tmp/evil.sh"));
    assert!(failed.last_success_at.is_some());

    let events = fx
        .events_until(0, |e| {
            e.kind == pb::EventKind::AttestationFailed as i32 && e.agent_id == victim.id
        })
        .await?;
    let event = events.last().ok_or("no events")?;
    assert_eq!(event.state, pb::AgentState::Failed as i32);
    assert_eq!(event.previous_state, pb::AgentState::Passed as i32);
    assert!(event.findings.iter().any(|f| f.path.as_deref() == Some("/tmp/evil.sh")));
    assert!(events.windows(2).all(|w| w[0].cursor < w[1].cursor));

    // The webhook receives it, signed.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let delivery = tokio::time::timeout(DEADLINE, deliveries.recv()).await?.ok_or("closed")?;
        assert_eq!(
            delivery.signature.as_deref(),
            Some(kl_verifier::webhook_signature("s3cret", &delivery.body).as_str())
        );
        let json: serde_json::Value = serde_json::from_slice(&delivery.body)?;
        if json["kind"] == "attestation_failed" {
            assert_eq!(json["agent_id"], victim.id.as_str());
            assert_eq!(json["state"], "failed");
            assert_eq!(json["findings"][0]["path"], "/tmp/evil.sh");
            break;
        }
        assert!(Instant::now() < deadline, "no attestation_failed webhook");
    }

    // The other agent got a notice signed by the verifier, checkable against the CA.
    let notice = wait_until(|| bystander.with(|m| m.notices.first().cloned())).await?;
    let body = checked_notice(&fx, notice)?;
    assert_eq!(body["agent_id"], victim.id.as_str());
    assert!(victim.with(|m| m.notices.is_empty()), "the failed agent is not notified");
    fx.events_until(0, |e| e.kind == pb::EventKind::RevocationSent as i32).await?;
    // The bystander keeps passing.
    assert_eq!(fx.status(&bystander.id).await?.state, pb::AgentState::Passed as i32);
    // When it fails too, the failed victim is told, signed, but without the findings.
    bystander.with(|m| m.ima.measure("/tmp/evil2.sh", b"evil"));
    fx.wait_state(&bystander.id, pb::AgentState::Failed).await?;
    let notice = wait_until(|| victim.with(|m| m.notices.first().cloned())).await?;
    let body = checked_notice(&fx, notice)?;
    assert_eq!(body["agent_id"], bystander.id.as_str());
    assert_eq!(body["findings"], serde_json::json!([]), "{body}");
    assert!(!body.to_string().contains("evil2"), "{body}");
    fx.stop_verifier().await
}

/// The JSON of a revocation notice, after checking its signature against the deployment CA.
fn checked_notice(
    fx: &Fixture,
    notice: agent_pb::NotifyRevocationRequest,
) -> Result<serde_json::Value, crate::support::BoxError> {
    let signed = SignedNotice {
        notice: notice.notice,
        signature: notice.signature,
        signer_certificate: notice.signer_certificate,
    };
    verify_notice(&signed, &fx.tls().ca_certificates()?)?;
    Ok(serde_json::from_slice(&signed.notice)?)
}

async fn wait_until<T>(
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, crate::support::BoxError> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_flipped_signature_byte_fails() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    agent.with(|m| m.mode = Mode::FlipSignature);
    let failed = fx.wait_state(&agent.id, pb::AgentState::Failed).await?;
    assert_eq!(rules(&failed), ["quote.signature"]);
    fx.stop_verifier().await
}

#[tokio::test]
async fn a_replayed_old_quote_fails() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_for(&agent.id, "two passes", |s| s.attestation_count >= 2).await?;
    agent.with(|m| m.mode = Mode::Replay);
    let failed = fx.wait_state(&agent.id, pb::AgentState::Failed).await?;
    let found = rules(&failed);
    assert!(found.iter().any(|r| r.starts_with("quote.")), "{found:?}");
    fx.stop_verifier().await
}

#[tokio::test]
async fn pcr_mismatch_passes_again_after_update_of_the_pcr_policy() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    let mut wrong = pb::PcrPolicy::default();
    wrong.pcrs.insert(0, pb::PcrValues { values: vec![vec![0x11; 32]] });
    let request = pb::EnrollAgentRequest {
        agent_id: agent.id.clone(),
        pcr_policy: Some(wrong),
        ..Default::default()
    };
    fx.admin().await?.enroll_agent(request).await?;
    let failed = fx.wait_state(&agent.id, pb::AgentState::Failed).await?;
    assert_eq!(rules(&failed), ["pcr.mismatch"]);
    let count = failed.attestation_count;

    let actual = agent.with(|m| m.pcrs[&0].as_bytes().to_vec());
    let mut right = pb::PcrPolicy::default();
    right.pcrs.insert(0, pb::PcrValues { values: vec![actual] });
    let update = pb::UpdateAgentRequest {
        agent_id: agent.id.clone(),
        pcr_policy: Some(right),
        ..Default::default()
    };
    let answer = fx.admin().await?.update_agent(update).await?.into_inner();
    assert!(answer.changed);
    let passed = fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    assert!(passed.attestation_count > count, "the counters survive the update");
    fx.stop_verifier().await
}

#[tokio::test]
async fn an_agent_that_goes_down_is_unreachable_never_passing_and_recovers() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let mut agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    agent.stop().await;
    let down = fx.wait_state(&agent.id, pb::AgentState::Unreachable).await?;
    assert!(down.consecutive_errors >= 2);
    let events = fx.events_until(0, |e| e.kind == pb::EventKind::Unreachable as i32).await?;
    let unreachable_at = events.last().map(|e| e.cursor).ok_or("no event")?;

    // While it is down nothing passes.
    for _ in 0..10 {
        tokio::time::sleep(QUOTE_INTERVAL / 2).await;
        let status = fx.status(&agent.id).await?;
        assert_eq!(status.state, pb::AgentState::Unreachable as i32);
        assert_eq!(status.attestation_count, down.attestation_count);
    }
    agent.restart().await?;
    fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    let events =
        fx.events_until(unreachable_at, |e| e.kind == pb::EventKind::StateChanged as i32).await?;
    let back = events.last().ok_or("no event")?;
    assert_eq!(back.state, pb::AgentState::Passed as i32);
    assert_eq!(back.previous_state, pb::AgentState::Unreachable as i32);
    fx.stop_verifier().await
}

#[tokio::test]
async fn the_v_key_half_is_delivered_sealed_after_the_first_pass() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    let v = [0x5a; 32];
    let request = pb::EnrollAgentRequest {
        agent_id: agent.id.clone(),
        v_key_half: v.to_vec(),
        ..Default::default()
    };
    fx.admin().await?.enroll_agent(request).await?;
    let status = fx.wait_for(&agent.id, "key delivery", |s| s.key_delivered).await?;
    assert_eq!(status.state, pb::AgentState::Passed as i32);
    let (delivered, key_pem) = agent.with(|m| (m.key_halves.clone(), m.identity.key_pem.clone()));
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].half, agent_pb::KeyHalf::V as i32);
    let sealed = delivered[0].sealed.clone().ok_or("no sealed half")?;
    let sealed = SealedHalf {
        ephemeral_public_key: sealed.ephemeral_public_key,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
    };
    let body: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let pkcs8 = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)?;
    assert_eq!(open_half(&sealed, &pkcs8)?, v, "the agent's own code opens V");
    fx.stop_verifier().await
}

#[tokio::test]
async fn quotes_with_refused_algorithms_fail() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    let request = pb::EnrollAgentRequest {
        agent_id: agent.id.clone(),
        accept_signing_algorithms: vec!["rsassa".to_owned()],
        ..Default::default()
    };
    fx.admin().await?.enroll_agent(request).await?;
    let failed = fx.wait_state(&agent.id, pb::AgentState::Failed).await?;
    assert_eq!(rules(&failed), ["quote.algorithm"]);
    fx.stop_verifier().await
}

#[tokio::test]
async fn a_measured_boot_policy_asks_for_the_event_log_and_fails_without_one() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    let put = pb::PutMeasuredBootPolicyRequest {
        name: "boot".to_owned(),
        document: br#"{"allow_secureboot_off": true}"#.to_vec(),
        ..Default::default()
    };
    let mut admin = fx.admin().await?;
    assert!(admin.put_measured_boot_policy(put.clone()).await?.into_inner().changed);
    assert!(!admin.put_measured_boot_policy(put).await?.into_inner().changed);
    let request = pb::EnrollAgentRequest {
        agent_id: agent.id.clone(),
        measured_boot_policy: "boot".to_owned(),
        ..Default::default()
    };
    admin.enroll_agent(request).await?;
    let failed = fx.wait_state(&agent.id, pb::AgentState::Failed).await?;
    assert_eq!(rules(&failed), ["mb.event_log_missing"]);
    let asked = agent.with(|m| m.last_request.clone()).ok_or("no request")?;
    assert!(asked.include_event_log);
    assert!(asked.pcrs.contains(&0) && asked.pcrs.contains(&7) && !asked.pcrs.contains(&10));
    fx.stop_verifier().await
}

#[tokio::test]
async fn a_new_ak_fails_the_quote_until_the_agent_is_enrolled_again() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let mut agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    // The agent restarts with a new AK in the same TPM and registers it.
    agent.with(|m| {
        m.ak = kl_tests::synthetic::SyntheticAk::ecdsa(kl_core::tpm2::EccCurve::NIST_P256)
    });
    fx.register(&mut agent).await?;
    let failed = fx.wait_state(&agent.id, pb::AgentState::Failed).await?;
    assert_eq!(rules(&failed), ["quote.signature"]);
    // Enrolling again reads the new AK from the registrar and attests the agent again.
    let status = fx.enroll(&agent, "p").await?;
    assert_eq!(status.state, pb::AgentState::Pending as i32);
    let passed = fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    assert!(passed.attestation_count > failed.attestation_count);
    fx.stop_verifier().await
}

/// With `metrics_port` set, `GET /metrics` reports the fleet in the Prometheus text format.
#[tokio::test]
async fn metrics_count_rounds_and_agents_by_state() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut fx = Fixture::start(|c| c.metrics_port = Some(0)).await?;
    let addr = fx.metrics_addr.ok_or("no metrics endpoint")?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_for(&agent.id, "two passes", |s| s.attestation_count >= 2).await?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: verifier\r\n\r\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\nkeylime_verifier_agents{state=\"passed\"} 1\n"), "{answer}");
    assert!(answer.contains("\nkeylime_verifier_agents{state=\"failed\"} 0\n"), "{answer}");
    let value = |name: &str| -> Option<f64> {
        answer.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let passed = value("keylime_verifier_attestations_total{result=\"passed\"}");
    assert!(passed.is_some_and(|n| n >= 2.0), "{answer}");
    let rounds = value("keylime_verifier_attestation_duration_seconds_count");
    assert!(rounds.is_some_and(|n| n >= 2.0), "{answer}");
    let entries = value("keylime_verifier_ima_entries_total");
    assert!(entries.is_some_and(|n| n >= 3.0), "the agent's IMA log was read: {answer}");
    let commits = value("keylime_verifier_store_commits_total{result=\"ok\"}");
    assert!(commits.is_some_and(|n| n >= 1.0), "{answer}");
    fx.stop_verifier().await
}
