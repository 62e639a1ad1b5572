//! Roles: reads need admin, verifier or viewer; delete needs admin. Refusals name the action
//! and never an agent id.

use kl_proto::registrar::v1 as pb;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_svc::tls::{AgentIdentity, CertificateAuthority, Role, TlsIdentity};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Agent, BoxError, Registrar, SoftTpm, TestResult, new_id};

/// The statuses of GetAgent, ListAgents and DeleteAgent for `client`.
async fn admin_calls(
    client: &mut RegistrarClient<Channel>,
    agent_id: &str,
) -> [(&'static str, Result<(), tonic::Status>); 3] {
    let get =
        client.get_agent(pb::GetAgentRequest { agent_id: agent_id.to_owned() }).await.map(drop);
    let list = client.list_agents(pb::ListAgentsRequest::default()).await.map(drop);
    let delete = client
        .delete_agent(pb::DeleteAgentRequest { agent_id: agent_id.to_owned() })
        .await
        .map(drop);
    [("GetAgent", get), ("ListAgents", list), ("DeleteAgent", delete)]
}

/// Asserts every call was refused, naming the action, the roles and `why` (what was wrong
/// with what the client presented).
fn assert_refused(
    results: [(&'static str, Result<(), tonic::Status>); 3],
    agent_id: &str,
    who: &str,
    why: &str,
) {
    for (action, result) in results {
        let Err(status) = result else { panic!("{who}: {action} allowed") };
        assert_eq!(status.code(), Code::PermissionDenied, "{who}: {action}: {status:?}");
        let expected = match action {
            "DeleteAgent" => "DeleteAgent requires an admin client certificate".to_owned(),
            _ => format!("{action} requires an admin, verifier or viewer client certificate"),
        };
        assert!(status.message().starts_with(&expected), "{who}: {}", status.message());
        assert!(status.message().contains(why), "{who}: {}", status.message());
        assert!(!format!("{status:?}").contains(agent_id), "{who}: {action} names the agent");
    }
}

async fn enrolled(registrar: &Registrar, n: u32) -> Result<String, BoxError> {
    let agent = Agent::new(&new_id(n), SoftTpm::ecc())?;
    agent.enroll(&mut registrar.anonymous().await?).await??;
    Ok(agent.id)
}

#[tokio::test]
async fn no_certificate_agent_certificate_or_foreign_ca_gets_no_admin_call() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let agent_id = enrolled(&registrar, 200).await?;

    assert_refused(
        admin_calls(&mut registrar.anonymous().await?, &agent_id).await,
        &agent_id,
        "anonymous",
        "the client presented none",
    );

    let agent_cert = AgentIdentity::generate(&agent_id, &[])?.tls_identity()?;
    let mut as_agent = registrar.client(Some(agent_cert)).await?;
    assert_refused(
        admin_calls(&mut as_agent, &agent_id).await,
        &agent_id,
        "agent certificate",
        "does not verify against the deployment CA",
    );

    let foreign = CertificateAuthority::generate("another CA")?.issue(Role::Admin, "admin", &[])?;
    let foreign = TlsIdentity::from_pem(&foreign.cert_pem, &foreign.key_pem, "foreign")?;
    let mut foreign_admin = registrar.client(Some(foreign)).await?;
    assert_refused(
        admin_calls(&mut foreign_admin, &agent_id).await,
        &agent_id,
        "admin of another CA",
        "does not verify against the deployment CA",
    );

    let mut server = registrar.with_role(Role::Server).await?;
    assert_refused(
        admin_calls(&mut server, &agent_id).await,
        &agent_id,
        "server certificate",
        "does not verify against the deployment CA",
    );

    // Registration needs no certificate, and still works with the agent's own one.
    let agent = Agent::new(&new_id(201), SoftTpm::ecc())?;
    assert_eq!(agent.enroll(&mut as_agent).await??, 1);
    Ok(())
}

#[tokio::test]
async fn viewer_and_verifier_read_only_admin_deletes() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let agent_id = enrolled(&registrar, 202).await?;
    for role in [Role::Viewer, Role::Verifier] {
        let mut client = registrar.with_role(role).await?;
        let [(_, get), (_, list), (_, delete)] = admin_calls(&mut client, &agent_id).await;
        get?;
        list?;
        let status = delete.err().ok_or("delete allowed")?;
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.message(),
            format!(
                "DeleteAgent requires an admin client certificate of this deployment; \
                 the client's certificate has role {}",
                role.as_str()
            )
        );
    }
    let mut admin = registrar.with_role(Role::Admin).await?;
    let [(_, get), (_, list), (_, delete)] = admin_calls(&mut admin, &agent_id).await;
    get?;
    list?;
    delete?;
    Ok(())
}
