//! End-to-end tests: the daemons as shipped binaries, each test with its own swtpm,
//! deployment CA and state directories.
//!
//! `agent` needs only the agent; `registration` runs the registrar too.

mod access;
mod agent;
mod ansible;
mod ansible_roles;
mod api;
mod attestation;
mod config;
mod events;
mod exit_codes;
mod install;
mod kctl;
mod migration;
mod operations;
mod postgres;
mod reference;
mod registration;
mod replicas;
mod store_postgres;
mod terraform;

use std::time::{Duration, Instant};

use kl_core::alg::{Digest, HashAlg};
use kl_core::quote::{
    AcceptedAlgorithms, PreparedAk, QuoteEvidence, QuoteOutcome, QuoteRequest, qualifying_data,
    verify_quote,
};
use kl_core::tpm2::{PcrSet, PcrValues, Public};
use kl_proto::agent::v1::agent_client::AgentClient;
use kl_proto::agent::v1::{GetQuoteRequest, GetQuoteResponse, HashAlgorithm};
use kl_tests::deployment::{AgentSettings, Deployment};
use kl_tests::swtpm::Swtpm;
use kl_tests::{Result, err};
use tonic::transport::Channel;

/// Generous deadline for outcomes that take a few seconds (registration with retries).
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(60);
/// PCRs the tests quote: the boot PCRs and IMA's.
const QUOTED_PCRS: [u32; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// A private TPM and a deployment; `None` when swtpm is not installed (and `CI` is unset).
fn tpm_and_deployment() -> Result<Option<(Swtpm, Deployment)>> {
    let Some(tpm) = Swtpm::manufacture()? else {
        return Ok(None);
    };
    Ok(Some((tpm, Deployment::new()?)))
}

/// Settings of an agent on `tpm` that registers at `registrar_port`.
fn agent_settings(tpm: &Swtpm, registrar_port: u16) -> AgentSettings {
    AgentSettings {
        uuid: "generate".to_owned(),
        tcti: tpm.tcti(),
        registrar_port,
        extra: toml::Table::new(),
    }
}

/// A fresh nonce (uniqueness is what matters here, not unpredictability).
fn nonce() -> Vec<u8> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{:?} {} {n}", Instant::now(), std::process::id());
    HashAlg::Sha256.digest(seed.as_bytes()).as_bytes().to_vec()
}

fn quote_request(nonce: &[u8], ima_offset: u64, max_ima_entries: u32) -> GetQuoteRequest {
    GetQuoteRequest {
        nonce: nonce.to_vec(),
        hash_algorithm: HashAlgorithm::Sha256.into(),
        pcrs: QUOTED_PCRS.to_vec(),
        ima_offset,
        max_ima_entries,
        include_event_log: false,
    }
}

async fn get_quote(
    client: &mut AgentClient<Channel>,
    nonce: &[u8],
    ima_offset: u64,
) -> Result<GetQuoteResponse> {
    Ok(client.get_quote(quote_request(nonce, ima_offset, 0)).await?.into_inner())
}

/// DER SubjectPublicKeyInfo of a certificate.
fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// Checks a quote as the verifier does: AK signature, qualifying data bound to `nonce` and the
/// agent's identity certificate, PCR selection and digest.
fn verify(
    reply: &GetQuoteResponse,
    ak_public: &[u8],
    agent_cert: &[u8],
    nonce: &[u8],
) -> Result<(QuoteOutcome, PcrValues)> {
    let ak = PreparedAk::new(Public::parse(ak_public)?)?;
    let mut values = PcrValues::new(HashAlg::Sha256);
    for v in &reply.pcr_values {
        let digest = Digest::from_bytes(HashAlg::Sha256, &v.value)
            .ok_or_else(|| err(format!("PCR {} value has {} bytes", v.index, v.value.len())))?;
        values.insert(v.index, digest)?;
    }
    let qualifying = qualifying_data(nonce, &spki_of(agent_cert)?);
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: qualifying.as_bytes(),
        bank: HashAlg::Sha256,
        pcrs: PcrSet::from_indices(QUOTED_PCRS).ok_or_else(|| err("PCR set"))?,
        algorithms: &algorithms,
    };
    let evidence =
        QuoteEvidence { attest: &reply.attest, signature: &reply.signature, pcrs: &values };
    Ok((verify_quote(&ak, &request, &evidence, None), values))
}
