//! One attestation round: evidence + an agent's policies + the state of the previous round ->
//! a verdict and the next state. This is the function the verifier runs on every quote and
//! `kctl policies test` runs offline.
//!
//! Order: the quote first (signature, algorithms, qualifying data, PCR selection and digest,
//! clock). A quote that fails ends the round: nothing it claims is believed, so PCR values,
//! IMA and the event log are not looked at and the state does not advance. Then the PCR
//! policy, IMA (incremental, against the quoted PCR 10) and measured boot (the event log
//! replayed against the quoted PCRs; re-evaluated only when the log or those PCRs changed).
//! Each supplied policy must show up in the verdict's `checked` list, or the round fails with
//! `coverage.not_enforced`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alg::{Digest, HashAlg};
use crate::eventlog::EventLog;
use crate::ima::{self, ImaOptions, ImaState, VerificationKeys};
use crate::policy::mb::MbPolicy;
use crate::policy::{PcrPolicy, RuntimePolicy};
use crate::quote::{self, AcceptedAlgorithms, PreparedAk, QuoteEvidence, QuoteRequest};
use crate::tpm2::{ClockInfo, PcrSet, PcrValues};
use crate::verdict::{Finding, Verdict, rule};

/// A runtime policy with the signature keys it names, both parsed once and shared by every
/// agent that uses the policy.
#[derive(Debug)]
pub struct RuntimeRules {
    pub policy: RuntimePolicy,
    pub keys: VerificationKeys,
}

impl RuntimeRules {
    /// Parses the policy's signing keys.
    pub fn new(policy: RuntimePolicy) -> Result<RuntimeRules, crate::key::KeyError> {
        let mut keys = VerificationKeys::new();
        for der in policy.signing_keys() {
            keys.add(der)?;
        }
        Ok(RuntimeRules { policy, keys })
    }
}

/// A measured-boot policy with its content digest, parsed once and shared.
#[derive(Debug)]
pub struct MeasuredBootRules {
    pub policy: MbPolicy,
    /// SHA-256 of the policy's JSON, lowercase hex: which policy produced a cached verdict.
    pub digest: String,
}

impl MeasuredBootRules {
    pub fn new(policy: MbPolicy) -> MeasuredBootRules {
        let json = serde_json::to_vec(&policy).unwrap_or_default();
        let digest = HashAlg::Sha256.digest(&json).to_hex();
        MeasuredBootRules { policy, digest }
    }
}

/// What an agent is appraised against. Policies are `Arc`s: many agents share one.
#[derive(Debug, Clone)]
pub struct AgentPolicy {
    /// The agent's AK, parsed once at enrolment.
    pub ak: Arc<PreparedAk>,
    /// DER SubjectPublicKeyInfo of the agent's identity (TLS) key, bound into every quote.
    pub identity_spki: Arc<[u8]>,
    pub algorithms: AcceptedAlgorithms,
    /// The PCR bank to quote.
    pub bank: HashAlg,
    pub pcr_policy: Option<Arc<PcrPolicy>>,
    pub runtime: Option<Arc<RuntimeRules>>,
    pub measured_boot: Option<Arc<MeasuredBootRules>>,
}

impl AgentPolicy {
    /// The PCRs to ask the agent to quote: those of the PCR policy, 10 for IMA, and those the
    /// measured-boot policy covers.
    pub fn pcrs(&self) -> PcrSet {
        let mut set = self.pcr_policy.as_ref().map(|p| p.pcrs()).unwrap_or_default();
        if self.runtime.is_some() {
            set.insert(ima::IMA_PCR);
        }
        if let Some(mb) = &self.measured_boot {
            for &pcr in &mb.policy.pcrs {
                set.insert(pcr);
            }
        }
        if set.is_empty() {
            // A quote over nothing would prove only that the TPM is alive; quote PCR 0 at least.
            set.insert(0);
        }
        set
    }

    /// The first PCR the PCR policy pins that another policy of the agent owns, with its owner.
    /// Such a PCR moves with what the other policy allows (every new IMA measurement extends
    /// PCR 10; the event log is replayed into the measured-boot PCRs), so a fixed value for it
    /// fails sooner or later; Keylime refuses the combination at enrolment, and so does the
    /// verifier.
    pub fn pcr_policy_overlap(&self) -> Option<(u32, PcrOwner)> {
        let pinned = self.pcr_policy.as_ref()?.pcrs();
        if let Some(mb) = &self.measured_boot
            && let Some(&pcr) = mb.policy.pcrs.iter().filter(|&&p| pinned.contains(p)).min()
        {
            return Some((pcr, PcrOwner::MeasuredBoot));
        }
        if self.runtime.is_some() && pinned.contains(ima::IMA_PCR) {
            return Some((ima::IMA_PCR, PcrOwner::RuntimePolicy));
        }
        None
    }

