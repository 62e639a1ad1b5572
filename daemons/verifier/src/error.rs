//! The verifier's errors and the gRPC status each one becomes.

use kl_store::StoreError;
use kl_svc::tls::TlsError;

/// Everything that can go wrong in the verifier, from start-up to one RPC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request field is malformed or unacceptable; `field` is its proto name.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("agent {agent_id} is not enrolled")]
    AgentNotFound { agent_id: String },
    #[error("agent {agent_id} is not registered (or not activated) at the registrar")]
    NotRegistered { agent_id: String },
    #[error("{kind} policy {name:?} does not exist")]
    PolicyNotFound { kind: &'static str, name: String },
    /// A create-only put found the name taken.
    #[error("{kind} policy {name:?} already exists; update it instead, or delete it first")]
    PolicyExists { kind: &'static str, name: String },
    #[error("{kind} policy {name:?} is used by enrolled agent {agent_id}; change the agent first")]
    PolicyInUse { kind: &'static str, name: String, agent_id: String },
    /// Another change of the same agent got there first; the caller may retry.
    #[error("{0}")]
    Conflict(&'static str),
    /// `from_cursor` is older than what the outbox still holds.
    #[error("cursor {requested} has been pruned; the oldest retained event is {oldest}")]
    CursorPruned { requested: u64, oldest: u64 },
    /// The registrar could not be asked.
    #[error("registrar at {address}: {reason}")]
    Registrar { address: String, reason: String },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The state store cannot be written (a full disk); the reason names the file and the
    /// cause.
    #[error("state store cannot be written: {0}")]
    StoreUnwritable(String),
    /// A failure inside the verifier that the caller cannot fix.
    #[error("{0}")]
    Internal(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A setting that cannot be used; the message names it.
    #[error("configuration: {0}")]
    Config(String),
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
            Error::AgentNotFound { .. }
            | Error::NotRegistered { .. }
            | Error::PolicyNotFound { .. } => Status::not_found(message),
            Error::PolicyInUse { .. } => Status::failed_precondition(message),
            Error::PolicyExists { .. } => Status::already_exists(message),
            Error::CursorPruned { .. } => Status::out_of_range(message),
            Error::Conflict(_) => Status::aborted(message),
            Error::Registrar { .. } | Error::StoreUnwritable(_) => Status::unavailable(message),
            Error::Store(e) if e.is_io() => Status::unavailable(message),
            Error::Store(_)
            | Error::Internal(_)
            | Error::Tls(_)
            | Error::Config(_)
            | Error::Listen { .. }
            | Error::Serve(_)
            | Error::Api(_) => {
                tracing::error!(error = %message, "request failed");
                Status::internal("internal verifier error; see the verifier log")
            }
        }
    }
}
