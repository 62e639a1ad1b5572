//! `kl-agent`: the agent that runs on each attested machine (`keylime_agent`).
//!
//! It owns the machine's TPM (through `kl-tpm`): it opens it, reads the EK and its
//! certificates, loads or creates the AK, keeps a P-256 identity key and self-signed
//! certificate, registers all of it with the registrar (credential activation proves the AK
//! and EK share a TPM), and serves the agent gRPC API to the verifier and kctl over mutual TLS:
//! GetInfo and GetQuote (a TPM quote bound to the verifier's nonce and the identity key, PCR
//! values, IMA entries from an offset, the UEFI event log). It never judges its own evidence,
//! never stores attestation state beyond its key files, and never trusts a client whose
//! certificate does not chain to the deployment CA (its RPCs need role admin or verifier,
//! [`service::RPC_ROLES`]; health and reflection any role).
//!
//! Start-up is [`Agent::start`] (TPM, keys, identity, listening socket; errors here are fatal
//! and say what to fix), then [`Agent::serve`] (registration with retries, alongside the gRPC
//! server, until shutdown). [`run`] does both.
//!
//! Modules: [`identity`] (the agent id and TLS identity), [`registration`] (Register and
//! Activate with retries), [`service`] (the gRPC service and its roles), [`imalog`] and
//! [`eventlog`] (the logs served with quotes), [`payload`] (key halves and the payload run),
//! [`revocation`] (revocation actions), [`privileges`] (the switch to `run_as`), `health` (the
//! TPM probe behind the health service), [`error`].

pub mod error;
pub mod eventlog;
mod health;
pub mod identity;
pub mod imalog;
pub mod payload;
pub mod privileges;
pub mod registration;
pub mod revocation;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use kl_core::alg::HashAlg;
use kl_proto::agent::v1::agent_server::{self, AgentServer};
use kl_svc::api::Health;
use kl_svc::config::AgentConfig;
use kl_svc::tls::{AgentIdentity, ClientAuth, TlsIncoming, read_certificates, server_config};
use kl_tpm::{KeyAlg, Tpm};

pub use error::Error;

use crate::imalog::ImaLog;
use crate::registration::{RegistrarAddress, Registration};
use crate::service::AgentService;

/// Largest gRPC message the agent sends or accepts (a reply may carry many IMA entries and a
/// UEFI event log).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the health service asks the TPM for a PCR value.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// A started agent: TPM open, AK loaded, identity ready, socket bound; not yet serving.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    service: AgentService,
    identity: AgentIdentity,
    registration: Registration,
    registrar: RegistrarAddress,
    incoming: TlsIncoming,
    metrics_listener: Option<kl_svc::metrics::MetricsListener>,
}

/// Starts the agent and serves until `shutdown` resolves or registration is refused.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Agent::start(config).await?.serve(shutdown).await
}

fn key_algs(config: &AgentConfig) -> Result<(KeyAlg, KeyAlg, HashAlg), Error> {
    let ek = match config.tpm_encryption_alg.as_str() {
        "rsa" => KeyAlg::Rsa2048,
        "ecc" => KeyAlg::EccP256,
        other => return Err(unsupported("tpm_encryption_alg", other, "rsa or ecc")),
    };
    let ak = match config.tpm_signing_alg.as_str() {
        "rsassa" => KeyAlg::Rsa2048,
        "ecdsa" => KeyAlg::EccP256,
        other => return Err(unsupported("tpm_signing_alg", other, "rsassa or ecdsa")),
    };
    let bank = config
        .tpm_hash_alg
        .parse::<HashAlg>()
        .map_err(|_| unsupported("tpm_hash_alg", &config.tpm_hash_alg, "sha1 to sha512"))?;
    Ok((ek, ak, bank))
}

fn unsupported(key: &'static str, value: &str, supported: &str) -> Error {
    Error::Config {
        key,
        value: value.to_owned(),
        reason: format!("not supported by this agent (supported: {supported})"),
    }
}

