//! Golden tests on real logs, appraisal rules, synthetic signed entries, and property tests.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::replay::{Tracker, extend_value};
use super::sig::SignatureHeader;
use super::*;
use crate::alg::{Digest, HashAlg};
use crate::verdict::rule;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keylime");

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const GOLDEN_SHA1: &str = "82231c67a69da98dc5b3aa10f6343d33109225fc";
const GOLDEN_SHA256: &str = "c4a065637fc6a7c55f2811dd06cb45dd037133be2b3dc5c3e6fbe6bf061db724";

fn golden_log() -> Vec<u8> {
    fixture("ima/ascii_runtime_measurements")
}

fn hex_digest(alg: HashAlg, hex: &str) -> Digest {
    Digest::from_hex(alg, hex).expect("valid hex digest")
}

/// Rules backed by hash maps, as a runtime policy would be.
#[derive(Default)]
pub(crate) struct MapRules {
    pub(crate) files: HashMap<String, HashSet<Vec<u8>>>,
    pub(crate) exclude_prefixes: Vec<String>,
    pub(crate) bufs: HashMap<String, HashSet<Vec<u8>>>,
    pub(crate) keyrings: HashMap<String, HashSet<Vec<u8>>>,
    pub(crate) ignored_keyrings: Vec<String>,
}

fn lookup(
    map: &HashMap<String, HashSet<Vec<u8>>>,
    key: &str,
    digest: &FileDigest<'_>,
) -> FileCheck {
    match map.get(key) {
        None => FileCheck::UnknownPath,
        Some(set) if set.contains(digest.as_bytes()) => FileCheck::Allowed,
        Some(_) => FileCheck::DigestMismatch,
    }
}

impl ImaRules for MapRules {
    fn check_file(&self, path: &str, digest: &FileDigest<'_>) -> FileCheck {
        if self.exclude_prefixes.iter().any(|p| path.starts_with(p.as_str())) {
            return FileCheck::Excluded;
        }
        lookup(&self.files, path, digest)
    }

    fn check_buf(&self, name: &str, digest: &FileDigest<'_>) -> FileCheck {
        lookup(&self.bufs, name, digest)
    }

    fn check_keyring(&self, keyring: &str, digest: &FileDigest<'_>) -> FileCheck {
        if self.ignored_keyrings.iter().any(|k| k == keyring || k == "*") {
            return FileCheck::Excluded;
        }
        lookup(&self.keyrings, keyring, digest)
    }
}

impl MapRules {
    /// Allows every file measurement of `log` as logged.
    fn from_log(log: &[u8]) -> MapRules {
        let mut rules = MapRules::default();
        for e in AsciiLog::new(log) {
            let e = e.expect("valid log");
            rules.allow(e.name, e.digest.as_bytes());
        }
        rules
    }

    fn allow(&mut self, path: &str, digest: &[u8]) {
        self.files.entry(path.to_owned()).or_default().insert(digest.to_vec());
    }
}

fn rules_of(v: &Verdict) -> Vec<&str> {
    v.findings.iter().map(|f| f.rule.as_str()).collect()
}

use crate::verdict::Verdict;

// ---------------------------------------------------------------- golden logs

#[test]
fn golden_log_replays_to_known_pcr10() {
    let log = golden_log();
    let r = replay_log(&log, &[HashAlg::Sha1, HashAlg::Sha256]).expect("parses");
    assert_eq!(r.entries, 826);
    assert_eq!(r.pcrs[0].to_hex(), GOLDEN_SHA1);
    assert_eq!(r.pcrs[1].to_hex(), GOLDEN_SHA256);
}

