//! Who may call what: the TLS client-certificate check and the roles of DESIGN §4.
//!
//! Register and Activate need no client certificate. Reads (GetAgent, ListAgents) need a
//! certificate issued by the deployment CA with role admin, verifier or viewer; DeleteAgent
//! needs admin. A client that presents any other certificate (an agent's self-signed identity,
//! a certificate from another CA, a server certificate) gets PERMISSION_DENIED naming the
//! action, like a client with none.
//!
//! To give such a client an answer instead of a failed handshake, the handshake accepts any
//! client certificate whose holder proves possession of its key, and the chain is checked
//! against the CA here, on every call that needs a role, with the same webpki verifier the
//! handshake would have used. Nothing else reads peer certificates.

use std::sync::Arc;

use kl_svc::tls::{Role, TlsError, TlsIdentity, crypto_provider, role_of};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::Error;

/// What an RPC requires of its caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Requirement {
    pub action: &'static str,
    pub roles: &'static [Role],
    /// How the refusal names the roles ("an admin").
    pub described: &'static str,
}

pub(crate) const GET_AGENT: Requirement = Requirement {
    action: "GetAgent",
    roles: &[Role::Admin, Role::Verifier, Role::Viewer],
    described: "an admin, verifier or viewer",
};
pub(crate) const LIST_AGENTS: Requirement = Requirement {
    action: "ListAgents",
    roles: &[Role::Admin, Role::Verifier, Role::Viewer],
    described: "an admin, verifier or viewer",
};
pub(crate) const DELETE_AGENT: Requirement =
    Requirement { action: "DeleteAgent", roles: &[Role::Admin], described: "an admin" };

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

    /// The caller's role when it presented a certificate chaining to the CA that names one.
    pub fn role<T>(&self, request: &Request<T>) -> Option<Role> {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())?;
        let (leaf, intermediates) = certs.split_first()?;
        self.ca.verify_client_cert(leaf, intermediates, UnixTime::now()).ok()?;
        role_of(leaf).ok().flatten()
    }

    /// Refuses the call unless the caller holds one of the required roles.
    pub fn require<T>(&self, request: &Request<T>, need: Requirement) -> Result<Role, Error> {
        match self.role(request) {
            Some(role) if need.roles.contains(&role) => Ok(role),
            _ => Err(Error::RoleRequired { action: need.action, required: need.described }),
        }
    }
}

/// A client-certificate verifier that checks the handshake signature (the client holds the
/// key of the certificate it sent) but leaves the chain to [`Access::role`].
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