    /// The qualifying data the agent must quote with for `nonce`.
    pub fn qualifying_data(&self, nonce: &[u8]) -> Digest {
        quote::qualifying_data(nonce, &self.identity_spki)
    }
}

/// The policy that owns a PCR, when a PCR policy pins it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrOwner {
    /// The measured-boot policy replays the event log into it.
    MeasuredBoot,
    /// The runtime policy appraises the IMA log extended into it (PCR 10).
    RuntimePolicy,
}

impl std::fmt::Display for PcrOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PcrOwner::MeasuredBoot => "the measured-boot policy",
            PcrOwner::RuntimePolicy => "the runtime policy (IMA)",
        })
    }
}

/// One round's evidence, as the agent sent it.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The verifier's fresh nonce for this round.
    pub nonce: &'a [u8],
    pub attest: &'a [u8],
    pub signature: &'a [u8],
    pub pcrs: &'a PcrValues,
    /// Index of the first IMA entry in `ima_entries`.
    pub ima_offset: u64,
    pub ima_entries: &'a [u8],
    /// The agent said it has no IMA measurement list (IMA off, or its file unreadable): a
    /// runtime policy then fails, as an empty log would otherwise replay to an unused PCR 10.
    pub ima_log_missing: bool,
    /// The UEFI event log, when one was sent.
    pub event_log: Option<&'a [u8]>,
}

/// What is carried from one round to the next, per agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttestationState {
    /// The clock of the last accepted quote.
    pub clock: Option<ClockInfo>,
    /// IMA replay progress in the current boot.
    pub ima: ImaState,
    /// SHA-256 of the last evaluated event log and of the quoted PCRs it was checked against,
    /// with the outcome, so an unchanged log is not evaluated again.
    pub measured_boot: Option<MeasuredBootCache>,
    /// Content digest of the runtime policy the IMA progress was made under.
    #[serde(default)]
    pub runtime_policy: Option<String>,
    /// Digest of the measured-boot policy the cached verdict was made under.
    #[serde(default)]
    pub measured_boot_policy: Option<String>,
}

impl AttestationState {
    /// The state to continue from under `policy`. Progress made under another runtime policy
    /// (IMA entries accepted, keys learned) and a measured-boot verdict made under another
    /// measured-boot policy are dropped, so that a stricter policy checks everything again:
    /// the next round asks the agent for its IMA log from entry 0.
    ///
    /// Borrowed when nothing is dropped, which is every round but the first under a policy.
    pub fn under(&self, policy: &AgentPolicy) -> std::borrow::Cow<'_, AttestationState> {
        let runtime = policy.runtime.as_ref().map(|r| r.policy.content_digest());
        let same_runtime = match (&self.runtime_policy, &runtime) {
            (Some(hex), Some(digest)) => is_hex_of(hex, digest),
            (None, None) => true,
            _ => false,
        };
        let mb = policy.measured_boot.as_ref().map(|m| m.digest.as_str());
        let same_mb = self.measured_boot_policy.as_deref() == mb;
        if same_runtime && same_mb {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut state = self.clone();
        if !same_runtime {
            state.ima = ImaState::default();
            state.runtime_policy = runtime.map(hex::encode);
        }
        if !same_mb {
            state.measured_boot = None;
            state.measured_boot_policy = mb.map(str::to_owned);
        }
        std::borrow::Cow::Owned(state)
    }
}

/// Whether `hex` is the lowercase hex form of `digest`.
fn is_hex_of(hex: &str, digest: &[u8]) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    hex.len() == 2 * digest.len()
        && hex.as_bytes().chunks(2).zip(digest).all(|(pair, byte)| {
            pair[0] == DIGITS[usize::from(byte >> 4)] && pair[1] == DIGITS[usize::from(byte & 15)]
        })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredBootCache {
    pub input_digest: String,
    pub verdict: Verdict,
}

/// The outcome of one round.
#[derive(Debug, Clone)]
pub struct Appraisal {
    pub verdict: Verdict,
    /// The state for the next round. When the verdict fails, the prior state is kept except
    /// where a reboot reset it.
    pub state: AttestationState,
    /// The quote's clock info, when the quote parsed.
    pub clock: Option<ClockInfo>,
    /// The reset count grew: the machine rebooted since the previous round.
    pub rebooted: bool,
    /// IMA entries read in this round.
    pub ima_entries: u64,
    /// Where the next round's IMA entries start.
    pub next_ima_offset: u64,
}

