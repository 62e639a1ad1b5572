//! What every part of the verifier shares: the configuration, the store and its writer, the
//! policy cache, the event hub, the TLS material for calling the registrar and agents, and the
//! in-memory table of enrolled agents (each an [`AgentSlot`] whose attestation loop runs in the
//! [`crate::scheduler`]).
//!
//! The in-memory entry of an agent is the authority while the verifier runs; every change to it
//! is handed to the writer in the same critical section, so the store receives an agent's
//! updates in the order they happened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use kl_core::alg::HashAlg;
use kl_core::appraisal::{AgentPolicy, AttestationState};
use kl_core::quote::{AcceptedAlgorithms, PreparedAk};
use kl_core::tpm2::{Public, SigAlg};
use kl_proto::agent::v1::agent_client::AgentClient;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_store::verifier::{AgentEntry, VerifierStore};
use kl_svc::config::VerifierConfig;
use kl_svc::notice::NoticeSigner;
use kl_svc::tls::{ServerTrust, TlsConnector, TlsIdentity, client_config};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::channel::AgentChannel;
use crate::events::EventHub;
use crate::policies::PolicyCache;
use crate::writer::StateWriter;

/// Largest message accepted from an agent (IMA chunks and event logs).
pub(crate) const MAX_AGENT_MESSAGE_BYTES: usize = 64 << 20;

/// One enrolled agent.
#[derive(Debug)]
pub(crate) struct AgentSlot {
    pub id: String,
    pub runtime: tokio::sync::Mutex<AgentRuntime>,
    /// Wakes the attestation loop (resume, policy change, unenrolment, shutdown).
    pub wake: Notify,
    pub removed: AtomicBool,
}

/// An agent's mutable state.
#[derive(Debug)]
pub(crate) struct AgentRuntime {
    pub entry: AgentEntry,
    pub attestation: AttestationState,
    /// The appraisal inputs, built from the entry and the policy cache; `None` after a change.
    pub policy: Option<(u64, Arc<AgentPolicy>)>,
    /// The connection to the agent, reused across rounds.
    pub client: Option<AgentClient<AgentChannel>>,
    /// Bumped by every settings change; a round started under another generation is dropped.
    pub generation: u64,
    /// A DeliverKey call is in progress.
    pub delivering_key: bool,
    /// When the entry was last handed to the writer; routine rounds in between leave the
    /// stored entry behind (see [`crate::scheduler`]), and `unsaved` says so.
    pub saved_at: std::time::Instant,
    pub unsaved: bool,
    /// The writer's ticket of the newest change queued without waiting for its commit; what
    /// clients are shown waits for it (see [`crate::writer::StateWriter::wait_durable`]).
    pub submitted: u64,
}

impl AgentRuntime {
    pub fn new(entry: AgentEntry) -> AgentRuntime {
        let attestation = if entry.attestation_state_json.is_empty() {
            AttestationState::default()
        } else {
            serde_json::from_str(&entry.attestation_state_json).unwrap_or_else(|e| {
                tracing::warn!(agent = %entry.agent_id, error = %e, "stored attestation state unreadable; starting over");
                AttestationState::default()
            })
        };
        AgentRuntime {
            entry,
            attestation,
            policy: None,
            client: None,
            generation: 0,
            delivering_key: false,
            saved_at: std::time::Instant::now(),
            unsaved: false,
            submitted: 0,
        }
    }

    /// The entry as it stands, with the current attestation state serialized into it.
    pub fn current(&self) -> AgentEntry {
        let mut entry = self.entry.clone();
        entry.attestation_state_json = serde_json::to_string(&self.attestation).unwrap_or_default();
        entry.ima_offset = self.attestation.ima.entries_processed;
        entry
    }

    /// [`AgentRuntime::current`], for the writer: the entry is then stored as it stands.
    pub fn snapshot(&mut self) -> AgentEntry {
        self.saved_at = std::time::Instant::now();
        self.unsaved = false;
        self.current()
    }

    /// A settings change: the policy is rebuilt and any round in flight is discarded.
    pub fn changed(&mut self) {
        self.policy = None;
        self.generation += 1;
    }
}

/// The shared state of a running verifier.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: VerifierConfig,
    pub store: Arc<VerifierStore>,
    pub writer: StateWriter,
    pub policies: PolicyCache,
    /// Bumped by every policy change; agents rebuild their inputs when it moves.
    pub policy_epoch: AtomicU64,
    pub agents: RwLock<BTreeMap<String, Arc<AgentSlot>>>,
    pub events: EventHub,
    /// The admin client identity used towards the registrar and agents.
    pub client_identity: TlsIdentity,
    pub ca_certificates: Vec<CertificateDer<'static>>,
    pub signer: NoticeSigner,
    pub registrar: Mutex<Option<RegistrarClient<Channel>>>,
    /// Bounds the rounds in progress.
    pub permits: Semaphore,
    pub shutdown: watch::Receiver<bool>,
    pub tasks: Mutex<JoinSet<()>>,
    pub default_algorithms: AcceptedAlgorithms,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Serializes enrolment, update and unenrolment of one agent id (striped by id hash), so
    /// that a removal and a new enrolment of the same id reach the store in the order they
    /// were made.
    pub enrolment_locks: Vec<tokio::sync::Mutex<()>>,
}

impl Context {
    pub fn slot(&self, agent_id: &str) -> Option<Arc<AgentSlot>> {
        self.agents.read().ok().and_then(|agents| agents.get(agent_id).cloned())
    }

    /// The enrolment lock of `agent_id`.
    pub fn enrolment_lock(&self, agent_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        agent_id.hash(&mut hasher);
        let stripes = self.enrolment_locks.len().max(1);
        &self.enrolment_locks[(hasher.finish() % stripes as u64) as usize]
    }

