//! `kl-verifier`: the verifier daemon, `keylime_verifier`.
//!
//! It owns continuous attestation: enrolled agents (read from the registrar at enrolment),
//! their policies (stored once by content digest and shared), a pull loop per agent that asks
//! for a fresh quote every `quote_interval` and appraises it with `kl_core::appraisal`, the
//! agents' states and attestation history, and the event outbox that feeds `WatchEvents`,
//! webhooks and signed revocation notices. All of it lives in `<keylime_dir>/verifier.redb`,
//! written by one group-committing writer, so a restart resumes every agent where it was.
//!
//! It never talks to a TPM (no libtss2), never trusts evidence it did not appraise (an agent
//! that does not answer is never reported as passing), and answers no RPC without a client
//! certificate from the deployment CA: reads need admin or viewer, everything else admin
//! ([`RPC_ROLES`]); health and reflection take any role.
//!
//! ```no_run
//! # async fn start(config: kl_svc::config::VerifierConfig) -> Result<(), kl_verifier::Error> {
//! let server = kl_verifier::Server::bind(&config).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(async { /* wait for SIGTERM */ }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! Each module uses only those in its own row and below (tests in `module_graph` fail on a use
//! of a module above, and on a cycle):
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | API | `service` | the gRPC handlers: decode and check a request, call the layer below, encode the answer |
//! | | `access` | which role may call which RPC ([`RPC_ROLES`]) |
//! | operations | `agents` | enrol, update, stop, resume, unenrol; what clients are shown of agents (once committed); on replicas, through the database |
//! | | `replica` | on replicas sharing a database: agent leases and the fleet's division, duties, events of other replicas |
//! | | `scheduler` | each agent's attestation loop: wait, round, record, back off |
//! | | `keys`, `revocation`, `webhook` | V key delivery, signed revocation notices, webhook delivery |
//! | shared | `context` | what the above share: configuration, store and writer, the agent table, clients for the registrar and agents, appraisal inputs |
//! | lifecycle | `lifecycle` | an agent's state and its typed transitions, each returning the batch (entry, history, events) that stores it |
//! | rounds | `attest` | one round against one agent: GetQuote (continued), then kl-core's appraisal |
//! | | `channel` | the HTTP/2 channel to an agent, pinned to its certificate |
//! | storage | `writer` | group commit of agents, history and events; write tickets |
//! | | `events` | committed events fanned out to watchers; replay from the outbox |
//! | | `policies` | canonical policies and the cache of parsed ones |
//! | | `metrics` | Prometheus counters and their exposition |
//! | | `lease` | a replica's name, lease length and duties |
//! | | `tasks` | background tasks and the shutdown signal |
//! | | `convert` | stored records and kl-core types to the API's messages and the JSON of notices |
//! | | `error` | [`Error`] and the gRPC status of each |

mod access;
mod agents;
mod attest;
mod channel;
mod context;
mod convert;
mod error;
mod events;
mod keys;
mod lease;
mod lifecycle;
mod metrics;
#[cfg(test)]
mod module_graph;
mod policies;
mod replica;
mod revocation;
mod scheduler;
mod service;
mod tasks;
mod webhook;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kl_core::quote::AcceptedAlgorithms;
use kl_proto::verifier::v1::verifier_server::{self, VerifierServer};
use kl_store::verifier::VerifierStore;
use kl_svc::api::Health;
use kl_svc::config::VerifierConfig;
use kl_svc::notice::NoticeSigner;
use kl_svc::tls::{self, ClientAuth, TlsIncoming};
use tokio::sync::{Semaphore, watch};

pub use access::RPC_ROLES;
pub use error::Error;
pub use service::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, VerifierService};
pub use webhook::signature as webhook_signature;

use context::Context;
use events::EventHub;
use lease::Replica;
use lifecycle::{AgentSlot, AgentTable};
use policies::PolicyCache;
use tasks::{Tasks, stopped};
use writer::StateWriter;

/// How long a client may take to finish its TLS handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most attestation rounds in progress at once.
pub const MAX_CONCURRENT_ROUNDS: usize = 256;
/// Most operator changes checked or stored at once (the others wait their turn).
pub const MAX_CONCURRENT_CHANGES: usize = 8;
/// Most events the outbox keeps, whatever their age.
pub const MAX_EVENTS: u64 = 1_000_000;
/// How often history and events are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Largest request accepted (policies are the biggest).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How often the health service looks at the state store.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown waits for background work (webhook delivery, notices) to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The state file under `keylime_dir`.
pub fn store_path(config: &VerifierConfig) -> PathBuf {
    config.keylime_dir.join("verifier.redb")
}

