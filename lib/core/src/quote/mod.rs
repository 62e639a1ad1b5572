//! TPM quote verification and PCR policies.
//!
//! This module decides whether a quote is authentic and fresh: the `TPMT_SIGNATURE` verifies
//! over the `TPMS_ATTEST` with the agent's AK, the algorithms are acceptable, `extraData` is the
//! qualifying data the verifier asked for, the PCR selection is exactly the one requested, the
//! `pcrDigest` matches the PCR values supplied with the quote, and the TPM clock moved forward
//! since the last accepted quote. It also evaluates those (now attested) PCR values against a
//! [`crate::policy::PcrPolicy`].
//!
//! Everything that goes wrong with the evidence (malformed bytes, a wrong key type, a flipped
//! byte) is a finding in the returned [`Verdict`], never a pass and never an `Err`. Parsing of
//! the AK is the one fallible step, done once per agent with [`PreparedAk`].

mod ak;
mod clock;

pub use ak::{AkError, PreparedAk, SignatureError};

use serde_json::json;

use crate::alg::{Digest, HashAlg};
use crate::tpm2::{
    Attest, AttestBody, ClockInfo, PcrSelection, PcrSet, PcrValues, SigAlg, Signature,
};
use crate::verdict::{Finding, Verdict, rule};

/// The qualifying data an agent passes to TPM2_Quote: `SHA-256(nonce || SHA-256(SPKI))`, where
/// SPKI is the DER `SubjectPublicKeyInfo` of the agent's identity (TLS) key. It binds the quote
/// to the verifier's fresh nonce and to the key the verifier is talking to.
pub fn qualifying_data(nonce: &[u8], identity_spki_der: &[u8]) -> Digest {
    let identity = HashAlg::Sha256.digest(identity_spki_der);
    let mut h = HashAlg::Sha256.hasher();
    h.update(nonce);
    h.update(identity.as_bytes());
    h.finish()
}

/// The hash and signature algorithms a verifier accepts in quotes (Keylime's
/// `accept_tpm_hash_algs` and `accept_tpm_signing_algs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedAlgorithms {
    pub hash: Vec<HashAlg>,
    pub signing: Vec<SigAlg>,
}

impl Default for AcceptedAlgorithms {
    /// SHA-256, SHA-384, SHA-512; RSASSA, RSAPSS, ECDSA. SHA-1 is refused.
    fn default() -> AcceptedAlgorithms {
        AcceptedAlgorithms {
            hash: vec![HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512],
            signing: vec![SigAlg::RsaSsa, SigAlg::RsaPss, SigAlg::Ecdsa],
        }
    }
}

/// What the verifier asked the agent for.
#[derive(Debug, Clone, Copy)]
pub struct QuoteRequest<'a> {
    /// The expected `extraData`, usually [`qualifying_data`].
    pub qualifying_data: &'a [u8],
    /// The PCR bank that must be quoted.
    pub bank: HashAlg,
    /// The PCRs that must be quoted: no more, no fewer.
    pub pcrs: PcrSet,
    pub algorithms: &'a AcceptedAlgorithms,
}

/// What the agent answered.
#[derive(Debug, Clone, Copy)]
pub struct QuoteEvidence<'a> {
    /// The marshalled `TPMS_ATTEST`, exactly as signed.
    pub attest: &'a [u8],
    /// The marshalled `TPMT_SIGNATURE`.
    pub signature: &'a [u8],
    /// The PCR values the agent read alongside the quote.
    pub pcrs: &'a PcrValues,
}

/// What a parsed quote says, for the caller to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteFacts {
    pub attest: Attest,
    pub signature_alg: SigAlg,
    /// The signature's hash as a TPM_ALG_ID.
    pub signature_hash: u16,
}

/// The result of [`verify_quote`].
#[derive(Debug, Clone)]
pub struct QuoteOutcome {
    /// Passed only when every check passed.
    pub verdict: Verdict,
    /// The parsed quote, when both structures parsed.
    pub facts: Option<QuoteFacts>,
    /// The clock state to keep for the next quote: this quote's clock if the verdict passed,
    /// otherwise the prior state unchanged.
    pub next_clock: Option<ClockInfo>,
    /// The verdict passed and the reset count grew since the prior state: the machine
    /// rebooted, so incremental state (IMA offset, running PCR 10, event log) must start again
    /// from zero.
    pub rebooted: bool,
}