#[test]
fn golden_log_template_hashes_all_match_and_appraisal_passes() {
    let log = golden_log();
    let mut data = Vec::new();
    let mut n = 0;
    for e in AsciiLog::new(&log) {
        let e = e.expect("valid");
        assert_eq!(e.kind(), TemplateKind::ImaNg);
        assert!(!e.is_violation());
        assert_eq!(
            HashAlg::Sha1.digest(e.template_data(&mut data)),
            e.template_hash,
            "line {}",
            e.line()
        );
        n += 1;
    }
    assert_eq!(n, 826);

    let rules = MapRules::from_log(&log);
    for (bank, golden) in [(HashAlg::Sha1, GOLDEN_SHA1), (HashAlg::Sha256, GOLDEN_SHA256)] {
        let options = ImaOptions { bank, ..ImaOptions::default() };
        let a = appraise_log(
            &log,
            &rules,
            &VerificationKeys::new(),
            &ImaState::default(),
            &options,
            &hex_digest(bank, golden),
        )
        .expect("appraises");
        assert!(a.verdict.passed(), "{:?}", a.verdict.findings);
        assert_eq!(a.verdict.checked, ["ima"]);
        assert_eq!((a.entries, a.matched), (826, Some(826)));
        assert_eq!(a.state.entries_processed, 826);
        assert_eq!(a.state.pcrs[&bank].to_hex(), golden);
    }
}

#[test]
fn golden_log_in_binary_form_replays_identically() {
    let log = golden_log();
    let mut bin = Vec::new();
    for e in AsciiLog::new(&log) {
        encode_entry(&e.expect("valid"), &mut bin);
    }
    assert_eq!(LogFormat::detect(&bin), LogFormat::Binary);
    let r = replay_log(&bin, &[HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384]).expect("parses");
    assert_eq!(r.entries, 826);
    assert_eq!(r.pcrs[0].to_hex(), GOLDEN_SHA1);
    assert_eq!(r.pcrs[1].to_hex(), GOLDEN_SHA256);
    let ascii = replay_log(&log, &[HashAlg::Sha384]).expect("parses");
    assert_eq!(r.pcrs[2], ascii.pcrs[0]);

    let rules = MapRules::from_log(&log);
    let a = appraise_log(
        &bin,
        &rules,
        &VerificationKeys::new(),
        &ImaState::default(),
        &ImaOptions::default(),
        &hex_digest(HashAlg::Sha256, GOLDEN_SHA256),
    )
    .expect("appraises");
    assert!(a.verdict.passed(), "{:?}", a.verdict.findings);
}

#[test]
fn per_algorithm_logs_parse() {
    for (alg, len) in [("sha1", 20), ("sha256", 32), ("sha384", 48), ("sha512", 64)] {
        let log = fixture(&format!("ima/ima-log-{alg}"));
        let entries: Vec<_> = AsciiLog::new(&log).map(|e| e.expect("valid")).collect();
        assert_eq!(entries.len(), 2, "{alg}");
        for e in &entries {
            assert_eq!(e.digest.alg_name(), alg);
            assert_eq!(e.digest.as_bytes().len(), len);
            assert_eq!(e.digest.hash_alg().map(HashAlg::name), Some(alg));
        }
        assert_eq!(entries[1].name, "/data");
        // The non-violation entries carry correct SHA-1 template hashes.
        let mut data = Vec::new();
        assert_eq!(
            HashAlg::Sha1.digest(entries[1].template_data(&mut data)),
            entries[1].template_hash
        );
    }
}

#[test]
fn unknown_digest_algorithm_parses_and_fails_the_template_hash_check() {
    // Decision: an unknown digest algorithm is carried by name, so the log parses and replays;
    // this fixture's template hash column is 32 bytes and matches nothing, which appraisal reports.
    let log = fixture("ima/ima-log-unknown");
    let entries: Vec<_> = AsciiLog::new(&log).map(|e| e.expect("valid")).collect();
    assert_eq!(entries[1].digest.alg_name(), "unknown");
    assert_eq!(entries[1].digest.hash_alg(), None);
    assert_eq!(entries[1].template_hash.alg(), HashAlg::Sha256);
    let final_pcr = replay_log(&log, &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let rules = MapRules::from_log(&log);
    let a = appraise_log(
        &log,
        &rules,
        &VerificationKeys::new(),
        &ImaState::default(),
        &ImaOptions::default(),
        &final_pcr,
    )
    .expect("appraises");
    assert_eq!(rules_of(&a.verdict), [rule::IMA_TEMPLATE_HASH], "{:?}", a.verdict.findings);
    assert_eq!(a.verdict.findings[0].line, Some(2));
    assert!(
        a.verdict.findings[0].message.contains("32 bytes"),
        "{}",
        a.verdict.findings[0].message
    );
}

#[test]
fn small_log_parses_and_invalid_log_is_rejected_with_its_line() {
    let small = fixture("ima/small_ima_log.txt");
    let entries: Vec<_> = AsciiLog::new(&small).map(|e| e.expect("valid")).collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "boot_aggregate");
    assert_eq!(entries[0].digest.alg_name(), "sha256");

    let invalid = fixture("ima/invalid_ima_log.txt");
    let err = replay_log(&invalid, &[HashAlg::Sha1]).expect_err("invalid");
    assert!(matches!(err, ImaError::Malformed { position: Position::Line(1), .. }), "{err}");
    assert_eq!(err.to_string(), "IMA log line 1: missing template hash field");
}

