//! Roles: reads for admin and viewer, writes for admin only, nothing without a certificate.

use kl_proto::verifier::v1 as pb;
use kl_svc::tls::Role;
use tonic::Code;

use crate::support::{Fixture, TestResult};

#[tokio::test]
async fn viewers_read_only_other_roles_and_anonymous_clients_get_nothing() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;

    let mut viewer = fx.with_role(Role::Viewer).await?;
    let listed = viewer.list_agents(pb::ListAgentsRequest::default()).await?.into_inner();
    assert_eq!(listed.agents.len(), 1);
    let enroll = pb::EnrollAgentRequest { agent_id: agent.id.clone(), ..Default::default() };
    let refused = viewer.enroll_agent(enroll.clone()).await.err().ok_or("viewer enrolled")?;
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(!refused.message().contains(&agent.id));
    assert_eq!(
        refused.message(),
        "EnrollAgent requires an admin client certificate of this deployment; the client's \
         certificate has role viewer"
    );

    let mut verifier_role = fx.with_role(Role::Verifier).await?;
    let refused = verifier_role
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .err()
        .ok_or("a verifier-role client listed agents")?;
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = verifier_role.enroll_agent(enroll).await.err().ok_or("verifier role enrolled")?;
    assert_eq!(refused.code(), Code::PermissionDenied);

    match fx.anonymous().await {
        Err(_) => {}
        Ok(mut anonymous) => {
            let answer = anonymous.list_agents(pb::ListAgentsRequest::default()).await;
            assert!(answer.is_err(), "a client without a certificate listed agents");
        }
    }
    fx.stop_verifier().await
}
