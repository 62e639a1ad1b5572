//! The test harness: a registrar running in-process on port 0 with a CA, state and
//! `tpm_cert_store` in a temp dir, gRPC clients over real TLS with or without role
//! certificates, and software agents.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kl_core::credential::activation_proof;
use kl_proto::registrar::v1 as pb;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_svc::config::RegistrarConfig;
use kl_svc::tls::{
    AgentIdentity, CertificateAuthority, Role, ServerTrust, TlsConnector, TlsDir, TlsFiles,
    TlsIdentity, client_config, ensure_generated,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

pub use kl_testkit::soft_tpm::SoftTpm;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type BoxError = Box<dyn std::error::Error>;

/// How long any single step may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A registrar serving from a temp dir.
pub struct Registrar {
    pub dir: tempfile::TempDir,
    pub config: RegistrarConfig,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), kl_registrar::Error>>>,
    /// The Prometheus endpoint, when `metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
}

impl Registrar {
    /// Starts a registrar with the test defaults (no rate limit, EK certificates optional),
    /// changed by `configure`.
    pub async fn start(
        configure: impl FnOnce(&mut RegistrarConfig),
    ) -> Result<Registrar, BoxError> {
        let dir = tempfile::tempdir()?;
        let tls = TlsFiles::new(dir.path().join("cv_ca"));
        ensure_generated(&tls, &[])?;
        std::fs::create_dir_all(dir.path().join("tpm_cert_store"))?;
        let mut config = kl_svc::config::defaults::<RegistrarConfig>()?;
        config.keylime_dir = dir.path().to_owned();
        config.port = 0;
        config.tls_dir = TlsDir::Dir(tls.dir.clone());
        config.log_level = "info".to_owned();
        config.tpm_cert_store = dir.path().join("tpm_cert_store");
        config.require_ek_cert = false;
        config.registration_rate_limit = 0;
        configure(&mut config);
        let mut registrar = Registrar {
            dir,
            addr: ([127, 0, 0, 1], 0).into(),
            config,
            stop: None,
            task: None,
            metrics_addr: None,
        };
        registrar.launch().await?;
        Ok(registrar)
    }

    async fn launch(&mut self) -> Result<(), BoxError> {
        let server = kl_registrar::Server::bind(&self.config).await?;
        self.addr = server.local_addr();
        self.metrics_addr = server.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(server.serve(async {
            let _ = stopped.await;
        })));
        Ok(())
    }

    /// Stops the registrar and starts it again on the same state (on a new port).
    pub async fn restart(&mut self) -> TestResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task).await???;
        }
        self.launch().await
    }

    pub fn tls(&self) -> TlsFiles {
        TlsFiles::new(self.dir.path().join("cv_ca"))
    }

    pub fn tpm_cert_store(&self) -> PathBuf {
        self.config.tpm_cert_store.clone()
    }

    /// Where clients reach this registrar.
    pub fn address(&self) -> RegistrarAddress {
        RegistrarAddress { tls: self.tls(), port: self.addr.port() }
    }

    /// A registrar running elsewhere (the binary) on `port` with the files in `tls`.
    pub fn connect_to(tls: &TlsFiles, port: u16) -> RegistrarAddress {
        RegistrarAddress { tls: tls.clone(), port }
    }

    pub async fn client(
        &self,
        identity: Option<TlsIdentity>,
    ) -> Result<RegistrarClient<Channel>, BoxError> {
        self.address().client(identity).await
    }

    pub async fn anonymous(&self) -> Result<RegistrarClient<Channel>, BoxError> {
        self.address().anonymous().await
    }

    pub async fn admin(&self) -> Result<RegistrarClient<Channel>, BoxError> {
        self.address().admin().await
    }

    pub async fn with_role(&self, role: Role) -> Result<RegistrarClient<Channel>, BoxError> {
        self.address().with_role(role).await
    }
}

/// A registrar's port and TLS files, to make clients with.
pub struct RegistrarAddress {
    pub tls: TlsFiles,
    pub port: u16,
}

