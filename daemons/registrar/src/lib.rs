//! `kl-registrar`: the registrar daemon, `keylime_registrar`.
//!
//! It owns the agents' TPM identities: it checks a registering agent's EK (and EK certificate,
//! against `tpm_cert_store`) and AK, proves by a credential challenge (TPM2_MakeCredential /
//! ActivateCredential) that both keys live in one TPM, and only then stores the agent in
//! `<keylime_dir>/registrar.redb`, where the verifier and kctl read it. The first activated EK
//! of an agent id owns that id until an admin deletes the agent.
//!
//! It never talks to a TPM (no libtss2: MakeCredential is computed in software by `kl-core`),
//! never calls agents or the verifier, and never shows anything of a registration that has not
//! activated; read and delete RPCs require a role certificate from the deployment CA
//! ([`RPC_ROLES`]), health and reflection any certificate of it.
//!
//! Modules: `service` (the gRPC service), [`registration`] (the checks of a Register request
//! and its credential challenge), `pending` (registrations waiting for Activate), `writer`
//! (group commit of activations), `access` (roles), `ratelimit` (per-source buckets),
//! `metrics`, `error`.
//!
//! ```no_run
//! # async fn start(config: kl_svc::config::RegistrarConfig) -> Result<(), kl_registrar::Error> {
//! let server = kl_registrar::Server::bind(&config).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(async { /* wait for SIGTERM */ }).await?;
//! # Ok(())
//! # }
//! ```

mod access;
mod error;
mod metrics;
mod pending;
mod ratelimit;
pub mod registration;
mod service;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kl_proto::registrar::v1::registrar_server::{self, RegistrarServer};
use kl_store::registrar::RegistrarStore;
use kl_svc::api::Health;
use kl_svc::config::RegistrarConfig;
use kl_svc::tls::{self, TlsIncoming};

pub use access::RPC_ROLES;
pub use error::Error;
pub use service::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, RegistrarService};

use access::Access;
use pending::PendingRegistrations;
use ratelimit::RateLimiter;
use registration::EkTrustSource;
use writer::ActivationWriter;

/// How long a client may take to finish its TLS handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long calls in progress may take to finish once shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the health service looks at the state store.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a registration waits for its Activate.
pub const PENDING_TTL: Duration = Duration::from_secs(120);
/// Most registrations pending at once.
pub const MAX_PENDING: usize = 100_000;
/// Most bytes of registrations pending at once (certificates are the bulk; see
/// `pending::record_bytes`).
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Largest request accepted (EK certificate chains are the biggest part).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The state file under `keylime_dir`.
pub fn store_path(config: &RegistrarConfig) -> PathBuf {
    config.keylime_dir.join("registrar.redb")
}

/// Where the state lives: the PostgreSQL database of `database_url`, else the state file.
pub fn store_location(
    config: &RegistrarConfig,
) -> Result<kl_store::Location, kl_store::StoreError> {
    kl_store::Location::new(
        store_path(config),
        config.database_url.as_deref(),
        config.database_password_file.as_deref(),
    )
}

