//! The runtime policy as the rule set of IMA appraisal.

use super::runtime::{Lookup, RuntimePolicy};
use crate::ima::{FileCheck, FileDigest, ImaRules};

fn check(lookup: Lookup<'_>) -> FileCheck {
    match lookup {
        Lookup::Allowed => FileCheck::Allowed,
        Lookup::Excluded => FileCheck::Excluded,
        Lookup::UnknownPath => FileCheck::UnknownPath,
        Lookup::DigestNotAllowed { .. } => FileCheck::DigestMismatch,
    }
}

impl ImaRules for RuntimePolicy {
    fn check_file(&self, path: &str, digest: &FileDigest<'_>) -> FileCheck {
        check(self.lookup_file(path, digest.as_bytes()))
    }

    fn check_buf(&self, name: &str, digest: &FileDigest<'_>) -> FileCheck {
        check(self.lookup_buf(name, digest.as_bytes()))
    }

    fn check_keyring(&self, keyring: &str, digest: &FileDigest<'_>) -> FileCheck {
        if self.is_keyring_ignored(keyring) {
            return FileCheck::Excluded;
        }
        check(self.lookup_keyring(keyring, digest.as_bytes()))
    }

    fn prefetch_files(&self, paths: &[&str]) {
        // The value is meaningless; `black_box` keeps the loads that bring the paths' index
        // slots and entries into the cache.
        std::hint::black_box(self.files.touch(paths));
    }
}

#[cfg(test)]
mod tests {
    use super::super::RuntimePolicyBuilder;
    use super::RuntimePolicy;
    use crate::alg::HashAlg;
    use crate::ima::{self, ImaOptions, ImaState};
    use crate::ima::{FileCheck, FileDigest, ImaRules};
    use crate::verdict::rule;

    const LOG: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keylime/ima/ascii_runtime_measurements"
    ));

    /// The policy without its prefetch hint.
    struct Unhinted<'a>(&'a RuntimePolicy);

    impl ImaRules for Unhinted<'_> {
        fn check_file(&self, path: &str, digest: &FileDigest<'_>) -> FileCheck {
            self.0.check_file(path, digest)
        }

        fn check_buf(&self, name: &str, digest: &FileDigest<'_>) -> FileCheck {
            self.0.check_buf(name, digest)
        }

        fn check_keyring(&self, keyring: &str, digest: &FileDigest<'_>) -> FileCheck {
            self.0.check_keyring(keyring, digest)
        }
    }

    /// Appraisal with the prefetch hint gives exactly the result it gives without, for a
    /// policy that passes some entries, fails others (unknown path, wrong digest) and excludes
    /// some.
    #[test]
    fn the_prefetch_hint_changes_no_result() {
        let mut b = RuntimePolicyBuilder::new();
        for (i, entry) in ima::Entries::parse(LOG, 0).enumerate() {
            let entry = entry.expect("fixture parses");
            match i % 7 {
                0 => {}
                1 => {
                    b.add_file(entry.name, &[0x42; 32]).expect("valid digest");
                }
                _ => {
                    b.add_file(entry.name, entry.digest.as_bytes()).expect("valid digest");
                }
            }
        }
        b.add_exclude("/usr/lib/systemd/");
        let policy = b.build().expect("builds");
        let opts = ImaOptions::default();
        let keys = ima::VerificationKeys::new();
        let quoted = ima::replay_log(LOG, &[HashAlg::Sha256]).expect("replays").pcrs[0];
        let hinted = ima::appraise_log(LOG, &policy, &keys, &ImaState::default(), &opts, &quoted)
            .expect("appraises");
        let plain =
            ima::appraise_log(LOG, &Unhinted(&policy), &keys, &ImaState::default(), &opts, &quoted)
                .expect("appraises");
        assert_eq!(hinted, plain);
        let rules: std::collections::BTreeSet<&str> =
            hinted.verdict.findings.iter().map(|f| f.rule.as_ref()).collect();
        assert!(rules.contains(rule::IMA_NOT_IN_POLICY), "{rules:?}");
        assert!(rules.contains(rule::IMA_DIGEST_MISMATCH), "{rules:?}");
        // Hints for paths that are not in the policy, or for an empty policy, are harmless.
        policy.prefetch_files(&["", "/nope", &"x".repeat(300)]);
        RuntimePolicy::default().prefetch_files(&["/bin/sh"]);
    }

    /// A policy generated from the real log passes it; dropping one path fails exactly that
    /// entry, naming its line and path.
    #[test]
    fn a_policy_from_the_log_passes_it_and_a_missing_path_is_named() {
        let mut pairs = Vec::new();
        for entry in ima::Entries::parse(LOG, 0) {
            let entry = entry.expect("fixture parses");
            if !entry.is_violation() {
                pairs.push((entry.name.to_owned(), entry.digest.as_bytes().to_vec()));
            }
        }
        let full =
            super::super::from_file_digests(pairs.iter().map(|(p, d)| (p.as_str(), d.as_slice())))
                .expect("policy builds");
        let opts = ImaOptions::default();
        let keys = ima::VerificationKeys::new();
        let quoted = ima::replay_log(LOG, &[HashAlg::Sha256]).expect("replays").pcrs[0];
        let pass = ima::appraise_log(LOG, &full, &keys, &ImaState::default(), &opts, &quoted)
            .expect("appraises");
        assert!(pass.verdict.passed(), "{:?}", pass.verdict.findings);
        assert_eq!(pass.entries, 826);

        let (victim, _) = &pairs[100];
        let fewer = super::super::from_file_digests(
            pairs.iter().filter(|(p, _)| p != victim).map(|(p, d)| (p.as_str(), d.as_slice())),
        )
        .expect("policy builds");
        let fail = ima::appraise_log(LOG, &fewer, &keys, &ImaState::default(), &opts, &quoted)
            .expect("appraises");
        assert!(!fail.verdict.passed());
        assert!(fail.verdict.findings.iter().all(|f| f.rule == rule::IMA_NOT_IN_POLICY));
        assert!(fail.verdict.findings.iter().all(|f| f.path.as_deref() == Some(victim.as_str())));
        assert!(fail.verdict.findings.iter().any(|f| f.line.is_some()));
    }
}