impl RegistrarAddress {
    /// A client presenting `identity` (none when `None`).
    pub async fn client(
        &self,
        identity: Option<TlsIdentity>,
    ) -> Result<RegistrarClient<Channel>, BoxError> {
        let cas = self.tls.ca_certificates()?;
        let config = client_config(&ServerTrust::Ca(cas), identity)?;
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))?
            .connect_timeout(DEADLINE)
            .timeout(DEADLINE);
        let channel = tokio::time::timeout(
            DEADLINE,
            endpoint.connect_with_connector(TlsConnector::new(Arc::new(config))),
        )
        .await??;
        Ok(RegistrarClient::new(channel))
    }

    /// A client without a certificate, as agents call Register and Activate.
    pub async fn anonymous(&self) -> Result<RegistrarClient<Channel>, BoxError> {
        self.client(None).await
    }

    /// A client with the generated admin certificate.
    pub async fn admin(&self) -> Result<RegistrarClient<Channel>, BoxError> {
        self.client(Some(self.tls.client_identity()?)).await
    }

    /// A client with a certificate for `role` issued by the deployment CA.
    pub async fn with_role(&self, role: Role) -> Result<RegistrarClient<Channel>, BoxError> {
        let ca = CertificateAuthority::read(&self.tls)?;
        let issued = ca.issue(role, &format!("test {role}"), &[])?;
        let identity = TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem, "issued")?;
        self.client(Some(identity)).await
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A software agent: an id, a TPM and an identity certificate.
pub struct Agent {
    pub id: String,
    pub tpm: SoftTpm,
    pub certificate: AgentIdentity,
    pub ek_certificate: Vec<u8>,
    pub contact_port: u32,
}

impl Agent {
    pub fn new(id: &str, tpm: SoftTpm) -> Result<Agent, BoxError> {
        Ok(Agent {
            id: id.to_owned(),
            tpm,
            certificate: AgentIdentity::generate(id, &[])?,
            ek_certificate: Vec::new(),
            contact_port: 9002,
        })
    }

    pub fn register_request(&self) -> pb::RegisterRequest {
        pb::RegisterRequest {
            agent_id: self.id.clone(),
            ek_public: self.tpm.ek_public.clone(),
            ek_certificate: self.ek_certificate.clone(),
            ek_intermediate_certificates: Vec::new(),
            ak_public: self.tpm.ak_public.clone(),
            agent_certificate: self.certificate.cert_der.to_vec(),
            contact: Some(pb::Contact { ip: "127.0.0.1".to_owned(), port: self.contact_port }),
        }
    }

    /// Register, then ActivateCredential in the software TPM.
    pub async fn register(
        &self,
        client: &mut RegistrarClient<Channel>,
    ) -> Result<Result<Vec<u8>, tonic::Status>, BoxError> {
        let answer = match client.register(self.register_request()).await {
            Ok(answer) => answer.into_inner(),
            Err(status) => return Ok(Err(status)),
        };
        let secret =
            self.tpm.activate_credential(&answer.credential_blob, &answer.encrypted_secret)?;
        Ok(Ok(secret))
    }

    /// The whole registration; the registration count on success.
    pub async fn enroll(
        &self,
        client: &mut RegistrarClient<Channel>,
    ) -> Result<Result<u64, tonic::Status>, BoxError> {
        let secret = match self.register(client).await? {
            Ok(secret) => secret,
            Err(status) => return Ok(Err(status)),
        };
        let request = pb::ActivateRequest {
            agent_id: self.id.clone(),
            auth_tag: activation_proof(&secret, &self.id).to_vec(),
        };
        Ok(client.activate(request).await.map(|r| r.into_inner().registration_count))
    }
}

/// The agent record as an admin sees it, or the status of the lookup.
pub async fn lookup(
    registrar: &Registrar,
    agent_id: &str,
) -> Result<Result<pb::AgentRecord, tonic::Status>, BoxError> {
    let mut admin = registrar.admin().await?;
    let request = pb::GetAgentRequest { agent_id: agent_id.to_owned() };
    Ok(admin.get_agent(request).await.map(|r| r.into_inner().agent.unwrap_or_default()))
}

/// A fresh agent id.
pub fn new_id(n: u32) -> String {
    format!("d432fbb3-d2f1-4a97-9ef7-{n:012x}")
}

/// The RSA-2048 key of the shared fixtures, as an EK private key (generating one is slow in
/// debug builds).
pub fn fixture_rsa_key() -> Result<rsa::PrivateKey, BoxError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../lib/core/tests/data/keylime/ima/keys/rsa2048.pem"
    );
    let pem = std::fs::read(path)?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| format!("{path}: {e}"))?;
    Ok(rsa::PrivateKey::from_pkcs1_der(&block.contents)?)
}

/// A vendor-like EK CA (P-256) for test EK certificates.
pub struct EkCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
}

impl EkCa {
    pub fn new(name: &str) -> Result<EkCa, BoxError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(EkCa { cert_pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) })
    }

    /// An EK certificate (DER) for the key in `ek_spki_der`.
    pub fn issue(&self, ek_spki_der: &[u8]) -> Result<Vec<u8>, BoxError> {
        let public = rcgen::SubjectPublicKeyInfo::from_der(ek_spki_der)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "test EK");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
        Ok(params.signed_by(&public, &self.issuer)?.der().to_vec())
    }
}