// ---------------------------------------------------------------- incremental replay

/// Byte offsets where each line of `log` starts.
fn line_starts(log: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(log.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1));
    starts.pop();
    starts
}

/// Appraises `log` in rounds ending after each line count in `cuts`, quoting the PCR value at
/// the end of each round; returns the final state.
fn appraise_in_rounds(log: &[u8], cuts: &[usize], bank: HashAlg) -> ImaState {
    let starts = line_starts(log);
    let rules = MapRules::from_log(log);
    let options = ImaOptions { bank, ..ImaOptions::default() };
    let mut state = ImaState::default();
    let total = starts.len();
    for &cut in cuts.iter().chain(std::iter::once(&total)) {
        let from = starts.get(state.entries_processed as usize).copied().unwrap_or(log.len());
        let to = if cut >= total { log.len() } else { starts[cut] };
        let prefix = if cut >= total { log } else { &log[..starts[cut]] };
        let quoted = replay_log(prefix, &[bank]).expect("replays").pcrs[0];
        let chunk = &log[from..to.max(from)];
        let a = appraise_log(chunk, &rules, &VerificationKeys::new(), &state, &options, &quoted)
            .expect("appraises");
        assert!(a.verdict.passed(), "cut {cut}: {:?}", a.verdict.findings);
        state = a.state;
    }
    state
}

#[test]
fn incremental_rounds_equal_full_replay() {
    let log = golden_log();
    let state = appraise_in_rounds(&log, &[1, 100, 100, 413, 825], HashAlg::Sha256);
    assert_eq!(state.entries_processed, 826);
    assert_eq!(state.pcrs[&HashAlg::Sha256].to_hex(), GOLDEN_SHA256);
    let state = appraise_in_rounds(&log, &[0, 5, 826], HashAlg::Sha1);
    assert_eq!(state.pcrs[&HashAlg::Sha1].to_hex(), GOLDEN_SHA1);
}

#[test]
fn quote_may_cover_any_prefix_and_later_entries_are_resent() {
    let log = golden_log();
    let starts = line_starts(&log);
    let rules = MapRules::from_log(&log);
    let keys = VerificationKeys::new();
    let options = ImaOptions::default();
    // The quote was taken after 300 entries; the agent then read 500.
    let quoted = replay_log(&log[..starts[300]], &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let a =
        appraise_log(&log[..starts[500]], &rules, &keys, &ImaState::default(), &options, &quoted)
            .expect("appraises");
    assert!(a.verdict.passed(), "{:?}", a.verdict.findings);
    assert_eq!((a.entries, a.matched), (500, Some(300)));
    assert_eq!(a.state.entries_processed, 300);
    assert_eq!(a.state.pcrs[&HashAlg::Sha256], quoted);
    // Zero new entries match too: the quote predates every new line.
    let b =
        appraise_log(&log[starts[300]..starts[320]], &rules, &keys, &a.state, &options, &quoted)
            .expect("appraises");
    assert!(b.verdict.passed());
    assert_eq!(b.matched, Some(0));
    assert_eq!(b.state, a.state);
    // And the empty chunk.
    let c = appraise_log(b"", &rules, &keys, &a.state, &options, &quoted).expect("appraises");
    assert_eq!((c.entries, c.matched), (0, Some(0)));
    // Continue to the end.
    let golden = hex_digest(HashAlg::Sha256, GOLDEN_SHA256);
    let d = appraise_log(&log[starts[300]..], &rules, &keys, &a.state, &options, &golden)
        .expect("appraises");
    assert!(d.verdict.passed());
    assert_eq!(d.state.entries_processed, 826);
    // A chunk that does not start where the state says is refused.
    let err = appraise(
        AsciiLog::starting_at(&log[starts[10]..], 10),
        &rules,
        &keys,
        &a.state,
        &options,
        &golden,
    )
    .expect_err("wrong offset");
    assert!(err.to_string().contains("entry 10 given where entry 300 was expected"), "{err}");
}

/// The result of an incremental replay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IncrementalReplay {
    /// New entries read.
    entries: u64,
    /// How many new entries the quoted value covers; `None` when no prefix matched.
    matched: Option<u64>,
    /// The PCR value after all new entries.
    final_pcr: Digest,
    /// The state for the next round: at the match, or the prior state when nothing matched.
    state: ImaState,
}

