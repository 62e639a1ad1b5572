//! The standard gRPC services every daemon serves beside its own API: health
//! (`grpc.health.v1.Health`) and server reflection (`grpc.reflection.v1` and `v1alpha`).
//!
//! Health is answered from one [`Health`] per daemon that the daemon keeps honest: NOT_SERVING
//! while it starts, while it cannot do its job (the reason is logged when the status changes)
//! and from the moment shutdown begins. Its `Watch` streams end once shutdown has been
//! announced on them, so a load balancer's long-lived watch never holds a stopping daemon
//! open (tonic-health's own service keeps every watch open for as long as it lives, which is
//! why only its generated types are used here).
//!
//! Who may call what is decided in front of all of them, from the daemon's one table of roles
//! ([`access`]); health and reflection admit any certificate of the deployment.

mod access;

pub use access::{Access, AccessLayer, Caller, Gate, RpcRoles, described};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost_types::FileDescriptorSet;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_layer::{Identity, Stack};

/// The health service's own name.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// The reflection services' names.
pub const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Where a daemon stands, as its health service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Bound, not yet serving its API (NOT_SERVING).
    Starting,
    /// Doing its job (SERVING).
    Serving,
    /// Cannot do its job, for the reason given (NOT_SERVING).
    Impaired(String),
    /// Shutting down (NOT_SERVING); final.
    Stopping,
}

impl Readiness {
    fn status(&self) -> ServingStatus {
        match self {
            Readiness::Serving => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        }
    }
}

/// A daemon's health: the services it names and where it stands. Cheap to clone; every clone
/// reports to the same health service.
#[derive(Debug, Clone)]
pub struct Health {
    readiness: Arc<watch::Sender<Readiness>>,
    services: Arc<[String]>,
}

impl Health {
    /// A health of `services` (fully qualified names, e.g. `keylime.verifier.v1.Verifier`),
    /// starting. The empty name stands for the whole daemon and is always known.
    pub fn new(services: &[&str]) -> Health {
        let (readiness, _) = watch::channel(Readiness::Starting);
        Health {
            readiness: Arc::new(readiness),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The services this health names (without the empty name).
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// Where the daemon stands now.
    pub fn readiness(&self) -> Readiness {
        self.readiness.borrow().clone()
    }

    /// The daemon does its job.
    pub fn set_serving(&self) {
        self.set(Readiness::Serving);
    }

    /// The daemon cannot do its job; `reason` goes to the log when the status changes.
    pub fn set_impaired(&self, reason: impl Into<String>) {
        self.set(Readiness::Impaired(reason.into()));
    }

    /// Shutdown has begun: NOT_SERVING from now on, and every watch ends.
    pub fn set_stopping(&self) {
        self.set(Readiness::Stopping);
    }

    fn set(&self, next: Readiness) {
        self.readiness.send_if_modified(|now| {
            if *now == next || *now == Readiness::Stopping {
                return false;
            }
            match &next {
                Readiness::Impaired(reason) => {
                    tracing::warn!(%reason, "health: NOT_SERVING")
                }
                Readiness::Serving => tracing::info!("health: SERVING"),
                Readiness::Stopping => tracing::info!("health: NOT_SERVING (shutting down)"),
                Readiness::Starting => {}
            }
            *now = next;
            true
        });
    }

    /// Keeps this health following `probe` (`Err` names why the daemon cannot do its job),
    /// asked every `interval` until `stopped` resolves.
    pub async fn follow<P, F>(
        &self,
        mut probe: P,
        interval: Duration,
        stopped: impl Future<Output = ()>,
    ) where
        P: FnMut() -> F,
        F: Future<Output = Result<(), String>>,
    {
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                outcome = probe() => match outcome {
                    Ok(()) => self.set_serving(),
                    Err(reason) => self.set_impaired(reason),
                },
                () = &mut stopped => return,
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = &mut stopped => return,
            }
        }
    }

    fn knows(&self, service: &str) -> bool {
        service.is_empty() || self.services.iter().any(|s| s == service)
    }

    /// The `grpc.health.v1.Health` service over this health.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService { health: self.clone() })
    }
}

/// `grpc.health.v1.Health` for one [`Health`].
#[derive(Debug, Clone)]
pub struct HealthService {
    health: Health,
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status as i32 }
}