impl Agent {
    /// Opens the TPM, loads or creates the AK and the identity, and binds `ip:port` (port 0
    /// picks a free port; see [`Agent::local_addr`]).
    pub async fn start(config: AgentConfig) -> Result<Agent, Error> {
        let (ek_alg, ak_alg, default_bank) = key_algs(&config)?;
        let contact_ip = match &config.contact_ip {
            Some(ip) => ip.clone(),
            None if config.ip.is_unspecified() => {
                return Err(Error::Config {
                    key: "contact_ip",
                    value: String::new(),
                    reason: format!(
                        "must be set when ip = {} (the address the verifier reaches the agent at)",
                        config.ip
                    ),
                });
            }
            None => config.ip.to_string(),
        };
        let run_as = match &config.run_as {
            Some(setting) => Some((setting.clone(), privileges::RunAs::resolve(setting)?)),
            None => None,
        };
        let data_dir = config.agent_data_path.clone();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&data_dir).map_err(|e| {
            Error::Config {
                key: "agent_data_path",
                value: data_dir.display().to_string(),
                reason: format!("cannot create the directory: {e}"),
            }
        })?;
        let ca = read_certificates(&config.trusted_client_ca).map_err(|source| {
            Error::TrustedCa { path: config.trusted_client_ca.clone(), source }
        })?;

        let tcti = config.tcti.clone();
        let dir = data_dir.clone();
        let (tpm, ak, ek_certificate, ek_intermediates) =
            tokio::task::spawn_blocking(move || -> Result<_, Error> {
                let tpm = Tpm::open(&tcti, ek_alg)?;
                let ak = tpm.load_or_create_ak(&dir, ak_alg)?;
                let cert = tpm.ek_certificate()?;
                let intermediates = tpm.ek_intermediate_certificates()?;
                Ok((Arc::new(tpm), ak, cert, intermediates))
            })
            .await
            .map_err(|e| Error::Internal(format!("TPM start-up task: {e}")))??;
        service::check_bank(&tpm, default_bank, &config.tpm_hash_alg).await?;
        let ek = tpm.ek().clone();
        tracing::info!(
            tcti = %config.tcti,
            ek = ek.alg.name(),
            ek_certificate = ek_certificate.is_some(),
            ak_created = ak.created,
            "TPM ready"
        );

        let agent_id = identity::agent_id(&config.uuid, &data_dir, &ek.public)?;
        let mut names = vec![contact_ip.clone()];
        if !config.ip.is_unspecified() && config.ip.to_string() != contact_ip {
            names.push(config.ip.to_string());
        }
        let identity = identity::load_or_create_identity(&data_dir, &agent_id, &names)?;
        let payload_settings = payload::PayloadSettings {
            secure_dir: config.secure_dir.clone(),
            script: config.payload_script.clone(),
            script_timeout: config.payload_script_timeout,
            limits: kl_core::payload::Limits::default(),
            tmpfs_size: config.secure_size,
        };
        let ima = Arc::new(ImaLog::new(&config.ima_ml_path));
        let event_log = Arc::new(eventlog::EventLog::new(&config.measuredboot_ml_path));
        if let Some((setting, user)) = &run_as {
            // What needs root happens now: the TPM is open, the tmpfs mounted, the IMA list and
            // the UEFI event log opened; the state directories become the user's.
            payload::mount_secure_dir(&payload_settings)?;
            ima.keep_open();
            event_log.keep_open();
            user.switch(setting, &[&data_dir, &config.secure_dir])?;
            tracing::info!(run_as = %setting, uid = %user.uid, gid = %user.gid, "switched to the service user");
        }

        let server = server_config(
            identity.tls_identity().map_err(Error::ServerTls)?,
            &ca,
            ClientAuth::Required,
        )
        .map_err(Error::ServerTls)?;
        let addr = SocketAddr::new(config.ip, config.port);
        let incoming = TlsIncoming::bind(addr, Arc::new(server), HANDSHAKE_TIMEOUT)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = incoming.local_addr();
        tracing::info!(%agent_id, address = %local_addr, "agent listening");

