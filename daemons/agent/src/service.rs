//! The agent's gRPC service: GetInfo, GetQuote, payload delivery (DeliverKey, VerifyKey, see
//! [`crate::payload`]) and revocation notices (NotifyRevocation: the verifier's signature is
//! checked against the deployment CA, then [`crate::revocation`] runs the actions).
//!
//! Callers are authenticated by TLS (certificates chaining to `trusted_client_ca`, checked in
//! the handshake); here their role is checked too: only `admin` and `verifier` certificates
//! may ask for evidence.

use std::sync::Arc;
use std::time::Duration;

use kl_core::alg::HashAlg;
use kl_core::quote::qualifying_data;
use kl_proto::agent::v1 as pb;
use kl_proto::agent::v1::agent_server::Agent as AgentRpc;
use kl_svc::tls::Role;
use kl_tpm::{KeyAlg, Tpm};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::imalog::{ImaLog, ImaSlice};
use crate::payload::PayloadInstaller;
use crate::revocation::{NoticeSenders, RevocationActions};

/// Nonce length bounds (GetQuoteRequest.nonce).
pub const MIN_NONCE_LEN: usize = 16;
pub const MAX_NONCE_LEN: usize = 32;
/// The highest PCR index.
const MAX_PCR: u32 = 23;

/// What the service needs to answer: the TPM with its AK loaded, the identity key quotes are
/// bound to, and the logs.
#[derive(Debug)]
pub struct AgentService {
    pub agent_id: String,
    pub tpm: Arc<Tpm>,
    /// DER SubjectPublicKeyInfo of the identity (TLS) key.
    pub identity_spki: Vec<u8>,
    pub default_bank: HashAlg,
    pub ak_alg: KeyAlg,
    /// The PCR banks the agent quotes: the configured one (see [`check_bank`]).
    pub pcr_banks: Vec<HashAlg>,
    pub ima: Arc<ImaLog>,
    /// Most IMA entries in one reply (`ima_max_entries`).
    pub ima_limit: u64,
    pub event_log: Arc<crate::eventlog::EventLog>,
    /// Key halves and the payload they unlock.
    pub payload: Arc<PayloadInstaller>,
    /// What runs when a revocation notice arrives.
    pub revocation: RevocationActions,
    /// Where revocation notices may come from (`revocation_notification_ip`).
    pub notice_senders: NoticeSenders,
    /// The deployment CA: revocation notices must be signed by a server certificate it issued.
    pub trusted_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Calls per RPC and status, for the metrics endpoint.
    pub calls: Arc<kl_svc::metrics::CallCounts>,
}

/// How long reading one PCR of the configured bank may take at start.
const BANK_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks at start that the TPM returns PCR values from `bank` (`tpm_hash_alg`).
///
/// A bank the TPM has not allocated reads as missing values (`kl-tpm` stops asking when a
/// PCR read returns nothing), and the agent refuses to start with it rather than fail every
/// quote later. The agent serves the one configured bank; the deadline guards against a TPM
/// that does not answer at all.
pub async fn check_bank(tpm: &Arc<Tpm>, bank: HashAlg, setting: &str) -> Result<(), Error> {
    let probe = tokio::task::spawn_blocking({
        let tpm = tpm.clone();
        move || tpm.pcr_read(bank, &[0])
    });
    let not_active =
        |reason: String| Error::Config { key: "tpm_hash_alg", value: setting.to_owned(), reason };
    match tokio::time::timeout(BANK_PROBE_TIMEOUT, probe).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(not_active(format!("cannot read PCR 0 from this bank: {e}"))),
        Ok(Err(e)) => Err(Error::Internal(format!("PCR probe task: {e}"))),
        Err(_) => Err(not_active(format!(
            "the TPM returned no PCR values from the {} bank within {BANK_PROBE_TIMEOUT:?}; \
             is the bank active?",
            bank.name()
        ))),
    }
}

