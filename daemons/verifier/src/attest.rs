//! One attestation round against one agent: a fresh nonce, GetQuote (continued while the agent
//! says more IMA entries remain), then `kl_core::appraisal::appraise`: on the round's own task
//! when the evidence is small, on a blocking thread otherwise.
//!
//! Continuation: when a reply has `ima_more`, the verifier asks again with the same nonce from
//! the next offset, up to [`MAX_CHUNKS`] requests. The round's evidence is the last reply's
//! quote and PCR values with the IMA entries of all replies concatenated, so the quote that is
//! appraised was made after every entry was read. A round whose agent does not answer is
//! [`RoundOutcome::Unreachable`]; an agent that answers with an error, or with evidence that
//! does not hold together, fails the round. Each GetQuote, reply body included, must finish
//! within the request timeout, or the agent counts as not answering.

use std::time::{Duration, Instant};

use kl_core::alg::{Digest, HashAlg};
use kl_core::appraisal::{self, AgentPolicy, Appraisal, AttestationState, Evidence};
use kl_core::tpm2::PcrValues;
use kl_core::verdict::{Finding, Verdict, rule};
use kl_proto::agent::v1 as agent_pb;
use kl_proto::agent::v1::agent_client::AgentClient;
use rand::RngExt;

use crate::channel::{AgentChannel, is_transport};

/// Most GetQuote requests in one round.
pub(crate) const MAX_CHUNKS: usize = 64;
/// Nonce length (the agent accepts 16 to 32 bytes).
pub(crate) const NONCE_LEN: usize = 32;
/// Evidence up to this size is appraised on the round's own task.
const INLINE_EVIDENCE_BYTES: usize = 64 << 10;

/// How a round ended.
#[derive(Debug)]
pub(crate) enum RoundOutcome {
    /// The agent could not be reached (connection, timeout, TPM unavailable).
    Unreachable(String),
    /// The evidence was appraised (or the agent's answer failed the round).
    Appraised(Box<Appraisal>, Duration),
}

pub(crate) fn hash_alg_proto(alg: HashAlg) -> agent_pb::HashAlgorithm {
    match alg {
        HashAlg::Sha1 => agent_pb::HashAlgorithm::Sha1,
        HashAlg::Sha256 => agent_pb::HashAlgorithm::Sha256,
        HashAlg::Sha384 => agent_pb::HashAlgorithm::Sha384,
        HashAlg::Sha512 => agent_pb::HashAlgorithm::Sha512,
    }
}

fn hash_alg_from_proto(value: i32) -> Option<HashAlg> {
    match agent_pb::HashAlgorithm::try_from(value).ok()? {
        agent_pb::HashAlgorithm::Sha1 => Some(HashAlg::Sha1),
        agent_pb::HashAlgorithm::Sha256 => Some(HashAlg::Sha256),
        agent_pb::HashAlgorithm::Sha384 => Some(HashAlg::Sha384),
        agent_pb::HashAlgorithm::Sha512 => Some(HashAlg::Sha512),
        agent_pb::HashAlgorithm::Unspecified => None,
    }
}

fn failed(prior: &AttestationState, finding: Finding, started: Instant) -> RoundOutcome {
    let mut verdict = Verdict::default();
    verdict.checked("quote");
    verdict.push(finding);
    let appraisal = Appraisal {
        verdict,
        state: prior.clone(),
        clock: None,
        rebooted: false,
        ima_entries: 0,
        next_ima_offset: prior.ima.entries_processed,
    };
    RoundOutcome::Appraised(Box::new(appraisal), started.elapsed())
}

/// Whether a (not yet verified) quote reports another TPM reset count than the last
/// accepted one.
fn rebooted_since(prior: &AttestationState, attest: &[u8]) -> bool {
    match (prior.clock, kl_core::tpm2::Attest::parse(attest)) {
        (Some(clock), Ok(attest)) => attest.clock_info.reset_count != clock.reset_count,
        _ => false,
    }
}