/// A registrar bound to its port, ready to serve.
#[derive(Debug)]
pub struct Server {
    incoming: TlsIncoming,
    metrics_listener: Option<kl_svc::metrics::MetricsListener>,
    service: RegistrarService,
    writer_thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Reads the TLS files and the EK CA store, opens the state file and binds
    /// `config.ip:config.port` (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(config: &RegistrarConfig) -> Result<Server, Error> {
        let files = tls::prepare(
            &config.tls_dir,
            &config.keylime_dir,
            &tls::server_names(config.ip, &config.cert_subject_alternative_names),
        )?;
        let access = Access::new(&files.ca_certificates()?)?;
        let server_tls = access.server_config(files.server_identity()?)?;
        let trust = Arc::new(EkTrustSource::load(&config.tpm_cert_store, config.require_ek_cert)?);
        let location = store_location(config)?;
        let opening = location.clone();
        // Every record is read once before serving: a damaged file stops the start here, with
        // an error naming it, rather than failing requests later (10,000 agents: well under a
        // second; see docs/registrar.md).
        let store = tokio::task::spawn_blocking(move || {
            let store = RegistrarStore::open_at(&opening)?;
            store.read_all()?;
            Ok::<_, kl_store::StoreError>(store)
        })
        .await
        .map_err(|e| Error::Internal(format!("opening the state store: {e}")))??;
        let store = Arc::new(store);
        let (writer, writer_thread) = ActivationWriter::start(store.clone())?;
        let address = SocketAddr::new(config.ip, config.port);
        let incoming = TlsIncoming::bind(address, Arc::new(server_tls), HANDSHAKE_TIMEOUT)
            .await
            .map_err(|source| Error::Listen { address, source })?;
        tracing::info!(address = %incoming.local_addr(), state = %location, "registrar listening");
        let service = RegistrarService {
            store,
            writer,
            pending: Arc::new(PendingRegistrations::new(
                PENDING_TTL,
                MAX_PENDING,
                MAX_PENDING_BYTES,
            )),
            trust,
            access,
            limiter: Arc::new(RateLimiter::new(config.registration_rate_limit)),
            calls: Arc::default(),
        };
        let metrics_listener = kl_svc::metrics::MetricsListener::bind_configured(
            config.metrics_ip,
            config.metrics_port,
        )
        .await
        .map_err(|(address, source)| Error::Listen { address, source })?;
        Ok(Server { incoming, metrics_listener, service, writer_thread })
    }

    /// What SIGHUP does: reads `tpm_cert_store` again (fixing the vendor CAs heals agents
    /// that were refused, as they keep retrying), keeping the old store if the new one cannot be
    /// read.
    pub fn reloader(&self) -> impl FnMut() + Send + 'static {
        let trust = self.service.trust.clone();
        move || {
            tracing::info!("SIGHUP: reloading tpm_cert_store");
            trust.reload();
        }
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.incoming.local_addr()
    }

    /// The address of the Prometheus endpoint, when `metrics_port` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then lets the calls in progress finish for up to
    /// [`SHUTDOWN_GRACE`] and closes the state file (so another registrar may open it once this
    /// returns). Connections still open after the grace period (a client that stopped
    /// reading) are abandoned: the state file then closes when the last of them ends, or with
    /// the process.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(listener) = self.metrics_listener {
            let (calls, pending) = (self.service.calls.clone(), self.service.pending.clone());
            let render: kl_svc::metrics::Render = Arc::new(move || {
                let text = metrics::render(&calls, &pending);
                Box::pin(async move { text })
            });
            tokio::spawn(listener.serve(render, async {
                let _ = metrics_stopped.await;
            }));
        }
        let _metrics_stop = metrics_stop;
        let health = Health::new(&[registrar_server::SERVICE_NAME]);
        let (health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
        let commits = self.service.writer.commits();
        tokio::spawn({
            let health = health.clone();
            async move {
                let probe = || {
                    let commits = commits.clone();
                    async move {
                        let recovering = commits.clone();
                        // Opening the store again blocks: off the async workers.
                        let _ = tokio::task::spawn_blocking(move || recovering.recover()).await;
                        commits
                            .unwritable()
                            .map_or(Ok(()), |reason| Err(format!("state store: {reason}")))
                    }
                };
                let stopped = async {
                    let _ = health_stopped.await;
                };
                health.follow(probe, HEALTH_INTERVAL, stopped).await;
            }
        });
        let _health_stop = health_stop;
        let access = self.service.access.rules();
        let service = RegistrarServer::new(self.service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let router = kl_svc::api::router(&health, access, kl_proto::FILE_DESCRIPTOR_SET, service)?;
        let stopping = tokio::sync::Notify::new();
        let signalled = async {
            shutdown.await;
            health.set_stopping();
            stopping.notify_one();
        };
        let server = router.serve_with_incoming_shutdown(self.incoming, signalled);
        let served = tokio::select! {
            served = server => served,
            () = async {
                stopping.notified().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; abandoning them");
                return Ok(());
            }
        };
        // Every connection has ended, and with them the service's handles on the writer.
        let writer_thread = self.writer_thread;
        tokio::task::spawn_blocking(move || writer_thread.join())
            .await
            .map_err(|e| Error::Internal(format!("waiting for the store writer: {e}")))?
            .map_err(|_| Error::Internal("the store writer thread panicked".to_owned()))?;
        served?;
        Ok(())
    }
}

/// Binds and serves until `shutdown` resolves.
pub async fn run(config: RegistrarConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Server::bind(&config).await?.serve(shutdown).await
}