fn proto_hash(alg: HashAlg) -> pb::HashAlgorithm {
    match alg {
        HashAlg::Sha1 => pb::HashAlgorithm::Sha1,
        HashAlg::Sha256 => pb::HashAlgorithm::Sha256,
        HashAlg::Sha384 => pb::HashAlgorithm::Sha384,
        HashAlg::Sha512 => pb::HashAlgorithm::Sha512,
    }
}

/// The bank a request asks for; UNSPECIFIED means `default`.
fn requested_bank(value: i32, default: HashAlg) -> Result<HashAlg, Error> {
    let invalid = |reason: String| Error::InvalidArgument { field: "hash_algorithm", reason };
    match pb::HashAlgorithm::try_from(value) {
        Ok(pb::HashAlgorithm::Unspecified) => Ok(default),
        Ok(pb::HashAlgorithm::Sha1) => Ok(HashAlg::Sha1),
        Ok(pb::HashAlgorithm::Sha256) => Ok(HashAlg::Sha256),
        Ok(pb::HashAlgorithm::Sha384) => Ok(HashAlg::Sha384),
        Ok(pb::HashAlgorithm::Sha512) => Ok(HashAlg::Sha512),
        Err(_) => Err(invalid(format!("{value} is not a known hash algorithm"))),
    }
}

fn check_nonce(nonce: &[u8]) -> Result<(), Error> {
    if (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len()) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "nonce",
            reason: format!(
                "{} bytes; a nonce has {MIN_NONCE_LEN} to {MAX_NONCE_LEN} bytes",
                nonce.len()
            ),
        })
    }
}

fn check_pcrs(pcrs: &[u32]) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidArgument { field: "pcrs", reason };
    if pcrs.is_empty() {
        return Err(invalid("no PCR selected".to_owned()));
    }
    match pcrs.iter().find(|p| **p > MAX_PCR) {
        Some(p) => Err(invalid(format!("PCR {p} does not exist (PCRs are numbered 0 to 23)"))),
        None => Ok(()),
    }
}

/// The roles each RPC of `keylime.agent.v1.Agent` admits: the one table enforced in front of
/// every handler (`kl_svc::api::Access`; and the API reference is generated from). Only the verifier and administrators
/// may ask an agent for evidence or hand it keys; NotifyRevocation also needs the caller's
/// address in `revocation_notification_ip`.
pub const RPC_ROLES: &[(&str, &[Role])] = &[
    ("GetInfo", CALLERS),
    ("GetQuote", CALLERS),
    ("DeliverKey", CALLERS),
    ("VerifyKey", CALLERS),
    ("NotifyRevocation", CALLERS),
];
const CALLERS: &[Role] = &[Role::Admin, Role::Verifier];

/// Seconds since the epoch at which the machine booted (`btime` in /proc/stat), 0 if unknown.
fn boot_time() -> i64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            stat.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// The IMA entries from `offset` (None when there is no measurement list) and, when a path is
/// given, the UEFI event log (empty when there is none). Blocking file reads.
fn read_logs(
    ima: &ImaLog,
    offset: u64,
    limit: u64,
    event_log: Option<&crate::eventlog::EventLog>,
) -> Result<(Option<ImaSlice>, Vec<u8>), Error> {
    let slice = if ima.available() {
        let slice = ima.read_from(offset, limit)?;
        if slice.restarted {
            tracing::info!(
                requested = offset,
                "IMA offset past the end of the measurement list (rebooted?): serving from 0"
            );
        }
        Some(slice)
    } else {
        None
    };
    let event_log = match event_log.map(crate::eventlog::EventLog::read) {
        None => Vec::new(),
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "no UEFI event log");
            Vec::new()
        }
    };
    Ok((slice, event_log))
}