/// Appraises one round. Never fails: unreadable evidence is a failed verdict too.
///
/// `prior` is taken [`AttestationState::under`] `policy`; a caller that asks the agent for IMA
/// entries must compute the offset from that same state, or the round fails with `ima.offset`.
pub fn appraise(
    evidence: &Evidence<'_>,
    policy: &AgentPolicy,
    prior: &AttestationState,
) -> Appraisal {
    let prior: &AttestationState = &prior.under(policy);
    let qualifying = policy.qualifying_data(evidence.nonce);
    let request = QuoteRequest {
        qualifying_data: qualifying.as_bytes(),
        bank: policy.bank,
        pcrs: policy.pcrs(),
        algorithms: &policy.algorithms,
    };
    let quote_evidence = QuoteEvidence {
        attest: evidence.attest,
        signature: evidence.signature,
        pcrs: evidence.pcrs,
    };
    let outcome = quote::verify_quote(&policy.ak, &request, &quote_evidence, prior.clock.as_ref());
    let clock = outcome.facts.as_ref().map(|f| f.attest.clock_info);
    let mut verdict = outcome.verdict;
    if !verdict.passed() {
        return Appraisal {
            verdict,
            state: prior.clone(),
            clock,
            rebooted: false,
            ima_entries: 0,
            next_ima_offset: prior.ima.entries_processed,
        };
    }
    // The IMA state is replaced below: it is not copied from `prior` (a copy per round of its
    // PCR map), only read from there.
    let mut state = AttestationState {
        clock: outcome.next_clock,
        ima: ImaState::default(),
        measured_boot: if outcome.rebooted { None } else { prior.measured_boot.clone() },
        runtime_policy: prior.runtime_policy.clone(),
        measured_boot_policy: prior.measured_boot_policy.clone(),
    };
    let ima_base = if outcome.rebooted { &ImaState::default() } else { &prior.ima };

    if let Some(pcr_policy) = &policy.pcr_policy {
        verdict.merge(pcr_policy.evaluate(evidence.pcrs));
    }

    let mut ima_entries = 0;
    if let Some(rules) = &policy.runtime {
        let (v, next, read) = appraise_ima(evidence, policy, rules, ima_base, outcome.rebooted);
        verdict.merge(v);
        state.ima = next;
        ima_entries = read;
    } else {
        state.ima = ima_base.clone();
    }

    if let Some(mb) = &policy.measured_boot {
        let (v, cache) = appraise_measured_boot(evidence, &mb.policy, state.measured_boot.as_ref());
        verdict.merge(v);
        state.measured_boot = cache;
    }

    let supplied = [
        Some("quote"),
        policy.pcr_policy.is_some().then_some("pcrs"),
        policy.runtime.is_some().then_some("ima"),
        policy.measured_boot.is_some().then_some("measured_boot"),
    ];
    let mut inputs = [""; 4];
    let mut n = 0;
    for input in supplied.into_iter().flatten() {
        inputs[n] = input;
        n += 1;
    }
    verdict.require_coverage(&inputs[..n]);

    if !verdict.passed() {
        // Keep the quote's clock (it was genuine) but do not advance IMA past entries that
        // failed: the next round re-reads them unless the operator changes the policy.
        state.ima = if outcome.rebooted { ImaState::default() } else { prior.ima.clone() };
    }
    let next_ima_offset = state.ima.entries_processed;
    Appraisal { verdict, state, clock, rebooted: outcome.rebooted, ima_entries, next_ima_offset }
}

