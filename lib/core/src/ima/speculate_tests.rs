//! [`RecordedChecks`] on logs with every kind of content check: `ima-sig` entries with good,
//! bad, unknown-key and missing signatures, keys measured into keyrings (which later entries
//! are signed with), and plain `ima-buf` buffers, against runtime policies that allow, exclude,
//! ignore, refuse or do not know each of them. A recording that `confirm` accepts stands in
//! for the real appraisal, so it must be that appraisal exactly; and since anything else the
//! rules answer changes a finding or a learned key, `confirm` must decline exactly then.

use std::sync::LazyLock;

use proptest::prelude::*;
use ring::signature as rs;

use super::sig_tests::{HASH_ALGO_SHA256, fixture, pem_der, rsa_sign, sig_field};
use super::tests::make_line;
use super::*;
use crate::alg::HashAlg;
use crate::policy::{RuntimePolicy, RuntimePolicyBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Keyring,
    Buf,
}

/// One entry of the test log.
#[derive(Debug)]
struct Item {
    kind: Kind,
    name: &'static str,
    digest: Vec<u8>,
    line: String,
}

struct Fixture {
    items: Vec<Item>,
    /// The fixture RSA key that signs some entries, as DER SubjectPublicKeyInfo.
    signing_key: Vec<u8>,
}

impl Fixture {
    fn log(&self, from: usize) -> String {
        self.items[from..].iter().map(|i| i.line.as_str()).collect()
    }
}

/// Built once: RSA signing is slow next to an appraisal of 16 entries.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let signing_key = pem_der("ima/keys/rsa2048pub.pem", "PUBLIC KEY");
    let mut keys = VerificationKeys::new();
    let key_id = keys.add(&fixture("ima/keys/rsa2048pub.pem")).expect("fixture key");
    let cert = pem_der("revocation/test-cert.pem", "CERTIFICATE");
    let signed = |key: &str, keyid: u32, content: &[u8]| {
        sig_field(HASH_ALGO_SHA256, keyid, &rsa_sign(key, &rs::RSA_PKCS1_SHA256, content))
    };
    let by_fixture_key = |content: &[u8]| signed("ima/keys/rsa2048.pem", key_id, content);
    // The key of test-cert.pem, which the log measures into `.ima` before using it.
    let by_keyring_key = |content: &[u8]| signed("revocation/test-rsa.pem", 0xc623_217a, content);

    let mut items = Vec::new();
    let mut push = |kind: Kind, name: &'static str, content: &[u8], extra: Option<Vec<u8>>| {
        let digest = HashAlg::Sha256.digest(content).as_bytes().to_vec();
        let template = match (&extra, kind) {
            (Some(sig), Kind::File) => Template::ImaSig { signature: Blob::Raw(sig) },
            (None, Kind::File) => Template::ImaNg,
            (_, Kind::Keyring | Kind::Buf) => Template::ImaBuf { buf: Blob::Raw(content) },
        };
        let line = make_line(10, template, "sha256", &digest, name);
        items.push(Item { kind, name, digest, line });
    };
    push(Kind::File, "boot_aggregate", b"boot", None);
    push(Kind::File, "/usr/bin/good", b"good", Some(by_fixture_key(b"good")));
    push(Kind::File, "/usr/bin/bad", b"bad", Some(by_fixture_key(b"not bad")));
    push(Kind::File, "/usr/bin/unknown-key", b"unknown", Some(sig_field(4, 0x1234_5678, &[1; 8])));
    push(Kind::File, "/usr/bin/unsigned", b"unsigned", Some(Vec::new()));
    push(Kind::File, "/usr/bin/short", b"short", Some(vec![3, 2]));
    // Signed by a key no policy holds before the log measures it into `.ima`.
    push(Kind::File, "/opt/early", b"early", Some(by_keyring_key(b"early")));
    push(Kind::Keyring, ".ima", &cert, None);
    push(Kind::File, "/opt/tool", b"tool", Some(by_keyring_key(b"tool")));
    push(Kind::Keyring, "_ima", &signing_key, None);
    push(Kind::Buf, "kexec-cmdline", b"root=/dev/vda1 ro", None);
    push(Kind::Buf, "kernel_version", b"6.1.0", None);
    push(Kind::File, "/var/lib/excluded/tool", b"excluded", Some(by_fixture_key(b"other")));
    // Paths and buffers measured again with other content.
    push(Kind::File, "/usr/bin/bad", b"bad v2", Some(by_fixture_key(b"bad v2")));
    push(Kind::File, "/etc/config", b"a=1", None);
    push(Kind::File, "/etc/config", b"a=2", None);
    push(Kind::Buf, "kexec-cmdline", b"root=/dev/vda2 ro", None);
    Fixture { items, signing_key }
});

