//! Appraisal: one pass over new measurement list entries that replays PCR 10 against the quoted
//! value, checks every template hash, verifies `ima-sig` signatures, learns keys measured into
//! keyrings, and asks an [`ImaRules`] implementation (the runtime policy) about each entry.
//!
//! Decisions, where Keylime leaves room:
//! - Violations (all-zero template hash, e.g. ToMToU) extend all-ones and skip the template-hash
//!   and content checks. They are listed in [`ImaAppraisal::violations`]; only with
//!   [`ImaOptions::strict_tomtou`] do they become `ima.tomtou` findings.
//! - An entry for another PCR is an `ima.wrong_pcr` finding and is not extended.
//! - A signed entry passes when its signature verifies with a known key, whatever the rules say
//!   about its digest (exclusions are checked first). When it does not verify the rules decide:
//!   an allowed digest still passes (as in Keylime); otherwise an unknown key id reads as
//!   `ima.not_in_policy` and a bad signature or header as `ima.signature`.
//! - A key measured into a keyring is checked with [`ImaRules::check_keyring`]; when allowed it
//!   verifies later entries in this round, and it is kept in the next state if the quote covers
//!   its entry. Ignored keyrings (`Excluded`) are neither checked nor learned.
//! - On a PCR 10 mismatch the returned state is the prior one; Keylime restarts from entry 0,
//!   which a caller gets with `ImaState::default()`.
//!
//! Throughput: entries are parsed in batches of [`BATCH`], one batch ahead of the checks, and
//! the paths of each batch are handed to [`ImaRules::prefetch_files`] when it is parsed. A
//! runtime policy of 100k paths is far larger than the caches; hinted together, the cache
//! misses of a batch's lookups overlap instead of costing a memory round trip each (see
//! `docs/benchmarks.md`).

use super::replay::{ImaState, LearnedKey, Tracker, same_digest};
use super::sig::{self, SignatureError, SignatureKey, VerificationKeys};
use super::{BinaryLog, Entries, Entry, FileDigest, IMA_PCR, ImaError, LogFormat, Template};
use crate::alg::{Digest, HashAlg};
use crate::verdict::{Finding, Verdict, rule};

/// What the rules say about one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCheck {
    /// The digest is allowed for this path (or buffer name, or keyring).
    Allowed,
    /// The path matches an exclude rule (or the keyring is ignored): not checked.
    Excluded,
    /// The rules do not know the path.
    UnknownPath,
    /// The rules know the path, but not with this digest.
    DigestMismatch,
}

/// The per-entry questions a runtime policy answers. Implementations should be cheap: they are
/// called once per entry on the hot path, with borrowed path and digest.
pub trait ImaRules {
    /// A file measurement (`ima`, `ima-ng`, `ima-sig`; `boot_aggregate` is a path like any other).
    fn check_file(&self, path: &str, digest: &FileDigest<'_>) -> FileCheck;
    /// An `ima-buf` measurement that is not a key (e.g. `kexec-cmdline`).
    fn check_buf(&self, name: &str, digest: &FileDigest<'_>) -> FileCheck;
    /// A key or certificate measured into `keyring` (an `ima-buf` entry named after the keyring).
    fn check_keyring(&self, keyring: &str, digest: &FileDigest<'_>) -> FileCheck;

    /// A hint that [`ImaRules::check_file`] will soon be asked about each of `paths`:
    /// appraisal parses entries in batches and calls this before checking any entry of the
    /// batch, so that an implementation backed by a large table can load what the checks will
    /// read with the cache misses of all the paths in flight at once, instead of one after the
    /// other. It must not change any answer; the default does nothing.
    #[inline]
    fn prefetch_files(&self, paths: &[&str]) {
        let _ = paths;
    }
}

/// How to appraise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImaOptions {
    /// The quoted PCR bank.
    pub bank: HashAlg,
    /// The algorithm of the template hash column (sha1 unless the log is a per-algorithm list).
    pub log_hash_alg: HashAlg,
    /// The PCR IMA extends.
    pub pcr_index: u32,
    /// Report violations (ToMToU, open-writers) as `ima.tomtou` findings.
    pub strict_tomtou: bool,
}

impl Default for ImaOptions {
    fn default() -> ImaOptions {
        ImaOptions {
            bank: HashAlg::Sha256,
            log_hash_alg: HashAlg::Sha1,
            pcr_index: IMA_PCR,
            strict_tomtou: false,
        }
    }
}

/// The outcome of appraising one round of entries.
#[derive(Debug, Clone, PartialEq)]
pub struct ImaAppraisal {
    pub verdict: Verdict,
    /// The state for the next round: advanced over the entries the quote covers when the
    /// verdict passed, the given state when it failed.
    pub state: ImaState,
    /// New entries read.
    pub entries: u64,
    /// How many of the new entries the quoted PCR value covers; `None` when it matched no prefix.
    pub matched: Option<u64>,
    /// The PCR value after all new entries.
    pub final_pcr: Digest,
    /// Lines of violation entries (all-zero template hash).
    pub violations: Vec<u64>,
}

/// A key or certificate measured into a keyring by an `ima-buf` entry.
#[derive(Debug, Clone)]
pub struct KeyringMeasurement<'a> {
    pub keyring: &'a str,
    pub digest: FileDigest<'a>,
    pub key: SignatureKey,
    pub keyid: u32,
    /// The measured bytes.
    pub der: Vec<u8>,
}

impl<'a> Entry<'a> {
    /// The key in an `ima-buf` entry whose buffer is a certificate or public key.
    pub fn keyring_measurement(&self) -> Option<KeyringMeasurement<'a>> {
        let Template::ImaBuf { buf } = self.template else { return None };
        let der = buf.to_vec();
        let (key, keyid) = SignatureKey::parse(&der).ok()?;
        Some(KeyringMeasurement { keyring: self.name, digest: self.digest, key, keyid, der })
    }
}

