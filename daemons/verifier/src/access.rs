//! Who may call what. Every RPC needs a client certificate chaining to the deployment CA (the
//! TLS handshake refuses anything else); the role it names decides: reads (`Get*`, `List*`,
//! `WatchEvents`) need admin or viewer, everything else admin. A `verifier` role, a server
//! certificate or a certificate without a role gets PERMISSION_DENIED naming the action. The
//! table is enforced in front of every handler (`kl_svc::api::Access`).

use kl_svc::api::{Access, Caller};
use kl_svc::tls::Role;

/// Read RPCs.
const READ: &[Role] = &[Role::Admin, Role::Viewer];
/// Everything that changes state.
const WRITE: &[Role] = &[Role::Admin];

/// The roles each RPC of `keylime.verifier.v1.Verifier` admits: the one table [`access`]
/// enforces (and the API reference is generated from).
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

/// The verifier's access rules: the handshake has already checked the chain.
pub(crate) fn access() -> Access {
    Access::new(
        kl_proto::verifier::v1::verifier_server::SERVICE_NAME,
        RPC_ROLES,
        Caller::handshake_verified,
    )
}