/// Replays new entries (starting at entry `state.entries_processed`) into PCR `pcr_index` of
/// the quoted value's bank, accepting the quoted value before any new entry or after any of
/// them. No template-hash or content checks: a reference for the tracking that `appraise` does.
fn replay_incremental<'a>(
    entries: impl IntoIterator<Item = Result<Entry<'a>, ImaError>>,
    state: &ImaState,
    quoted: &Digest,
    pcr_index: u32,
) -> Result<IncrementalReplay, ImaError> {
    let bank = quoted.alg();
    let mut tracker = Tracker::new(state, bank, *quoted)?;
    let mut data = Vec::new();
    let mut next_index = state.entries_processed;
    for entry in entries {
        let entry = entry?;
        if entry.index != next_index {
            return Err(ImaError::State(format!(
                "entry {} given where entry {next_index} was expected",
                entry.index
            )));
        }
        next_index += 1;
        if entry.pcr == pcr_index {
            let value = extend_value(&entry, bank, entry.template_data(&mut data));
            tracker.advance(Some(&value));
        } else {
            tracker.advance(None);
        }
    }
    Ok(IncrementalReplay {
        entries: next_index - state.entries_processed,
        matched: tracker.matched().map(|(count, _)| count - state.entries_processed),
        final_pcr: tracker.pcr,
        state: tracker.next_state(state),
    })
}

#[test]
fn replay_incremental_matches_prefixes_without_content_checks() {
    let log = golden_log();
    let starts = line_starts(&log);
    let q = replay_log(&log[..starts[100]], &[HashAlg::Sha1]).expect("replays").pcrs[0];
    let r =
        replay_incremental(AsciiLog::new(&log[..starts[150]]), &ImaState::default(), &q, IMA_PCR)
            .expect("replays");
    assert_eq!((r.entries, r.matched), (150, Some(100)));
    assert_eq!(r.state.entries_processed, 100);
    assert_eq!(r.state.pcrs[&HashAlg::Sha1], q);
    let golden = hex_digest(HashAlg::Sha1, GOLDEN_SHA1);
    let r2 = replay_incremental(
        AsciiLog::starting_at(&log[starts[100]..], 100),
        &r.state,
        &golden,
        IMA_PCR,
    )
    .expect("replays");
    assert_eq!((r2.entries, r2.matched, r2.final_pcr), (726, Some(726), golden));
    // No match: the prior state comes back.
    let r3 = replay_incremental(
        AsciiLog::starting_at(&log[starts[100]..], 100),
        &r.state,
        &q.clone(),
        11,
    )
    .expect("replays");
    assert_eq!(r3.matched, Some(726), "entries for another PCR are consumed without extending");
    let wrong = HashAlg::Sha1.digest(b"x");
    let r4 = replay_incremental(
        AsciiLog::starting_at(&log[starts[100]..], 100),
        &r.state,
        &wrong,
        IMA_PCR,
    )
    .expect("replays");
    assert_eq!((r4.matched, r4.final_pcr), (None, golden));
    assert_eq!(r4.state, r.state);
}

