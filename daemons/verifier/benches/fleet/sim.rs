//! The simulated fleet: a shared runtime policy of generated paths, software agents (a TLS
//! identity and a loopback address each, all served by one listener) registered through
//! Register/Activate, and their growing IMA logs.

use std::sync::Arc;

use kl_core::alg::HashAlg;
use kl_core::credential::activation_proof;
use kl_proto::registrar::v1 as registrar_pb;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_svc::tls::{ClientAuth, TlsFiles, server_config};
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::BoxError;
use crate::agent::SoftAgent;
use crate::serve::{FleetServer, contact_ip};
use kl_tests::soft_tpm::SoftTpm;

/// The files every software agent measures at start (see `agent::Machine::new`).
const BOOT_FILES: [(&str, &[u8]); 3] =
    [("boot_aggregate", b"boot"), ("/usr/bin/bash", b"bash"), ("/usr/lib/libc.so.6", b"libc")];

/// Path `i` of the shared policy; its file content is the path itself.
pub fn policy_path(i: u64) -> String {
    format!("/usr/lib/fleet/package-{:05}/lib/module-{:03}.so.1.2.3", i / 50, i % 50)
}

/// A Keylime flat allowlist of `paths` generated paths plus the agents' boot files.
pub fn policy_document(paths: u64) -> String {
    let mut out = String::with_capacity(paths as usize * 130);
    for (path, content) in BOOT_FILES {
        out.push_str(&format!("{}  {path}\n", HashAlg::Sha256.digest(content).to_hex()));
    }
    for i in 0..paths {
        let path = policy_path(i);
        out.push_str(&HashAlg::Sha256.digest(path.as_bytes()).to_hex());
        out.push_str("  ");
        out.push_str(&path);
        out.push('\n');
    }
    out
}

/// A small deterministic generator (xorshift64*), one per agent.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Measures `count` random policy files into the agent's log.
pub fn measure(agent: &SoftAgent, rng: &mut Rng, paths: u64, count: usize) {
    agent.with(|m| {
        for _ in 0..count {
            let path = policy_path(rng.below(paths));
            m.ima.measure(&path, path.as_bytes());
        }
    });
}

/// Creates agent `index` with an initial log of `initial` entries, serves it on `server` and
/// registers it.
async fn start_one(
    index: usize,
    tls: TlsFiles,
    ca: &[CertificateDer<'static>],
    server: &FleetServer,
    mut registrar: RegistrarClient<Channel>,
    paths: u64,
    initial: usize,
) -> Result<SoftAgent, BoxError> {
    let id = format!("f1ee7000-0000-4000-8000-{index:012x}");
    let ip = contact_ip(index);
    let mut agent = SoftAgent::unbound(&id, tls, (ip, server.port()).into())?;
    agent.with(|m| m.max_ima_entries = 1_000_000);
    let identity = agent.with(|m| m.identity.tls_identity())?;
    server.add(
        ip.into(),
        agent.machine.clone(),
        server_config(identity, ca, ClientAuth::Required)?,
    );
    let mut rng = Rng::new(index as u64 + 1);
    measure(&agent, &mut rng, paths, initial.saturating_sub(BOOT_FILES.len()));
    let mut tpm = SoftTpm::ecc();
    let (ak_public, cert) = agent.with(|m| (m.ak.public.to_bytes(), m.identity.cert_der.to_vec()));
    tpm.ak_public = ak_public;
    let request = registrar_pb::RegisterRequest {
        agent_id: id.clone(),
        ek_public: tpm.ek_public.clone(),
        ek_certificate: Vec::new(),
        ek_intermediate_certificates: Vec::new(),
        ak_public: tpm.ak_public.clone(),
        agent_certificate: cert,
        contact: Some(registrar_pb::Contact { ip: ip.to_string(), port: u32::from(server.port()) }),
    };
    let challenge = registrar.register(request).await?.into_inner();
    let secret =
        tpm.activate_credential(&challenge.credential_blob, &challenge.encrypted_secret)?;
    let activate = registrar_pb::ActivateRequest {
        agent_id: id.clone(),
        auth_tag: activation_proof(&secret, &id).to_vec(),
    };
    registrar.activate(activate).await?;
    agent.tpm = Some(tpm);
    Ok(agent)
}

/// Creates, serves on `server` and registers `count` agents, 64 at a time, in index order.
pub async fn start_agents(
    count: usize,
    tls: &TlsFiles,
    server: Arc<FleetServer>,
    registrar: RegistrarClient<Channel>,
    paths: u64,
    initial: usize,
) -> Result<Vec<SoftAgent>, BoxError> {
    let ca: Arc<[CertificateDer<'static>]> = tls.ca_certificates()?.into();
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let permit = limit.clone().acquire_owned().await?;
        let (tls, ca, server, registrar) =
            (tls.clone(), ca.clone(), server.clone(), registrar.clone());
        tasks.spawn(async move {
            let agent = start_one(index, tls, &ca, &server, registrar, paths, initial).await;
            drop(permit);
            agent.map(|a| (index, a)).map_err(|e| format!("agent {index}: {e}"))
        });
    }
    let mut agents = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        agents.push(done??);
    }
    agents.sort_by_key(|(i, _)| *i);
    Ok(agents.into_iter().map(|(_, a)| a).collect())
}

/// Quotes served so far by all agents.
pub fn quotes(agents: &[SoftAgent]) -> u64 {
    agents.iter().map(|a| a.with(|m| m.quotes)).sum()
}

/// Every second, measures `per_round` new files into each agent that has quoted since.
pub fn spawn_grower(
    agents: Arc<Vec<SoftAgent>>,
    paths: u64,
    per_round: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: Vec<u64> = agents.iter().map(|a| a.with(|m| m.quotes)).collect();
        let mut rngs: Vec<Rng> =
            (0..agents.len()).map(|i| Rng::new(1_000_003 + i as u64)).collect();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            for (i, agent) in agents.iter().enumerate() {
                let quotes = agent.with(|m| m.quotes);
                if quotes != seen[i] {
                    seen[i] = quotes;
                    measure(agent, &mut rngs[i], paths, per_round);
                }
            }
        }
    })
}
