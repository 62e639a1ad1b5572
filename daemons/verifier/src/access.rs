//! Who may call what. Every RPC needs a client certificate chaining to the deployment CA (the
//! TLS handshake refuses anything else); the role it names decides: reads (`Get*`, `List*`,
//! `WatchEvents`) need admin or viewer, everything else admin. A `verifier` role, a server
//! certificate or a certificate without a role gets PERMISSION_DENIED naming the action.

use kl_svc::tls::{Role, role_of};
use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::Error;

/// Read RPCs.
const READ: &[Role] = &[Role::Admin, Role::Viewer];
/// Everything that changes state.
const WRITE: &[Role] = &[Role::Admin];

/// The roles each RPC of `keylime.verifier.v1.Verifier` admits: the one table [`require`]
/// checks against (and the API reference is generated from).
pub const RPC_ROLES: &[(&str, &[Role])] = &[
    ("EnrollAgent", WRITE),
    ("GetAgent", READ),
    ("ListAgents", READ),
    ("UpdateAgent", WRITE),
    ("UnenrollAgent", WRITE),
    ("StopAgent", WRITE),
    ("ResumeAgent", WRITE),
    ("PutRuntimePolicy", WRITE),
    ("GetRuntimePolicy", READ),
    ("ListRuntimePolicies", READ),
    ("DeleteRuntimePolicy", WRITE),
    ("PutMeasuredBootPolicy", WRITE),
    ("GetMeasuredBootPolicy", READ),
    ("ListMeasuredBootPolicies", READ),
    ("DeleteMeasuredBootPolicy", WRITE),
    ("ListAttestations", READ),
    ("WatchEvents", READ),
    ("GetEventCursors", READ),
];

/// The caller's role as its (handshake-verified) certificate names it.
pub(crate) fn role<T>(request: &Request<T>) -> Option<Role> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())?;
    let leaf = certs.first()?;
    role_of(leaf).ok().flatten()
}

/// Refuses the call `action` unless the caller holds one of the roles [`RPC_ROLES`] gives it.
pub(crate) fn require<T>(request: &Request<T>, action: &'static str) -> Result<(), Error> {
    let Some(&(_, roles)) = RPC_ROLES.iter().find(|(rpc, _)| *rpc == action) else {
        return Err(Error::Internal(format!("{action}: no access rule (refused)")));
    };
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
