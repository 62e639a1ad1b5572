//! A software agent: a tonic Agent server over real TLS (its self-signed identity certificate,
//! client certificates required from the deployment CA) that quotes with a software P-256 AK
//! and serves a synthetic IMA log whose entries it extends into its PCR 10. The verifier's
//! tests and its fleet benchmark attest these in place of agent processes on real TPMs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kl_core::alg::{Digest, HashAlg};
use kl_core::quote::qualifying_data;
use kl_core::tpm2::{ClockInfo, PcrValues, SigAlg};
use kl_proto::agent::v1 as pb;
use kl_proto::agent::v1::agent_server::{Agent, AgentServer};
use kl_svc::tls::{AgentIdentity, ClientAuth, TlsFiles, TlsIncoming, server_config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::Error as BoxError;
use crate::soft_tpm::SoftTpm;
use crate::synthetic::{SyntheticAk, quote_attest};

/// How the agent misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// Flips a byte of every quote signature.
    FlipSignature,
    /// Answers with the first quote it ever made.
    Replay,
}

/// An IMA log and the PCR 10 value (sha256 bank) it replays to.
#[derive(Debug)]
pub struct ImaLog {
    pub lines: Vec<String>,
    pub pcr10: Digest,
    pub files: Vec<(String, Vec<u8>)>,
}

impl Default for ImaLog {
    fn default() -> ImaLog {
        ImaLog::new()
    }
}

impl ImaLog {
    pub fn new() -> ImaLog {
        ImaLog { lines: Vec::new(), pcr10: HashAlg::Sha256.zero(), files: Vec::new() }
    }

    /// Appends an ima-ng entry for `path` with `content`'s digest.
    pub fn measure(&mut self, path: &str, content: &[u8]) {
        let digest = HashAlg::Sha256.digest(content);
        let mut data = Vec::new();
        data.extend_from_slice(&(8u32 + 32).to_le_bytes());
        data.extend_from_slice(b"sha256:\0");
        data.extend_from_slice(digest.as_bytes());
        data.extend_from_slice(&(path.len() as u32 + 1).to_le_bytes());
        data.extend_from_slice(path.as_bytes());
        data.push(0);
        self.lines.push(format!(
            "10 {} ima-ng sha256:{} {path}\n",
            HashAlg::Sha1.digest(&data).to_hex(),
            digest.to_hex()
        ));
        self.pcr10.extend(HashAlg::Sha256.digest(&data).as_bytes());
        self.files.push((path.to_owned(), digest.as_bytes().to_vec()));
    }

    /// Keylime's flat allowlist of the files measured so far.
    pub fn allowlist(&self) -> String {
        self.files.iter().map(|(p, d)| format!("{}  {p}\n", hex::encode(d))).collect()
    }
}

/// What the agent's "TPM" holds.
pub struct Machine {
    pub ak: SyntheticAk,
    pub identity: AgentIdentity,
    pub pcrs: BTreeMap<u32, Digest>,
    pub ima: ImaLog,
    pub clock: ClockInfo,
    pub mode: Mode,
    /// IMA entries per reply.
    pub max_ima_entries: usize,
    pub first_answer: Option<pb::GetQuoteResponse>,
    pub quotes: u64,
    pub last_request: Option<pb::GetQuoteRequest>,
    pub notices: Vec<pb::NotifyRevocationRequest>,
    pub key_halves: Vec<pb::DeliverKeyRequest>,
    /// An IMA entry (index into `ima.lines`) whose delivery is timed: `watched_served` is set
    /// when a quote first carries it (the fleet benchmark's detection latency starts there).
    pub watched_entry: Option<usize>,
    pub watched_served: Option<std::time::Instant>,
}

impl std::fmt::Debug for Machine {
    // The identity key stays out of test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("ak", &self.ak.public)
            .field("pcrs", &self.pcrs)
            .field("ima", &self.ima)
            .field("clock", &self.clock)
            .field("mode", &self.mode)
            .field("quotes", &self.quotes)
            .finish_non_exhaustive()
    }
}

impl Machine {
    pub fn new(agent_id: &str) -> Result<Machine, BoxError> {
        let mut pcrs = BTreeMap::new();
        pcrs.insert(0, HashAlg::Sha256.digest(b"firmware"));
        let mut ima = ImaLog::new();
        ima.measure("boot_aggregate", b"boot");
        ima.measure("/usr/bin/bash", b"bash");
        ima.measure("/usr/lib/libc.so.6", b"libc");
        Ok(Machine {
            ak: SyntheticAk::ecdsa(kl_core::tpm2::EccCurve::NIST_P256),
            identity: AgentIdentity::generate(agent_id, &["127.0.0.1".to_owned()])?,
            pcrs,
            ima,
            clock: ClockInfo { clock: 10_000, reset_count: 3, restart_count: 0, safe: true },
            mode: Mode::Honest,
            max_ima_entries: 2,
            first_answer: None,
            quotes: 0,
            last_request: None,
            notices: Vec::new(),
            key_halves: Vec::new(),
            watched_entry: None,
            watched_served: None,
        })
    }

