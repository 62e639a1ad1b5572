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
