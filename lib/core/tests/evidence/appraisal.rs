//! Rounds of synthetic evidence (software AKs signing as a TPM does, IMA logs built entry by
//! entry with PCR 10 extended to match) through `appraise`, and real UEFI event logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use kl_core::alg::{Digest, HashAlg};
use kl_core::appraisal::*;
use kl_core::eventlog::EventLog;
use kl_core::policy::PcrPolicy;
use kl_core::policy::mb;
use kl_core::quote::{AcceptedAlgorithms, PreparedAk};
use kl_core::tpm2::{ClockInfo, EccCurve, PcrValues, SigAlg};
use kl_core::verdict::Verdict;
use kl_testkit::synthetic::{self, SyntheticAk, quote_attest};

const SPKI: &[u8] = b"agent identity key (any bytes: only its digest is bound)";

/// An IMA log and the PCR 10 value (sha256 bank) it replays to.
struct ImaLog {
    text: String,
    pcr10: Digest,
    files: Vec<(String, Vec<u8>)>,
}

impl ImaLog {
    fn new() -> ImaLog {
        ImaLog { text: String::new(), pcr10: HashAlg::Sha256.zero(), files: Vec::new() }
    }

    fn measure(&mut self, path: &str, content: &[u8]) {
        let digest = HashAlg::Sha256.digest(content);
        let mut data = Vec::new();
        data.extend_from_slice(&(8u32 + 32).to_le_bytes());
        data.extend_from_slice(b"sha256:\0");
        data.extend_from_slice(digest.as_bytes());
        data.extend_from_slice(&(path.len() as u32 + 1).to_le_bytes());
        data.extend_from_slice(path.as_bytes());
        data.push(0);
        let line = format!(
            "10 {} ima-ng sha256:{} {path}\n",
            HashAlg::Sha1.digest(&data).to_hex(),
            digest.to_hex()
        );
        self.text.push_str(&line);
        self.pcr10.extend(HashAlg::Sha256.digest(&data).as_bytes());
        self.files.push((path.to_owned(), digest.as_bytes().to_vec()));
    }

    /// The lines from entry `from` on.
    fn from(&self, from: usize) -> String {
        self.text.lines().skip(from).map(|l| format!("{l}\n")).collect()
    }
}

/// A simulated machine: a software AK, PCRs, an IMA log and a TPM clock.
struct Machine {
    ak: SyntheticAk,
    pcrs: BTreeMap<u32, Digest>,
    ima: ImaLog,
    clock: ClockInfo,
}

impl Machine {
    fn new(ak: SyntheticAk) -> Machine {
        let mut pcrs = BTreeMap::new();
        pcrs.insert(0, HashAlg::Sha256.digest(b"firmware"));
        let mut ima = ImaLog::new();
        ima.measure("boot_aggregate", b"boot");
        ima.measure("/usr/bin/bash", b"bash");
        Machine {
            ak,
            pcrs,
            ima,
            clock: ClockInfo { clock: 1000, reset_count: 3, restart_count: 0, safe: true },
        }
    }

    fn reboot(&mut self) {
        self.clock.reset_count += 1;
        self.clock.clock += 5000;
        self.ima = ImaLog::new();
        self.ima.measure("boot_aggregate", b"boot");
    }

    /// Quote `pcrs` with `nonce`, advancing the clock.
    fn quote(&mut self, policy: &AgentPolicy, nonce: &[u8]) -> (Vec<u8>, Vec<u8>, PcrValues) {
        self.clock.clock += 2000;
        let mut values = PcrValues::new(HashAlg::Sha256);
        for pcr in policy.pcrs().iter() {
            let v = if pcr == 10 {
                self.ima.pcr10
            } else {
                self.pcrs.get(&pcr).copied().unwrap_or_else(|| HashAlg::Sha256.zero())
            };
            values.insert(pcr, v).expect("distinct");
        }
        let attest = quote_attest(
            policy.qualifying_data(nonce).as_bytes(),
            &values,
            HashAlg::Sha256,
            self.clock,
        );
        let attest = attest.to_bytes();
        let sig_alg = match self.ak.key {
            synthetic::SoftwareKey::Rsa(_) => SigAlg::RsaSsa,
            synthetic::SoftwareKey::Ecdsa(_) => SigAlg::Ecdsa,
        };
        let sig = self.ak.sign(sig_alg, HashAlg::Sha256, &attest).to_bytes();
        (attest, sig, values)
    }