/// Appraises a log chunk (ASCII or binary, detected) that starts at `state.entries_processed`.
///
/// After a reboot (or when the agent answers from entry 0 because it could not serve the
/// requested offset) the caller passes `ImaState::default()` and the whole log.
pub fn appraise_log<R: ImaRules + ?Sized>(
    log: &[u8],
    rules: &R,
    keys: &VerificationKeys,
    state: &ImaState,
    options: &ImaOptions,
    quoted_pcr: &Digest,
) -> Result<ImaAppraisal, ImaError> {
    let first = state.entries_processed;
    let entries = match LogFormat::detect(log) {
        LogFormat::Ascii => Entries::parse(log, first),
        LogFormat::Binary => Entries::Binary(
            BinaryLog::starting_at(log, first).with_template_hash_alg(options.log_hash_alg),
        ),
    };
    appraise(entries, rules, keys, state, options, quoted_pcr)
}

/// Appraises new entries (which must start at entry `state.entries_processed`) against the
/// quoted PCR value of `options.bank`. `Err` only when the entries or the state cannot be read.
pub fn appraise<'a, R: ImaRules + ?Sized>(
    entries: impl IntoIterator<Item = Result<Entry<'a>, ImaError>>,
    rules: &R,
    keys: &VerificationKeys,
    state: &ImaState,
    options: &ImaOptions,
    quoted_pcr: &Digest,
) -> Result<ImaAppraisal, ImaError> {
    let bank = options.bank;
    let mut tracker = Tracker::new(state, bank, *quoted_pcr)?;
    let mut content = ContentChecks::new(state)?;
    let mut verdict = Verdict::default();
    verdict.checked("ima");
    let mut violations = Vec::new();
    let mut data = Vec::with_capacity(512);
    let mut next_index = state.entries_processed;

    // Entries are parsed in batches, one batch ahead, and the rules are told a batch's paths
    // when it is parsed, so that their cache misses overlap each other and the checks of the
    // batch before (see `ImaRules::prefetch_files`). An error in a parsed-ahead entry is
    // returned after the earlier entries are processed, which gives the same result: the
    // whole appraisal is an error.
    let mut entries = entries.into_iter();
    // Grown on demand: a steady-state round has a few entries, and two full batches (about
    // 13 KiB) allocated and freed per round cost more than the appraisal of those entries.
    let mut batch: Vec<Result<Entry<'a>, ImaError>> = Vec::new();
    let mut ahead: Vec<Result<Entry<'a>, ImaError>> = Vec::new();
    parse_batch(&mut entries, &mut batch, rules);
    while !batch.is_empty() {
        parse_batch(&mut entries, &mut ahead, rules);
        for entry in &batch {
            let entry = entry.as_ref().map_err(Clone::clone)?;
            if entry.index != next_index {
                return Err(ImaError::State(format!(
                    "entry {} given where entry {next_index} was expected",
                    entry.index
                )));
            }
            next_index += 1;
            if entry.pcr != options.pcr_index {
                verdict.push(
                    Finding::new(
                        rule::IMA_WRONG_PCR,
                        format!(
                            "line {}: {} is measured into PCR {}, not {}",
                            entry.line(),
                            entry.name,
                            entry.pcr,
                            options.pcr_index
                        ),
                    )
                    .line(entry.line())
                    .path(entry.name)
                    .pcr(entry.pcr)
                    .expected(options.pcr_index)
                    .actual(entry.pcr),
                );
                tracker.advance(None);
                continue;
            }
            let data = entry.template_data(&mut data);
            if entry.is_violation() {
                tracker.advance(Some(&Digest::filled(bank, 0xff)));
                violations.push(entry.line());
                if options.strict_tomtou {
                    verdict.push(
                        Finding::new(
                            rule::IMA_TOMTOU,
                            format!(
                                "line {}: measurement violation (ToMToU or open writer) on {}",
                                entry.line(),
                                entry.name
                            ),
                        )
                        .line(entry.line())
                        .path(entry.name),
                    );
                }
                continue;
            }
            // The rules' data for this entry was hinted a batch ago, so the lookup hits the cache.
            let content = content.check(entry, rules, keys);
            let computed = log_hash(options.log_hash_alg, data);
            if !same_digest(&computed, &entry.template_hash) {
                verdict.push(template_hash_finding(entry, &computed));
            }
            let value = if entry.template_hash.alg() == bank {
                entry.template_hash
            } else if bank == options.log_hash_alg {
                computed
            } else {
                bank.digest(data)
            };
            tracker.advance(Some(&value));
            if let Some(finding) = content {
                verdict.push(finding);
            }
        }
        std::mem::swap(&mut batch, &mut ahead);
    }
    let entries = next_index - state.entries_processed;
    let final_pcr = tracker.pcr;
    let mut next_state = tracker.next_state(state);
    let matched = match tracker.matched() {
        Some((count, _)) => {
            next_state
                .learned_keys
                .extend(content.new_keys.into_iter().filter(|(i, _)| *i < count).map(|(_, k)| k));
            Some(count - state.entries_processed)
        }
        None => {
            verdict.push(
                Finding::new(
                    rule::IMA_PCR10_MISMATCH,
                    format!(
                        "quoted PCR {} ({bank}) matches no prefix of the {entries} new entries after entry {}",
                        options.pcr_index, state.entries_processed
                    ),
                )
                .pcr(options.pcr_index)
                .expected(quoted_pcr.to_hex())
                .actual(final_pcr.to_hex()),
            );
            None
        }
    };
    // Progress is kept only over entries that passed: a failed chunk is appraised again, in
    // full, next time (or after the operator changed the policy).
    let state = if verdict.passed() { next_state } else { state.clone() };
    Ok(ImaAppraisal { verdict, state, entries, matched, final_pcr, violations })
}