impl AgentService {
    async fn quote(&self, req: pb::GetQuoteRequest) -> Result<pb::GetQuoteResponse, Error> {
        check_nonce(&req.nonce)?;
        let bank = requested_bank(req.hash_algorithm, self.default_bank)?;
        if !self.pcr_banks.contains(&bank) {
            return Err(Error::InvalidArgument {
                field: "hash_algorithm",
                reason: format!(
                    "{} is not a bank this agent quotes (tpm_hash_alg = {})",
                    bank.name(),
                    self.default_bank.name()
                ),
            });
        }
        check_pcrs(&req.pcrs)?;

        let extra_data = qualifying_data(&req.nonce, &self.identity_spki);
        let tpm = self.tpm.clone();
        let pcrs = req.pcrs.clone();
        let quote =
            tokio::task::spawn_blocking(move || tpm.quote(extra_data.as_bytes(), bank, &pcrs))
                .await
                .map_err(|e| Error::Internal(format!("quote task: {e}")))??;

        // The log is read after the quote, so it holds at least every entry PCR 10 covers.
        let limit = match u64::from(req.max_ima_entries) {
            0 => self.ima_limit,
            asked => asked.min(self.ima_limit),
        };
        let (ima_log, event_log) = (self.ima.clone(), self.event_log.clone());
        let (offset, include_event_log) = (req.ima_offset, req.include_event_log);
        let (ima, event_log) = tokio::task::spawn_blocking(move || {
            read_logs(&ima_log, offset, limit, include_event_log.then_some(&*event_log))
        })
        .await
        .map_err(|e| Error::Internal(format!("log reading task: {e}")))??;

        Ok(pb::GetQuoteResponse {
            attest: quote.attest,
            signature: quote.signature,
            hash_algorithm: proto_hash(quote.bank).into(),
            pcr_values: quote
                .pcr_values
                .into_iter()
                .map(|v| pb::PcrValue { index: v.index, value: v.value.as_bytes().to_vec() })
                .collect(),
            ima_log_missing: ima.is_none(),
            ima_offset: ima.as_ref().map_or(0, |s| s.offset),
            ima_entry_count: ima.as_ref().map_or(0, |s| s.count),
            ima_more: ima.as_ref().is_some_and(|s| s.more),
            ima_entries: ima.map(|s| s.entries).unwrap_or_default(),
            event_log,
            boot_time: boot_time(),
        })
    }
}

impl AgentService {
    async fn rpc_get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let tpm = self.tpm.clone();
        let ak = tokio::task::spawn_blocking(move || tpm.ak())
            .await
            .map_err(|e| Status::internal(format!("AK task: {e}")))?
            .map_err(Error::from)?;
        let signing = match self.ak_alg {
            KeyAlg::Rsa2048 => pb::SigningAlgorithm::Rsassa,
            KeyAlg::EccP256 => pb::SigningAlgorithm::Ecdsa,
        };
        Ok(Response::new(pb::GetInfoResponse {
            agent_id: self.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ak_public: ak.public,
            hash_algorithm: proto_hash(self.default_bank).into(),
            signing_algorithm: signing.into(),
            pcr_banks: self.pcr_banks.iter().map(|b| proto_hash(*b).into()).collect(),
            ima_available: self.ima.available(),
            event_log_available: self.event_log.available(),
            payload_installed: false,
        }))
    }

    async fn rpc_get_quote(
        &self,
        request: Request<pb::GetQuoteRequest>,
    ) -> Result<Response<pb::GetQuoteResponse>, Status> {
        match self.quote(request.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => {
                tracing::warn!(error = %e, "GetQuote failed");
                Err(e.into())
            }
        }
    }

    async fn rpc_deliver_key(
        &self,
        request: Request<pb::DeliverKeyRequest>,
    ) -> Result<Response<pb::DeliverKeyResponse>, Status> {
        match self.payload.deliver(request.into_inner()).await {
            Ok(key_derived) => Ok(Response::new(pb::DeliverKeyResponse { key_derived })),
            Err(e) => {
                tracing::warn!(error = %e, "DeliverKey refused");
                Err(e.into())
            }
        }
    }

    async fn rpc_verify_key(
        &self,
        request: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        let hmac = self.payload.verify(&request.into_inner().challenge)?;
        Ok(Response::new(pb::VerifyKeyResponse { hmac }))
    }

    async fn rpc_notify_revocation(
        &self,
        request: Request<pb::NotifyRevocationRequest>,
    ) -> Result<Response<pb::NotifyRevocationResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let from_a_verifier = match peer {
            Some(ip) => self.notice_senders.accepts(ip).await,
            None => false,
        };
        if !from_a_verifier {
            let peer = peer.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
            let message = format!(
                "revocation notice from {peer} refused: not a verifier address in \
                 revocation_notification_ip ({})",
                self.notice_senders.describe()
            );
            tracing::warn!("{message}");
            return Err(Status::permission_denied(message));
        }
        let request = request.into_inner();
        let signed = kl_svc::notice::SignedNotice {
            notice: request.notice,
            signature: request.signature,
            signer_certificate: request.signer_certificate,
        };
        if let Err(e) = kl_svc::notice::verify_notice(&signed, &self.trusted_ca) {
            tracing::warn!(error = %e, "revocation notice refused");
            return Err(Status::permission_denied(format!("revocation notice refused: {e}")));
        }
        tracing::warn!(notice = %String::from_utf8_lossy(&signed.notice), "revocation notice received");
        let actions_run = self
            .revocation
            .run(&signed.notice)
            .await
            .map_err(|e| Status::internal(format!("running revocation actions: {e}")))?;
        Ok(Response::new(pb::NotifyRevocationResponse { actions_run }))
    }
}

