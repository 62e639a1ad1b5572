//! Who may call what, decided in one place per server: a layer in front of every service that
//! looks up the request path (`/package.Service/Method`) in the daemon's one table of roles
//! and refuses whatever the table does not grant, before any handler runs. A handler reads the
//! caller's identity only for checks of its own (an agent asking about itself); the role is
//! never its business, so a new RPC without a table entry is refused rather than open.
//!
//! The standard services (health, reflection) admit any certificate issued by the deployment
//! CA, whatever its role.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{HEALTH_SERVICE, REFLECTION_SERVICES};
use crate::tls::{Role, role_of};

/// The roles each RPC of a daemon's service admits, by method name (`GetAgent`); an empty
/// list admits every caller, with or without a certificate.
pub type RpcRoles = &'static [(&'static str, &'static [Role])];

/// What a caller showed at the TLS handshake, as the daemon judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Nothing,
    /// A certificate that does not chain to the deployment CA (why not).
    Untrusted(String),
    /// A deployment certificate without a role.
    NoRole,
    /// A deployment certificate naming this role.
    Role(Role),
}

impl Caller {
    /// The caller of a server whose handshake already requires a certificate chaining to the
    /// deployment CA: the role its leaf certificate names.
    pub fn handshake_verified(extensions: &http::Extensions) -> Caller {
        let Some(certs) =
            extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs())
        else {
            return Caller::Nothing;
        };
        match certs.first().map(|leaf| role_of(leaf)) {
            None => Caller::Nothing,
            Some(Ok(Some(role))) => Caller::Role(role),
            Some(Ok(None)) => Caller::NoRole,
            Some(Err(e)) => Caller::Untrusted(e.to_string()),
        }
    }

    fn presented(&self) -> String {
        match self {
            Caller::Nothing => "the client presented none".to_owned(),
            Caller::Untrusted(why) => {
                format!(
                    "the client's certificate does not verify against the deployment CA ({why})"
                )
            }
            Caller::NoRole => "the client's certificate names no role".to_owned(),
            Caller::Role(role) => format!("the client's certificate has role {}", role.as_str()),
        }
    }
}

/// How a refusal names the roles an RPC admits ("an admin", "an admin or viewer").
pub fn described(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    match names.split_last() {
        None => "no".to_owned(),
        Some((last, [])) => format!("an {last}"),
        Some((last, rest)) => format!("an {} or {last}", rest.join(", ")),
    }
}

type Judge = dyn Fn(&http::Extensions) -> Caller + Send + Sync;

/// A daemon's access rules: its service, the roles of each RPC, and how it judges a caller.
#[derive(Clone)]
pub struct Access {
    service: &'static str,
    rpc_roles: RpcRoles,
    caller: Arc<Judge>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Access {
    /// The rules of `service` (fully qualified, `keylime.verifier.v1.Verifier`): `rpc_roles`,
    /// with `caller` judging what each client presented.
    pub fn new(
        service: &'static str,
        rpc_roles: RpcRoles,
        caller: impl Fn(&http::Extensions) -> Caller + Send + Sync + 'static,
    ) -> Access {
        Access { service, rpc_roles, caller: Arc::new(caller) }
    }

    /// Admits a call to `path` from a client with these connection `extensions`, or says why not.
    pub fn admit(&self, path: &str, extensions: &http::Extensions) -> Result<(), Status> {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .ok_or_else(|| Status::unimplemented(format!("{path:?} is not a gRPC method")))?;
        if service == HEALTH_SERVICE || REFLECTION_SERVICES.contains(&service) {
            return match (self.caller)(extensions) {
                Caller::Role(_) | Caller::NoRole => Ok(()),
                Caller::Nothing => Err(Status::unauthenticated(
                    "health and reflection need a client certificate issued by the deployment CA",
                )),
                Caller::Untrusted(why) => Err(Status::unauthenticated(format!(
                    "health and reflection need a client certificate issued by the deployment \
                     CA; the client's does not verify against it ({why})"
                ))),
            };
        }
        if service != self.service {
            return Err(Status::unimplemented(format!("{service} is not served here")));
        }
        let Some(&(_, roles)) = self.rpc_roles.iter().find(|(rpc, _)| *rpc == method) else {
            return Err(Status::permission_denied(format!(
                "{method} has no access rule on this server; nobody may call it"
            )));
        };
        if roles.is_empty() {
            return Ok(());
        }
        let caller = (self.caller)(extensions);
        match caller {
            Caller::Role(role) if roles.contains(&role) => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "{method} requires {} client certificate of this deployment; {}",
                described(roles),
                caller.presented()
            ))),
        }
    }
}