impl QuoteOutcome {
    fn failed(verdict: Verdict, prior: Option<&ClockInfo>) -> QuoteOutcome {
        QuoteOutcome { verdict, facts: None, next_clock: prior.copied(), rebooted: false }
    }
}

/// Verifies a quote against the AK, the request and the prior clock state.
pub fn verify_quote(
    ak: &PreparedAk,
    request: &QuoteRequest<'_>,
    evidence: &QuoteEvidence<'_>,
    prior: Option<&ClockInfo>,
) -> QuoteOutcome {
    let mut verdict = Verdict::default();
    verdict.checked("quote");
    let attest = match Attest::parse(evidence.attest) {
        Ok(a) => a,
        Err(e) => {
            verdict.push(Finding::new(rule::QUOTE_MALFORMED, e.to_string()));
            return QuoteOutcome::failed(verdict, prior);
        }
    };
    let signature = match Signature::parse(evidence.signature) {
        Ok(s) => s,
        Err(e) => {
            verdict.push(Finding::new(rule::QUOTE_MALFORMED, e.to_string()));
            return QuoteOutcome::failed(verdict, prior);
        }
    };

    check_algorithms(&attest, &signature, request.algorithms, &mut verdict);

    if let Err(e) = ak.verify(&signature, evidence.attest) {
        verdict.push(
            Finding::new(
                rule::QUOTE_SIGNATURE,
                format!("quote signature by the AK named {}: {e}", hex::encode(ak.name())),
            )
            .actual(format!("{} with hash {:#06x}", signature.alg, signature.hash_alg)),
        );
    }

    if attest.extra_data != request.qualifying_data {
        verdict.push(
            Finding::new(
                rule::QUOTE_NONCE,
                "the quote's extraData is not the requested qualifying data",
            )
            .expected(hex::encode(request.qualifying_data))
            .actual(hex::encode(&attest.extra_data)),
        );
    }

    match &attest.body {
        AttestBody::Quote { selection, pcr_digest } => {
            check_selection(selection, request, evidence.pcrs, &mut verdict);
            check_pcr_digest(selection, pcr_digest, &signature, evidence.pcrs, &mut verdict);
        }
        AttestBody::Certify { .. } => verdict.push(Finding::new(
            rule::QUOTE_MALFORMED,
            "TPMS_ATTEST.type at byte 4: a certification (0x8017), not a quote (0x8018)",
        )),
    }

    let rebooted = clock::check(prior, &attest.clock_info, &mut verdict);
    // Only an authentic, fresh quote may move the state forward or announce a reboot.
    let (next_clock, rebooted) = if verdict.passed() {
        (Some(attest.clock_info), rebooted)
    } else {
        (prior.copied(), false)
    };
    QuoteOutcome {
        facts: Some(QuoteFacts {
            attest,
            signature_alg: signature.alg,
            signature_hash: signature.hash_alg,
        }),
        verdict,
        next_clock,
        rebooted,
    }
}

fn check_algorithms(
    attest: &Attest,
    signature: &Signature,
    accepted: &AcceptedAlgorithms,
    verdict: &mut Verdict,
) {
    let hash_names = || json!(accepted.hash.iter().map(|h| h.name()).collect::<Vec<_>>());
    if !accepted.signing.contains(&signature.alg) {
        verdict.push(
            Finding::new(
                rule::QUOTE_ALGORITHM,
                format!("signing algorithm {} is not accepted", signature.alg),
            )
            .expected(json!(accepted.signing.iter().map(|a| a.name()).collect::<Vec<_>>()))
            .actual(signature.alg.name()),
        );
    }
    match signature.hash() {
        Some(h) if accepted.hash.contains(&h) => {}
        Some(h) => verdict.push(
            Finding::new(rule::QUOTE_ALGORITHM, format!("signature hash {h} is not accepted"))
                .expected(hash_names())
                .actual(h.name()),
        ),
        None => verdict.push(
            Finding::new(
                rule::QUOTE_ALGORITHM,
                format!("signature hash {:#06x} is not a supported algorithm", signature.hash_alg),
            )
            .expected(hash_names())
            .actual(format!("{:#06x}", signature.hash_alg)),
        ),
    }
    if let AttestBody::Quote { selection, .. } = &attest.body {
        for bank in selection.banks.iter().filter(|b| !b.pcrs.is_empty()) {
            match bank.bank() {
                Some(h) if accepted.hash.contains(&h) => {}
                other => verdict.push(
                    Finding::new(
                        rule::QUOTE_ALGORITHM,
                        format!(
                            "PCR bank {} is not accepted",
                            other.map_or_else(
                                || format!("{:#06x}", bank.hash_alg),
                                |h| h.name().to_owned()
                            )
                        ),
                    )
                    .expected(hash_names()),
                ),
            }
        }
    }
}