#[test]
fn pcr10_mismatch_names_both_values_and_keeps_the_prior_state() {
    let log = golden_log();
    let rules = MapRules::from_log(&log);
    let quoted = HashAlg::Sha256.digest(b"not a pcr value");
    let a = appraise_log(
        &log,
        &rules,
        &VerificationKeys::new(),
        &ImaState::default(),
        &ImaOptions::default(),
        &quoted,
    )
    .expect("appraises");
    assert_eq!(rules_of(&a.verdict), [rule::IMA_PCR10_MISMATCH]);
    let f = &a.verdict.findings[0];
    assert_eq!(f.pcr, Some(10));
    assert_eq!(f.expected, Some(serde_json::json!(quoted.to_hex())));
    assert_eq!(f.actual, Some(serde_json::json!(GOLDEN_SHA256)));
    assert_eq!(a.state, ImaState::default());
    assert_eq!(a.matched, None);
}

#[test]
fn tampered_line_is_caught() {
    let log = String::from_utf8(golden_log()).expect("text");
    // Swap the digest of line 200 for another value: template hash and PCR both break.
    let lines: Vec<&str> = log.lines().collect();
    let victim = lines[199];
    let (head, path) = victim.rsplit_once(' ').expect("path");
    let (head, digest) = head.rsplit_once(' ').expect("digest");
    let tampered_digest = format!("sha1:{}", "ab".repeat(20));
    assert_ne!(digest, tampered_digest);
    let mut tampered = String::new();
    for (i, l) in lines.iter().enumerate() {
        if i == 199 {
            tampered.push_str(&format!("{head} {tampered_digest} {path}\n"));
        } else {
            tampered.push_str(l);
            tampered.push('\n');
        }
    }
    let rules = MapRules::from_log(log.as_bytes());
    let golden = hex_digest(HashAlg::Sha256, GOLDEN_SHA256);
    let a = appraise_log(
        tampered.as_bytes(),
        &rules,
        &VerificationKeys::new(),
        &ImaState::default(),
        &ImaOptions::default(),
        &golden,
    )
    .expect("appraises");
    assert_eq!(
        rules_of(&a.verdict),
        [rule::IMA_TEMPLATE_HASH, rule::IMA_DIGEST_MISMATCH, rule::IMA_PCR10_MISMATCH]
    );
    assert_eq!(a.verdict.findings[0].line, Some(200));
    assert_eq!(a.verdict.findings[0].path.as_deref(), Some(path));
    assert_eq!(a.verdict.findings[1].line, Some(200));
    // Tampering the template hash column as well keeps the sha1 bank consistent with the column
    // but not with the data: the template hash check still catches it.
}

// ---------------------------------------------------------------- rules

/// Builds an ASCII line with a correct SHA-1 template hash.
pub(crate) fn make_line(
    pcr: u32,
    template: Template<'_>,
    alg: &str,
    digest: &[u8],
    name: &str,
) -> String {
    let d = FileDigest::new(alg, digest).expect("digest fits");
    let e = Entry {
        index: 0,
        position: Position::Line(1),
        pcr,
        template_hash: HashAlg::Sha1.zero(),
        digest: d,
        name,
        template,
    };
    let mut data = Vec::new();
    let th = HashAlg::Sha1.digest(e.template_data(&mut data));
    let fields = match template {
        Template::Ima => format!("{} {name}", hex::encode(digest)),
        Template::ImaNg => format!("{alg}:{} {name}", hex::encode(digest)),
        Template::ImaSig { signature: b } | Template::ImaBuf { buf: b } => {
            format!("{alg}:{} {name} {}", hex::encode(digest), hex::encode(b.to_vec()))
        }
    };
    format!("{pcr} {} {} {fields}\n", th.to_hex(), e.kind())
}

fn run(log: &str, rules: &MapRules, keys: &VerificationKeys, options: &ImaOptions) -> ImaAppraisal {
    let quoted = replay_log(log.as_bytes(), &[options.bank]).expect("replays").pcrs[0];
    appraise_log(log.as_bytes(), rules, keys, &ImaState::default(), options, &quoted)
        .expect("appraises")
}

