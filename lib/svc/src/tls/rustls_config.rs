//! rustls server and client configs: TLS 1.3 only, ring as the crypto provider, ALPN `h2`
//! (every daemon speaks gRPC).

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

use super::{TlsError, TlsIdentity};

/// Whether a server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a certificate chaining to the CA.
    Required,
    /// A client may come without a certificate (registration); one that presents a
    /// certificate must still chain to the CA.
    Optional,
}

/// How a client authenticates the server.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The server certificate must chain to one of these CA certificates and name the host.
    Ca(Vec<CertificateDer<'static>>),
    /// The server must present exactly this (self-signed agent) certificate and prove it
    /// holds its key; names and issuers are not checked.
    Pinned(CertificateDer<'static>),
}

/// The one crypto provider of the project.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(cas: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(roots)
}

/// A server config presenting `identity` and checking client certificates against
/// `client_cas`. Read the client's role afterwards with [`super::role_of`].
pub fn server_config(
    identity: TlsIdentity,
    client_cas: &[CertificateDer<'static>],
    auth: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(client_cas)?),
        provider.clone(),
    );
    let verifier = match auth {
        ClientAuth::Required => builder.build()?,
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client config that authenticates the server by `trust` and presents `identity` when given.
pub fn client_config(
    trust: &ServerTrust,
    identity: Option<TlsIdentity>,
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        ServerTrust::Ca(cas) => builder.with_root_certificates(root_store(cas)?),
        ServerTrust::Pinned(cert) => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(PinnedServerCert {
                cert: cert.clone(),
                algorithms: provider.signature_verification_algorithms,
            }))
        }
    };
    let mut config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    if matches!(trust, ServerTrust::Pinned(_)) {
        // A pinned peer is one agent, called over one long-lived connection: a session cache
        // per peer (about 10 KiB) would be paid by every agent a verifier attests.
        config.resumption = Resumption::disabled();
    }
    Ok(config)
}

/// Accepts exactly one end-entity certificate, byte for byte. The agent's certificate is
/// self-signed and recorded by the registrar at registration, so its identity is the
/// certificate itself; the handshake signature check (below) proves the peer holds its key.
#[derive(Debug)]
struct PinnedServerCert {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
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
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