fn check_selection(
    selection: &PcrSelection,
    request: &QuoteRequest<'_>,
    supplied: &PcrValues,
    verdict: &mut Verdict,
) {
    let requested = request.bank.tpm_alg_id();
    let mut quoted = PcrSet::default();
    for bank in selection.banks.iter().filter(|b| !b.pcrs.is_empty()) {
        if bank.hash_alg == requested {
            quoted = PcrSet(quoted.0 | bank.pcrs.0);
        } else {
            verdict.push(
                Finding::new(
                    rule::QUOTE_SELECTION,
                    format!(
                        "the quote selects PCRs {} of bank {:#06x}, which was not requested",
                        bank.pcrs, bank.hash_alg
                    ),
                )
                .expected(request.bank.name())
                .actual(format!("{:#06x}", bank.hash_alg)),
            );
        }
    }
    if quoted != request.pcrs {
        let missing = request.pcrs.difference(quoted);
        let extra = quoted.difference(request.pcrs);
        verdict.push(
            Finding::new(
                rule::QUOTE_SELECTION,
                format!(
                    "the quote selects {} PCRs [{quoted}], requested [{}] (missing [{missing}], extra [{extra}])",
                    request.bank, request.pcrs
                ),
            )
            .expected(json!(request.pcrs.iter().collect::<Vec<_>>()))
            .actual(json!(quoted.iter().collect::<Vec<_>>())),
        );
    }
    if supplied.bank() == request.bank {
        let unattested = supplied.pcrs().difference(quoted);
        if !unattested.is_empty() {
            verdict.push(Finding::new(
                rule::QUOTE_SELECTION,
                format!(
                    "values were supplied for PCRs [{unattested}] that the quote does not cover"
                ),
            ));
        }
    }
}

fn check_pcr_digest(
    selection: &PcrSelection,
    attested: &[u8],
    signature: &Signature,
    supplied: &PcrValues,
    verdict: &mut Verdict,
) {
    // The TPM hashes the PCR values with the signing scheme's hash, not the bank's.
    let Some(hash) = signature.hash() else {
        verdict.push(Finding::new(
            rule::QUOTE_PCR_DIGEST,
            format!("cannot recompute pcrDigest with unsupported hash {:#06x}", signature.hash_alg),
        ));
        return;
    };
    let mut h = hash.hasher();
    for bank in &selection.banks {
        for pcr in bank.pcrs.iter() {
            let value = (supplied.bank().tpm_alg_id() == bank.hash_alg)
                .then(|| supplied.get(pcr))
                .flatten();
            let Some(value) = value else {
                verdict.push(
                    Finding::new(
                        rule::QUOTE_PCR_DIGEST,
                        format!(
                            "PCR {pcr} of bank {:#06x} is quoted but no value was supplied",
                            bank.hash_alg
                        ),
                    )
                    .pcr(pcr),
                );
                return;
            };
            h.update(value.as_bytes());
        }
    }
    let computed = h.finish();
    if computed.as_bytes() != attested {
        verdict.push(
            Finding::new(
                rule::QUOTE_PCR_DIGEST,
                "the quote's pcrDigest does not match the supplied PCR values",
            )
            .expected(hex::encode(attested))
            .actual(computed.to_hex()),
        );
    }
}
