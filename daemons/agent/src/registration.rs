//! Registration with the registrar: Register (EK, EK certificate, AK, identity certificate,
//! contact), ActivateCredential on the TPM with the challenge, then Activate with
//! HMAC-SHA256(credential, agent id).
//!
//! The registrar is authenticated by the deployment CA (`trusted_client_ca`); the agent shows
//! no client certificate, its proof being the credential activation. Attempts that fail for a
//! reason that may pass (registrar down, network, rate limit) are retried with capped
//! exponential backoff and jitter, and so is an untrusted EK certificate (the registrar's
//! `tpm_cert_store` may be fixed and reloaded); a refusal (another TPM under this id, a key the
//! registrar will not take) ends the agent with the registrar's message.

use std::sync::Arc;
use std::time::Duration;

use kl_core::credential::activation_proof;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::registrar::v1::{ActivateRequest, Contact, RegisterRequest};
use kl_svc::tls::{ServerTrust, TlsConnector, client_config};
use kl_tpm::{Tpm, TpmError};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;

/// First wait after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent tells the registrar about itself.
#[derive(Debug, Clone)]
pub struct Registration {
    pub agent_id: String,
    pub ek_public: Vec<u8>,
    pub ek_certificate: Option<Vec<u8>>,
    pub ek_intermediates: Vec<Vec<u8>>,
    pub ak_public: Vec<u8>,
    pub agent_certificate: Vec<u8>,
    pub contact_ip: String,
    pub contact_port: u16,
}

/// Where the registrar is and how it is authenticated.
#[derive(Debug, Clone)]
pub struct RegistrarAddress {
    pub host: String,
    pub port: u16,
    pub ca: Vec<CertificateDer<'static>>,
}

/// How one attempt ended, when it did not succeed.
#[derive(Debug)]
enum Attempt {
    /// May pass later: try again after a while.
    Retry(String),
    /// Will not pass by trying again.
    Refused(Error),
}

/// Registers and activates, retrying until the registrar accepts or refuses. Returns the
/// registration count the registrar reports.
pub async fn register_until_done(
    registrar: &RegistrarAddress,
    tpm: Arc<Tpm>,
    registration: &Registration,
) -> Result<u64, Error> {
    let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        match attempt(registrar, &tpm, registration).await {
            Ok(count) => {
                tracing::info!(
                    agent_id = %registration.agent_id,
                    registration_count = count,
                    attempts,
                    "registered and activated at the registrar"
                );
                return Ok(count);
            }
            Err(Attempt::Refused(e)) => return Err(e),
            Err(Attempt::Retry(reason)) => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    registrar = %format!("{}:{}", registrar.host, registrar.port),
                    attempt = attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    "registration failed, will retry: {reason}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn attempt(
    registrar: &RegistrarAddress,
    tpm: &Arc<Tpm>,
    reg: &Registration,
) -> Result<u64, Attempt> {
    let channel = connect(registrar).await?;
    let mut client = RegistrarClient::new(channel);
    let request = RegisterRequest {
        agent_id: reg.agent_id.clone(),
        ek_public: reg.ek_public.clone(),
        ek_certificate: reg.ek_certificate.clone().unwrap_or_default(),
        ek_intermediate_certificates: reg.ek_intermediates.clone(),
        ak_public: reg.ak_public.clone(),
        agent_certificate: reg.agent_certificate.clone(),
        contact: Some(Contact { ip: reg.contact_ip.clone(), port: u32::from(reg.contact_port) }),
    };
    let challenge =
        client.register(request).await.map_err(|s| classify("Register", s))?.into_inner();

    let tpm = tpm.clone();
    let credential = tokio::task::spawn_blocking(move || {
        tpm.activate_credential(&challenge.credential_blob, &challenge.encrypted_secret)
    })
    .await
    .map_err(|e| Attempt::Retry(format!("credential activation task: {e}")))?
    .map_err(|e| {
        // A TPM that went away, is busy with other clients or recovers from lockout may
        // activate later; any other failure means the challenge is not for this TPM.
        let transient = e.is_connection_lost()
            || matches!(e, TpmError::Lockout { .. } | TpmError::OutOfMemory { .. });
        if transient {
            Attempt::Retry(format!("credential activation: {e}"))
        } else {
            Attempt::Refused(Error::Activation(e))
        }
    })?;

    let proof = activation_proof(&credential, &reg.agent_id);
    let request = ActivateRequest { agent_id: reg.agent_id.clone(), auth_tag: proof.to_vec() };
    match client.activate(request).await {
        Ok(reply) => Ok(reply.into_inner().registration_count),
        // No pending registration matches (the registrar restarted, it expired, or other
        // registrations under this id displaced it; a wrong proof gets the same answer): start
        // over.
        Err(s) if s.code() == Code::NotFound => {
            Err(Attempt::Retry(format!("Activate: {}", s.message())))
        }
        Err(s) => Err(classify("Activate", s)),
    }
}

async fn connect(registrar: &RegistrarAddress) -> Result<Channel, Attempt> {
    let config = client_config(&ServerTrust::Ca(registrar.ca.clone()), None)
        .map_err(|e| Attempt::Refused(Error::RegistrarTls(e)))?;
    let host = if registrar.host.contains(':') {
        format!("[{}]", registrar.host)
    } else {
        registrar.host.clone()
    };
    let uri = format!("http://{host}:{}", registrar.port);
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| Attempt::Refused(Error::RegistrarAddress { uri, reason: e.to_string() }))?
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT);
    endpoint
        .connect_with_connector(TlsConnector::new(Arc::new(config)))
        .await
        .map_err(|e| Attempt::Retry(format!("cannot connect: {}", error_chain(&e))))
}

