//! `TlsIncoming` under a real tonic server and a tonic client using its own TLS stack: the
//! handshake interoperates (TLS 1.3, ALPN h2) and handlers see the client's certificate.

use std::convert::Infallible;
use std::future::{Ready, poll_fn, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kl_svc::tls::{
    AgentIdentity, ClientAuth, ServerTrust, TlsConnector, TlsFiles, TlsIncoming, client_config,
    ensure_generated, role_of, server_config,
};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};

/// Answers every call with the caller's role in an `x-role` header.
#[derive(Debug, Clone)]
struct WhoAmI;

impl NamedService for WhoAmI {
    const NAME: &'static str = "keylime.test.v1.WhoAmI";
}

impl Service<http::Request<Body>> for WhoAmI {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let role = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(|c| role_of(c).ok().flatten()))
            .map(|role| role.to_string())
            .unwrap_or_else(|| "none".to_owned());
        let mut response = http::Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert("content-type", http::HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", http::HeaderValue::from_static("0"));
        if let Ok(value) = http::HeaderValue::from_str(&role) {
            headers.insert("x-role", value);
        }
        ready(Ok(response))
    }
}

/// Calls `WhoAmI` over `channel` and returns the `x-role` header of the answer.
async fn who_am_i(
    channel: &mut tonic::transport::Channel,
    port: u16,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    poll_fn(|cx| channel.poll_ready(cx)).await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}/keylime.test.v1.WhoAmI/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::empty())?;
    let response = tokio::time::timeout(Duration::from_secs(10), channel.call(request)).await??;
    Ok(response.headers().get("x-role").and_then(|v| v.to_str().ok()).map(str::to_owned))
}

#[tokio::test]
async fn tonic_client_pins_the_agent_certificate_through_the_connector()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let tls = TlsFiles::new(dir.path().join("cv_ca"));
    ensure_generated(&tls, &[])?;
    let agent = AgentIdentity::generate("d432fbb3-d2f1-4a97-9ef7-75bd81c00000", &[])?;
    let config =
        server_config(agent.tls_identity()?, &tls.ca_certificates()?, ClientAuth::Required)?;
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let incoming = TlsIncoming::bind(addr, Arc::new(config), Duration::from_secs(10)).await?;
    let port = incoming.local_addr().port();
    let server = tokio::spawn(Server::builder().add_service(WhoAmI).serve_with_incoming(incoming));
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?;

    let pinned =
        client_config(&ServerTrust::Pinned(agent.cert_der.clone()), Some(tls.client_identity()?))?;
    let connect = endpoint.connect_with_connector(TlsConnector::new(Arc::new(pinned)));
    let mut channel = tokio::time::timeout(Duration::from_secs(10), connect).await??;
    assert_eq!(who_am_i(&mut channel, port).await?.as_deref(), Some("admin"));

    let other = AgentIdentity::generate("d432fbb3-d2f1-4a97-9ef7-75bd81c00000", &[])?;
    let wrong_pin =
        client_config(&ServerTrust::Pinned(other.cert_der), Some(tls.client_identity()?))?;
    let connect = endpoint.connect_with_connector(TlsConnector::new(Arc::new(wrong_pin)));
    let refused = tokio::time::timeout(Duration::from_secs(10), connect).await?;
    assert!(refused.is_err(), "a different pinned certificate was accepted");
    server.abort();
    Ok(())
}

#[tokio::test]
async fn tonic_server_on_tls_incoming_sees_the_client_role()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let tls = TlsFiles::new(dir.path().join("cv_ca"));
    ensure_generated(&tls, &[])?;
    let config =
        server_config(tls.server_identity()?, &tls.ca_certificates()?, ClientAuth::Required)?;
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let incoming = TlsIncoming::bind(addr, Arc::new(config), Duration::from_secs(10)).await?;
    let port = incoming.local_addr().port();
    let server = tokio::spawn(Server::builder().add_service(WhoAmI).serve_with_incoming(incoming));

    let read = |p: std::path::PathBuf| std::fs::read_to_string(p);
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(tls.ca_cert())?))
        .identity(Identity::from_pem(read(tls.client_cert())?, read(tls.client_key())?))
        .domain_name("localhost");
    let endpoint =
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?.tls_config(client_tls)?;
    let mut channel = tokio::time::timeout(Duration::from_secs(10), endpoint.connect()).await??;
    assert_eq!(who_am_i(&mut channel, port).await?.as_deref(), Some("admin"));
    server.abort();
    Ok(())
}
