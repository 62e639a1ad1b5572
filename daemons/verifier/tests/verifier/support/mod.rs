//! The test harness: a CA in a temp dir, the `keylime_registrar` binary and a verifier
//! running in-process on port 0, software agents (kl-tests' `soft_agent`) registered through
//! Register/Activate, gRPC clients over real TLS with or without role certificates, and a
//! small HTTP server receiving webhooks.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use kl_core::credential::activation_proof;
use kl_proto::registrar::v1 as registrar_pb;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::verifier::v1 as pb;
use kl_proto::verifier::v1::verifier_client::VerifierClient;
use kl_svc::config::VerifierConfig;
use kl_svc::tls::{
    CertificateAuthority, Role, ServerTrust, TlsConnector, TlsDir, TlsFiles, TlsIdentity,
    client_config,
};
use kl_tests::daemon::{self, Daemon};
use kl_tests::deployment::Deployment;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

pub use kl_tests::soft_agent::{Mode, SoftAgent};
use kl_tests::soft_tpm::SoftTpm;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), BoxError>;

/// How long any single step may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The verifier's quote interval in tests.
pub const QUOTE_INTERVAL: Duration = Duration::from_millis(300);

/// A running daemon: its address, how to stop it, its task.
struct Running<E> {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E> Running<E> {
    async fn stop(&mut self) -> Result<Result<(), E>, BoxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => Ok(tokio::time::timeout(DEADLINE, task).await??),
            None => Err("not running".into()),
        }
    }
}

/// A CA, a registrar and a verifier sharing it, in one temp dir.
pub struct Fixture {
    pub config: VerifierConfig,
    /// The registrar, as its binary: a daemon never links another daemon, even in tests.
    registrar: Daemon,
    verifier: Option<Running<kl_verifier::Error>>,
    /// The Prometheus endpoint of the running verifier, when `metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
    next_agent: u32,
    /// Last, so the registrar is stopped before its directory is removed (fields drop in
    /// order).
    deployment: Deployment,
}

impl Fixture {
    /// Starts a registrar and a verifier with test timings, changed by `configure`.
    pub async fn start(configure: impl FnOnce(&mut VerifierConfig)) -> Result<Fixture, BoxError> {
        let deployment = Deployment::new()?;
        let dir = deployment.keylime_dir();
        let tls = deployment.tls();
        std::fs::create_dir_all(dir.join("tpm_cert_store"))?;
        let mut registrar_config =
            deployment.registrar_config(daemon::free_port()?, &dir.join("tpm_cert_store"), false);
        registrar_config.insert("registration_rate_limit".into(), 0.into());
        registrar_config.insert("log_level".into(), "info".into());
        let registrar = deployment.start_registrar(&registrar_config)?;
        let mut config = kl_svc::config::defaults::<VerifierConfig>()?;
        config.keylime_dir = dir.join("verifier");
        config.port = 0;
        config.tls_dir = TlsDir::Dir(tls.dir.clone());
        config.registrar_port = registrar.port();
        config.quote_interval = QUOTE_INTERVAL;
        config.retry_interval = Duration::from_millis(100);
        config.max_retries = 2;
        config.request_timeout = Duration::from_secs(2);
        config.accept_tpm_hash_algs = vec!["sha256".into(), "sha384".into(), "sha512".into()];
        config.accept_tpm_signing_algs = vec!["rsassa".into(), "rsapss".into(), "ecdsa".into()];
        configure(&mut config);
        let mut fixture = Fixture {
            deployment,
            config,
            registrar,
            verifier: None,
            metrics_addr: None,
            next_agent: 0,
        };
        fixture.start_verifier().await?;
        Ok(fixture)
    }

    /// The temporary directory everything lives in (the registrar's `keylime_dir`).
    pub fn dir(&self) -> &std::path::Path {
        self.deployment.keylime_dir()
    }

    pub fn tls(&self) -> TlsFiles {
        self.deployment.tls()
    }

    pub async fn start_verifier(&mut self) -> TestResult {
        let server = kl_verifier::Server::bind(&self.config).await?;
        let addr = server.local_addr();
        self.metrics_addr = server.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        self.verifier = Some(Running { addr, stop: Some(stop), task: Some(task) });
        Ok(())
    }

    /// Stops the verifier (it must end cleanly).
    pub async fn stop_verifier(&mut self) -> TestResult {
        if let Some(mut running) = self.verifier.take() {
            running.stop().await??;
        }
        Ok(())
    }

    pub fn verifier_addr(&self) -> Result<SocketAddr, BoxError> {
        Ok(self.verifier.as_ref().ok_or("the verifier is not running")?.addr)
    }

