//! A deployment in a temporary directory: the deployment CA (`cv_ca/`, as the verifier
//! generates it), config files for the daemons, the daemons themselves, and gRPC clients that
//! authenticate with the generated admin certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kl_proto::agent::v1::agent_client::AgentClient;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_svc::tls::{ServerTrust, TlsConnector, TlsFiles, client_config, ensure_generated};
use rustls::pki_types::CertificateDer;
use tonic::transport::{Channel, Endpoint};

use crate::daemon::{self, AGENT, Daemon, Program, REGISTRAR, VERIFIER};
use crate::{Result, err};

/// The message size the clients accept (as large as the agent sends).
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// A temporary `keylime_dir` with a generated CA, server and admin certificates.
#[derive(Debug)]
pub struct Deployment {
    dir: tempfile::TempDir,
}

/// The settings of one test agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// `uuid`: a UUID, `generate` or `hash_ek`.
    pub uuid: String,
    pub tcti: String,
    pub registrar_port: u16,
    /// Extra options, written last.
    pub extra: toml::Table,
}

/// An agent process with its own `keylime_dir`.
#[derive(Debug)]
pub struct TestAgent {
    pub daemon: Daemon,
    /// The agent's `keylime_dir` (its key material is in `agent/`).
    pub dir: PathBuf,
    /// The IMA measurement list the agent serves (`ima_ml_path`), initially empty.
    pub ima_log: PathBuf,
}

impl TestAgent {
    /// The id the agent chose and wrote to `agent/agent_uuid`.
    pub fn uuid(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("agent").join("agent_uuid"))?.trim().to_owned())
    }

    /// The identity certificate (DER) the agent presents, as a verifier would pin it.
    pub fn certificate(&self) -> Result<CertificateDer<'static>> {
        let path = self.dir.join("agent").join("identity-cert.pem");
        let certs = kl_svc::tls::read_certificates(&path)?;
        certs.into_iter().next().ok_or_else(|| err(format!("{}: no certificate", path.display())))
    }
}

impl Deployment {
    pub fn new() -> Result<Deployment> {
        let dir = tempfile::Builder::new().prefix("keylime-").tempdir()?;
        ensure_generated(&TlsFiles::new(dir.path().join("cv_ca")), &[])?;
        Ok(Deployment { dir })
    }