/// What a test policy says about one entry of the log (for its kind of entry).
#[derive(Debug, Clone, Copy)]
enum Rule {
    Allowed,
    /// Allowed, and so are two other digests (one of another length).
    AmongOthers,
    /// Two other digests are allowed, this one not.
    OtherDigests,
    Missing,
    /// An exclude regex that matches the name (for a keyring, its name: lookups of keyrings
    /// go through the excludes too).
    Excluded,
    /// Files: an exclude for the directory; keyrings: the keyring is ignored.
    Ignored,
    /// Every keyring ignored (`*`), whatever the entry.
    IgnoredAll,
}

fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        6 => Just(Rule::Allowed),
        2 => Just(Rule::AmongOthers),
        1 => Just(Rule::OtherDigests),
        1 => Just(Rule::Missing),
        2 => Just(Rule::Excluded),
        1 => Just(Rule::Ignored),
        1 => Just(Rule::IgnoredAll),
    ]
}

fn policy(rules: &[Rule], with_signing_key: bool) -> RuntimePolicy {
    let fx = &*FIXTURE;
    let mut b = RuntimePolicyBuilder::new();
    if with_signing_key {
        b.add_signing_key(&fx.signing_key).expect("fixture key");
    }
    for (item, rule) in fx.items.iter().zip(rules.iter().cycle()) {
        let digests: Vec<&[u8]> = match rule {
            Rule::Allowed => vec![&item.digest],
            Rule::AmongOthers => vec![&[0x11; 32], &item.digest, &[0x22; 20]],
            Rule::OtherDigests => vec![&[0x11; 32], &[0x22; 20]],
            Rule::Excluded => {
                b.add_exclude(&regex::escape(item.name));
                continue;
            }
            Rule::Ignored => {
                match item.kind {
                    Kind::Keyring => {
                        b.ignore_keyring(item.name);
                    }
                    Kind::File => {
                        let dir = item.name.rsplit_once('/').map_or("", |(dir, _)| dir);
                        b.add_exclude(&format!("{}/", regex::escape(dir)));
                    }
                    Kind::Buf => {}
                }
                continue;
            }
            Rule::IgnoredAll => {
                b.ignore_keyring("*");
                continue;
            }
            Rule::Missing => continue,
        };
        for d in digests {
            match item.kind {
                Kind::File => b.add_file(item.name, d),
                Kind::Keyring => b.add_keyring_digest(item.name, d),
                Kind::Buf => b.add_buffer(item.name, d),
            }
            .expect("digest length");
        }
    }
    b.build().expect("builds")
}

/// The policy's keys, as the verifier and kctl give them to appraisal.
fn keys_of(policy: &RuntimePolicy) -> VerificationKeys {
    let mut keys = VerificationKeys::new();
    for der in policy.signing_keys() {
        keys.add(der).expect("policy key");
    }
    keys
}