#[tonic::async_trait]
impl health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !self.health.knows(&service) {
            return Err(Status::not_found(format!("service {service:?} is not served here")));
        }
        Ok(Response::new(response(self.health.readiness().status())))
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let (sender, receiver) = mpsc::channel(4);
        if !self.health.knows(&service) {
            // The protocol keeps such a watch open; the set of services never changes here,
            // so it stays SERVICE_UNKNOWN until the client or the daemon leaves.
            let mut readiness = self.health.readiness.subscribe();
            tokio::spawn(async move {
                if sender.send(Ok(response(ServingStatus::ServiceUnknown))).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        changed = readiness.changed() => {
                            if changed.is_err() || *readiness.borrow() == Readiness::Stopping {
                                return;
                            }
                        }
                        () = sender.closed() => return,
                    }
                }
            });
            return Ok(Response::new(ReceiverStream::new(receiver)));
        }
        let mut readiness = self.health.readiness.subscribe();
        tokio::spawn(async move {
            let mut sent = None;
            loop {
                let now = readiness.borrow_and_update().clone();
                let status = now.status();
                if sent != Some(status) {
                    if sender.send(Ok(response(status))).await.is_err() {
                        return;
                    }
                    sent = Some(status);
                }
                if now == Readiness::Stopping {
                    return;
                }
                tokio::select! {
                    changed = readiness.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Why a daemon's API could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the API's file descriptor set does not decode: {0}")]
    Descriptors(#[from] prost::DecodeError),
    #[error("the API's file descriptor set has no file of package {0}")]
    NoFile(String),
}

/// A daemon's whole gRPC API: its `service` and the standard ones (health, reflection v1 and
/// v1alpha), every call passing `access` first. Reflection describes exactly what is served:
/// the daemon's own proto file (with what it imports) from `descriptor_set` (an encoded
/// `FileDescriptorSet` that may hold other daemons' files too), health and reflection.
pub fn router<S>(
    health: &Health,
    access: Access,
    descriptor_set: &[u8],
    service: S,
) -> Result<Router<Stack<AccessLayer, Identity>>, ApiError>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let own = own_files(descriptor_set, S::NAME)?;
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .register_file_descriptor_set(own.clone());
        for name in health.services().iter().map(String::as_str).chain([HEALTH_SERVICE]) {
            builder = builder.with_service_name(name);
        }
        for name in REFLECTION_SERVICES {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    Ok(tonic::transport::Server::builder()
        .layer(AccessLayer(access))
        .add_service(health.service())
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(service))
}

/// The file of `service`'s package in `encoded` and the files it imports, and nothing else.
fn own_files(encoded: &[u8], service: &str) -> Result<FileDescriptorSet, ApiError> {
    let all = <FileDescriptorSet as prost::Message>::decode(encoded)?;
    let package = service.rsplit_once('.').map_or("", |(package, _)| package);
    let mut wanted: Vec<String> =
        all.file.iter().filter(|f| f.package() == package).map(|f| f.name().to_owned()).collect();
    if wanted.is_empty() {
        return Err(ApiError::NoFile(package.to_owned()));
    }
    let mut at = 0;
    while let Some(name) = wanted.get(at).cloned() {
        at += 1;
        let Some(file) = all.file.iter().find(|f| f.name() == name) else { continue };
        for import in &file.dependency {
            if !wanted.contains(import) {
                wanted.push(import.clone());
            }
        }
    }
    let file = all.file.into_iter().filter(|f| wanted.iter().any(|w| w == f.name())).collect();
    Ok(FileDescriptorSet { file })
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_server::Health as _;

    use super::*;

    fn ask(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest { service: service.to_owned() })
    }

    #[tokio::test]
    async fn check_follows_readiness_and_knows_only_named_services() -> Result<(), Status> {
        let health = Health::new(&["keylime.verifier.v1.Verifier"]);
        let service = HealthService { health: health.clone() };
        let status = |r: Response<HealthCheckResponse>| r.into_inner().status;
        assert_eq!(status(service.check(ask("")).await?), ServingStatus::NotServing as i32);
        health.set_serving();
        assert_eq!(status(service.check(ask("")).await?), ServingStatus::Serving as i32);
        assert_eq!(
            status(service.check(ask("keylime.verifier.v1.Verifier")).await?),
            ServingStatus::Serving as i32
        );
        let unknown = service.check(ask("keylime.agent.v1.Agent")).await;
        assert_eq!(unknown.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::NotFound));
        health.set_impaired("state store unwritable");
        assert_eq!(status(service.check(ask("")).await?), ServingStatus::NotServing as i32);
        health.set_stopping();
        health.set_serving();
        assert_eq!(
            status(service.check(ask("")).await?),
            ServingStatus::NotServing as i32,
            "stopping is final"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_watch_sees_each_change_and_ends_at_shutdown() -> Result<(), Status> {
        let health = Health::new(&[]);
        let service = HealthService { health: health.clone() };
        let mut stream = service.watch(ask("")).await?.into_inner();
        let mut next = async || stream.next().await.transpose().map(|r| r.map(|r| r.status));
        assert_eq!(next().await?, Some(ServingStatus::NotServing as i32));
        health.set_serving();
        assert_eq!(next().await?, Some(ServingStatus::Serving as i32));
        health.set_stopping();
        assert_eq!(next().await?, Some(ServingStatus::NotServing as i32));
        assert_eq!(next().await?, None, "the watch ends once shutdown is announced");
        Ok(())
    }
}