/// Entries parsed ahead of their checks (see [`ImaRules::prefetch_files`]): enough for the
/// misses of one batch to overlap, few enough that hinted data stays in the L1 cache.
const BATCH: usize = 32;

/// Replaces `batch` with the next (up to) [`BATCH`] entries and hints their paths to `rules`.
fn parse_batch<'a, R: ImaRules + ?Sized>(
    entries: &mut impl Iterator<Item = Result<Entry<'a>, ImaError>>,
    batch: &mut Vec<Result<Entry<'a>, ImaError>>,
    rules: &R,
) {
    batch.clear();
    batch.extend(entries.by_ref().take(BATCH));
    let mut paths = [""; BATCH];
    let mut n = 0;
    for entry in batch.iter().flatten() {
        if !matches!(entry.template, Template::ImaBuf { .. }) {
            paths[n] = entry.name;
            n += 1;
        }
    }
    if n > 0 {
        rules.prefetch_files(&paths[..n]);
    }
}

/// Per-entry content checks: rules, signatures, keyrings; and the keys learned on the way.
struct ContentChecks {
    /// Keys from keyring measurements: those kept in the state, then this round's.
    learned: VerificationKeys,
    /// This round's learned keys with the index of the entry that measured them.
    new_keys: Vec<(u64, LearnedKey)>,
    /// Decoded signature or buffer of the current entry.
    scratch: Vec<u8>,
}