    pub fn slots(&self) -> Vec<Arc<AgentSlot>> {
        self.agents.read().map(|a| a.values().cloned().collect()).unwrap_or_default()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs `task` until it ends; shutdown waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut tasks) = self.tasks.lock() {
            // Reap finished tasks so the set stays as large as the work in progress.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    /// A client for the registrar, connected on first use and reused.
    pub fn registrar(&self) -> Result<RegistrarClient<Channel>, Error> {
        let mut slot =
            self.registrar.lock().map_err(|_| Error::Internal("registrar lock".into()))?;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let address = format!("{}:{}", self.config.registrar_ip, self.config.registrar_port);
        let registrar_error =
            |reason: String| Error::Registrar { address: address.clone(), reason };
        let tls = client_config(
            &ServerTrust::Ca(self.ca_certificates.clone()),
            Some(self.client_identity.clone()),
        )?;
        let host = if self.config.registrar_ip.contains(':') {
            format!("[{}]", self.config.registrar_ip)
        } else {
            self.config.registrar_ip.clone()
        };
        let endpoint =
            Endpoint::from_shared(format!("http://{host}:{}", self.config.registrar_port))
                .map_err(|e| registrar_error(e.to_string()))?
                .connect_timeout(self.config.request_timeout)
                .timeout(self.config.request_timeout);
        let channel = endpoint.connect_with_connector_lazy(TlsConnector::new(Arc::new(tls)));
        let client = RegistrarClient::new(channel);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// A client for an agent that pins its identity certificate; it connects on first use
    /// and again after the connection closes.
    pub fn agent_client(&self, entry: &AgentEntry) -> Result<AgentClient<AgentChannel>, Error> {
        let tls = client_config(
            &ServerTrust::Pinned(CertificateDer::from(entry.agent_certificate.clone())),
            Some(self.client_identity.clone()),
        )?;
        let name = ServerName::try_from("keylime-agent")
            .map_err(|e| Error::Internal(format!("server name: {e}")))?;
        let channel = AgentChannel::new(
            entry.contact_ip.clone(),
            entry.contact_port,
            name,
            Arc::new(tls),
            self.config.request_timeout,
        )
        .map_err(|e| Error::invalid("contact", format!("{}: {e}", entry.contact_ip)))?;
        Ok(AgentClient::new(channel).max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES))
    }

    /// The appraisal inputs of an agent, built from its settings and the shared policy cache.
    pub fn build_policy(&self, entry: &AgentEntry) -> Result<AgentPolicy, Error> {
        let ak = Public::parse(&entry.ak_public)
            .map_err(|e| Error::invalid("ak_public", format!("from the registrar: {e}")))
            .and_then(|p| {
                PreparedAk::new(p)
                    .map_err(|e| Error::invalid("ak_public", format!("from the registrar: {e}")))
            })?;
        let identity_spki = identity_spki(&entry.agent_certificate)?;
        let mut algorithms = self.default_algorithms.clone();
        if !entry.accept_hash_algorithms.is_empty() {
            algorithms.hash =
                parse_hash_algs(&entry.accept_hash_algorithms, "accept_hash_algorithms")?;
        }
        if !entry.accept_signing_algorithms.is_empty() {
            algorithms.signing =
                parse_sig_algs(&entry.accept_signing_algorithms, "accept_signing_algorithms")?;
        }
        let bank: HashAlg = entry
            .hash_algorithm
            .parse()
            .map_err(|_| Error::invalid("hash_algorithm", entry.hash_algorithm.clone()))?;
        let pcr_policy = if entry.pcr_policy_json.is_empty() {
            None
        } else {
            Some(Arc::new(
                kl_core::policy::PcrPolicy::from_json(entry.pcr_policy_json.as_bytes())
                    .map_err(|e| Error::invalid("pcr_policy", e.to_string()))?,
            ))
        };
        let runtime = match entry.runtime_policy.as_str() {
            "" => None,
            name => Some(self.policies.runtime(&self.store, name)?),
        };
        let measured_boot = match entry.measured_boot_policy.as_str() {
            "" => None,
            name => Some(self.policies.measured_boot(&self.store, name)?),
        };
        Ok(AgentPolicy {
            ak: Arc::new(ak),
            identity_spki: Arc::from(identity_spki),
            algorithms,
            bank,
            pcr_policy,
            runtime,
            measured_boot,
        })
    }

    pub fn policy_epoch(&self) -> u64 {
        self.policy_epoch.load(Ordering::Acquire)
    }

    /// Every agent rebuilds its appraisal inputs before its next round.
    pub fn policies_changed(&self) {
        self.policy_epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// DER SubjectPublicKeyInfo of an agent identity certificate.
pub(crate) fn identity_spki(certificate: &[u8]) -> Result<Vec<u8>, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate).map_err(|e| {
        Error::invalid("agent_certificate", format!("from the registrar, not X.509: {e}"))
    })?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

pub(crate) fn parse_hash_algs(
    names: &[String],
    field: &'static str,
) -> Result<Vec<HashAlg>, Error> {
    names
        .iter()
        .map(|n| {
            n.parse().map_err(|_| Error::invalid(field, format!("unknown hash algorithm {n:?}")))
        })
        .collect()
}

pub(crate) fn parse_sig_algs(names: &[String], field: &'static str) -> Result<Vec<SigAlg>, Error> {
    names
        .iter()
        .map(|n| {
            n.parse().map_err(|_| Error::invalid(field, format!("unknown signing algorithm {n:?}")))
        })
        .collect()
}

/// Resolves once the verifier is shutting down.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
