//! Real TLS 1.3 handshakes over loopback with the generated CA files, the rustls configs and
//! the agent's pinned self-signed certificate.

use std::sync::Arc;
use std::time::Duration;

use kl_svc::tls::{
    AgentIdentity, CertificateAuthority, ClientAuth, Role, ServerTrust, TlsFiles, TlsIdentity,
    client_config, ensure_generated, role_of, server_config,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the server saw: the handshake failed, or it succeeded with this client role.
type ServerOutcome = Result<Option<Role>, String>;

/// Serves one connection with `config`; the server sends "ok" after a good handshake.
async fn serve_once(
    config: rustls::ServerConfig,
) -> std::io::Result<(u16, tokio::task::JoinHandle<ServerOutcome>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, session) = tls.get_ref();
        assert_eq!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let role = match session.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => role_of(cert).map_err(|e| e.to_string())?,
            None => None,
        };
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(role)
    });
    Ok((port, task))
}

/// Connects with `config` and reads the server's "ok"; `Err` when the handshake fails.
async fn connect(config: rustls::ClientConfig, port: u16, name: &str) -> Result<(), String> {
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = connector.connect(server_name, tcp).await.map_err(|e| e.to_string())?;
    let mut reply = [0u8; 2];
    tls.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
    if &reply == b"ok" { Ok(()) } else { Err(format!("unexpected reply {reply:?}")) }
}

/// Runs one handshake and returns both sides' outcomes.
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    name: &str,
) -> Result<(ServerOutcome, Result<(), String>), Box<dyn std::error::Error>> {
    let (port, task) = serve_once(server).await?;
    let client_outcome =
        tokio::time::timeout(Duration::from_secs(10), connect(client, port, name)).await?;
    let server_outcome = tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok((server_outcome, client_outcome))
}

fn generated_dir() -> Result<(tempfile::TempDir, TlsFiles), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let tls = TlsFiles::new(dir.path().join("cv_ca"));
    ensure_generated(&tls, &[])?;
    Ok((dir, tls))
}

#[tokio::test]
async fn admin_client_is_accepted_and_its_role_read_back() -> TestResult {
    let (_dir, tls) = generated_dir()?;
    let cas = tls.ca_certificates()?;
    let server = server_config(tls.server_identity()?, &cas, ClientAuth::Required)?;
    let client = client_config(&ServerTrust::Ca(cas.clone()), Some(tls.client_identity()?))?;
    let (server_side, client_side) = handshake(server, client, "localhost").await?;
    assert_eq!(client_side, Ok(()));
    assert_eq!(server_side, Ok(Some(Role::Admin)));

    // The server certificate names 127.0.0.1 and ::1 too.
    let server = server_config(tls.server_identity()?, &cas, ClientAuth::Required)?;
    let client = client_config(&ServerTrust::Ca(cas.clone()), Some(tls.client_identity()?))?;
    let (server_side, client_side) = handshake(server, client, "127.0.0.1").await?;
    assert_eq!((server_side, client_side), (Ok(Some(Role::Admin)), Ok(())));
    Ok(())
}

#[tokio::test]
async fn issued_viewer_cert_carries_its_role() -> TestResult {
    let (_dir, tls) = generated_dir()?;
    let ca = CertificateAuthority::read(&tls)?;
    let viewer = ca.issue(Role::Viewer, "monitoring", &[])?;
    let cas = tls.ca_certificates()?;
    let server = server_config(tls.server_identity()?, &cas, ClientAuth::Required)?;
    let identity = TlsIdentity::from_pem(&viewer.cert_pem, &viewer.key_pem, "viewer")?;
    let client = client_config(&ServerTrust::Ca(cas), Some(identity))?;
    let (server_side, client_side) = handshake(server, client, "localhost").await?;
    assert_eq!((server_side, client_side), (Ok(Some(Role::Viewer)), Ok(())));
    Ok(())
}

