//! The registrar's errors and the gRPC status each one becomes.

use std::path::PathBuf;

use kl_store::StoreError;
use kl_svc::tls::TlsError;

/// Everything that can go wrong in the registrar, from start-up to one RPC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request field is malformed or unacceptable; `field` is its proto name.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The EK certificate is missing, untrusted or certifies another key.
    #[error("ek_certificate: {0}")]
    EkCertificate(String),
    /// A different TPM identity is registered under the agent id. The message names neither
    /// the id nor anything of the record: the caller is not authenticated.
    #[error(
        "this agent id belongs to a different EK or EK certificate; an admin must delete the \
         agent before another TPM can register under it"
    )]
    IdentityConflict,
    /// Activate without a pending registration that the proof opens: none was made, it expired
    /// or was activated, or the proof is wrong. One error for all, so that a caller cannot
    /// learn whether someone has a registration pending under an id.
    #[error(
        "activation of agent {agent_id} failed: no pending registration matches this proof \
         (never registered, expired, already activated, or a wrong proof); register again"
    )]
    NoPendingRegistration { agent_id: String },
    #[error("{action}: too many registration requests from {source_ip}; retry later")]
    RateLimited { action: &'static str, source_ip: String },
    #[error("too many registrations are pending; retry later")]
    PendingFull,
    #[error("too much registration data is pending; retry later")]
    PendingBytes,
    #[error("agent {agent_id} is not registered")]
    AgentNotFound { agent_id: String },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// A failure inside the registrar that the caller cannot fix.
    #[error("{0}")]
    Internal(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("listening on {address}: {source}")]
    Listen { address: std::net::SocketAddr, source: std::io::Error },
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("building the gRPC API: {0}")]
    Api(#[from] kl_svc::api::ApiError),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument { field, reason: reason.into() }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        use tonic::Status;
        let message = e.to_string();
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(message),
            Error::EkCertificate(_) => Status::permission_denied(message),
            Error::IdentityConflict => Status::already_exists(message),
            Error::NoPendingRegistration { .. } | Error::AgentNotFound { .. } => {
                Status::not_found(message)
            }
            Error::RateLimited { .. } | Error::PendingFull | Error::PendingBytes => {
                Status::resource_exhausted(message)
            }
            Error::Store(_)
            | Error::Internal(_)
            | Error::Tls(_)
            | Error::Io { .. }
            | Error::Listen { .. }
            | Error::Serve(_)
            | Error::Api(_) => {
                // The details (file names, storage errors) are for the operator's log.
                tracing::error!(error = %message, "request failed");
                Status::internal("internal registrar error; see the registrar log")
            }
        }
    }
}
