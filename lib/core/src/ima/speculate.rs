//! Appraisal before the rules are known: the costly part of appraising a log (parsing, hashing
//! template data, replaying PCR 10) does not depend on the rules, so a caller that is still
//! loading a large runtime policy can appraise the log against [`RecordedChecks`], which
//! allows everything and writes every question down, and then [`RecordedChecks::confirm`] the
//! answers with the real rules once they are loaded.
//!
//! Why the result is then the real one: appraisal is deterministic given the rules' answers,
//! and it only acts on them in these ways: a file or buffer measurement that is allowed or
//! excluded yields no finding and changes no state (an excluded `ima-sig` entry skips its
//! signature check, whose only outcome for an allowed entry is also "no finding"), and a
//! keyring measurement that is allowed teaches appraisal a key. So when the real rules allow
//! or exclude every file and buffer that was asked about, and allow every keyring measurement,
//! the real appraisal asks the same questions, gets answers with the same effects, and returns
//! the same [`ImaAppraisal`](super::ImaAppraisal). When `confirm` says no, the caller appraises
//! again with the real rules (the slow path, taken when something fails anyway).

use std::cell::RefCell;

use super::appraise::{FileCheck, ImaRules};
use super::entry::FileDigest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Buf,
    Keyring,
}

#[derive(Debug, Clone, Copy)]
struct Question {
    kind: Kind,
    /// End of the name in `names`; the name starts where the previous one ends.
    name_end: u32,
    alg_end: u32,
    digest_len: u8,
}

#[derive(Debug, Default)]
struct Record {
    questions: Vec<Question>,
    /// Names and algorithm names back to back (one allocation for a whole log).
    names: String,
    digests: Vec<u8>,
}

/// Rules that allow everything and record each question asked (see the module comment).
#[derive(Debug, Default)]
pub struct RecordedChecks {
    record: RefCell<Record>,
}

impl RecordedChecks {
    pub fn new() -> RecordedChecks {
        RecordedChecks::default()
    }

    /// Room for the questions of a log of `entries` entries.
    pub fn with_capacity(entries: usize) -> RecordedChecks {
        let record = Record {
            questions: Vec::with_capacity(entries),
            names: String::with_capacity(entries * 64),
            digests: Vec::with_capacity(entries * 32),
        };
        RecordedChecks { record: RefCell::new(record) }
    }