#[tonic::async_trait]
impl AgentRpc for AgentService {
    async fn get_info(
        &self,
        request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let result = self.rpc_get_info(request).await.map(Response::into_inner);
        kl_svc::metrics::counted(&self.calls, "GetInfo", result)
    }

    async fn get_quote(
        &self,
        request: Request<pb::GetQuoteRequest>,
    ) -> Result<Response<pb::GetQuoteResponse>, Status> {
        let result = self.rpc_get_quote(request).await.map(Response::into_inner);
        kl_svc::metrics::counted(&self.calls, "GetQuote", result)
    }

    async fn deliver_key(
        &self,
        request: Request<pb::DeliverKeyRequest>,
    ) -> Result<Response<pb::DeliverKeyResponse>, Status> {
        let result = self.rpc_deliver_key(request).await.map(Response::into_inner);
        kl_svc::metrics::counted(&self.calls, "DeliverKey", result)
    }

    async fn verify_key(
        &self,
        request: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        let result = self.rpc_verify_key(request).await.map(Response::into_inner);
        kl_svc::metrics::counted(&self.calls, "VerifyKey", result)
    }

    async fn notify_revocation(
        &self,
        request: Request<pb::NotifyRevocationRequest>,
    ) -> Result<Response<pb::NotifyRevocationResponse>, Status> {
        let result = self.rpc_notify_revocation(request).await.map(Response::into_inner);
        kl_svc::metrics::counted(&self.calls, "NotifyRevocation", result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checks_name_the_field() {
        let msg = |e: Error| Status::from(e).message().to_owned();
        assert!(msg(check_nonce(&[0; 8]).expect_err("short nonce")).starts_with("nonce: 8 bytes"));
        assert!(check_nonce(&[0; 33]).is_err());
        assert!(check_nonce(&[0; 16]).is_ok() && check_nonce(&[0; 32]).is_ok());
        assert!(msg(check_pcrs(&[0, 24]).expect_err("PCR 24")).starts_with("pcrs: PCR 24"));
        assert!(msg(check_pcrs(&[]).expect_err("no PCR")).starts_with("pcrs: "));
        assert!(check_pcrs(&[0, 10, 23]).is_ok());
        assert_eq!(requested_bank(0, HashAlg::Sha256).ok(), Some(HashAlg::Sha256));
        assert_eq!(requested_bank(3, HashAlg::Sha256).ok(), Some(HashAlg::Sha384));
        let bad = requested_bank(99, HashAlg::Sha256).expect_err("unknown bank");
        assert!(msg(bad).starts_with("hash_algorithm: 99"));
    }
}