#[tokio::test]
async fn client_without_cert_is_refused_when_required() -> TestResult {
    let (_dir, tls) = generated_dir()?;
    let cas = tls.ca_certificates()?;
    let server = server_config(tls.server_identity()?, &cas, ClientAuth::Required)?;
    let client = client_config(&ServerTrust::Ca(cas.clone()), None)?;
    let (server_side, client_side) = handshake(server, client, "localhost").await?;
    assert!(server_side.is_err(), "server accepted: {server_side:?}");
    assert!(client_side.is_err());

    // Optional client auth lets it in, with no role.
    let server = server_config(tls.server_identity()?, &cas, ClientAuth::Optional)?;
    let client = client_config(&ServerTrust::Ca(cas), None)?;
    let (server_side, client_side) = handshake(server, client, "localhost").await?;
    assert_eq!((server_side, client_side), (Ok(None), Ok(())));
    Ok(())
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() -> TestResult {
    let (_dir, tls) = generated_dir()?;
    let (_other_dir, other) = generated_dir()?;
    let cas = tls.ca_certificates()?;
    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let server = server_config(tls.server_identity()?, &cas, auth)?;
        let client = client_config(&ServerTrust::Ca(cas.clone()), Some(other.client_identity()?))?;
        let (server_side, client_side) = handshake(server, client, "localhost").await?;
        assert!(server_side.is_err(), "{auth:?}: server accepted: {server_side:?}");
        assert!(client_side.is_err());
    }
    Ok(())
}

#[tokio::test]
async fn server_cert_from_another_ca_is_refused() -> TestResult {
    let (_dir, tls) = generated_dir()?;
    let (_other_dir, other) = generated_dir()?;
    let server =
        server_config(other.server_identity()?, &other.ca_certificates()?, ClientAuth::Optional)?;
    let client = client_config(&ServerTrust::Ca(tls.ca_certificates()?), None)?;
    let (server_side, client_side) = handshake(server, client, "localhost").await?;
    // Both CAs carry the same subject name, so webpki finds a candidate issuer and rejects
    // its signature.
    let err = client_side.err().unwrap_or_default();
    assert!(err.starts_with("invalid peer certificate"), "{err}");
    assert!(server_side.is_err());
    Ok(())
}

#[tokio::test]
async fn pinned_agent_cert_is_accepted_and_another_refused() -> TestResult {
    let (_dir, tls) = generated_dir()?;
    let cas = tls.ca_certificates()?;
    let agent = AgentIdentity::generate("d432fbb3-d2f1-4a97-9ef7-75bd81c00000", &[])?;
    let impostor = AgentIdentity::generate("d432fbb3-d2f1-4a97-9ef7-75bd81c00000", &[])?;

    let server = server_config(agent.tls_identity()?, &cas, ClientAuth::Required)?;
    let pinned = ServerTrust::Pinned(agent.cert_der.clone());
    let client = client_config(&pinned, Some(tls.client_identity()?))?;
    let (server_side, client_side) = handshake(server, client, "agent.invalid").await?;
    assert_eq!((server_side, client_side), (Ok(Some(Role::Admin)), Ok(())));

    // Same CN, different key: not the pinned certificate.
    let server = server_config(impostor.tls_identity()?, &cas, ClientAuth::Required)?;
    let client = client_config(&pinned, Some(tls.client_identity()?))?;
    let (server_side, client_side) = handshake(server, client, "agent.invalid").await?;
    let err = client_side.err().unwrap_or_default();
    assert!(err.contains("ApplicationVerificationFailure"), "{err}");
    assert!(server_side.is_err());

    // A CA-trusting client does not accept the self-signed agent certificate either.
    let server = server_config(agent.tls_identity()?, &cas, ClientAuth::Required)?;
    let client = client_config(&ServerTrust::Ca(cas.clone()), Some(tls.client_identity()?))?;
    let (_, client_side) = handshake(server, client, "localhost").await?;
    assert!(client_side.is_err());
    Ok(())
}