/// Where the state lives: the PostgreSQL database of `database_url`, else the state file.
pub fn store_location(config: &VerifierConfig) -> Result<kl_store::Location, kl_store::StoreError> {
    kl_store::Location::new(
        store_path(config),
        config.database_url.as_deref(),
        config.database_password_file.as_deref(),
    )
}

/// A verifier bound to its port, ready to serve.
#[derive(Debug)]
pub struct Server {
    incoming: TlsIncoming,
    metrics_listener: Option<kl_svc::metrics::MetricsListener>,
    webhook: Option<webhook::Client>,
    context: Arc<Context>,
    stop: watch::Sender<bool>,
    writer_thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Prepares the TLS files (generating the CA on first start with `tls_dir = "generate"`),
    /// opens the state file, loads every enrolled agent and binds `config.ip:config.port`
    /// (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(config: &VerifierConfig) -> Result<Server, Error> {
        let files = tls::prepare(
            &config.tls_dir,
            &config.keylime_dir,
            &tls::server_names(config.ip, &config.cert_subject_alternative_names),
        )?;
        let ca_certificates = files.ca_certificates()?;
        let server_identity = files.server_identity()?;
        let server_tls =
            tls::server_config(server_identity.clone(), &ca_certificates, ClientAuth::Required)?;
        let server_key = std::fs::read_to_string(files.server_key()).map_err(|e| {
            Error::Internal(format!("{}: cannot read: {e}", files.server_key().display()))
        })?;
        let server_cert =
            server_identity.chain.first().map(|c| c.as_ref().to_vec()).ok_or_else(|| {
                Error::Internal("the server certificate file is empty".to_owned())
            })?;
        let signer = NoticeSigner::from_pem(&server_key, server_cert)
            .map_err(|e| Error::Internal(format!("{}: {e}", files.server_key().display())))?;
        let client_identity = files.client_identity()?;

        // Bound first: a replica's default id is its host name and the port it listens on.
        let address = SocketAddr::new(config.ip, config.port);
        let incoming = TlsIncoming::bind(address, Arc::new(server_tls), HANDSHAKE_TIMEOUT)
            .await
            .map_err(|source| Error::Listen { address, source })?;
        let replica = Replica::new(config, incoming.local_addr().port());

        let location = store_location(config)?;
        let opening = location.clone();
        let store = tokio::task::spawn_blocking(move || VerifierStore::open_at(&opening))
            .await
            .map_err(|e| Error::Internal(format!("opening the state store: {e}")))??;
        let store = Arc::new(store);
        let hub = EventHub::new();
        let metrics = Arc::new(metrics::Metrics::default());
        let holder = replica.as_ref().map(|replica| {
            let wake = replica.wake.clone();
            writer::Holder {
                name: replica.holder.clone(),
                refused: Box::new(move |_| wake.notify_one()),
            }
        });
        let (writer, writer_thread) = StateWriter::start(
            store.clone(),
            hub.clone(),
            config.history_max_entries,
            metrics.clone(),
            holder,
        )?;

        let default_algorithms = AcceptedAlgorithms {
            hash: context::parse_hash_algs(&config.accept_tpm_hash_algs, "accept_tpm_hash_algs")
                .map_err(|e| Error::Config(e.to_string()))?,
            // Schemes kl-core cannot verify are left out rather than refused at start-up.
            signing: config
                .accept_tpm_signing_algs
                .iter()
                .filter_map(|name| name.parse().ok())
                .collect(),
        };

        let (stop, shutdown) = watch::channel(false);
        let mut agents = Vec::new();
        let mut after: Option<String> = None;
        // A replica attests the agents leased to it, taken by its lease loop.
        while replica.is_none() {
            let page = store.list_agents(after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.agent_id.clone());
            for mut entry in page {
                if let Some(newest) = store.history(&entry.agent_id, None, 1)?.first() {
                    lifecycle::catch_up(&mut entry, newest);
                }
                agents.push(AgentSlot::new(entry));
            }
        }
        let context = Arc::new(Context {
            config: config.clone(),
            store,
            writer,
            policies: PolicyCache::default(),
            agents: AgentTable::new(agents),
            events: hub,
            client_identity,
            ca_certificates,
            signer,
            registrar: Mutex::new(None),
            permits: Semaphore::new(MAX_CONCURRENT_ROUNDS),
            changes: Semaphore::new(MAX_CONCURRENT_CHANGES),
            tasks: Tasks::new(shutdown),
            default_algorithms,
            metrics,
            replica,
        });
        let metrics_listener = kl_svc::metrics::MetricsListener::bind_configured(
            config.metrics_ip,
            config.metrics_port,
        )
        .await
        .map_err(|(address, source)| Error::Listen { address, source })?;