impl ContentChecks {
    fn new(state: &ImaState) -> Result<ContentChecks, ImaError> {
        let mut learned = VerificationKeys::new();
        for (i, k) in state.learned_keys.iter().enumerate() {
            learned
                .add(&k.der)
                .map_err(|e| ImaError::State(format!("learned_keys[{i}] ({}): {e}", k.keyring)))?;
        }
        Ok(ContentChecks { learned, new_keys: Vec::new(), scratch: Vec::new() })
    }

    /// The finding for `entry`, if its content is not allowed.
    fn check<R: ImaRules + ?Sized>(
        &mut self,
        entry: &Entry<'_>,
        rules: &R,
        keys: &VerificationKeys,
    ) -> Option<Finding> {
        match entry.template {
            Template::ImaBuf { buf } => {
                self.scratch.clear();
                buf.append_to(&mut self.scratch);
                let Ok((key, keyid)) = SignatureKey::parse(&self.scratch) else {
                    return match rules.check_buf(entry.name, &entry.digest) {
                        FileCheck::Allowed | FileCheck::Excluded => None,
                        check => Some(rule_finding(rule::IMA_BUF, "buffer", entry, check)),
                    };
                };
                match rules.check_keyring(entry.name, &entry.digest) {
                    FileCheck::Allowed => {
                        self.learned.insert(keyid, key);
                        let der = self.scratch.clone();
                        let learned = LearnedKey { keyring: entry.name.to_owned(), der };
                        self.new_keys.push((entry.index, learned));
                        None
                    }
                    FileCheck::Excluded => None,
                    check => Some(rule_finding(rule::IMA_KEYRING, "key in keyring", entry, check)),
                }
            }
            Template::Ima | Template::ImaNg | Template::ImaSig { .. } => {
                let check = rules.check_file(entry.name, &entry.digest);
                if check == FileCheck::Excluded {
                    return None;
                }
                let mut unknown_key = None;
                if let Template::ImaSig { signature } = entry.template
                    && !signature.is_empty()
                {
                    self.scratch.clear();
                    signature.append_to(&mut self.scratch);
                    match sig::verify_with(&[keys, &self.learned], &self.scratch, &entry.digest) {
                        Ok(_) => return None,
                        Err(_) if check == FileCheck::Allowed => return None,
                        Err(SignatureError::UnknownKey(id)) => unknown_key = Some(id),
                        Err(e) => {
                            return Some(
                                Finding::new(
                                    rule::IMA_SIGNATURE,
                                    format!("line {}: {}: {e}", entry.line(), entry.name),
                                )
                                .line(entry.line())
                                .path(entry.name)
                                .actual(entry.digest.to_string()),
                            );
                        }
                    }
                }
                if check == FileCheck::Allowed {
                    return None;
                }
                let mut f = rule_finding(rule::IMA_NOT_IN_POLICY, "file", entry, check);
                if let Some(id) = unknown_key {
                    f.message.push_str(&format!(" (signed by unknown key id {id:08x})"));
                }
                Some(f)
            }
        }
    }
}

/// Hashes template data for the template-hash check ([`HashAlg::digest`] picks the fastest
/// implementation).
fn log_hash(alg: HashAlg, data: &[u8]) -> Digest {
    alg.digest(data)
}

fn template_hash_finding(entry: &Entry<'_>, computed: &Digest) -> Finding {
    let message = if computed.alg() == entry.template_hash.alg() {
        format!(
            "line {}: template hash of {} does not match its template data",
            entry.line(),
            entry.name
        )
    } else {
        format!(
            "line {}: template hash of {} is {} bytes, the log hash algorithm {} has {}",
            entry.line(),
            entry.name,
            entry.template_hash.as_bytes().len(),
            computed.alg(),
            computed.alg().len()
        )
    };
    Finding::new(rule::IMA_TEMPLATE_HASH, message)
        .line(entry.line())
        .path(entry.name)
        .expected(computed.to_hex())
        .actual(entry.template_hash.to_hex())
}

