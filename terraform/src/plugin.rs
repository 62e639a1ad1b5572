//! go-plugin's side of the contract with Terraform: the magic cookie, the handshake line on
//! stdout, AutoMTLS, and the services a go-plugin host expects besides the provider (health,
//! controller, stdio, broker).
//!
//! AutoMTLS: Terraform passes its own self-signed client certificate in `PLUGIN_CLIENT_CERT`;
//! the plugin answers with a fresh self-signed certificate in the handshake line, accepts only
//! Terraform's certificate, and Terraform accepts only the one it was given. Both certificates
//! are CA certificates used as leaves, which WebPKI path building refuses, so each side pins the
//! other's certificate byte for byte and checks the handshake signature.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::health::health_server::{Health, HealthServer};
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse, health_check_response};
use crate::proto::plugin::grpc_broker_server::{GrpcBroker, GrpcBrokerServer};
use crate::proto::plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use crate::proto::plugin::grpc_stdio_server::{GrpcStdio, GrpcStdioServer};
use crate::proto::plugin::{ConnInfo, Empty, StdioData};
use crate::proto::tfplugin6::provider_server::ProviderServer;
use crate::provider::KeylimeProvider;

/// The cookie Terraform sets for its providers.
const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// go-plugin's core protocol version and Terraform's plugin protocol major version.
const CORE_PROTOCOL: u32 = 1;
const APP_PROTOCOL: u32 = 6;

pub fn started_by_terraform() -> bool {
    std::env::var(MAGIC_COOKIE_KEY).is_ok_and(|v| v == MAGIC_COOKIE_VALUE)
}

/// The handshake line go-plugin reads from the plugin's stdout.
pub fn handshake_line(addr: SocketAddr, cert_der: Option<&[u8]>) -> String {
    let cert = cert_der
        .map(|der| base64::engine::general_purpose::STANDARD_NO_PAD.encode(der))
        .unwrap_or_default();
    format!("{CORE_PROTOCOL}|{APP_PROTOCOL}|tcp|{addr}|grpc|{cert}")
}

/// Ports to try: `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT` when Terraform sets them, else any.
fn ports() -> Vec<u16> {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u16>().ok());
    match (env("PLUGIN_MIN_PORT"), env("PLUGIN_MAX_PORT")) {
        (Some(lo), Some(hi)) if lo <= hi && lo > 0 => (lo..=hi).collect(),
        _ => vec![0],
    }
}

/// A fresh self-signed certificate for `localhost`, usable as server and client and as its own
/// CA (what go-plugin expects), with its PKCS#8 key.
pub fn self_signed() -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .context("certificate parameters")?;
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "HashiCorp");
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(30);
    params.not_after = now + time::Duration::days(1);
    let key = rcgen::KeyPair::generate().context("generating the plugin key")?;
    let cert = params.self_signed(&key).context("signing the plugin certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

/// Accepts exactly Terraform's client certificate.
#[derive(Debug)]
struct PinnedClient {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme == SignatureScheme::ECDSA_NISTP521_SHA512 {
            return verify_p521(message, cert, dss.signature());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let mut schemes = self.algorithms.supported_schemes();
        schemes.push(SignatureScheme::ECDSA_NISTP521_SHA512);
        schemes
    }
}

/// go-plugin's client key is ECDSA P-521, which ring does not verify; RustCrypto does. A client
/// that cannot use its key is never sent a certificate request it can answer, and the handshake
/// fails with "certificate required".
fn verify_p521(
    message: &[u8],
    cert: &CertificateDer<'_>,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use p521::ecdsa::signature::Verifier;
    let bad = |what: &str| rustls::Error::General(format!("P-521 client signature: {what}"));
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| bad("certificate"))?;
    let point = &parsed.public_key().subject_public_key.data;
    let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad("public key"))?;
    let sig = p521::ecdsa::Signature::from_der(signature).map_err(|_| bad("encoding"))?;
    key.verify(message, &sig)
        .map(|()| HandshakeSignatureValid::assertion())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))
}