/// The layer that puts [`Access`] in front of every service of a server.
#[derive(Debug, Clone)]
pub struct AccessLayer(pub(crate) Access);

impl<S> tower_layer::Layer<S> for AccessLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, access: self.0.clone() }
    }
}

/// A server's services behind its [`Access`].
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    access: Access,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Gate<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.access.admit(request.uri().path(), request.extensions()) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(refusal) => Box::pin(std::future::ready(Ok(refusal.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    const ROLES: RpcRoles = &[
        ("Register", &[]),
        ("GetAgent", &[Role::Admin, Role::Verifier, Role::Viewer]),
        ("DeleteAgent", &[Role::Admin]),
    ];

    fn access(caller: Caller) -> Access {
        Access::new("keylime.registrar.v1.Registrar", ROLES, move |_| caller.clone())
    }

    fn code(access: &Access, path: &str) -> Result<(), (Code, String)> {
        access.admit(path, &http::Extensions::new()).map_err(|s| (s.code(), s.message().to_owned()))
    }

    #[test]
    fn the_table_decides_and_a_method_missing_from_it_is_refused() {
        let viewer = access(Caller::Role(Role::Viewer));
        assert_eq!(code(&viewer, "/keylime.registrar.v1.Registrar/GetAgent"), Ok(()));
        assert_eq!(code(&viewer, "/keylime.registrar.v1.Registrar/Register"), Ok(()));
        assert_eq!(
            code(&viewer, "/keylime.registrar.v1.Registrar/DeleteAgent"),
            Err((
                Code::PermissionDenied,
                "DeleteAgent requires an admin client certificate of this deployment; the \
                 client's certificate has role viewer"
                    .to_owned()
            ))
        );
        let admin = access(Caller::Role(Role::Admin));
        let Err((code_, message)) =
            code(&admin, "/keylime.registrar.v1.Registrar/ForgetEverything")
        else {
            panic!("a method without an access rule was admitted");
        };
        assert_eq!(code_, Code::PermissionDenied);
        assert!(message.starts_with("ForgetEverything has no access rule"), "{message}");
        assert_eq!(
            code(&admin, "/keylime.verifier.v1.Verifier/GetAgent").map_err(|e| e.0),
            Err(Code::Unimplemented)
        );
    }

    #[test]
    fn standard_services_need_a_deployment_certificate_of_any_role() {
        for caller in [Caller::NoRole, Caller::Role(Role::Server)] {
            assert_eq!(code(&access(caller), "/grpc.health.v1.Health/Check"), Ok(()));
        }
        for caller in [Caller::Nothing, Caller::Untrusted("UnknownIssuer".to_owned())] {
            let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
            assert_eq!(code(&access(caller), path).map_err(|e| e.0), Err(Code::Unauthenticated));
        }
        let anonymous = access(Caller::Nothing);
        let Err((_, message)) = code(&anonymous, "/keylime.registrar.v1.Registrar/GetAgent") else {
            panic!("an anonymous client was admitted to GetAgent");
        };
        assert_eq!(
            message,
            "GetAgent requires an admin, verifier or viewer client certificate of this \
             deployment; the client presented none"
        );
    }
}
