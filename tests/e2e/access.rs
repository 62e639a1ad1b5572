//! Who may call what, from outside: every RPC of every daemon, called with a certificate of
//! each role its access table does not admit (and, on the registrar, whose handshake takes
//! clients without one, with no certificate and with one from another CA), is refused before
//! its handler runs, naming the RPC, the roles it needs and what the client presented. The
//! calls are driven from the daemons' `RPC_ROLES` tables, so a new RPC is covered as soon as
//! it has an entry (and `reference::every_rpc_has_an_access_rule_and_every_rule_an_rpc` makes
//! sure it has one).

use std::sync::Arc;
use std::time::Duration;

use kl_svc::api::{RpcRoles, described};
use kl_svc::tls::{
    CertificateAuthority, Role, ServerTrust, TlsConnector, TlsIdentity, client_config,
    client_refusal, read_certificates,
};
use kl_tests::{Result, err};
use rustls::pki_types::ServerName;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint;

use crate::attestation::System;

const ROLES: [Role; 5] = [Role::Admin, Role::Viewer, Role::Verifier, Role::Server, Role::Agent];

/// Calls `/service/method` with an empty request as `identity`: the status it ends with, or
/// the alert with which the server refused the certificate at the handshake.
async fn call(
    port: u16,
    trust: &ServerTrust,
    identity: Option<TlsIdentity>,
    path: &str,
) -> Result<std::result::Result<tonic::Status, rustls::AlertDescription>> {
    let config = Arc::new(client_config(trust, identity)?);
    let name = ServerName::try_from("127.0.0.1").map_err(|e| err(e.to_string()))?;
    let wait = Duration::from_secs(3);
    if let Some(alert) = client_refusal("127.0.0.1", port, name, config.clone(), wait).await {
        return Ok(Err(alert));
    }
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| err(format!("port {port}: {e}")))?
        .connect_with_connector(TlsConnector::new(config))
        .await
        .map_err(|e| err(format!("{path} on port {port}: cannot connect: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| err(format!("{path}: {e}")))?;
    let path = PathAndQuery::try_from(path.to_owned()).map_err(|e| err(format!("{path}: {e}")))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    Ok(Ok(match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => tonic::Status::ok("answered"),
        Err(status) => status,
    }))
}

fn refused(status: &tonic::Status, code: Code, start: &str, what: &str) -> Result<()> {
    if status.code() != code || !status.message().starts_with(start) {
        return Err(err(format!(
            "{what}: expected {code:?} \"{start}...\", got {:?} {:?}",
            status.code(),
            status.message()
        )));
    }
    Ok(())
}

#[test]
fn every_rpc_refuses_every_role_its_table_does_not_admit() -> Result<()> {
    let Some(sys) = System::start()? else { return Ok(()) };
    let tls = sys.deployment.tls();
    let ca = CertificateAuthority::read(&tls)?;
    let deployment_ca = ServerTrust::Ca(tls.ca_certificates()?);
    let agent_cert = sys.agent.dir.join("agent").join("identity-cert.pem");
    let pinned = ServerTrust::Pinned(
        read_certificates(&agent_cert)?
            .into_iter()
            .next()
            .ok_or_else(|| err(format!("{}: no certificate", agent_cert.display())))?,
    );
    let daemons: [(&str, u16, &ServerTrust, RpcRoles); 3] = [
        (
            "keylime.verifier.v1.Verifier",
            sys.verifier.port(),
            &deployment_ca,
            kl_verifier::RPC_ROLES,
        ),
        (
            "keylime.registrar.v1.Registrar",
            sys.registrar.port(),
            &deployment_ca,
            kl_registrar::RPC_ROLES,
        ),
        ("keylime.agent.v1.Agent", sys.agent.daemon.port(), &pinned, kl_agent::service::RPC_ROLES),
    ];
    let identity = |role: Role| -> Result<TlsIdentity> {
        let issued = ca.issue(role, &format!("probe-{}", role.as_str()), &[])?;
        Ok(TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem, role.as_str())?)
    };
    let foreign = CertificateAuthority::generate("another CA")?.issue(Role::Admin, "admin", &[])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut calls = 0;
    for (service, port, trust, table) in daemons {
        for &(rpc, admitted) in table {
            let path = format!("/{service}/{rpc}");
            if admitted.is_empty() {
                continue;
            }
            let start = format!("{rpc} requires {} client certificate", described(admitted));
            for role in ROLES.into_iter().filter(|r| !admitted.contains(r)) {
                let what = format!("{path} with a {} certificate", role.as_str());
                let status =
                    match runtime.block_on(call(port, trust, Some(identity(role)?), &path))? {
                        Ok(status) => status,
                        // A server certificate is no client certificate: where the handshake
                        // checks the chain, it is refused there.
                        Err(_) if role == Role::Server => {
                            calls += 1;
                            continue;
                        }
                        Err(alert) => {
                            return Err(err(format!(
                                "{what}: refused at the handshake ({alert:?})"
                            )));
                        }
                    };
                refused(&status, Code::PermissionDenied, &start, &what)?;
                let presented = match role {
                    // The registrar checks the chain per call: a server certificate's usage
                    // does not allow client authentication.
                    Role::Server => "the client's certificate does not verify against".to_owned(),
                    _ => format!("the client's certificate has role {}", role.as_str()),
                };
                assert!(status.message().contains(&presented), "{what}: {}", status.message());
                calls += 1;
            }
            if service == "keylime.registrar.v1.Registrar" {
                let what = format!("{path} without a certificate");
                let status =
                    runtime.block_on(call(port, trust, None, &path))?.map_err(|alert| {
                        err(format!("{what}: refused at the handshake ({alert:?})"))
                    })?;
                refused(&status, Code::PermissionDenied, &start, &what)?;
                assert!(status.message().ends_with("the client presented none"), "{what}");
                let other =
                    TlsIdentity::from_pem(&foreign.cert_pem, &foreign.key_pem, "another CA")?;
                let what = format!("{path} with an admin certificate of another CA");
                let status =
                    runtime.block_on(call(port, trust, Some(other), &path))?.map_err(|alert| {
                        err(format!("{what}: refused at the handshake ({alert:?})"))
                    })?;
                refused(&status, Code::PermissionDenied, &start, &what)?;
                assert!(status.message().contains("does not verify against"), "{what}");
                calls += 2;
            }
        }
    }
    // 18 verifier RPCs, 3 registrar reads (plus anonymous and foreign), 5 agent RPCs.
    assert!(calls >= 60, "only {calls} refusals checked");
    Ok(())
}