/// The TLS server config for AutoMTLS: our certificate, Terraform's pinned.
pub fn server_tls(
    client_cert_pem: &str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<ServerConfig> {
    let client = CertificateDer::from_pem_slice(client_cert_pem.as_bytes())
        .map_err(|e| anyhow!("PLUGIN_CLIENT_CERT: no PEM certificate: {e}"))?;
    let provider = kl_svc::tls::crypto_provider();
    let verifier =
        PinnedClient { cert: client, algorithms: provider.signature_verification_algorithms };
    // TLS 1.3 only: Terraform's key is P-521, whose signatures are checked here for TLS 1.3;
    // go-plugin's clients speak 1.3.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![cert], key)
        .context("the plugin certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Serves until Terraform asks the plugin to shut down (or closes it).
pub async fn serve() -> anyhow::Result<()> {
    let (shutdown, mut stopped) = watch::channel(false);
    let router = Server::builder()
        .add_service(ProviderServer::new(KeylimeProvider::new(shutdown.clone())))
        .add_service(HealthServer::new(PluginHealth))
        .add_service(GrpcControllerServer::new(Controller { shutdown }))
        .add_service(GrpcStdioServer::new(Stdio))
        .add_service(GrpcBrokerServer::new(Broker));
    let until_shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let client_cert = std::env::var("PLUGIN_CLIENT_CERT").unwrap_or_default();
    let mut last_error = None;
    for port in ports() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if client_cert.is_empty() {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    announce(&handshake_line(listener.local_addr()?, None))?;
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    router.serve_with_incoming_shutdown(incoming, until_shutdown).await?;
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
        } else {
            let (cert, key) = self_signed()?;
            let der = cert.to_vec();
            let config = Arc::new(server_tls(&client_cert, cert, key)?);
            match kl_svc::tls::TlsIncoming::bind(addr, config, Duration::from_secs(10)).await {
                Ok(incoming) => {
                    announce(&handshake_line(incoming.local_addr(), Some(&der)))?;
                    router.serve_with_incoming_shutdown(incoming, until_shutdown).await?;
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    Err(anyhow!(
        "no port to listen on: {}",
        last_error.map(|e| e.to_string()).unwrap_or_else(|| "empty port range".into())
    ))
}

/// Prints the handshake line: the only thing the plugin ever writes to stdout.
fn announce(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).context("writing the handshake to stdout")
}

#[derive(Debug)]
struct PluginHealth;

#[tonic::async_trait]
impl Health for PluginHealth {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: health_check_response::ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("health watch"))
    }
}

#[derive(Debug)]
struct Controller {
    shutdown: watch::Sender<bool>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        let _ = self.shutdown.send(true);
        Ok(Response::new(Empty {}))
    }
}

/// The plugin writes nothing to stdout or stderr that the host should relay; the stream stays
/// open and empty.
#[derive(Debug)]
struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = Pin<Box<dyn Stream<Item = Result<StdioData, Status>> + Send>>;

    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}

/// No extra connections are brokered; the stream stays open and empty.
#[derive(Debug)]
struct Broker;

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = Pin<Box<dyn Stream<Item = Result<ConnInfo, Status>> + Send>>;

    async fn start_stream(
        &self,
        _: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_line_is_go_plugin_format() {
        let addr: SocketAddr = "127.0.0.1:4321".parse().expect("addr");
        assert_eq!(handshake_line(addr, None), "1|6|tcp|127.0.0.1:4321|grpc|");
        let line = handshake_line(addr, Some(&[0xff, 0x00, 0x10]));
        // Standard alphabet, no padding.
        assert_eq!(line, "1|6|tcp|127.0.0.1:4321|grpc|/wAQ");
    }

    #[test]
    fn self_signed_cert_parses_and_pins() {
        let (cert, key) = self_signed().expect("cert");
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(cert.as_ref())
        );
        let (ours, our_key) = self_signed().expect("cert");
        assert!(server_tls(&pem, ours.clone(), our_key).is_ok());
        // A key that is not the certificate's is refused, as is a client certificate that is
        // not PEM.
        assert!(server_tls(&pem, ours, key).is_err());
        assert!(server_tls("not pem", cert, self_signed().expect("c").1).is_err());
    }
}