fn appraise(
    from: usize,
    rules: &(impl ImaRules + ?Sized),
    keys: &VerificationKeys,
    state: &ImaState,
) -> ImaAppraisal {
    let full = FIXTURE.log(0);
    let quoted = replay_log(full.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let chunk = FIXTURE.log(from);
    appraise_log(chunk.as_bytes(), rules, keys, state, &ImaOptions::default(), &quoted)
        .expect("appraises")
}

/// The speculative appraisal as kctl runs it (no keys: it does not know the policy yet) next
/// to the real one, from entry `from` on with `state`; whether `confirm` accepted.
fn both(
    policy: &RuntimePolicy,
    from: usize,
    state: &ImaState,
) -> (bool, ImaAppraisal, ImaAppraisal) {
    let recorded = RecordedChecks::new();
    let speculative = appraise(from, &recorded, &VerificationKeys::new(), state);
    assert_eq!(recorded.len(), FIXTURE.items.len() - from, "one question per entry");
    let real = appraise(from, policy, &keys_of(policy), state);
    let confirmed = recorded.confirm(policy);
    assert_eq!(confirmed, answers_are_fine(policy, from), "confirm replays other questions");
    (confirmed, speculative, real)
}

/// What `confirm` must say, asked entry by entry: files and buffers allowed or excluded,
/// keys allowed on their keyring. (It may decline when the appraisals would be identical
/// anyway: a signed file the policy does not allow, whose signature verifies.)
fn answers_are_fine(policy: &RuntimePolicy, from: usize) -> bool {
    FIXTURE.items[from..].iter().all(|item| {
        let digest = FileDigest::new("sha256", &item.digest).expect("digest");
        match item.kind {
            Kind::File => matches!(
                policy.check_file(item.name, &digest),
                FileCheck::Allowed | FileCheck::Excluded
            ),
            Kind::Buf => matches!(
                policy.check_buf(item.name, &digest),
                FileCheck::Allowed | FileCheck::Excluded
            ),
            Kind::Keyring => policy.check_keyring(item.name, &digest) == FileCheck::Allowed,
        }
    })
}

fn rule_ids(a: &ImaAppraisal) -> Vec<&str> {
    a.verdict.findings.iter().map(|f| f.rule.as_str()).collect()
}

/// Every rule for every entry, one at a time with everything else allowed: when `confirm`
/// accepts the appraisals are identical, and it declines only where they differ or where a
/// signature makes the policy's answer moot.
#[test]
fn each_answer_for_each_kind_of_entry() {
    let n = FIXTURE.items.len();
    let all = [
        Rule::Allowed,
        Rule::AmongOthers,
        Rule::OtherDigests,
        Rule::Missing,
        Rule::Excluded,
        Rule::Ignored,
        Rule::IgnoredAll,
    ];
    let second_bad = FIXTURE.items.iter().rposition(|i| i.name == "/usr/bin/bad").expect("twice");
    for (i, item) in FIXTURE.items.iter().enumerate() {
        for rule in all {
            let mut rules = vec![Rule::Allowed; n];
            rules[i] = rule;
            for with_key in [false, true] {
                let policy = policy(&rules, with_key);
                let (confirmed, speculative, real) = both(&policy, 0, &ImaState::default());
                let what =
                    format!("entry {i} {} {:?}: {rule:?}, key {with_key}", item.name, item.kind);
                if confirmed {
                    assert_eq!(speculative, real, "{what}");
                    assert!(real.verdict.passed(), "{what}");
                } else if speculative == real {
                    // Declined needlessly: only for a signed file that verifies with the
                    // policy's key or a key learned earlier in the log.
                    let verified = match item.name {
                        "/opt/tool" => true,
                        "/usr/bin/good" => with_key,
                        "/usr/bin/bad" => i == second_bad,
                        _ => false,
                    };
                    assert!(verified, "{what}: declined, but the appraisals are identical");
                }
            }
        }
    }
}

/// The cases named: a bad signature on an excluded path confirms (the exclude skips the
/// signature check in both appraisals); a bad signature on a path the policy does not allow
/// does not; keyrings that are ignored, excluded or not in the policy do not confirm, and
/// the real appraisal then differs (a finding, or a key not learned).
#[test]
fn signed_entries_and_keyrings_against_the_real_policy() {
    let n = FIXTURE.items.len();
    let at = |name: &str, kind: Kind| {
        FIXTURE.items.iter().position(|i| i.name == name && i.kind == kind).expect("in the log")
    };
    let with = |i: usize, rule: Rule| {
        let mut rules = vec![Rule::Allowed; n];
        rules[i] = rule;
        policy(&rules, false)
    };
    let excluded = at("/var/lib/excluded/tool", Kind::File);
    let bad = at("/usr/bin/bad", Kind::File);
    let ima = at(".ima", Kind::Keyring);
    let cmdline = at("kexec-cmdline", Kind::Buf);

    // Everything allowed: the keys of both keyrings are learned, in log order.
    let (confirmed, speculative, real) = both(&with(0, Rule::Allowed), 0, &ImaState::default());
    assert!(confirmed);
    assert_eq!(speculative, real);
    let learned: Vec<_> = real.state.learned_keys.iter().map(|k| k.keyring.as_str()).collect();
    assert_eq!(learned, [".ima", "_ima"]);

    for rule in [Rule::Excluded, Rule::Ignored] {
        let (confirmed, speculative, real) = both(&with(excluded, rule), 0, &ImaState::default());
        assert!(confirmed, "{rule:?}");
        assert_eq!(speculative, real, "{rule:?}");
    }
    for rule in [Rule::Missing, Rule::OtherDigests] {
        let (confirmed, _, real) = both(&with(excluded, rule), 0, &ImaState::default());
        assert!(!confirmed, "{rule:?}");
        assert_eq!(rule_ids(&real), [crate::verdict::rule::IMA_SIGNATURE], "{rule:?}");
    }
    // The first measurement of the path is signed with a key not known yet (measured into
    // `_ima` later): a digest the policy does not allow. The second verifies with the
    // learned key, whatever the policy says about its digest.
    let (confirmed, _, real) = both(&with(bad, Rule::OtherDigests), 0, &ImaState::default());
    assert!(!confirmed);
    assert_eq!(rule_ids(&real), [crate::verdict::rule::IMA_DIGEST_MISMATCH]);
    assert_eq!(real.verdict.findings[0].line, Some(bad as u64 + 1));

    for rule in [Rule::Excluded, Rule::Ignored, Rule::IgnoredAll] {
        let (confirmed, speculative, real) = both(&with(ima, rule), 0, &ImaState::default());
        assert!(!confirmed, "{rule:?}");
        // Not learned: the entry signed with it falls back to the policy, which allows it.
        assert!(real.verdict.passed(), "{rule:?}: {:?}", real.verdict.findings);
        assert_ne!(speculative.state.learned_keys, real.state.learned_keys, "{rule:?}");
    }
    for rule in [Rule::Missing, Rule::OtherDigests] {
        let (confirmed, _, real) = both(&with(ima, rule), 0, &ImaState::default());
        assert!(!confirmed, "{rule:?}");
        assert_eq!(rule_ids(&real), [crate::verdict::rule::IMA_KEYRING], "{rule:?}");
    }
    let (confirmed, speculative, real) =
        both(&with(cmdline, Rule::Excluded), 0, &ImaState::default());
    assert!(confirmed);
    assert_eq!(speculative, real);
    let (confirmed, _, real) = both(&with(cmdline, Rule::Missing), 0, &ImaState::default());
    assert!(!confirmed);
    assert_eq!(rule_ids(&real), [crate::verdict::rule::IMA_BUF]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Generated policies over the mixed log, appraised in one round or in two (the second
    /// starting from the state the real policy left, with the keys it learned): `confirm`
    /// accepts exactly when the recorded appraisal is the real one.
    #[test]
    fn confirmed_means_identical_with_signatures_keyrings_and_buffers(
        // Mostly answers that confirm, and a few of any kind: with each entry's answer drawn
        // from all of them, nearly every policy fails some entry and nothing is confirmed.
        mut rules in proptest::collection::vec(
            prop_oneof![4 => Just(Rule::Allowed), 2 => Just(Rule::AmongOthers), 1 => Just(Rule::Excluded)],
            17,
        ),
        others in proptest::collection::vec((0..17usize, rule()), 0..3),
        with_key in any::<bool>(),
        split in 0..17usize,
    ) {
        let n = FIXTURE.items.len();
        let split = split.min(n);
        for (i, rule) in others {
            rules[i % n] = rule;
        }
        let policy = policy(&rules, with_key);
        let (confirmed, speculative, real) = both(&policy, 0, &ImaState::default());
        if confirmed {
            prop_assert_eq!(&speculative, &real);
        }

        // Round one with the real policy, quoted after `split` entries.
        let first = FIXTURE.log(0);
        let first = &first[..FIXTURE.items[..split].iter().map(|i| i.line.len()).sum::<usize>()];
        let quoted = replay_log(first.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0];
        let round1 = appraise_log(
            first.as_bytes(),
            &policy,
            &keys_of(&policy),
            &ImaState::default(),
            &ImaOptions::default(),
            &quoted,
        )
        .expect("appraises");
        if !round1.verdict.passed() {
            // A failed round keeps the prior state: the next round starts over (above).
            return Ok(());
        }
        let (confirmed, speculative, real) = both(&policy, split, &round1.state);
        if confirmed {
            prop_assert_eq!(&speculative, &real);
        }
    }
}