    fn policy(&self) -> AgentPolicy {
        let rules = kl_core::policy::from_file_digests(
            self.ima.files.iter().map(|(p, d)| (p.as_str(), d.as_slice())),
        )
        .expect("policy");
        AgentPolicy {
            ak: Arc::new(PreparedAk::new(self.ak.public.clone()).expect("AK")),
            identity_spki: Arc::from(SPKI),
            algorithms: AcceptedAlgorithms::default(),
            bank: HashAlg::Sha256,
            pcr_policy: None,
            runtime: Some(Arc::new(RuntimeRules::new(rules).expect("keys"))),
            measured_boot: None,
        }
    }
}

fn round(m: &mut Machine, policy: &AgentPolicy, state: &AttestationState) -> Appraisal {
    let nonce = HashAlg::Sha256.digest(&m.clock.clock.to_be_bytes());
    let (attest, sig, pcrs) = m.quote(policy, nonce.as_bytes());
    let offset = state.ima.entries_processed as usize;
    let offset = if offset > m.ima.text.lines().count() { 0 } else { offset };
    let entries = m.ima.from(offset);
    let evidence = Evidence {
        nonce: nonce.as_bytes(),
        attest: &attest,
        signature: &sig,
        pcrs: &pcrs,
        ima_offset: offset as u64,
        ima_entries: entries.as_bytes(),
        ima_log_missing: false,
        event_log: None,
    };
    appraise(&evidence, policy, state)
}

fn rules(a: &Appraisal) -> Vec<&str> {
    a.verdict.findings.iter().map(|f| f.rule.as_str()).collect()
}

#[test]
fn rounds_pass_incrementally_and_an_unknown_file_fails_naming_it() {
    for ak in [SyntheticAk::rsa(), SyntheticAk::ecdsa(EccCurve::NIST_P256)] {
        let mut m = Machine::new(ak);
        m.ima.measure("/usr/bin/ls", b"ls");
        let policy = m.policy();
        let first = round(&mut m, &policy, &AttestationState::default());
        assert!(first.verdict.passed(), "{:?}", first.verdict.findings);
        assert_eq!(first.state.ima.entries_processed, 3);
        assert!(first.verdict.checked.iter().any(|c| c == "ima"));

        // A known file again: only the new entry is read.
        m.ima.measure("/usr/bin/ls", b"ls");
        let second = round(&mut m, &policy, &first.state);
        assert!(second.verdict.passed(), "{:?}", second.verdict.findings);
        assert_eq!((second.ima_entries, second.next_ima_offset), (1, 4));

        m.ima.measure("/tmp/evil", b"payload");
        let third = round(&mut m, &policy, &second.state);
        assert_eq!(rules(&third), ["ima.not_in_policy"]);
        let f = &third.verdict.findings[0];
        assert_eq!((f.path.as_deref(), f.line), (Some("/tmp/evil"), Some(5)));
        assert_eq!(third.state.ima, second.state.ima, "failed entries are not skipped next time");
    }
}

#[test]
fn a_replayed_quote_and_a_wrong_nonce_fail_without_advancing() {
    let mut m = Machine::new(SyntheticAk::ecdsa(EccCurve::NIST_P256));
    let policy = m.policy();
    let nonce = [7u8; 20];
    let (attest, sig, pcrs) = m.quote(&policy, &nonce);
    let entries = m.ima.from(0);
    let evidence = Evidence {
        nonce: &nonce,
        attest: &attest,
        signature: &sig,
        pcrs: &pcrs,
        ima_offset: 0,
        ima_entries: entries.as_bytes(),
        ima_log_missing: false,
        event_log: None,
    };
    let first = appraise(&evidence, &policy, &AttestationState::default());
    assert!(first.verdict.passed(), "{:?}", first.verdict.findings);
    // The same evidence again (an attacker replaying an old answer to the same nonce).
    let replay = appraise(&evidence, &policy, &first.state);
    assert!(rules(&replay).contains(&"quote.replayed"), "{:?}", rules(&replay));
    assert_eq!(replay.state, first.state);
    // Evidence for another nonce.
    let other = Evidence { nonce: &[8u8; 20], ..evidence };
    let wrong = appraise(&other, &policy, &AttestationState::default());
    assert!(rules(&wrong).contains(&"quote.nonce"), "{:?}", rules(&wrong));
    assert_eq!(wrong.state, AttestationState::default().under(&policy).into_owned());
}