        tracing::info!(
            address = %incoming.local_addr(),
            state = %location,
            agents = context.agents.all().len(),
            replica = context.replica.as_ref().map(|r| r.id.as_str()),
            "verifier listening"
        );
        let webhook = match &config.webhook_url {
            Some(url) => Some(webhook::Client::new(&context, url).map_err(Error::Config)?),
            None => None,
        };
        Ok(Server { incoming, metrics_listener, webhook, context, stop, writer_thread })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.incoming.local_addr()
    }

    /// The address of the Prometheus endpoint, when `metrics_port` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Attests every enrolled agent and serves until `shutdown` resolves; then stops the
    /// loops, finishes the calls in progress, commits what is queued and closes the state
    /// file (so another verifier may open it once this returns).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Server { incoming, metrics_listener, webhook, context, stop, writer_thread } = self;
        // Built first: nothing has started yet if it fails.
        let health = Health::new(&[verifier_server::SERVICE_NAME]);
        let service = VerifierServer::new(VerifierService { ctx: context.clone() })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let router =
            kl_svc::api::router(&health, access::access(), kl_proto::FILE_DESCRIPTOR_SET, service)?;
        if let Some(listener) = metrics_listener {
            let ctx = context.clone();
            let render: kl_svc::metrics::Render = Arc::new(move || {
                let ctx = ctx.clone();
                Box::pin(async move {
                    let agents = agents::count_by_state(&ctx).await;
                    metrics::render(&ctx.metrics, &agents, ctx.writer.unwritable().is_none())
                })
            });
            let mut shutdown = context.tasks.shutdown();
            context.spawn(async move {
                listener.serve(render, stopped(&mut shutdown)).await;
            });
        }
        for slot in context.agents.all() {
            let delay = scheduler::jitter(context.config.quote_interval);
            scheduler::start(&context, slot, delay);
        }
        if let Some(client) = webhook {
            context.spawn(webhook::run(context.clone(), client));
        }
        if context.replica.is_some() {
            context.spawn(replica::run(context.clone()));
            context.spawn(replica::follow_events(context.clone()));
        }
        context.spawn(prune_loop(context.clone()));
        context.spawn({
            let (context, health) = (context.clone(), health.clone());
            async move {
                let mut shutdown = context.tasks.shutdown();
                let probe = || async {
                    if let Some(reason) = context.writer.unwritable() {
                        return Err(format!("state store unwritable: {reason}"));
                    }
                    match context.replica.as_ref().and_then(|r| r.stale()) {
                        Some(reason) => Err(reason),
                        None => Ok(()),
                    }
                };
                health.follow(probe, HEALTH_INTERVAL, stopped(&mut shutdown)).await;
            }
        });

        let served = router
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                health.set_stopping();
                let _ = stop.send(true);
            })
            .await;
        let _ = stop.send(true);
        let mut tasks = context.tasks.take();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("background work did not stop in time; abandoning it");
            tasks.shutdown().await;
        }
        // Routine progress not yet stored; then the last handles on the writer go with the
        // context, and the thread commits what is queued and ends.
        let unsaved = scheduler::unsaved_entries(&context).await;
        context.writer.submit(unsaved);
        let store = context.store.clone();
        let replica_id =
            context.replica.as_ref().map(|r| (r.id.clone(), r.token.clone(), r.holder.clone()));
        drop(context);
        tokio::task::spawn_blocking(move || {
            let joined = writer_thread.join();
            // Once everything is committed: a replica's agents go to the others at once.
            if let Some((id, token, holder)) = replica_id {
                replica::withdraw(&store, &id, &token, &holder);
            }
            joined
        })
        .await
        .map_err(|e| Error::Internal(format!("waiting for the store writer: {e}")))?
        .map_err(|_| Error::Internal("the store writer thread panicked".to_owned()))?;
        served?;
        Ok(())
    }
}

async fn prune_loop(context: Arc<Context>) {
    let mut shutdown = context.tasks.shutdown();
    loop {
        if context.replica.as_ref().is_some_and(|r| !r.has_duty(lease::PRUNE)) {
            // Another replica prunes.
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
                _ = stopped(&mut shutdown) => return,
            }
            continue;
        }
        let store = context.store.clone();
        let max_age = context.config.history_max_age;
        match tokio::task::spawn_blocking(move || store.prune(max_age, MAX_EVENTS)).await {
            Ok(Ok(pruned)) if pruned.history + pruned.events > 0 => {
                tracing::info!(history = pruned.history, events = pruned.events, "pruned")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "pruning history and events"),
            Err(e) => tracing::error!(error = %e, "pruning history and events"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Binds and serves until `shutdown` resolves.
pub async fn run(config: VerifierConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Server::bind(&config).await?.serve(shutdown).await
}