    async fn channel(
        &self,
        addr: SocketAddr,
        identity: Option<TlsIdentity>,
    ) -> Result<Channel, BoxError> {
        let config = client_config(&ServerTrust::Ca(self.tls().ca_certificates()?), identity)?;
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port()))?
            .connect_timeout(DEADLINE)
            .timeout(DEADLINE);
        Ok(tokio::time::timeout(
            DEADLINE,
            endpoint.connect_with_connector(TlsConnector::new(Arc::new(config))),
        )
        .await??)
    }

    /// A verifier client with the generated admin certificate.
    pub async fn admin(&self) -> Result<VerifierClient<Channel>, BoxError> {
        let identity = self.tls().client_identity()?;
        Ok(VerifierClient::new(self.channel(self.verifier_addr()?, Some(identity)).await?))
    }

    /// The status the verifier's `grpc.health.v1.Health` gives the whole daemon (`""`), asked
    /// with a viewer certificate (health admits any role).
    pub async fn health(
        &self,
    ) -> Result<tonic_health::pb::health_check_response::ServingStatus, BoxError> {
        let ca = CertificateAuthority::read(&self.tls())?;
        let issued = ca.issue(Role::Viewer, "health probe", &[])?;
        let identity = TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem, "issued")?;
        let channel = self.channel(self.verifier_addr()?, Some(identity)).await?;
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        let answer =
            tonic_health::pb::health_client::HealthClient::new(channel).check(request).await?;
        Ok(answer.into_inner().status())
    }

    /// Waits until the verifier's health is `status`.
    pub async fn wait_health(
        &self,
        status: tonic_health::pb::health_check_response::ServingStatus,
    ) -> Result<(), BoxError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.health().await?;
            if now == status {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("health stayed {now:?}, expected {status:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A verifier client with a certificate for `role` from the deployment CA.
    pub async fn with_role(&self, role: Role) -> Result<VerifierClient<Channel>, BoxError> {
        let ca = CertificateAuthority::read(&self.tls())?;
        let issued = ca.issue(role, &format!("test {role}"), &[])?;
        let identity = TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem, "issued")?;
        Ok(VerifierClient::new(self.channel(self.verifier_addr()?, Some(identity)).await?))
    }

    /// Tries to connect to the verifier without a client certificate.
    pub async fn anonymous(&self) -> Result<VerifierClient<Channel>, BoxError> {
        Ok(VerifierClient::new(self.channel(self.verifier_addr()?, None).await?))
    }

    async fn registrar_client(&self) -> Result<RegistrarClient<Channel>, BoxError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.registrar.port()));
        Ok(RegistrarClient::new(self.channel(addr, None).await?))
    }

    /// Starts a software agent and registers it (Register + ActivateCredential + Activate).
    pub async fn agent(&mut self) -> Result<SoftAgent, BoxError> {
        self.next_agent += 1;
        let id = format!("d432fbb3-d2f1-4a97-9ef7-{:012x}", self.next_agent);
        let mut agent = SoftAgent::start(&id, self.tls()).await?;
        agent.tpm = Some(SoftTpm::ecc());
        self.register(&mut agent).await?;
        Ok(agent)
    }

    /// Registers `agent` (again) with its current AK and identity.
    pub async fn register(&self, agent: &mut SoftAgent) -> TestResult {
        let (ak_public, cert) =
            agent.with(|m| (m.ak.public.to_bytes(), m.identity.cert_der.to_vec()));
        let port = agent.addr.port();
        let tpm = agent.tpm.as_mut().ok_or("the agent has no TPM")?;
        tpm.ak_public = ak_public;
        let mut registrar = self.registrar_client().await?;
        let request = registrar_pb::RegisterRequest {
            agent_id: agent.id.clone(),
            ek_public: tpm.ek_public.clone(),
            ek_certificate: Vec::new(),
            ek_intermediate_certificates: Vec::new(),
            ak_public: tpm.ak_public.clone(),
            agent_certificate: cert,
            contact: Some(registrar_pb::Contact {
                ip: "127.0.0.1".to_owned(),
                port: u32::from(port),
            }),
        };
        let challenge = registrar.register(request).await?.into_inner();
        let secret =
            tpm.activate_credential(&challenge.credential_blob, &challenge.encrypted_secret)?;
        let activate = registrar_pb::ActivateRequest {
            agent_id: agent.id.clone(),
            auth_tag: activation_proof(&secret, &agent.id).to_vec(),
        };
        registrar.activate(activate).await?;
        Ok(())
    }

    /// Stores the agent's current files as runtime policy `name`.
    pub async fn put_policy(&self, name: &str, agent: &SoftAgent) -> Result<bool, BoxError> {
        let document = agent.with(|m| m.ima.allowlist());
        let request = pb::PutRuntimePolicyRequest {
            name: name.to_owned(),
            document: document.into_bytes(),
            exclude_list: Vec::new(),
            signing_key: Vec::new(),
            ..Default::default()
        };
        Ok(self.admin().await?.put_runtime_policy(request).await?.into_inner().changed)
    }

    /// Enrolls `agent` with runtime policy `policy`.
    pub async fn enroll(
        &self,
        agent: &SoftAgent,
        policy: &str,
    ) -> Result<pb::AgentStatus, BoxError> {
        let request = pb::EnrollAgentRequest {
            agent_id: agent.id.clone(),
            runtime_policy: policy.to_owned(),
            ..Default::default()
        };
        let answer = self.admin().await?.enroll_agent(request).await?.into_inner();
        answer.agent.ok_or_else(|| "no agent in the answer".into())
    }

    pub async fn status(&self, agent_id: &str) -> Result<pb::AgentStatus, BoxError> {
        let request = pb::GetAgentRequest { agent_id: agent_id.to_owned() };
        let answer = self.admin().await?.get_agent(request).await?.into_inner();
        answer.agent.ok_or_else(|| "no agent in the answer".into())
    }

    /// Polls until the agent's status satisfies `done`.
    pub async fn wait_for(
        &self,
        agent_id: &str,
        what: &str,
        done: impl Fn(&pb::AgentStatus) -> bool,
    ) -> Result<pb::AgentStatus, BoxError> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut admin = self.admin().await?;
        loop {
            let request = pb::GetAgentRequest { agent_id: agent_id.to_owned() };
            let answer = admin.get_agent(request).await?.into_inner();
            let status = answer.agent.ok_or("no agent in the answer")?;
            if done(&status) {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(
                    format!("{agent_id}: timed out waiting for {what}; last {status:?}").into()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_state(
        &self,
        agent_id: &str,
        state: pb::AgentState,
    ) -> Result<pb::AgentStatus, BoxError> {
        self.wait_for(agent_id, state.as_str_name(), |s| s.state == state as i32).await
    }

    /// Every event after `from` up to the first that satisfies `until` (from WatchEvents).
    pub async fn events_until(
        &self,
        from: u64,
        until: impl Fn(&pb::Event) -> bool,
    ) -> Result<Vec<pb::Event>, BoxError> {
        let request =
            pb::WatchEventsRequest { from_cursor: from, agent_id: String::new(), until_cursor: 0 };
        let mut stream = self.admin().await?.watch_events(request).await?.into_inner();
        let mut events = Vec::new();
        loop {
            let next = tokio::time::timeout(DEADLINE, stream.message()).await??;
            let event = next.ok_or("the event stream ended")?;
            let stop = until(&event);
            events.push(event);
            if stop {
                return Ok(events);
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(task) = self.verifier.as_mut().and_then(|v| v.task.take()) {
            task.abort();
        }
    }
}

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: Option<String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

/// A tiny HTTP server that answers every POST with the current `status` and hands the
/// requests over.
pub async fn webhook_receiver(
    status: Arc<AtomicU16>,
) -> Result<(SocketAddr, mpsc::UnboundedReceiver<Delivery>, JoinHandle<()>), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            receive(stream, &status, &tx).await;
        }
    });
    Ok((addr, rx, task))
}