    /// The deployment's `keylime_dir` (the registrar's).
    pub fn keylime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA, server and admin certificates.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles::new(self.dir.path().join("cv_ca"))
    }

    /// Writes `table` as TOML to `<keylime_dir>/<name>`.
    pub fn write_config(&self, name: &str, table: &toml::Table) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, toml::to_string(table)?)?;
        Ok(path)
    }

    /// A registrar config: listens on `port`, trusts EK certificates from `tpm_cert_store`.
    pub fn registrar_config(
        &self,
        port: u16,
        tpm_cert_store: &Path,
        require_ek_cert: bool,
    ) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("keylime_dir".into(), path_value(self.keylime_dir()));
        t.insert("ip".into(), "127.0.0.1".into());
        t.insert("port".into(), i64::from(port).into());
        t.insert("tpm_cert_store".into(), path_value(tpm_cert_store));
        t.insert("require_ek_cert".into(), require_ek_cert.into());
        t.insert("log_level".into(), "info,kl_registrar=debug".into());
        t
    }

    /// Writes `config` and starts the registrar, waiting for its port.
    pub fn start_registrar(&self, config: &toml::Table) -> Result<Daemon> {
        self.start_listening(REGISTRAR, "registrar", config)
    }

    /// Starts `program` with `config` written to `<name>.conf` and waits for its port. A port
    /// that was free when the test chose it may be taken by the time the daemon binds (tests
    /// run in parallel): then another port is tried.
    fn start_listening(
        &self,
        program: Program,
        name: &str,
        config: &toml::Table,
    ) -> Result<Daemon> {
        let mut config = config.clone();
        let mut attempt = 0;
        loop {
            let port = port_of(&config)?;
            let path = self.write_config(&format!("{name}.conf"), &config)?;
            let log = self.dir.path().join(format!("{name}.log"));
            let mut daemon = Daemon::start(program, &path, &log, port)?;
            match daemon.wait_listening() {
                Ok(()) => return Ok(daemon),
                Err(e) if attempt < PORT_ATTEMPTS && e.to_string().contains(PORT_TAKEN) => {
                    attempt += 1;
                    config.insert("port".into(), i64::from(daemon::free_port()?).into());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A verifier config: listens on `port`, reads the registrar at `registrar_port`, attests
    /// every `quote_interval` seconds; its webhook and other options go in `extra` keys.
    pub fn verifier_config(
        &self,
        port: u16,
        registrar_port: u16,
        quote_interval: f64,
    ) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("keylime_dir".into(), path_value(self.keylime_dir()));
        t.insert("ip".into(), "127.0.0.1".into());
        t.insert("port".into(), i64::from(port).into());
        t.insert("registrar_ip".into(), "127.0.0.1".into());
        t.insert("registrar_port".into(), i64::from(registrar_port).into());
        t.insert("quote_interval".into(), quote_interval.into());
        t.insert("retry_interval".into(), 0.5.into());
        t.insert("max_retries".into(), 3.into());
        t.insert("tls_dir".into(), "default".into());
        t.insert("log_level".into(), "info,kl_verifier=debug".into());
        t
    }

    /// Writes `config` and starts the verifier, waiting for its port.
    pub fn start_verifier(&self, config: &toml::Table) -> Result<Daemon> {
        self.start_listening(VERIFIER, "verifier", config)
    }

    /// Starts another verifier (a replica) with `config` in `<name>.conf`, logging to
    /// `<name>.log`, waiting for its port.
    pub fn start_verifier_named(&self, name: &str, config: &toml::Table) -> Result<Daemon> {
        self.start_listening(VERIFIER, name, config)
    }

    /// A tenant config for kctl and keylime_tenant: this deployment's TLS files, the verifier
    /// and the registrar.
    pub fn tenant_config(&self, verifier_port: u16, registrar_port: u16) -> Result<PathBuf> {
        self.tenant_config_named("tenant.conf", verifier_port, registrar_port)
    }

    /// [`Deployment::tenant_config`] in `<keylime_dir>/<name>` (one per verifier replica).
    pub fn tenant_config_named(
        &self,
        name: &str,
        verifier_port: u16,
        registrar_port: u16,
    ) -> Result<PathBuf> {
        let mut t = toml::Table::new();
        t.insert("keylime_dir".into(), path_value(self.keylime_dir()));
        t.insert("verifier_port".into(), i64::from(verifier_port).into());
        t.insert("registrar_port".into(), i64::from(registrar_port).into());
        self.write_config(name, &t)
    }

    /// Writes an agent config under `<keylime_dir>/<name>/` and starts the agent, waiting for
    /// its port.
    pub fn start_agent(&self, name: &str, settings: &AgentSettings) -> Result<TestAgent> {
        let mut attempt = 0;
        loop {
            let mut agent = self.spawn_agent(name, settings)?;
            match agent.daemon.wait_listening() {
                Ok(()) => return Ok(agent),
                // Another test took the port first (see `start_listening`).
                Err(e) if attempt < PORT_ATTEMPTS && e.to_string().contains(PORT_TAKEN) => {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Like [`Deployment::start_agent`], without waiting: for agents expected to stop.
    pub fn spawn_agent(&self, name: &str, settings: &AgentSettings) -> Result<TestAgent> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let ima_log = dir.join("ascii_runtime_measurements");
        std::fs::write(&ima_log, "")?;
        let port = daemon::free_port()?;
        let mut t = toml::Table::new();
        t.insert("keylime_dir".into(), path_value(&dir));
        t.insert("ip".into(), "127.0.0.1".into());
        t.insert("port".into(), i64::from(port).into());
        t.insert("uuid".into(), settings.uuid.clone().into());
        t.insert("registrar_ip".into(), "127.0.0.1".into());
        t.insert("registrar_port".into(), i64::from(settings.registrar_port).into());
        t.insert("tcti".into(), settings.tcti.clone().into());
        t.insert("trusted_client_ca".into(), path_value(&self.tls().ca_cert()));
        t.insert("ima_ml_path".into(), path_value(&ima_log));
        t.insert("measuredboot_ml_path".into(), path_value(&dir.join("binary_bios_measurements")));
        t.insert("log_level".into(), "info,kl_agent=debug".into());
        // No tmpfs mounts under test directories: they would outlive a killed agent.
        t.insert("secure_size".into(), 0.into());
        for (k, v) in &settings.extra {
            t.insert(k.clone(), v.clone());
        }
        let config = dir.join("agent.conf");
        std::fs::write(&config, toml::to_string(&t)?)?;
        let daemon = Daemon::start(AGENT, &config, &dir.join("agent.log"), port)?;
        Ok(TestAgent { daemon, dir, ima_log })
    }

    /// A registrar client with the admin certificate.
    pub async fn registrar_client(&self, port: u16) -> Result<RegistrarClient<Channel>> {
        let tls = self.tls();
        let config =
            client_config(&ServerTrust::Ca(tls.ca_certificates()?), Some(tls.client_identity()?))?;
        let channel = channel(port, TlsConnector::new(Arc::new(config))).await?;
        Ok(RegistrarClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }

    /// An agent client with the admin certificate, pinning the agent's identity certificate.
    pub async fn agent_client(
        &self,
        port: u16,
        agent_cert: CertificateDer<'static>,
    ) -> Result<AgentClient<Channel>> {
        let identity = Some(self.tls().client_identity()?);
        let config = client_config(&ServerTrust::Pinned(agent_cert), identity)?;
        let channel = channel(port, TlsConnector::new(Arc::new(config))).await?;
        Ok(AgentClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }
}

async fn channel(port: u16, connector: TlsConnector) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .timeout(std::time::Duration::from_secs(30));
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// How often a daemon start is retried on another port.
const PORT_ATTEMPTS: u32 = 5;
/// What a daemon says when its port is taken.
const PORT_TAKEN: &str = "Address already in use";

fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.display().to_string())
}

fn port_of(config: &toml::Table) -> Result<u16> {
    config
        .get("port")
        .and_then(toml::Value::as_integer)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| err("config has no port"))
}