        let registration = Registration {
            agent_id: agent_id.clone(),
            ek_public: ek.public.clone(),
            ek_certificate,
            ek_intermediates,
            ak_public: ak.key.public.clone(),
            agent_certificate: identity.cert_der.to_vec(),
            contact_ip,
            contact_port: config.contact_port.unwrap_or(local_addr.port()),
        };
        let registrar = RegistrarAddress {
            host: config.registrar_ip.clone(),
            port: config.registrar_port,
            ca: ca.clone(),
        };
        let payload = Arc::new(payload::PayloadInstaller::new(
            &agent_id,
            &identity.key_pem,
            payload_settings,
        )?);
        let revocation = revocation::RevocationActions {
            configured: config.revocation_actions.clone(),
            actions_dir: config.revocation_actions_dir.clone(),
            payload_dir: config.secure_dir.join("unzipped"),
            allow_payload_actions: config.allow_payload_revocation_actions,
            work_dir: data_dir.join("revocation"),
        };
        warn_if_notices_only_from_this_host(&config);
        let service = AgentService {
            agent_id,
            revocation,
            notice_senders: revocation::NoticeSenders::new(&config.revocation_notification_ip),
            trusted_ca: ca,
            tpm,
            identity_spki: identity.spki_der.clone(),
            default_bank,
            ak_alg,
            pcr_banks: vec![default_bank],
            ima,
            ima_limit: config.ima_max_entries.max(1),
            event_log,
            payload,
            calls: Arc::default(),
        };
        let metrics_listener = kl_svc::metrics::MetricsListener::bind_configured(
            config.metrics_ip,
            config.metrics_port,
        )
        .await
        .map_err(|(addr, source)| Error::Bind { addr, source })?;
        Ok(Agent { config, service, identity, registration, registrar, incoming, metrics_listener })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.incoming.local_addr()
    }

    /// The address of the Prometheus endpoint, when `metrics_port` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The agent id in use.
    pub fn agent_id(&self) -> &str {
        &self.registration.agent_id
    }

    /// The identity certificate (DER) callers pin.
    pub fn certificate(&self) -> &[u8] {
        &self.identity.cert_der
    }

    /// The effective configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Registers (retrying until the registrar answers) while serving gRPC, until `shutdown`
    /// resolves. A refused registration stops the agent with that error.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Agent { service, registration, registrar, incoming, metrics_listener, .. } = self;
        let tpm = service.tpm.clone();
        let (_metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(listener) = metrics_listener {
            let calls = service.calls.clone();
            let render: kl_svc::metrics::Render = Arc::new(move || {
                let mut e = kl_svc::metrics::Exposition::new();
                calls.write(
                    &mut e,
                    "keylime_agent_requests_total",
                    "Calls per RPC and gRPC status code; calls the client abandoned are not counted.",
                );
                let text = e.finish();
                Box::pin(async move { text })
            });
            tokio::spawn(listener.serve(render, async {
                let _ = metrics_stopped.await;
            }));
        }
        let health = Health::new(&[agent_server::SERVICE_NAME]);
        let (_health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn({
            let (health, bank) = (health.clone(), service.default_bank);
            let tcti = service.tpm.tcti().to_owned();
            let tpm = service.tpm.clone();
            let probe = health::OneAtATime::new(
                move || tpm.pcr_read(bank, &[0]).map(drop),
                health::TPM_PROBE_TIMEOUT,
            );
            async move {
                let probe = || async {
                    probe.run().await.map_err(|e| format!("TPM ({tcti}) PCR read: {e}"))
                };
                let stopped = async {
                    let _ = health_stopped.await;
                };
                health.follow(probe, HEALTH_INTERVAL, stopped).await;
            }
        });
        let access = kl_svc::api::Access::new(
            agent_server::SERVICE_NAME,
            service::RPC_ROLES,
            kl_svc::api::Caller::handshake_verified,
        );
        let grpc = AgentServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let router = kl_svc::api::router(&health, access, kl_proto::FILE_DESCRIPTOR_SET, grpc)?;
        let stopping = health.clone();
        let server = router.serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            stopping.set_stopping();
        });
        tokio::pin!(server);

        let register = registration::register_until_done(&registrar, tpm, &registration);
        tokio::select! {
            served = &mut server => return served.map_err(Error::from),
            registered = register => { registered?; }
        }
        server.await.map_err(Error::from)
    }
}

/// `revocation_notification_ip` defaults to this host, as Keylime's does: with a registrar
/// elsewhere, the verifier is most likely elsewhere too, and its notices would be refused.
fn warn_if_notices_only_from_this_host(config: &AgentConfig) {
    let only_here = config.revocation_notification_ip.iter().all(|host| is_this_host(host));
    if only_here && !is_this_host(&config.registrar_ip) {
        tracing::warn!(
            revocation_notification_ip = ?config.revocation_notification_ip,
            registrar_ip = %config.registrar_ip,
            "revocation notices are taken only from this host, but the registrar is elsewhere; \
             set revocation_notification_ip to the verifier's address(es) or notices from it are \
             refused"
        );
    }
}

fn is_this_host(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