    /// Number of questions recorded.
    pub fn len(&self) -> usize {
        self.record.borrow().questions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ask(&self, kind: Kind, name: &str, digest: &FileDigest<'_>) -> FileCheck {
        let mut r = self.record.borrow_mut();
        r.names.push_str(name);
        let name_end = r.names.len() as u32;
        r.names.push_str(digest.alg_name());
        let alg_end = r.names.len() as u32;
        let bytes = digest.as_bytes();
        r.digests.extend_from_slice(bytes);
        r.questions.push(Question { kind, name_end, alg_end, digest_len: bytes.len() as u8 });
        FileCheck::Allowed
    }

    /// Whether `rules` answer every recorded question in a way that leaves the appraisal
    /// against `self` exactly the appraisal against `rules`: files and buffers allowed or
    /// excluded, keyring measurements allowed. File questions are hinted to
    /// [`ImaRules::prefetch_files`] in batches, as appraisal does.
    pub fn confirm<R: ImaRules + ?Sized>(&self, rules: &R) -> bool {
        const BATCH: usize = 32;
        let r = self.record.borrow();
        // A record longer than 4 GiB of names cannot be replayed from u32 offsets.
        if r.names.len() > u32::MAX as usize {
            return false;
        }
        let mut name_start = 0usize;
        let mut digest_start = 0usize;
        let mut batch: Vec<(Kind, &str, FileDigest<'_>)> = Vec::with_capacity(BATCH);
        let mut paths: Vec<&str> = Vec::with_capacity(BATCH);
        for chunk in r.questions.chunks(BATCH) {
            batch.clear();
            paths.clear();
            for q in chunk {
                let name = r.names.get(name_start..q.name_end as usize);
                let alg = r.names.get(q.name_end as usize..q.alg_end as usize);
                let digest_end = digest_start + usize::from(q.digest_len);
                let digest = r.digests.get(digest_start..digest_end);
                name_start = q.alg_end as usize;
                digest_start = digest_end;
                let (Some(name), Some(alg), Some(digest)) = (name, alg, digest) else {
                    return false;
                };
                let Some(digest) = FileDigest::new(alg, digest) else { return false };
                if q.kind == Kind::File {
                    paths.push(name);
                }
                batch.push((q.kind, name, digest));
            }
            if !paths.is_empty() {
                rules.prefetch_files(&paths);
            }
            for (kind, name, digest) in &batch {
                let fine = match kind {
                    Kind::File => {
                        matches!(
                            rules.check_file(name, digest),
                            FileCheck::Allowed | FileCheck::Excluded
                        )
                    }
                    Kind::Buf => {
                        matches!(
                            rules.check_buf(name, digest),
                            FileCheck::Allowed | FileCheck::Excluded
                        )
                    }
                    Kind::Keyring => rules.check_keyring(name, digest) == FileCheck::Allowed,
                };
                if !fine {
                    return false;
                }
            }
        }
        true
    }
}

impl ImaRules for RecordedChecks {
    fn check_file(&self, path: &str, digest: &FileDigest<'_>) -> FileCheck {
        self.ask(Kind::File, path, digest)
    }

    fn check_buf(&self, name: &str, digest: &FileDigest<'_>) -> FileCheck {
        self.ask(Kind::Buf, name, digest)
    }

    fn check_keyring(&self, keyring: &str, digest: &FileDigest<'_>) -> FileCheck {
        self.ask(Kind::Keyring, keyring, digest)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::alg::HashAlg;
    use crate::ima::{self, Entries, ImaAppraisal, ImaOptions, ImaState, VerificationKeys};
    use crate::policy::{RuntimePolicy, RuntimePolicyBuilder};

    const LOG: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keylime/ima/ascii_runtime_measurements"
    ));

    /// What each entry of the fixture log gets in a test policy.
    #[derive(Debug, Clone, Copy)]
    enum Rule {
        Allowed,
        Missing,
        OtherDigest,
        Excluded,
    }

    fn policy(rules: &[Rule]) -> RuntimePolicy {
        let mut b = RuntimePolicyBuilder::new();
        for (i, entry) in Entries::parse(LOG, 0).enumerate() {
            let entry = entry.expect("fixture parses");
            match rules[i % rules.len()] {
                Rule::Allowed => {
                    b.add_file(entry.name, entry.digest.as_bytes()).expect("digest");
                }
                Rule::Missing => {}
                Rule::OtherDigest => {
                    b.add_file(entry.name, &[0x42; 32]).expect("digest");
                }
                Rule::Excluded => {
                    // Anchored at the start, as Keylime's excludes are.
                    b.add_exclude(&regex::escape(entry.name));
                }
            }
        }
        b.build().expect("builds")
    }

    fn appraise(rules: &impl ImaRules) -> ImaAppraisal {
        let quoted = ima::replay_log(LOG, &[HashAlg::Sha256]).expect("replays").pcrs[0];
        ima::appraise_log(
            LOG,
            rules,
            &VerificationKeys::new(),
            &ImaState::default(),
            &ImaOptions::default(),
            &quoted,
        )
        .expect("appraises")
    }

    /// A policy that allows or excludes every entry confirms the recording, and the
    /// appraisal against the recording is the appraisal against the policy.
    #[test]
    fn allowed_and_excluded_entries_confirm_with_the_same_result() {
        let recorded = RecordedChecks::with_capacity(1000);
        let speculative = appraise(&recorded);
        assert_eq!(recorded.len(), 826);
        for rules in [&[Rule::Allowed][..], &[Rule::Allowed, Rule::Excluded]] {
            let policy = policy(rules);
            assert!(recorded.confirm(&policy), "{rules:?}");
            assert_eq!(speculative, appraise(&policy), "{rules:?}");
        }
    }

    /// One entry not in the policy, or with another digest, and the recording is not
    /// confirmed: the caller must appraise with the policy (which then fails).
    #[test]
    fn one_failing_entry_refuses_the_recording() {
        let recorded = RecordedChecks::new();
        appraise(&recorded);
        for bad in [Rule::Missing, Rule::OtherDigest] {
            let mut rules = vec![Rule::Allowed; 826];
            rules[700] = bad;
            let policy = policy(&rules);
            assert!(!recorded.confirm(&policy), "{bad:?}");
            assert!(!appraise(&policy).verdict.passed(), "{bad:?}");
        }
        // Nothing asked, nothing to refuse.
        assert!(RecordedChecks::new().is_empty());
        assert!(RecordedChecks::new().confirm(&policy(&[Rule::Missing])));
    }

    /// A keyring measurement is confirmed only when allowed (an allowed key is learned, an
    /// ignored keyring's is not), and buffers when allowed or excluded.
    #[test]
    fn keyrings_confirm_only_when_allowed() {
        struct Answer(FileCheck);
        impl ImaRules for Answer {
            fn check_file(&self, _: &str, _: &FileDigest<'_>) -> FileCheck {
                self.0
            }
            fn check_buf(&self, _: &str, _: &FileDigest<'_>) -> FileCheck {
                self.0
            }
            fn check_keyring(&self, _: &str, _: &FileDigest<'_>) -> FileCheck {
                self.0
            }
        }
        let digest = FileDigest::new("sha256", &[7; 32]).expect("digest");
        let keyring = RecordedChecks::new();
        assert_eq!(keyring.check_keyring(".ima", &digest), FileCheck::Allowed);
        let buffer = RecordedChecks::new();
        buffer.check_buf("kernel_version", &digest);
        assert!(keyring.confirm(&Answer(FileCheck::Allowed)));
        assert!(!keyring.confirm(&Answer(FileCheck::Excluded)));
        assert!(buffer.confirm(&Answer(FileCheck::Excluded)));
        assert!(!buffer.confirm(&Answer(FileCheck::DigestMismatch)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the policy, a confirmed recording gives exactly the policy's appraisal,
        /// and an unconfirmed one belongs to a policy that does not pass the log.
        #[test]
        fn confirmed_means_identical(
            rules in proptest::collection::vec(
                prop_oneof![
                    8 => Just(Rule::Allowed),
                    1 => Just(Rule::Missing),
                    1 => Just(Rule::OtherDigest),
                    2 => Just(Rule::Excluded),
                ],
                1..40,
            )
        ) {
            let recorded = RecordedChecks::new();
            let speculative = appraise(&recorded);
            let policy = policy(&rules);
            let real = appraise(&policy);
            if recorded.confirm(&policy) {
                prop_assert_eq!(speculative, real);
            } else {
                prop_assert!(!real.verdict.passed());
            }
        }
    }
}