/// [`webhook_receiver`] over TLS on `listener`, presenting `identity`; failed handshakes are
/// counted in `refused`.
pub fn https_webhook_receiver(
    listener: tokio::net::TcpListener,
    identity: TlsIdentity,
    status: Arc<AtomicU16>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<(mpsc::UnboundedReceiver<Delivery>, JoinHandle<()>), BoxError> {
    let config = rustls::ServerConfig::builder_with_provider(kl_svc::tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            match acceptor.accept(stream).await {
                Ok(stream) => receive(stream, &status, &tx).await,
                Err(_) => {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    Ok((rx, task))
}

/// Reads one request from `stream`, hands it over and answers with `status`.
async fn receive(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    status: &AtomicU16,
    tx: &mpsc::UnboundedSender<Delivery>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let Ok(n) = stream.read(&mut chunk).await else { break (0, 0) };
        if n == 0 {
            break (0, 0);
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    if head_end == 0 {
        return;
    }
    while buffer.len() < head_end + length {
        let Ok(n) = stream.read(&mut chunk).await else { break };
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let signature = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-keylime-signature"))
            .map(|(_, v)| v.trim().to_owned())
    });
    let body = buffer[head_end..(head_end + length).min(buffer.len())].to_vec();
    let status = status.load(Ordering::SeqCst);
    let _ = tx.send(Delivery { signature, body, status });
    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}