/// Runs one round.
pub(crate) async fn round(
    client: &mut AgentClient<AgentChannel>,
    policy: &AgentPolicy,
    prior: &AttestationState,
    timeout: Duration,
) -> RoundOutcome {
    let started = Instant::now();
    // Progress made under another policy does not count: a changed policy re-reads the log.
    let prior: &AttestationState = &prior.under(policy);
    let nonce: [u8; NONCE_LEN] = rand::rng().random();
    let mut request = agent_pb::GetQuoteRequest {
        nonce: nonce.to_vec(),
        hash_algorithm: hash_alg_proto(policy.bank) as i32,
        pcrs: policy.pcrs().iter().collect(),
        ima_offset: prior.ima.entries_processed,
        max_ima_entries: 0,
        include_event_log: policy.measured_boot.is_some(),
    };
    let mut ima_entries = Vec::new();
    let mut first_offset = None;
    let mut last = None;
    let mut replayed_from_zero = false;
    for _ in 0..MAX_CHUNKS {
        let call = tokio::time::timeout(timeout, client.get_quote(request.clone())).await;
        let Ok(call) = call else {
            return RoundOutcome::Unreachable(format!("no complete answer within {timeout:?}"));
        };
        let reply = match call {
            Ok(reply) => reply.into_inner(),
            Err(status) if is_transport(&status) => {
                return RoundOutcome::Unreachable(format!(
                    "{}: {}",
                    status.code(),
                    status.message()
                ));
            }
            Err(status) => {
                let finding = Finding::new(
                    rule::AGENT_ERROR,
                    format!("the agent refused GetQuote: {}: {}", status.code(), status.message()),
                );
                return failed(prior, finding, started);
            }
        };
        // A reboot the agent could not notice (the new boot's log is already longer than the
        // offset asked for): the quote's reset count tells. Ask again from entry 0, once; the
        // quote is checked, as always, when the round is appraised.
        if first_offset.is_none()
            && reply.ima_offset != 0
            && !replayed_from_zero
            && rebooted_since(prior, &reply.attest)
        {
            replayed_from_zero = true;
            request.ima_offset = 0;
            continue;
        }
        let offset = *first_offset.get_or_insert(reply.ima_offset);
        ima_entries.extend_from_slice(&reply.ima_entries);
        let more = reply.ima_more && reply.ima_entry_count > 0;
        request.ima_offset = reply.ima_offset + u64::from(reply.ima_entry_count);
        if request.ima_offset < offset {
            break;
        }
        last = Some(reply);
        if !more {
            break;
        }
    }
    let Some(reply) = last else {
        let finding = Finding::new(rule::AGENT_ERROR, "the agent sent no usable quote");
        return failed(prior, finding, started);
    };
    let Some(bank) = hash_alg_from_proto(reply.hash_algorithm) else {
        let finding = Finding::new(rule::QUOTE_MALFORMED, "the reply names no PCR bank");
        return failed(prior, finding, started);
    };
    let mut pcrs = PcrValues::new(bank);
    for value in &reply.pcr_values {
        let inserted = Digest::from_bytes(bank, &value.value)
            .ok_or_else(|| format!("PCR {} is not a {bank} digest", value.index))
            .and_then(|d| pcrs.insert(value.index, d).map_err(|e| e.to_string()));
        if let Err(e) = inserted {
            let finding = Finding::new(rule::QUOTE_MALFORMED, format!("PCR values: {e}"));
            return failed(prior, finding, started);
        }
    }
    let offset = first_offset.unwrap_or(0);
    let inline = ima_entries.len() + reply.event_log.len() <= INLINE_EVIDENCE_BYTES;
    let appraise = move |policy: &AgentPolicy, prior: &AttestationState| {
        let evidence = Evidence {
            nonce: &nonce,
            attest: &reply.attest,
            signature: &reply.signature,
            pcrs: &pcrs,
            ima_offset: offset,
            ima_entries: &ima_entries,
            ima_log_missing: reply.ima_log_missing,
            event_log: if reply.event_log.is_empty() { None } else { Some(&reply.event_log) },
        };
        appraisal::appraise(&evidence, policy, prior)
    };
    // A steady-state round (a quote and a few new entries) takes tens of microseconds: it runs
    // here, as handing it to another thread would cost about as much. Large evidence (a first
    // replay, an event log) goes to a blocking thread so it does not hold up other rounds.
    let appraised = if inline {
        // Evidence is untrusted: a panic in the appraisal fails this round, as it would on a
        // blocking thread, instead of ending the agent's loop.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| appraise(policy, prior)))
            .map_err(|_| "the appraisal panicked".to_owned())
    } else {
        let policy = policy.clone();
        let prior = prior.clone();
        tokio::task::spawn_blocking(move || appraise(&policy, &prior))
            .await
            .map_err(|e| e.to_string())
    };
    match appraised {
        Ok(appraisal) => RoundOutcome::Appraised(Box::new(appraisal), started.elapsed()),
        Err(e) => failed(
            prior,
            Finding::new(rule::VERIFIER_INTERNAL, format!("the appraisal did not finish: {e}")),
            started,
        ),
    }
}