#[test]
fn a_flipped_signature_byte_is_a_failed_round_not_an_error() {
    let mut m = Machine::new(SyntheticAk::rsa());
    let policy = m.policy();
    let nonce = [1u8; 16];
    let (attest, mut sig, pcrs) = m.quote(&policy, &nonce);
    let last = sig.len() - 1;
    sig[last] ^= 1;
    let entries = m.ima.from(0);
    let evidence = Evidence {
        nonce: &nonce,
        attest: &attest,
        signature: &sig,
        pcrs: &pcrs,
        ima_offset: 0,
        ima_entries: entries.as_bytes(),
        ima_log_missing: false,
        event_log: None,
    };
    let a = appraise(&evidence, &policy, &AttestationState::default());
    assert_eq!(rules(&a), ["quote.signature"]);
    assert!(!a.verdict.checked.iter().any(|c| c == "ima"), "nothing after a bad quote is believed");
}

#[test]
fn a_reboot_replays_from_zero_and_a_shrunk_log_without_reboot_fails() {
    let mut m = Machine::new(SyntheticAk::ecdsa(EccCurve::NIST_P256));
    let policy = m.policy();
    let first = round(&mut m, &policy, &AttestationState::default());
    assert!(first.verdict.passed());
    m.reboot();
    let after = round(&mut m, &policy, &first.state);
    assert!(after.verdict.passed(), "{:?}", after.verdict.findings);
    assert!(after.rebooted);
    assert_eq!(after.next_ima_offset, 1);

    // Entries from 0 again without a reboot: the log cannot have shrunk.
    let nonce = [9u8; 16];
    let (attest, sig, pcrs) = m.quote(&policy, &nonce);
    let mut state = after.state.clone();
    state.ima.entries_processed = 5;
    let entries = m.ima.from(0);
    let evidence = Evidence {
        nonce: &nonce,
        attest: &attest,
        signature: &sig,
        pcrs: &pcrs,
        ima_offset: 0,
        ima_entries: entries.as_bytes(),
        ima_log_missing: false,
        event_log: None,
    };
    assert_eq!(rules(&appraise(&evidence, &policy, &state)), ["ima.offset"]);
}