/// Sorts a registrar status into retry or refusal (DESIGN §4: statuses mean what they say).
fn classify(rpc: &'static str, status: tonic::Status) -> Attempt {
    match status.code() {
        // An EK certificate the registrar does not trust yet: fixing its tpm_cert_store (and
        // a SIGHUP) heals the agent without a restart, so it keeps asking, at the backoff cap.
        Code::PermissionDenied if rpc == "Register" => Attempt::Retry(format!(
            "{rpc} refused ({:?}): {}; retrying until the registrar trusts this TPM",
            status.code(),
            status.message()
        )),
        Code::Unavailable
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Cancelled => {
            Attempt::Retry(format!("{rpc}: {:?}: {}", status.code(), status.message()))
        }
        code => Attempt::Refused(Error::RegistrationRefused {
            rpc,
            code,
            message: status.message().to_owned(),
        }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        // Some layers repeat their source's message in their own.
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Exponential backoff with a cap and "equal jitter": each delay is drawn from the upper half
/// of the current step, so many agents restarted together do not call in lockstep.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    max: Duration,
    rng: SystemRandom,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { step: initial.min(max), max, rng: SystemRandom::new() }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let mut b = [0u8; 4];
        let unit = match self.rng.fill(&mut b) {
            Ok(()) => f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        let delay = self.step.mul_f64(0.5 + 0.5 * unit);
        self.step = (self.step * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut steps = Vec::new();
        for _ in 0..8 {
            steps.push(b.next_delay());
        }
        let bounds = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (delay, step) in steps.iter().zip(bounds) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn refusals_are_final_and_outages_are_retried() {
        let untrusted = classify("Register", tonic::Status::permission_denied("EK untrusted"));
        assert!(matches!(untrusted, Attempt::Retry(r) if r.contains("EK untrusted")));
        for code in [Code::AlreadyExists, Code::InvalidArgument] {
            let got = classify("Register", tonic::Status::new(code, "EK certificate not trusted"));
            match got {
                Attempt::Refused(e) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("Register") && text.contains("EK certificate not trusted")
                    );
                }
                Attempt::Retry(r) => panic!("{code:?} retried: {r}"),
            }
        }
        for code in [Code::Unavailable, Code::ResourceExhausted, Code::DeadlineExceeded] {
            assert!(matches!(
                classify("Register", tonic::Status::new(code, "x")),
                Attempt::Retry(_)
            ));
        }
    }
}