#[test]
fn file_rules_produce_not_in_policy_digest_mismatch_and_exclusions() {
    let d1 = HashAlg::Sha256.digest(b"one");
    let d2 = HashAlg::Sha256.digest(b"two");
    let log = [
        make_line(10, Template::ImaNg, "sha256", d1.as_bytes(), "/usr/bin/allowed"),
        make_line(10, Template::ImaNg, "sha256", d2.as_bytes(), "/usr/bin/allowed"),
        make_line(10, Template::ImaNg, "sha256", d1.as_bytes(), "/usr/bin/unknown"),
        make_line(10, Template::ImaNg, "sha256", d2.as_bytes(), "/tmp/excluded file"),
        make_line(10, Template::Ima, "sha1", HashAlg::Sha1.digest(b"x").as_bytes(), "/init"),
    ]
    .concat();
    let mut rules = MapRules::default();
    rules.allow("/usr/bin/allowed", d1.as_bytes());
    rules.allow("/init", HashAlg::Sha1.digest(b"x").as_bytes());
    rules.exclude_prefixes.push("/tmp/".into());
    let a = run(&log, &rules, &VerificationKeys::new(), &ImaOptions::default());
    assert_eq!(rules_of(&a.verdict), [rule::IMA_DIGEST_MISMATCH, rule::IMA_NOT_IN_POLICY]);
    let f = &a.verdict.findings[0];
    assert_eq!((f.line, f.path.as_deref()), (Some(2), Some("/usr/bin/allowed")));
    assert_eq!(f.actual, Some(serde_json::json!(format!("sha256:{}", d2.to_hex()))));
    let f = &a.verdict.findings[1];
    assert_eq!((f.line, f.path.as_deref()), (Some(3), Some("/usr/bin/unknown")));
    assert!(f.message.contains("line 3"), "{}", f.message);
    // A failed chunk leaves the state where it was: it is appraised again in full.
    assert_eq!((a.state.clone(), a.entries, a.matched), (ImaState::default(), 5, Some(5)));
}

#[test]
fn wrong_pcr_entries_are_reported_and_not_extended() {
    let d = HashAlg::Sha256.digest(b"one");
    let good = make_line(10, Template::ImaNg, "sha256", d.as_bytes(), "/a");
    let log = [good.clone(), make_line(11, Template::ImaNg, "sha256", d.as_bytes(), "/b")].concat();
    let mut rules = MapRules::default();
    rules.allow("/a", d.as_bytes());
    rules.allow("/b", d.as_bytes());
    let a = run(&log, &rules, &VerificationKeys::new(), &ImaOptions::default());
    assert_eq!(rules_of(&a.verdict), [rule::IMA_WRONG_PCR]);
    assert_eq!(a.verdict.findings[0].pcr, Some(11));
    assert_eq!(a.verdict.findings[0].line, Some(2));
    assert_eq!(
        a.final_pcr,
        replay_log(good.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0]
    );
    // A configured IMA PCR other than 10.
    let options = ImaOptions { pcr_index: 11, ..ImaOptions::default() };
    let quoted = HashAlg::Sha256.zero();
    let a = appraise_log(
        log.as_bytes(),
        &rules,
        &VerificationKeys::new(),
        &ImaState::default(),
        &options,
        &quoted,
    )
    .expect("appraises");
    assert!(rules_of(&a.verdict).contains(&rule::IMA_WRONG_PCR));
    assert_eq!(a.verdict.findings[0].line, Some(1));
}

#[test]
fn violations_extend_ones_and_are_findings_only_when_strict() {
    let d = HashAlg::Sha256.digest(b"one");
    let mut violation = make_line(10, Template::ImaNg, "sha256", &[0; 32], "/var/log/busy");
    violation.replace_range(3..43, &"0".repeat(40));
    let log = [make_line(10, Template::ImaNg, "sha256", d.as_bytes(), "/a"), violation].concat();
    let mut rules = MapRules::default();
    rules.allow("/a", d.as_bytes());
    // Expected PCR: the first entry, then all-ones.
    let mut pcr = HashAlg::Sha256.zero();
    let mut data = Vec::new();
    let first = AsciiLog::new(log.as_bytes()).next().expect("entry").expect("valid");
    pcr.extend(HashAlg::Sha256.digest(first.template_data(&mut data)).as_bytes());
    pcr.extend(&[0xff; 32]);
    assert_eq!(replay_log(log.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0], pcr);
    let sha1 = replay_log(log.as_bytes(), &[HashAlg::Sha1]).expect("replays").pcrs[0];
    let mut want = HashAlg::Sha1.zero();
    want.extend(first.template_hash.as_bytes());
    want.extend(&[0xff; 20]);
    assert_eq!(sha1, want);

    let a = run(&log, &rules, &VerificationKeys::new(), &ImaOptions::default());
    assert!(a.verdict.passed(), "{:?}", a.verdict.findings);
    assert_eq!(a.violations, [2]);
    let strict = ImaOptions { strict_tomtou: true, ..ImaOptions::default() };
    let a = run(&log, &rules, &VerificationKeys::new(), &strict);
    assert_eq!(rules_of(&a.verdict), [rule::IMA_TOMTOU]);
    assert_eq!(a.verdict.findings[0].path.as_deref(), Some("/var/log/busy"));
}