#[test]
fn a_pcr_policy_mismatch_names_the_pcr_and_can_be_fixed() {
    let mut m = Machine::new(SyntheticAk::ecdsa(EccCurve::NIST_P256));
    let mut policy = m.policy();
    let json = format!(r#"{{"hash_alg": "sha256", "pcrs": {{"0": ["{}"]}}}}"#, "ab".repeat(32));
    policy.pcr_policy = Some(Arc::new(PcrPolicy::from_json(json.as_bytes()).expect("policy")));
    let a = round(&mut m, &policy, &AttestationState::default());
    assert_eq!(rules(&a), ["pcr.mismatch"]);
    assert_eq!(a.verdict.findings[0].pcr, Some(0));

    let good = format!(r#"{{"hash_alg": "sha256", "pcrs": {{"0": ["{}"]}}}}"#, m.pcrs[&0].to_hex());
    policy.pcr_policy = Some(Arc::new(PcrPolicy::from_json(good.as_bytes()).expect("policy")));
    let b = round(&mut m, &policy, &a.state);
    assert!(b.verdict.passed(), "{:?}", b.verdict.findings);
}

#[test]
fn measured_boot_is_checked_against_the_quoted_pcrs_and_cached() {
    let log_bytes = include_bytes!("../data/keylime/eventlog/binary_bios_measurements");
    let log = EventLog::parse(log_bytes).expect("real log");
    let mb_policy = mb::generate(&log, true);
    let mut m = Machine::new(SyntheticAk::ecdsa(EccCurve::NIST_P256));
    for &pcr in &mb_policy.pcrs {
        m.pcrs.insert(pcr, *log.pcr(HashAlg::Sha256, pcr).expect("replayed"));
    }
    let mut policy = m.policy();
    policy.runtime = None;
    policy.measured_boot = Some(Arc::new(MeasuredBootRules::new(mb_policy)));

    let run = |m: &mut Machine, state: &AttestationState, event_log: Option<&[u8]>| {
        let nonce = [m.clock.clock as u8; 16];
        let (attest, sig, pcrs) = m.quote(&policy, &nonce);
        let evidence = Evidence {
            nonce: &nonce,
            attest: &attest,
            signature: &sig,
            pcrs: &pcrs,
            ima_offset: 0,
            ima_entries: b"",
            ima_log_missing: false,
            event_log,
        };
        appraise(&evidence, &policy, state)
    };
    let first = run(&mut m, &AttestationState::default(), Some(log_bytes));
    assert!(first.verdict.passed(), "{:?}", first.verdict.findings);
    let cached = first.state.measured_boot.clone().expect("cached");
    let second = run(&mut m, &first.state, Some(log_bytes));
    assert!(second.verdict.passed());
    assert_eq!(second.state.measured_boot, Some(cached));

    assert_eq!(rules(&run(&mut m, &second.state, None)), ["mb.event_log_missing"]);

    // A PCR the log does not replay to.
    m.pcrs.insert(4, HashAlg::Sha256.digest(b"another boot loader"));
    let bad = run(&mut m, &second.state, Some(log_bytes));
    assert!(!bad.verdict.passed());
    assert!(bad.verdict.findings.iter().any(|f| f.rule == "mb.pcr_mismatch" && f.pcr == Some(4)));
}

#[test]
fn a_stricter_runtime_policy_rechecks_entries_already_accepted() {
    let mut m = Machine::new(SyntheticAk::ecdsa(EccCurve::NIST_P256));
    let loose = m.policy();
    let first = round(&mut m, &loose, &AttestationState::default());
    assert!(first.verdict.passed());
    assert_eq!(first.next_ima_offset, 2);
    // The operator removes /usr/bin/bash from the policy: the state made under the loose
    // policy does not carry over, the log is read from entry 0 and bash is named.
    let strict_rules = kl_core::policy::from_file_digests(
        m.ima
            .files
            .iter()
            .filter(|(p, _)| p != "/usr/bin/bash")
            .map(|(p, d)| (p.as_str(), d.as_slice())),
    )
    .expect("policy");
    let mut strict = loose.clone();
    strict.runtime = Some(Arc::new(RuntimeRules::new(strict_rules).expect("keys")));
    let restarted = first.state.under(&strict);
    assert_eq!(restarted.ima.entries_processed, 0);
    let second = round(&mut m, &strict, &restarted);
    assert_eq!(rules(&second), ["ima.not_in_policy"]);
    assert_eq!(second.verdict.findings[0].path.as_deref(), Some("/usr/bin/bash"));
    // Same policy again: nothing is reset.
    assert!(matches!(first.state.under(&loose), std::borrow::Cow::Borrowed(_)), "nothing to drop");
    assert_eq!(*first.state.under(&loose), first.state);
}

#[test]
fn a_policy_that_is_supplied_but_not_checked_fails_the_round() {
    let mut v = Verdict::default();
    v.checked("quote");
    v.require_coverage(&["quote", "measured_boot"]);
    assert_eq!(v.findings[0].rule, "coverage.not_enforced");
}

#[test]
fn a_pcr_policy_pinning_a_pcr_another_policy_owns_is_named() {
    let m = Machine::new(SyntheticAk::ecdsa(EccCurve::NIST_P256));
    let pin = |pcrs: &[u32]| {
        let entries: Vec<String> =
            pcrs.iter().map(|p| format!(r#""{p}": ["{}"]"#, "ab".repeat(32))).collect();
        let json = format!(r#"{{"hash_alg": "sha256", "pcrs": {{{}}}}}"#, entries.join(", "));
        Some(Arc::new(PcrPolicy::from_json(json.as_bytes()).expect("policy")))
    };
    let mut policy = m.policy();
    policy.pcr_policy = pin(&[15, 16]);
    assert_eq!(policy.pcr_policy_overlap(), None, "PCRs nobody else owns");
    policy.pcr_policy = pin(&[10, 16]);
    assert_eq!(policy.pcr_policy_overlap(), Some((10, PcrOwner::RuntimePolicy)));

    let log = EventLog::parse(include_bytes!("../data/keylime/eventlog/binary_bios_measurements"))
        .expect("real log");
    policy.runtime = None;
    policy.measured_boot = Some(Arc::new(MeasuredBootRules::new(mb::generate(&log, true))));
    assert_eq!(policy.pcr_policy_overlap(), None, "no runtime policy: PCR 10 is free");
    policy.pcr_policy = pin(&[7, 4, 16]);
    assert_eq!(policy.pcr_policy_overlap(), Some((4, PcrOwner::MeasuredBoot)));
}

#[test]
fn a_runtime_policy_fails_a_machine_whose_pcr10_was_never_extended() {
    // IMA off: no log, PCR 10 all zeros. An agent that hides that it has no log still fails.
    let mut m = Machine::new(SyntheticAk::ecdsa(EccCurve::NIST_P256));
    let policy = m.policy();
    m.ima = ImaLog::new();
    let a = round(&mut m, &policy, &AttestationState::default());
    assert_eq!(rules(&a), ["ima.log_missing"]);
    assert_eq!(a.verdict.findings[0].pcr, Some(10));
}
