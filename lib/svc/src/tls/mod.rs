//! TLS identities: the CA under `<keylime_dir>/cv_ca/`, role certificates, the agent's
//! self-signed identity, and rustls server and client configs (TLS 1.3, ring).
//!
//! Files in a TLS directory: `cacert.crt`, `cakey.pem`, `server-cert.crt`,
//! `server-private.pem`, `client-cert.crt` (role admin), `client-private.pem`. Private keys
//! are written mode 0600.

mod agent;
mod ca;
mod connector;
mod files;
mod listener;
mod role;
mod rustls_config;

use std::path::PathBuf;

pub use agent::AgentIdentity;
pub use ca::{
    CertificateAuthority, IssuedCert, ensure_generated, host_name, prepare, server_names,
};
pub use connector::{TlsConnector, client_refusal, connect, refusal_reason};
pub use files::{TlsDir, TlsFiles, TlsIdentity, read_certificates};
pub use listener::TlsIncoming;
pub use role::{ROLE_URI_PREFIX, Role, role_of};
pub use rustls_config::{ClientAuth, ServerTrust, client_config, crypto_provider, server_config};

/// Errors from reading, writing and using certificates and keys; each names the file or the
/// certificate concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: missing; {hint}", path.display())]
    Missing { path: PathBuf, hint: String },
    #[error("cannot create certificate for \"{name}\": {source}")]
    Generate { name: String, source: rcgen::Error },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("unknown role \"{0}\" (expected admin, viewer, verifier or server)")]
    UnknownRole(String),
    #[error("certificate names more than one role: {0} and {1}")]
    ConflictingRoles(Role, Role),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}
