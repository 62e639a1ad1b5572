//! Who may call what. Every RPC needs a client certificate chaining to the deployment CA (the
//! TLS handshake refuses anything else); the role it names decides: reads (`Get*`, `List*`,
//! `WatchEvents`) need admin or viewer, everything else admin. A `verifier` role, a server
//! certificate or a certificate without a role gets PERMISSION_DENIED naming the action.

use kl_svc::tls::{Role, role_of};
use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::Error;

/// Read RPCs.
pub(crate) const READ: &[Role] = &[Role::Admin, Role::Viewer];
/// Everything that changes state.
pub(crate) const WRITE: &[Role] = &[Role::Admin];

/// The caller's role as its (handshake-verified) certificate names it.
pub(crate) fn role<T>(request: &Request<T>) -> Option<Role> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())?;
    let leaf = certs.first()?;
    role_of(leaf).ok().flatten()
}

/// Refuses the call unless the caller holds one of `roles`.
pub(crate) fn require<T>(
    request: &Request<T>,
    action: &'static str,
    roles: &'static [Role],
) -> Result<(), Error> {
    let presented = match role(request) {
        Some(r) if roles.contains(&r) => return Ok(()),
        Some(r) => format!("the client's certificate has role {}", r.as_str()),
        None => "the client's certificate names no role".to_owned(),
    };
    Err(Error::RoleRequired {
        action,
        required: if roles.len() == 1 { "an admin" } else { "an admin or viewer" },
        presented,
    })
}
