//! What the verifier's parts share: the configuration, the store and its writer, the policy
//! cache, the event hub, the table of enrolled agents ([`crate::lifecycle`]), the background
//! tasks, and the TLS material for calling the registrar and agents, with the clients made
//! from it and the appraisal inputs built for an agent.

use std::sync::{Arc, Mutex};

use kl_core::alg::HashAlg;
use kl_core::appraisal::AgentPolicy;
use kl_core::quote::{AcceptedAlgorithms, PreparedAk};
use kl_core::tpm2::{Public, SigAlg};
use kl_proto::agent::v1::agent_client::AgentClient;
use kl_proto::registrar::v1 as registrar_pb;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_store::verifier::{AgentEntry, VerifierStore};
use kl_svc::config::VerifierConfig;
use kl_svc::notice::NoticeSigner;
use kl_svc::tls::{ServerTrust, TlsConnector, TlsIdentity, client_config};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::channel::AgentChannel;
use crate::events::EventHub;
use crate::lease::Replica;
use crate::lifecycle::AgentTable;
use crate::metrics::Metrics;
use crate::policies::PolicyCache;
use crate::tasks::Tasks;
use crate::writer::StateWriter;

/// Largest message accepted from an agent (IMA chunks and event logs).
pub(crate) const MAX_AGENT_MESSAGE_BYTES: usize = 64 << 20;

/// The shared state of a running verifier.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: VerifierConfig,
    pub store: Arc<VerifierStore>,
    pub writer: StateWriter,
    pub policies: PolicyCache,
    pub agents: AgentTable,
    pub events: EventHub,
    /// The admin client identity used towards the registrar and agents.
    pub client_identity: TlsIdentity,
    pub ca_certificates: Vec<CertificateDer<'static>>,
    pub signer: NoticeSigner,
    pub registrar: Mutex<Option<RegistrarClient<Channel>>>,
    /// Bounds the rounds in progress.
    pub permits: Semaphore,
    /// Bounds the operator changes whose store work runs at once on the blocking pool (a burst
    /// of enrolments would otherwise run on hundreds of threads, each growing its own
    /// allocator arena).
    pub changes: Semaphore,
    pub tasks: Tasks,
    pub default_algorithms: AcceptedAlgorithms,
    pub metrics: Arc<Metrics>,
    /// Set when the state is in a database that replicas share.
    pub replica: Option<Replica>,
}

impl Context {
    /// Runs `task` until it ends; shutdown waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// The registrar's record of `agent_id`.
    pub async fn registrar_record(
        &self,
        agent_id: &str,
    ) -> Result<registrar_pb::AgentRecord, Error> {
        let mut client = self.registrar()?;
        let request = registrar_pb::GetAgentRequest { agent_id: agent_id.to_owned() };
        match client.get_agent(request).await {
            Ok(answer) => answer
                .into_inner()
                .agent
                .ok_or_else(|| Error::NotRegistered { agent_id: agent_id.to_owned() }),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(Error::NotRegistered { agent_id: agent_id.to_owned() })
            }
            // The registrar's own rule refused the id: the caller's mistake, not an outage.
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                Err(Error::invalid("agent_id", format!("the registrar says: {}", status.message())))
            }
            Err(status) => Err(Error::Registrar {
                address: format!("{}:{}", self.config.registrar_ip, self.config.registrar_port),
                reason: format!("{}: {}", status.code(), status.message()),
            }),
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