/// A finding for a measurement the rules did not allow.
fn rule_finding(rule_id: &str, what: &str, entry: &Entry<'_>, check: FileCheck) -> Finding {
    let (rule_id, why) = match (rule_id, check) {
        (r, FileCheck::DigestMismatch) if r == rule::IMA_NOT_IN_POLICY => {
            (rule::IMA_DIGEST_MISMATCH, "digest is not allowed for this path")
        }
        (_, FileCheck::DigestMismatch) => (rule_id, "digest is not allowed for this name"),
        _ => (rule_id, "is not in the runtime policy"),
    };
    Finding::new(
        rule_id,
        format!("line {}: {what} {} ({}): {why}", entry.line(), entry.name, entry.digest),
    )
    .line(entry.line())
    .path(entry.name)
    .actual(entry.digest.to_string())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const LOG: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keylime/ima/ascii_runtime_measurements"
    ));

    /// Allows everything and records the order of hints and checks.
    #[derive(Default)]
    struct Recorder {
        events: RefCell<Vec<(bool, String)>>,
    }

    impl ImaRules for Recorder {
        fn check_file(&self, path: &str, _digest: &FileDigest<'_>) -> FileCheck {
            self.events.borrow_mut().push((false, path.to_owned()));
            FileCheck::Allowed
        }

        fn check_buf(&self, _name: &str, _digest: &FileDigest<'_>) -> FileCheck {
            FileCheck::Allowed
        }

        fn check_keyring(&self, _keyring: &str, _digest: &FileDigest<'_>) -> FileCheck {
            FileCheck::Allowed
        }

        fn prefetch_files(&self, paths: &[&str]) {
            assert!(paths.len() <= BATCH);
            self.events.borrow_mut().extend(paths.iter().map(|p| (true, (*p).to_owned())));
        }
    }

    /// Every checked path was hinted before its check, in the same order, and only those.
    #[test]
    fn every_file_check_is_hinted_ahead_in_order() {
        let quoted = super::super::replay_log(LOG, &[HashAlg::Sha256]).expect("replays").pcrs[0];
        let rules = Recorder::default();
        let keys = VerificationKeys::new();
        let a =
            appraise_log(LOG, &rules, &keys, &ImaState::default(), &ImaOptions::default(), &quoted)
                .expect("appraises");
        assert!(a.verdict.passed());
        let events = rules.events.into_inner();
        let hinted: Vec<&str> = events.iter().filter(|e| e.0).map(|e| e.1.as_str()).collect();
        let checked: Vec<&str> = events.iter().filter(|e| !e.0).map(|e| e.1.as_str()).collect();
        // Violations are hinted but not checked: the fixture has none.
        assert_eq!(a.violations, Vec::<u64>::new());
        assert_eq!(hinted, checked);
        assert!(checked.len() > 2 * BATCH, "the fixture spans several batches");
        let mut pending = 0usize;
        for (hint, _) in &events {
            if *hint {
                pending += 1;
            } else {
                assert!(pending > 0, "a check came before its hint");
                pending -= 1;
            }
        }
    }

    /// A malformed entry anywhere in a batch (first, last, or past a batch boundary) is the
    /// error of the whole appraisal, naming its line.
    #[test]
    fn a_malformed_entry_in_any_batch_position_is_the_error() {
        let lines: Vec<&[u8]> = LOG.split_inclusive(|&b| b == b'\n').collect();
        for bad in [0, 1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 5] {
            let mut log = Vec::new();
            for (i, line) in lines.iter().take(bad + 10).enumerate() {
                if i == bad {
                    log.extend_from_slice(b"10 nothex ima-ng sha1:00 /x\n");
                } else {
                    log.extend_from_slice(line);
                }
            }
            let quoted = HashAlg::Sha256.zero();
            let err = appraise_log(
                &log,
                &Recorder::default(),
                &VerificationKeys::new(),
                &ImaState::default(),
                &ImaOptions::default(),
                &quoted,
            )
            .expect_err("malformed");
            match err {
                ImaError::Malformed { position, .. } => {
                    assert_eq!(position, super::super::Position::Line(bad as u64 + 1))
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn sha1_fast_path_matches_ring() {
        for len in [0, 55, 56, 64, 150, 1000] {
            let data = vec![0xa5; len];
            assert_eq!(log_hash(HashAlg::Sha1, &data), HashAlg::Sha1.digest(&data), "{len}");
        }
    }
}