#[test]
fn template_hash_check_uses_the_log_hash_algorithm() {
    let d = HashAlg::Sha256.digest(b"one");
    let log = make_line(10, Template::ImaNg, "sha256", d.as_bytes(), "/a");
    let mut rules = MapRules::default();
    rules.allow("/a", d.as_bytes());
    let options = ImaOptions { log_hash_alg: HashAlg::Sha256, ..ImaOptions::default() };
    let a = run(&log, &rules, &VerificationKeys::new(), &options);
    assert_eq!(rules_of(&a.verdict), [rule::IMA_TEMPLATE_HASH]);
    assert!(
        a.verdict.findings[0].message.contains("20 bytes"),
        "{}",
        a.verdict.findings[0].message
    );
}

// ---------------------------------------------------------------- property tests

proptest! {
    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut data = Vec::new();
        for e in AsciiLog::new(&bytes).flatten() {
            e.template_data(&mut data);
        }
        let sha512_list = BinaryLog::new(&bytes).with_template_hash_alg(HashAlg::Sha512);
        for e in BinaryLog::new(&bytes).chain(sha512_list).flatten() {
            e.template_data(&mut data);
        }
        let _ = SignatureHeader::parse(&bytes);
        let _ = SignatureKey::parse(&bytes);
        let _ = replay_log(&bytes, &[HashAlg::Sha1]);
    }

    #[test]
    fn ascii_lines_with_arbitrary_fields_never_panic(
        template in prop::sample::select(vec!["ima", "ima-ng", "ima-sig", "ima-buf", "x"]),
        fields in "[ -~]{0,120}",
    ) {
        let line = format!("10 {} {template} {fields}", "ab".repeat(20));
        let _ = AsciiLog::new(line.as_bytes()).collect::<Vec<_>>();
    }

}

proptest! {
    // These replay the whole golden log per case.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn truncated_logs_error_cleanly(cut in 0usize..112_249) {
        let log = golden_log();
        let cut = cut.min(log.len());
        let _ = replay_log(&log[..cut], &[HashAlg::Sha256]);
        let mut bin = Vec::new();
        for e in AsciiLog::new(&log[..line_starts(&log)[30]]) {
            encode_entry(&e.expect("valid"), &mut bin);
        }
        let cut = cut % (bin.len() + 1);
        match replay_log(&bin[..cut], &[HashAlg::Sha1]) {
            Ok(_) => {}
            Err(ImaError::Malformed { position: Position::Offset(o), .. }) => prop_assert!(o as usize <= cut),
            // Fewer than four bytes do not look like a binary log.
            Err(ImaError::Malformed { position: Position::Line(1), .. }) if cut < 4 => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn incremental_equals_full_for_random_splits(mut cuts in proptest::collection::vec(0usize..827, 0..6)) {
        cuts.sort_unstable();
        let log = golden_log();
        let state = appraise_in_rounds(&log, &cuts, HashAlg::Sha256);
        prop_assert_eq!(state.entries_processed, 826);
        prop_assert_eq!(state.pcrs[&HashAlg::Sha256].to_hex(), GOLDEN_SHA256);
    }
}

#[test]
fn a_nul_in_a_path_is_refused_naming_the_line() {
    let line = format!("10 {} ima {} /usr/bin/bash\0\0\n", "00".repeat(19) + "01", "ab".repeat(20));
    let err = AsciiLog::new(line.as_bytes()).next().expect("one entry").expect_err("NUL");
    let text = err.to_string();
    assert!(text.contains("line 1") && text.contains("NUL"), "{text}");
}
