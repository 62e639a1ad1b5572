//! Who may call what: the TLS client-certificate check and the roles of DESIGN §4.
//!
//! Register and Activate need no client certificate. Health and reflection need any
//! certificate from the deployment CA, whatever its role. Reads (GetAgent, ListAgents) need a
//! certificate issued by the deployment CA with role admin, verifier or viewer; DeleteAgent
//! needs admin. A client that presents any other certificate (an agent's self-signed identity,
//! a certificate from another CA, a server certificate) gets PERMISSION_DENIED naming the
//! action, like a client with none.
//!
//! To give such a client an answer instead of a failed handshake, the handshake accepts any
//! client certificate whose holder proves possession of its key, and the chain is checked
//! against the CA on every call (`kl_svc::api::Access`, from [`RPC_ROLES`]), with the same webpki verifier the
//! handshake would have used. Nothing else reads peer certificates.

use std::sync::Arc;

use kl_svc::api::Caller;
use kl_svc::tls::{Role, TlsError, TlsIdentity, crypto_provider, role_of};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The roles each RPC of `keylime.registrar.v1.Registrar` admits: the one table enforced in
/// front of every handler (and the API reference is generated from it); an empty list: no
/// client certificate needed.
pub const RPC_ROLES: &[(&str, &[Role])] = &[
    ("Register", &[]),
    ("Activate", &[]),
    ("GetAgent", READ),
    ("ListAgents", READ),
    ("DeleteAgent", &[Role::Admin]),
];
const READ: &[Role] = &[Role::Admin, Role::Verifier, Role::Viewer];

/// Checks client certificates against the deployment CA.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    ca: Arc<dyn ClientCertVerifier>,
}

impl Access {
    pub fn new(ca_certificates: &[CertificateDer<'static>]) -> Result<Access, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in ca_certificates {
            roots.add(ca.clone())?;
        }
        let ca = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
            .allow_unauthenticated()
            .build()?;
        Ok(Access { ca })
    }

    /// The server's TLS config: TLS 1.3, ALPN h2, client certificates optional and checked
    /// per call (see the module docs).
    pub fn server_config(&self, identity: TlsIdentity) -> Result<ServerConfig, TlsError> {
        let verifier = Arc::new(DeferredChainCheck { ca: self.ca.clone() });
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain, identity.key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// What the caller presented: a certificate chaining to the CA and naming a role, or why not.
    fn caller(&self, extensions: &tonic::codegen::http::Extensions) -> Caller {
        let certs =
            extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs());
        let Some((leaf, intermediates)) = certs.as_deref().and_then(|c| c.split_first()) else {
            return Caller::Nothing;
        };
        if let Err(e) = self.ca.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            return Caller::Untrusted(e.to_string());
        }
        match role_of(leaf) {
            Ok(Some(role)) => Caller::Role(role),
            _ => Caller::NoRole,
        }
    }

    /// The registrar's access rules, checking each caller's chain against the CA.
    pub fn rules(&self) -> kl_svc::api::Access {
        let access = self.clone();
        kl_svc::api::Access::new(
            kl_proto::registrar::v1::registrar_server::SERVICE_NAME,
            RPC_ROLES,
            move |extensions| access.caller(extensions),
        )
    }
}

/// A client-certificate verifier that checks the handshake signature (the client holds the
/// key of the certificate it sent) but leaves the chain to [`Access::rules`].
#[derive(Debug)]
struct DeferredChainCheck {
    ca: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredChainCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}
