//! Policies: idempotent puts, sharing by digest, protected deletion; enrolment checks.

use kl_proto::verifier::v1 as pb;
use tonic::Code;

use crate::support::{Fixture, TestResult};

#[tokio::test]
async fn put_is_idempotent_and_delete_refuses_while_used() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    assert!(fx.put_policy("p", &agent).await?);
    assert!(!fx.put_policy("p", &agent).await?, "same content: unchanged");
    assert!(fx.put_policy("q", &agent).await?);
    let mut admin = fx.admin().await?;
    let listed = admin.list_runtime_policies(pb::ListRuntimePoliciesRequest {}).await?.into_inner();
    assert_eq!(listed.policies.len(), 2);
    assert_eq!(listed.policies[0].digest, listed.policies[1].digest, "shared by digest");
    assert_eq!(listed.policies[0].entries, 3);

    let unknown = pb::EnrollAgentRequest {
        agent_id: agent.id.clone(),
        runtime_policy: "missing".to_owned(),
        ..Default::default()
    };
    assert_eq!(admin.enroll_agent(unknown).await.err().map(|s| s.code()), Some(Code::NotFound));
    let unregistered =
        pb::EnrollAgentRequest { agent_id: "not-registered".to_owned(), ..Default::default() };
    assert_eq!(
        admin.enroll_agent(unregistered).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );

    let first = fx.enroll(&agent, "p").await?;
    assert_eq!(first.state, pb::AgentState::Pending as i32);
    let again = pb::EnrollAgentRequest {
        agent_id: agent.id.clone(),
        runtime_policy: "p".to_owned(),
        ..Default::default()
    };
    assert!(!admin.enroll_agent(again).await?.into_inner().changed, "converged: unchanged");

    let delete = pb::DeleteRuntimePolicyRequest { name: "p".to_owned() };
    let refused = admin.delete_runtime_policy(delete.clone()).await.err().ok_or("deleted")?;
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        admin
            .delete_runtime_policy(pb::DeleteRuntimePolicyRequest { name: "q".into() })
            .await?
            .into_inner()
            .changed
    );
    let unenroll = pb::UnenrollAgentRequest { agent_id: agent.id.clone() };
    assert!(admin.unenroll_agent(unenroll.clone()).await?.into_inner().changed);
    assert!(!admin.unenroll_agent(unenroll).await?.into_inner().changed);
    assert!(admin.delete_runtime_policy(delete.clone()).await?.into_inner().changed);
    assert!(!admin.delete_runtime_policy(delete).await?.into_inner().changed);
    let get = pb::GetAgentRequest { agent_id: agent.id.clone() };
    assert_eq!(admin.get_agent(get).await.err().map(|s| s.code()), Some(Code::NotFound));
    fx.stop_verifier().await
}

#[tokio::test]
async fn stop_and_resume() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    let mut admin = fx.admin().await?;
    let stop = pb::StopAgentRequest { agent_id: agent.id.clone() };
    assert!(admin.stop_agent(stop.clone()).await?.into_inner().changed);
    assert!(!admin.stop_agent(stop).await?.into_inner().changed);
    let stopped = fx.status(&agent.id).await?;
    tokio::time::sleep(crate::support::QUOTE_INTERVAL * 3).await;
    let still = fx.status(&agent.id).await?;
    assert_eq!(still.state, pb::AgentState::Stopped as i32);
    assert!(still.attestation_count <= stopped.attestation_count + 1);
    let resume = pb::ResumeAgentRequest { agent_id: agent.id.clone() };
    assert!(admin.resume_agent(resume).await?.into_inner().changed);
    fx.wait_for(&agent.id, "a pass after resume", |s| {
        s.state == pb::AgentState::Passed as i32 && s.attestation_count > still.attestation_count
    })
    .await?;
    fx.stop_verifier().await
}

#[tokio::test]
async fn many_agents_share_one_policy_attest_concurrently_and_list_in_pages() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let mut agents = Vec::new();
    for _ in 0..12 {
        agents.push(fx.agent().await?);
    }
    // Every agent measures the same files: one policy serves them all.
    assert!(fx.put_policy("fleet", &agents[0]).await?);
    for agent in &agents {
        fx.enroll(agent, "fleet").await?;
    }
    for agent in &agents {
        fx.wait_for(&agent.id, "two passes", |s| {
            s.state == pb::AgentState::Passed as i32 && s.attestation_count >= 2
        })
        .await?;
    }
    let mut admin = fx.admin().await?;
    let info = admin
        .get_runtime_policy(pb::GetRuntimePolicyRequest { name: "fleet".into() })
        .await?
        .into_inner();
    assert_eq!(info.policy.map(|p| p.agents), Some(12));

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request =
            pb::ListAgentsRequest { page_size: 5, page_token: token, ..Default::default() };
        let page = admin.list_agents(request).await?.into_inner();
        assert!(page.agents.len() <= 5);
        seen.extend(page.agents.into_iter().map(|a| a.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let failed_only =
        pb::ListAgentsRequest { state: pb::AgentState::Failed as i32, ..Default::default() };
    assert!(admin.list_agents(failed_only).await?.into_inner().agents.is_empty());
    fx.stop_verifier().await
}

#[tokio::test]
async fn a_pcr_policy_pinning_a_measured_boot_or_ima_pcr_is_refused_naming_it() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    let mut admin = fx.admin().await?;
    let mb = pb::PutMeasuredBootPolicyRequest {
        name: "boot".to_owned(),
        document: br#"{"version": 1, "pcrs": [0, 2, 4, 7], "allow_secureboot_off": true}"#.to_vec(),
        ..Default::default()
    };
    admin.put_measured_boot_policy(mb).await?;
    let pin = |pcrs: &[u32]| pb::PcrPolicy {
        pcrs: pcrs.iter().map(|&p| (p, pb::PcrValues { values: vec![vec![0xab; 32]] })).collect(),
    };
    let enroll = |pcrs: &[u32], mb: &str| pb::EnrollAgentRequest {
        agent_id: agent.id.clone(),
        runtime_policy: "p".to_owned(),
        measured_boot_policy: mb.to_owned(),
        pcr_policy: Some(pin(pcrs)),
        ..Default::default()
    };

    let refused = admin.enroll_agent(enroll(&[4, 16], "boot")).await.err().ok_or("enrolled")?;
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("pcr_policy")
            && refused.message().contains("PCR 4")
            && refused.message().contains("\"boot\""),
        "{}",
        refused.message()
    );
    let refused = admin.enroll_agent(enroll(&[10], "")).await.err().ok_or("enrolled")?;
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("PCR 10"), "{}", refused.message());
    let get = pb::GetAgentRequest { agent_id: agent.id.clone() };
    assert_eq!(admin.get_agent(get).await.err().map(|s| s.code()), Some(Code::NotFound));

    // PCRs no other policy checks are fine; an update that adds a covered one is refused and
    // changes nothing.
    admin.enroll_agent(enroll(&[16], "boot")).await?;
    let update = pb::UpdateAgentRequest {
        agent_id: agent.id.clone(),
        pcr_policy: Some(pin(&[7, 16])),
        ..Default::default()
    };
    let refused = admin.update_agent(update).await.err().ok_or("updated")?;
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("PCR 7"), "{}", refused.message());
    let status = fx.status(&agent.id).await?;
    let pinned: Vec<u32> =
        status.pcr_policy.map(|p| p.pcrs.into_keys().collect()).unwrap_or_default();
    assert_eq!(pinned, [16]);
    fx.stop_verifier().await
}