    fn quote(&mut self, request: &pb::GetQuoteRequest) -> Result<pb::GetQuoteResponse, Status> {
        if !(16..=32).contains(&request.nonce.len()) {
            return Err(Status::invalid_argument("nonce: 16 to 32 bytes"));
        }
        self.clock.clock += 100;
        self.quotes += 1;
        self.last_request = Some(request.clone());
        let mut values = PcrValues::new(HashAlg::Sha256);
        for &pcr in &request.pcrs {
            let value = if pcr == 10 {
                self.ima.pcr10
            } else {
                self.pcrs.get(&pcr).copied().unwrap_or_else(|| HashAlg::Sha256.zero())
            };
            values.insert(pcr, value).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let extra = qualifying_data(&request.nonce, &self.identity.spki_der);
        let attest =
            quote_attest(extra.as_bytes(), &values, HashAlg::Sha256, self.clock).to_bytes();
        let mut signature = self.ak.sign(SigAlg::Ecdsa, HashAlg::Sha256, &attest).to_bytes();
        if self.mode == Mode::FlipSignature {
            let last = signature.len() - 1;
            signature[last] ^= 1;
        }
        let offset = if request.ima_offset as usize > self.ima.lines.len() {
            0
        } else {
            request.ima_offset as usize
        };
        let end = (offset + self.max_ima_entries).min(self.ima.lines.len());
        let entries: String = self.ima.lines[offset..end].concat();
        if self.watched_served.is_none()
            && self.watched_entry.is_some_and(|i| (offset..end).contains(&i))
        {
            self.watched_served = Some(std::time::Instant::now());
        }
        let answer = pb::GetQuoteResponse {
            attest,
            signature,
            hash_algorithm: pb::HashAlgorithm::Sha256 as i32,
            pcr_values: values
                .iter()
                .map(|(index, v)| pb::PcrValue { index, value: v.as_bytes().to_vec() })
                .collect(),
            ima_offset: offset as u64,
            ima_entries: entries.into_bytes(),
            ima_entry_count: (end - offset) as u32,
            ima_more: end < self.ima.lines.len(),
            event_log: Vec::new(),
            boot_time: 0,
            ima_log_missing: false,
        };
        if self.first_answer.is_none() {
            self.first_answer = Some(answer.clone());
        }
        if self.mode == Mode::Replay {
            return self.first_answer.clone().ok_or_else(|| Status::internal("no first answer"));
        }
        Ok(answer)
    }
}

#[derive(Clone)]
struct Service {
    machine: Arc<Mutex<Machine>>,
}

fn lock(machine: &Mutex<Machine>) -> Result<std::sync::MutexGuard<'_, Machine>, Status> {
    machine.lock().map_err(|_| Status::internal("machine lock poisoned"))
}

#[tonic::async_trait]
impl Agent for Service {
    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        Err(Status::unimplemented("GetInfo"))
    }

    async fn get_quote(
        &self,
        request: Request<pb::GetQuoteRequest>,
    ) -> Result<Response<pb::GetQuoteResponse>, Status> {
        let answer = lock(&self.machine)?.quote(request.get_ref())?;
        Ok(Response::new(answer))
    }

    async fn deliver_key(
        &self,
        request: Request<pb::DeliverKeyRequest>,
    ) -> Result<Response<pb::DeliverKeyResponse>, Status> {
        lock(&self.machine)?.key_halves.push(request.into_inner());
        Ok(Response::new(pb::DeliverKeyResponse { key_derived: false }))
    }

    async fn verify_key(
        &self,
        _request: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        Err(Status::unimplemented("VerifyKey"))
    }

    async fn notify_revocation(
        &self,
        request: Request<pb::NotifyRevocationRequest>,
    ) -> Result<Response<pb::NotifyRevocationResponse>, Status> {
        lock(&self.machine)?.notices.push(request.into_inner());
        Ok(Response::new(pb::NotifyRevocationResponse { actions_run: 0 }))
    }
}

/// A running (or stopped) software agent.
#[derive(Debug)]
pub struct SoftAgent {
    pub id: String,
    /// The EK side of the TPM, once registered.
    pub tpm: Option<SoftTpm>,
    pub machine: Arc<Mutex<Machine>>,
    pub addr: SocketAddr,
    tls: TlsFiles,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The tonic Agent service answering from `machine`, for a server built elsewhere.
pub fn agent_server(machine: Arc<Mutex<Machine>>) -> AgentServer<impl Agent> {
    AgentServer::new(Service { machine })
}

impl SoftAgent {
    /// Starts an agent on a free port.
    pub async fn start(id: &str, tls: TlsFiles) -> Result<SoftAgent, BoxError> {
        let mut agent = SoftAgent::unbound(id, tls, ([127, 0, 0, 1], 0).into())?;
        agent.launch().await?;
        Ok(agent)
    }

    /// An agent that does not listen (yet): its machine is served by the caller (see
    /// [`agent_server`]) at `addr`, or by [`SoftAgent::restart`] on `addr`.
    pub fn unbound(id: &str, tls: TlsFiles, addr: SocketAddr) -> Result<SoftAgent, BoxError> {
        Ok(SoftAgent {
            id: id.to_owned(),
            tpm: None,
            machine: Arc::new(Mutex::new(Machine::new(id)?)),
            addr,
            tls,
            stop: None,
            task: None,
        })
    }

    async fn launch(&mut self) -> Result<(), BoxError> {
        let identity = self.machine.lock().map_err(|_| "lock")?.identity.tls_identity()?;
        let config = server_config(identity, &self.tls.ca_certificates()?, ClientAuth::Required)?;
        let incoming =
            TlsIncoming::bind(self.addr, Arc::new(config), std::time::Duration::from_secs(5))
                .await?;
        self.addr = incoming.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = agent_server(self.machine.clone());
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        }));
        Ok(())
    }

    /// Stops answering (the port is closed).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Graceful: open connections get GOAWAY and close.
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// Answers again on the same port.
    pub async fn restart(&mut self) -> Result<(), BoxError> {
        self.launch().await
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Machine) -> T) -> T {
        let mut machine = self.machine.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut machine)
    }
}

impl Drop for SoftAgent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