fn appraise_ima(
    evidence: &Evidence<'_>,
    policy: &AgentPolicy,
    rules: &RuntimeRules,
    prior: &ImaState,
    rebooted: bool,
) -> (Verdict, ImaState, u64) {
    let mut verdict = Verdict::default();
    // Enforced even when it fails early: the findings say why.
    verdict.checked("ima");
    if evidence.ima_log_missing {
        verdict.push(Finding::new(
            rule::IMA_LOG_MISSING,
            "a runtime policy applies but the agent has no IMA measurement list (is IMA enabled, \
             and is the agent's ima_ml_path readable?)",
        ));
        return (verdict, prior.clone(), 0);
    }
    let Some(quoted) = evidence.pcrs.get(ima::IMA_PCR) else {
        verdict.push(
            Finding::new(rule::PCR_MISSING, "PCR 10 was not quoted, so IMA cannot be checked")
                .pcr(ima::IMA_PCR),
        );
        return (verdict, prior.clone(), 0);
    };
    // IMA extends PCR 10 with boot_aggregate at boot: a PCR 10 never extended means IMA is not
    // running, whatever the agent says about its log.
    if quoted.as_bytes().iter().all(|&b| b == 0) {
        verdict.push(
            Finding::new(
                rule::IMA_LOG_MISSING,
                "a runtime policy applies but PCR 10 was never extended: IMA is not measuring \
                 on this machine",
            )
            .pcr(ima::IMA_PCR),
        );
        return (verdict, prior.clone(), 0);
    }
    // The agent serves from the requested offset, or from 0 when its log is shorter (a reboot).
    let default = ImaState::default();
    let start = if evidence.ima_offset == prior.entries_processed {
        prior
    } else if evidence.ima_offset == 0 && rebooted {
        &default
    } else {
        verdict.push(
            Finding::new(
                rule::IMA_OFFSET,
                format!(
                    "the agent sent IMA entries from {} but {} were expected (the log shrank without a reboot)",
                    evidence.ima_offset, prior.entries_processed
                ),
            )
            .expected(prior.entries_processed)
            .actual(evidence.ima_offset),
        );
        return (verdict, prior.clone(), 0);
    };
    let options = ImaOptions {
        bank: policy.bank,
        log_hash_alg: rules.policy.log_hash_alg(),
        ..ImaOptions::default()
    };
    match ima::appraise_log(
        evidence.ima_entries,
        &rules.policy,
        &rules.keys,
        start,
        &options,
        quoted,
    ) {
        Ok(result) => (result.verdict, result.state, result.entries),
        Err(e) => {
            verdict.push(Finding::new(
                rule::IMA_MALFORMED,
                format!("the IMA log could not be read: {e}"),
            ));
            (verdict, prior.clone(), 0)
        }
    }
}

fn appraise_measured_boot(
    evidence: &Evidence<'_>,
    policy: &MbPolicy,
    cache: Option<&MeasuredBootCache>,
) -> (Verdict, Option<MeasuredBootCache>) {
    let Some(log_bytes) = evidence.event_log else {
        let mut v = Verdict::default();
        v.checked("measured_boot");
        v.push(Finding::new(
            rule::MB_EVENT_LOG_MISSING,
            "a measured-boot policy applies but no event log was sent",
        ));
        return (v, cache.cloned());
    };
    // The quoted values of the policy's PCRs, in the policy's bank.
    let mut quoted = BTreeMap::new();
    if evidence.pcrs.bank() == policy.hash_alg {
        for &pcr in &policy.pcrs {
            if let Some(d) = evidence.pcrs.get(pcr) {
                quoted.insert(pcr, *d);
            }
        }
    }
    let mut h = HashAlg::Sha256.hasher();
    h.update(&(log_bytes.len() as u64).to_le_bytes());
    h.update(log_bytes);
    for (pcr, d) in &quoted {
        h.update(&pcr.to_le_bytes());
        h.update(d.as_bytes());
    }
    let input_digest = h.finish().to_hex();
    if let Some(c) = cache.filter(|c| c.input_digest == input_digest) {
        return (c.verdict.clone(), Some(c.clone()));
    }
    let verdict = match EventLog::parse_for_banks(log_bytes, &[policy.hash_alg]) {
        Ok(log) => {
            if evidence.pcrs.bank() != policy.hash_alg {
                let mut v = Verdict::default();
                v.checked("measured_boot");
                v.push(
                    Finding::new(
                        rule::MB_BANK_MISSING,
                        format!(
                            "the measured-boot policy is for the {} bank but the quote is over {}",
                            policy.hash_alg,
                            evidence.pcrs.bank()
                        ),
                    )
                    .expected(policy.hash_alg.name())
                    .actual(evidence.pcrs.bank().name()),
                );
                v
            } else {
                crate::policy::mb::evaluate(&log, policy, Some(&quoted))
            }
        }
        Err(e) => {
            let mut v = Verdict::default();
            v.checked("measured_boot");
            v.push(Finding::new(
                rule::MB_EVENT_LOG_MALFORMED,
                format!("the event log could not be read: {e}"),
            ));
            v
        }
    };
    let cache = MeasuredBootCache { input_digest, verdict: verdict.clone() };
    (verdict, Some(cache))
}
