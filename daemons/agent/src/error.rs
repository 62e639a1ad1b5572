//! The agent's errors, and the one mapping from them to gRPC statuses.

use std::net::SocketAddr;
use std::path::PathBuf;

use kl_tpm::TpmError;
use tonic::{Code, Status};

use crate::identity::IdentityError;
use crate::imalog::ImaLogError;

/// Everything that stops the agent or fails a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("config: {key} = \"{value}\": {reason}")]
    Config { key: &'static str, value: String, reason: String },

    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),

    #[error("trusted_client_ca {}: {source}", path.display())]
    TrustedCa { path: PathBuf, source: kl_svc::tls::TlsError },

    #[error(transparent)]
    Identity(#[from] IdentityError),

    #[error("agent TLS server: {0}")]
    ServerTls(kl_svc::tls::TlsError),

    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },

    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),

    #[error("building the gRPC API: {0}")]
    Api(#[from] kl_svc::api::ApiError),

    #[error("registrar TLS: {0}")]
    RegistrarTls(kl_svc::tls::TlsError),

    #[error("registrar address {uri}: {reason}")]
    RegistrarAddress { uri: String, reason: String },

    #[error("the registrar refused {rpc} ({code:?}): {message}")]
    RegistrationRefused { rpc: &'static str, code: Code, message: String },

    #[error(
        "credential activation on the TPM failed (is the registrar's challenge for this TPM?): {0}"
    )]
    Activation(TpmError),

    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    #[error(transparent)]
    ImaLog(#[from] ImaLogError),

    #[error("{0} is not implemented by this agent yet")]
    Unimplemented(&'static str),

    #[error("payload: {0}")]
    Payload(#[from] crate::payload::InstallError),

    #[error(transparent)]
    RunAs(#[from] crate::privileges::RunAsError),

    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Whether starting again cannot help: the configuration is wrong or the registrar refused
    /// this TPM. `keylime_agent` exits with status 78 (EX_CONFIG) then, which the systemd unit
    /// does not restart.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Config { .. }
                | Error::RunAs(_)
                | Error::TrustedCa { .. }
                | Error::Identity(_)
                | Error::RegistrarAddress { .. }
                | Error::RegistrationRefused { .. }
                | Error::Activation(_)
                | Error::Tpm(
                    TpmError::InvalidTcti { .. }
                        | TpmError::AkAlgorithm { .. }
                        | TpmError::AkBlob { .. }
                        | TpmError::AkFile { .. }
                )
        )
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Tpm(t) => match t {
                TpmError::NonceTooLong { .. } | TpmError::PcrIndex { .. } => Code::InvalidArgument,
                TpmError::PcrMissing { .. } => Code::FailedPrecondition,
                TpmError::ConnectionLost { .. }
                | TpmError::Connect { .. }
                | TpmError::Lockout { .. }
                | TpmError::OutOfMemory { .. } => Code::Unavailable,
                _ => Code::Internal,
            },
            Error::ImaLog(_) => Code::Unavailable,
            _ => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_mean_what_they_say() {
        let s = Status::from(Error::InvalidArgument { field: "nonce", reason: "3 bytes".into() });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("nonce: "));
        let s = Status::from(Error::Tpm(TpmError::PcrIndex { index: 24 }));
        assert_eq!((s.code(), s.message().contains("24")), (Code::InvalidArgument, true));
        let s = Status::from(Error::Unimplemented("DeliverKey"));
        assert_eq!(s.code(), Code::Unimplemented);
        let s = Status::from(Error::Tpm(TpmError::Lockout {
            operation: "quote",
            tcti: "device:/dev/tpmrm0".into(),
        }));
        assert_eq!(s.code(), Code::Unavailable);
    }
}
