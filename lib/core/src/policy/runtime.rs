//! The in-memory runtime policy: parsed once, immutable, shared (`Arc`) by every appraisal.
//!
//! Lookups are O(1) per IMA entry and never allocate. Exclude regexes are compiled once into a
//! single regex anchored at the start only, which is what Keylime's Python `re.match` does.
//!
//! Order of checks, and why it is equivalent to Keylime: Keylime skips an excluded entry before
//! looking at its digest, so an excluded path passes whatever its digest. A path that is in the
//! policy with a matching digest passes too. The two outcomes only differ in the label
//! (`Allowed` vs `Excluded`), never in the verdict, so [`RuntimePolicy::lookup_file`] looks the
//! path up first and runs the exclude regex only when the entry would otherwise fail. Known,
//! allowed paths (the common case) never touch the regex engine.

use std::sync::OnceLock;

use regex::Regex;

use super::PolicyError;
use super::table::{DigestList, DigestTable, Duplicates, TableBuilder, TableError, prefixed_hex};
use crate::alg::HashAlg;
use crate::verdict::{Finding, rule};

/// The outcome of looking up one measurement (file, buffer or key) in a runtime policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name is in the policy and the digest is one of its allowed digests.
    Allowed,
    /// The name matches an exclude; the entry is not checked.
    Excluded,
    /// The name is not in the policy (and not excluded).
    UnknownPath,
    /// The name is in the policy, but with other digests.
    DigestNotAllowed { allowed: DigestList<'a> },
}

/// The name under which IMA-log appraisal refers to [`Lookup`] for files.
pub type FileLookup<'a> = Lookup<'a>;

impl Lookup<'_> {
    /// Whether the entry passes (allowed or excluded).
    pub fn passes(&self) -> bool {
        matches!(self, Lookup::Allowed | Lookup::Excluded)
    }

    /// The finding for a file measurement that does not pass: `ima.not_in_policy` for an
    /// unknown path, `ima.digest_mismatch` (with the allowed digests as `expected`) otherwise.
    /// `actual` is the measured digest; callers add the IMA log line.
    pub fn file_finding(&self, path: &str, actual: &[u8]) -> Option<Finding> {
        self.finding(rule::IMA_NOT_IN_POLICY, rule::IMA_DIGEST_MISMATCH, "file", path, actual)
    }

    /// The finding for an `ima-buf` measurement that does not pass (`ima.buf_not_in_policy`).
    pub fn buf_finding(&self, name: &str, actual: &[u8]) -> Option<Finding> {
        self.finding(rule::IMA_BUF, rule::IMA_BUF, "buffer", name, actual)
    }

    /// The finding for a key loaded onto a keyring that does not pass (`ima.keyring`).
    pub fn keyring_finding(&self, keyring: &str, actual: &[u8]) -> Option<Finding> {
        self.finding(rule::IMA_KEYRING, rule::IMA_KEYRING, "key on keyring", keyring, actual)
    }

    fn finding(
        &self,
        unknown_rule: &str,
        mismatch_rule: &str,
        what: &str,
        name: &str,
        actual: &[u8],
    ) -> Option<Finding> {
        let actual_hex = prefixed_hex(actual);
        match self {
            Lookup::Allowed | Lookup::Excluded => None,
            Lookup::UnknownPath => Some(
                Finding::new(unknown_rule, format!("{what} {name:?} is not in the runtime policy"))
                    .path(name)
                    .actual(actual_hex),
            ),
            Lookup::DigestNotAllowed { allowed } => Some(
                Finding::new(
                    mismatch_rule,
                    format!("{what} {name:?} has digest {actual_hex}, which the runtime policy does not allow"),
                )
                .path(name)
                .expected(allowed.to_prefixed_hex())
                .actual(actual_hex),
            ),
        }
    }
}

/// From this many files on, the content digest hashes on a second thread while this one
/// writes the canonical form (a few MB); below, a thread costs more than it saves.
const PIPELINED_DIGEST_FILES: usize = 20_000;

/// Exclude regexes: the sources (sorted, deduplicated) and one compiled alternation.
#[derive(Debug, Clone, Default)]
struct Excludes {
    patterns: Vec<String>,
    regex: Option<Regex>,
}

/// Keeps the readable part of a regex error (the crate prints a multi-line diagram).
fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| text.replace('\n', " "))
}

/// Rewrites the Python escapes that the regex crate spells differently: `\Z` (end of text)
/// is `\z` here. The policy keeps the pattern as written.
fn rust_syntax(pattern: &str) -> std::borrow::Cow<'_, str> {
    if !pattern.contains("\\Z") {
        return pattern.into();
    }
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '\\' {
            match chars.next() {
                Some('Z') => out.push('z'),
                Some(next) => out.push(next),
                None => {}
            }
        }
    }
    out.into()
}

/// Checks one exclude on its own, so that an unbalanced pattern such as `a)|(.*` cannot
/// change the meaning of the combined alternation.
pub(crate) fn check_exclude(pattern: &str) -> Result<(), String> {
    Regex::new(&rust_syntax(pattern)).map(|_| ()).map_err(|e| regex_message(&e))
}

impl Excludes {
    /// Checks each pattern (errors give its index in the order given), then sorts,
    /// deduplicates and compiles them into one regex.
    fn compile(mut patterns: Vec<String>) -> Result<Excludes, PolicyError> {
        for (index, p) in patterns.iter().enumerate() {
            check_exclude(p).map_err(|message| PolicyError::Exclude {
                index,
                pattern: p.clone(),
                message,
            })?;
        }
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(Excludes::default());
        }
        let alternation: Vec<String> =
            patterns.iter().map(|p| format!("(?:{})", rust_syntax(p))).collect();
        let regex = regex::RegexBuilder::new(&format!("^(?:{})", alternation.join("|")))
            .size_limit(256 << 20)
            .build()
            .map_err(|e| PolicyError::Invalid {
                section: "excludes",
                message: format!("the {} excludes together: {}", patterns.len(), regex_message(&e)),
            })?;
        Ok(Excludes { patterns, regex: Some(regex) })
    }

    fn matches(&self, name: &str) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A runtime (IMA) policy. Build one with [`RuntimePolicyBuilder`] or a parser
/// ([`super::load`], [`super::native::parse`], [`super::keylime::parse`], ...).
#[derive(Debug)]
pub struct RuntimePolicy {
    pub(crate) log_hash_alg: HashAlg,
    pub(crate) files: DigestTable,
    excludes: Excludes,
    pub(crate) keyrings: DigestTable,
    pub(crate) ignored_keyrings: Vec<String>,
    pub(crate) buffers: DigestTable,
    pub(crate) signing_keys: Vec<Vec<u8>>,
    content_digest: OnceLock<[u8; 32]>,
}

impl PartialEq for RuntimePolicy {
    fn eq(&self, other: &Self) -> bool {
        self.log_hash_alg == other.log_hash_alg
            && self.files == other.files
            && self.excludes.patterns == other.excludes.patterns
            && self.keyrings == other.keyrings
            && self.ignored_keyrings == other.ignored_keyrings
            && self.buffers == other.buffers
            && self.signing_keys == other.signing_keys
    }
}

impl Eq for RuntimePolicy {}

impl Default for RuntimePolicy {
    fn default() -> Self {
        RuntimePolicy {
            log_hash_alg: HashAlg::Sha1,
            files: DigestTable::default(),
            excludes: Excludes::default(),
            keyrings: DigestTable::default(),
            ignored_keyrings: Vec::new(),
            buffers: DigestTable::default(),
            signing_keys: Vec::new(),
            content_digest: OnceLock::new(),
        }
    }
}

fn lookup<'a>(
    table: &'a DigestTable,
    excludes: &Excludes,
    name: &str,
    digest: &[u8],
) -> Lookup<'a> {
    let known = table.get(name);
    if let Some(list) = known
        && list.contains(digest)
    {
        return Lookup::Allowed;
    }
    if excludes.matches(name) {
        return Lookup::Excluded;
    }
    match known {
        Some(allowed) => Lookup::DigestNotAllowed { allowed },
        None => Lookup::UnknownPath,
    }
}

impl RuntimePolicy {
    /// Checks a file measurement (`ima`, `ima-ng`, `ima-sig` entries). `digest` is raw; its
    /// length implies the algorithm, so a SHA-1 digest never matches a SHA-256 entry.
    pub fn lookup_file(&self, path: &str, digest: &[u8]) -> Lookup<'_> {
        lookup(&self.files, &self.excludes, path, digest)
    }

    /// Checks an `ima-buf` measurement that is not a key, by its name (e.g. `kernel_version`).
    pub fn lookup_buf(&self, name: &str, digest: &[u8]) -> Lookup<'_> {
        lookup(&self.buffers, &self.excludes, name, digest)
    }

    /// Checks a key loaded onto `keyring` (an `ima-buf` entry whose buffer is a key); callers
    /// first skip keyrings for which [`RuntimePolicy::is_keyring_ignored`] holds.
    pub fn lookup_keyring(&self, keyring: &str, digest: &[u8]) -> Lookup<'_> {
        lookup(&self.keyrings, &self.excludes, keyring, digest)
    }

    /// Whether keys loaded onto `keyring` are not checked (`*` ignores every keyring).
    pub fn is_keyring_ignored(&self, keyring: &str) -> bool {
        self.ignored_keyrings.iter().any(|k| k == "*" || k == keyring)
    }

    /// Whether `path` matches an exclude (anchored at the start, not at the end).
    pub fn is_excluded(&self, path: &str) -> bool {
        self.excludes.matches(path)
    }

    /// The algorithm of the IMA log's template-hash column (Keylime's `ima.log_hash_alg`).
    pub fn log_hash_alg(&self) -> HashAlg {
        self.log_hash_alg
    }

    /// Keys that verify `ima-sig` file signatures, as DER SubjectPublicKeyInfo (sorted).
    pub fn signing_keys(&self) -> &[Vec<u8>] {
        &self.signing_keys
    }

    /// The allowed digests of `path`, if the path is in the policy.
    pub fn file_digests(&self, path: &str) -> Option<DigestList<'_>> {
        self.files.get(path)
    }

    /// Files and their digests, sorted by path.
    pub fn files(&self) -> impl Iterator<Item = (&str, DigestList<'_>)> + '_ {
        self.files.iter()
    }

    /// Keyrings and the digests of the keys allowed on them, sorted by name.
    pub fn keyrings(&self) -> impl Iterator<Item = (&str, DigestList<'_>)> + '_ {
        self.keyrings.iter()
    }

    /// `ima-buf` names and their allowed digests, sorted by name.
    pub fn buffers(&self) -> impl Iterator<Item = (&str, DigestList<'_>)> + '_ {
        self.buffers.iter()
    }

    /// Exclude regexes, sorted.
    pub fn excludes(&self) -> &[String] {
        &self.excludes.patterns
    }

    /// Keyrings whose keys are not checked, sorted.
    pub fn ignored_keyrings(&self) -> &[String] {
        &self.ignored_keyrings
    }

    /// Number of file paths.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Whether the policy holds nothing at all (Keylime's empty policy).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.keyrings.is_empty()
            && self.buffers.is_empty()
            && self.excludes.patterns.is_empty()
    }

    /// SHA-256 of the canonical JSON form ([`RuntimePolicy::to_json`]): the identity under
    /// which the verifier stores the policy. Computed on first use.
    pub fn content_digest(&self) -> [u8; 32] {
        *self.content_digest.get_or_init(|| {
            if self.files.len() >= PIPELINED_DIGEST_FILES
                && let Some(digest) = self.content_digest_pipelined()
            {
                return digest;
            }
            let mut sink = super::native::Sha256Sink::new();
            super::native::write(self, &mut sink);
            sink.finish()
        })
    }

    /// [`RuntimePolicy::content_digest`] with the hashing on a second thread, fed chunks of
    /// the canonical form as this one writes them: for a large policy the two take about as
    /// long, so this about halves the time. `None` when the thread cannot be started.
    fn content_digest_pipelined(&self) -> Option<[u8; 32]> {
        use sha2::Digest as _;
        std::thread::scope(|scope| {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
            let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let hasher = std::thread::Builder::new()
                .name("policy-digest".into())
                .spawn_scoped(scope, move || {
                    let mut h = sha2::Sha256::default();
                    for chunk in full_rx {
                        h.update(&chunk);
                        // The writer may be done already; the buffer is then dropped here.
                        let _ = empty_tx.send(chunk);
                    }
                    <[u8; 32]>::from(h.finalize())
                })
                .ok()?;
            let mut sink = super::native::ChunkSink::new(full_tx, empty_rx);
            super::native::write(self, &mut sink);
            let complete = sink.finish();
            let digest = hasher.join().ok()?;
            complete.then_some(digest)
        })
    }

    /// [`RuntimePolicy::content_digest`] as lowercase hex.
    pub fn content_digest_hex(&self) -> String {
        hex::encode(self.content_digest())
    }
}

/// Assembles a [`RuntimePolicy`]: from parsed files, from (path, digest) pairs found by
/// hashing a tree or reading an IMA log, or by merging existing policies.
#[derive(Debug, Clone)]
pub struct RuntimePolicyBuilder {
    log_hash_alg: HashAlg,
    pub(crate) files: TableBuilder,
    pub(crate) keyrings: TableBuilder,
    pub(crate) buffers: TableBuilder,
    excludes: Vec<String>,
    ignored_keyrings: Vec<String>,
    signing_keys: Vec<Vec<u8>>,
    duplicates: Duplicates,
}

impl Default for RuntimePolicyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn check_len(section: &'static str, name: &str, digest: &[u8]) -> Result<(), PolicyError> {
    if HashAlg::from_len(digest.len()).is_none() {
        return Err(PolicyError::Invalid {
            section,
            message: format!(
                "{name:?}: a digest of {} bytes matches no supported hash algorithm \
                 (sha1, sha256, sha384, sha512)",
                digest.len()
            ),
        });
    }
    Ok(())
}

impl RuntimePolicyBuilder {
    /// An empty builder; repeated names merge their digests.
    pub fn new() -> Self {
        RuntimePolicyBuilder {
            log_hash_alg: HashAlg::Sha1,
            files: TableBuilder::default(),
            keyrings: TableBuilder::default(),
            buffers: TableBuilder::default(),
            excludes: Vec::new(),
            ignored_keyrings: Vec::new(),
            signing_keys: Vec::new(),
            duplicates: Duplicates::Merge,
        }
    }

    /// A builder for a JSON parser: a name repeated in one JSON object is an error.
    pub(crate) fn rejecting_duplicates() -> Self {
        RuntimePolicyBuilder { duplicates: Duplicates::Reject, ..Self::new() }
    }

    pub fn log_hash_alg(&mut self, alg: HashAlg) -> &mut Self {
        self.log_hash_alg = alg;
        self
    }

    /// Allows `digest` (raw bytes of a SHA-1/256/384/512 digest) for `path`.
    pub fn add_file(&mut self, path: &str, digest: &[u8]) -> Result<&mut Self, PolicyError> {
        check_len("files", path, digest)?;
        self.files.add(path, Some(digest));
        Ok(self)
    }

    /// Allows a key whose digest is `digest` on `keyring` (e.g. `.ima`).
    pub fn add_keyring_digest(
        &mut self,
        keyring: &str,
        digest: &[u8],
    ) -> Result<&mut Self, PolicyError> {
        check_len("keyrings", keyring, digest)?;
        self.keyrings.add(keyring, Some(digest));
        Ok(self)
    }

    /// Allows `digest` for the `ima-buf` entry `name`.
    pub fn add_buffer(&mut self, name: &str, digest: &[u8]) -> Result<&mut Self, PolicyError> {
        check_len("buffers", name, digest)?;
        self.buffers.add(name, Some(digest));
        Ok(self)
    }

    /// Adds an exclude regex (checked when building).
    pub fn add_exclude(&mut self, pattern: &str) -> &mut Self {
        self.excludes.push(pattern.to_owned());
        self
    }

    /// Stops checking keys loaded onto `keyring` (`*` for all keyrings).
    pub fn ignore_keyring(&mut self, keyring: &str) -> &mut Self {
        self.ignored_keyrings.push(keyring.to_owned());
        self
    }

    /// Adds an `ima-sig` verification key (DER SubjectPublicKeyInfo).
    pub fn add_signing_key(&mut self, spki_der: &[u8]) -> Result<&mut Self, PolicyError> {
        crate::key::spki_key_bits(spki_der).map_err(|e| PolicyError::Invalid {
            section: "signing_keys",
            message: e.to_string(),
        })?;
        self.signing_keys.push(spki_der.to_vec());
        Ok(self)
    }

    /// Adds everything `policy` holds; `policy`'s log hash algorithm replaces this one's.
    pub fn merge(&mut self, policy: &RuntimePolicy) -> &mut Self {
        self.log_hash_alg = policy.log_hash_alg;
        self.files.extend_from(&policy.files);
        self.keyrings.extend_from(&policy.keyrings);
        self.buffers.extend_from(&policy.buffers);
        self.excludes.extend(policy.excludes.patterns.iter().cloned());
        self.ignored_keyrings.extend(policy.ignored_keyrings.iter().cloned());
        self.signing_keys.extend(policy.signing_keys.iter().cloned());
        self
    }

    /// Sorts, deduplicates, indexes and compiles the excludes.
    pub fn build(self) -> Result<RuntimePolicy, PolicyError> {
        let table = |b: TableBuilder, section: &'static str| {
            b.finish(self.duplicates).map_err(|e| match e {
                TableError::Duplicate(name) => PolicyError::Duplicate { section, name },
                TableError::TooLarge => PolicyError::Invalid {
                    section,
                    message: "more than 4 GiB of names or digests".into(),
                },
            })
        };
        let files = table(self.files, "files")?;
        let keyrings = table(self.keyrings, "keyrings")?;
        let buffers = table(self.buffers, "buffers")?;
        let excludes = Excludes::compile(self.excludes)?;
        let mut ignored_keyrings = self.ignored_keyrings;
        ignored_keyrings.sort();
        ignored_keyrings.dedup();
        let mut signing_keys = self.signing_keys;
        signing_keys.sort();
        signing_keys.dedup();
        Ok(RuntimePolicy {
            log_hash_alg: self.log_hash_alg,
            files,
            excludes,
            keyrings,
            ignored_keyrings,
            buffers,
            signing_keys,
            content_digest: OnceLock::new(),
        })
    }
}

/// Builds a policy from (path, digest) pairs, e.g. the entries of a trusted IMA log or the
/// result of hashing a directory tree.
pub fn from_file_digests<'a, I>(pairs: I) -> Result<RuntimePolicy, PolicyError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut b = RuntimePolicyBuilder::new();
    for (path, digest) in pairs {
        b.add_file(path, digest)?;
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RuntimePolicy {
        let mut b = RuntimePolicyBuilder::new();
        b.add_file("/usr/bin/bash", &[1; 32]).expect("len");
        b.add_file("/usr/bin/bash", &[2; 20]).expect("len");
        b.add_file("/tmp/known", &[3; 32]).expect("len");
        b.add_buffer("kernel_version", &[4; 32]).expect("len");
        b.add_keyring_digest(".ima", &[5; 32]).expect("len");
        b.add_exclude("/tmp/").add_exclude("/var/log/.*\\.log");
        b.ignore_keyring(".builtin_trusted_keys");
        b.build().expect("builds")
    }

    #[test]
    fn is_send_sync_and_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RuntimePolicy>();
        let p = std::sync::Arc::new(policy());
        let q = std::sync::Arc::clone(&p);
        assert!(q.lookup_file("/usr/bin/bash", &[1; 32]).passes());
    }

    #[test]
    fn multiple_digests_per_path_and_lengths() {
        let p = policy();
        assert_eq!(p.lookup_file("/usr/bin/bash", &[1; 32]), Lookup::Allowed);
        assert_eq!(p.lookup_file("/usr/bin/bash", &[2; 20]), Lookup::Allowed);
        // Same bytes, another length: another algorithm, not allowed.
        let Lookup::DigestNotAllowed { allowed } = p.lookup_file("/usr/bin/bash", &[1; 20]) else {
            panic!("expected a digest mismatch");
        };
        assert_eq!(allowed.len(), 2);
        assert!(allowed.contains(&[2; 20]));
        assert_eq!(p.lookup_file("/usr/bin/zsh", &[1; 32]), Lookup::UnknownPath);
    }

    #[test]
    fn excludes_are_anchored_at_start_only() {
        let p = policy();
        assert_eq!(p.lookup_file("/tmp/x", &[0; 32]), Lookup::Excluded);
        assert_eq!(p.lookup_file("/tmp/known", &[0; 32]), Lookup::Excluded);
        assert_eq!(p.lookup_file("/tmp/known", &[3; 32]), Lookup::Allowed);
        // Not anchored at the end: a longer path still matches.
        assert!(p.is_excluded("/var/log/a.log.1"));
        // Anchored at the start: a match in the middle does not count.
        assert!(!p.is_excluded("/home/tmp/x"));
        assert_eq!(p.lookup_file("/home/tmp/x", &[0; 32]), Lookup::UnknownPath);
    }

    #[test]
    fn buffers_and_keyrings() {
        let p = policy();
        assert_eq!(p.lookup_buf("kernel_version", &[4; 32]), Lookup::Allowed);
        assert!(matches!(
            p.lookup_buf("kernel_version", &[5; 32]),
            Lookup::DigestNotAllowed { .. }
        ));
        assert_eq!(p.lookup_keyring(".ima", &[5; 32]), Lookup::Allowed);
        assert_eq!(p.lookup_keyring(".evm", &[5; 32]), Lookup::UnknownPath);
        assert!(p.is_keyring_ignored(".builtin_trusted_keys"));
        assert!(!p.is_keyring_ignored(".ima"));
        let mut b = RuntimePolicyBuilder::new();
        b.ignore_keyring("*");
        assert!(b.build().expect("builds").is_keyring_ignored(".ima"));
    }

    #[test]
    fn rejects_bad_digest_lengths_and_regexes() {
        let mut b = RuntimePolicyBuilder::new();
        let err = b.add_file("/x", &[0; 16]).expect_err("md5 length");
        assert!(err.to_string().contains("16 bytes"), "{err}");
        b.add_exclude("(?<=a)b");
        let err = b.build().expect_err("look-behind unsupported");
        assert!(err.to_string().contains("exclude #0"), "{err}");
    }

    #[test]
    fn python_end_of_text_escape() {
        let mut b = RuntimePolicyBuilder::new();
        b.add_exclude("/run/x\\Z").add_exclude("/lit\\\\Z");
        let p = b.build().expect("builds");
        assert!(p.is_excluded("/run/x") && !p.is_excluded("/run/xy"));
        // An escaped backslash followed by Z is a literal backslash and Z.
        assert!(p.is_excluded("/lit\\Z/more"));
        assert_eq!(p.excludes(), ["/lit\\\\Z", "/run/x\\Z"]);
    }

    #[test]
    fn a_pattern_cannot_escape_its_group() {
        let mut b = RuntimePolicyBuilder::new();
        b.add_exclude("/a)|(.*");
        assert!(b.build().is_err());
        let mut b = RuntimePolicyBuilder::new();
        b.add_exclude("/a|/b");
        let p = b.build().expect("builds");
        assert!(p.is_excluded("/b/x") && !p.is_excluded("/c/b"));
    }

    #[test]
    fn findings_for_each_rule() {
        let p = policy();
        assert!(
            p.lookup_file("/usr/bin/bash", &[1; 32])
                .file_finding("/usr/bin/bash", &[1; 32])
                .is_none()
        );
        assert!(p.lookup_file("/tmp/x", &[0; 32]).file_finding("/tmp/x", &[0; 32]).is_none());

        let f = p.lookup_file("/usr/bin/zsh", &[9; 20]).file_finding("/usr/bin/zsh", &[9; 20]);
        let f = f.expect("unknown path fails");
        assert_eq!(f.rule, rule::IMA_NOT_IN_POLICY);
        assert_eq!(f.path.as_deref(), Some("/usr/bin/zsh"));
        assert_eq!(f.actual, Some(format!("sha1:{}", "09".repeat(20)).into()));

        let f = p.lookup_file("/usr/bin/bash", &[9; 32]).file_finding("/usr/bin/bash", &[9; 32]);
        let f = f.expect("wrong digest fails");
        assert_eq!(f.rule, rule::IMA_DIGEST_MISMATCH);
        assert_eq!(
            f.expected,
            Some(serde_json::json!([
                format!("sha1:{}", "02".repeat(20)),
                format!("sha256:{}", "01".repeat(32))
            ]))
        );

        let f = p.lookup_buf("kernel_version", &[0; 32]).buf_finding("kernel_version", &[0; 32]);
        assert_eq!(f.expect("wrong buffer").rule, rule::IMA_BUF);
        let f = p.lookup_buf("other", &[0; 32]).buf_finding("other", &[0; 32]);
        assert_eq!(f.expect("unknown buffer").rule, rule::IMA_BUF);
        let f = p.lookup_keyring(".ima", &[0; 32]).keyring_finding(".ima", &[0; 32]);
        assert_eq!(f.expect("unknown key").rule, rule::IMA_KEYRING);
    }

    #[test]
    fn content_digest_ignores_insertion_order() {
        let a = from_file_digests([("/a", &[1u8; 32][..]), ("/b", &[2u8; 32][..])]).expect("a");
        let b = from_file_digests([("/b", &[2u8; 32][..]), ("/a", &[1u8; 32][..])]).expect("b");
        assert_eq!(a, b);
        assert_eq!(a.content_digest(), b.content_digest());
        let c = from_file_digests([("/a", &[1u8; 32][..])]).expect("c");
        assert_ne!(a.content_digest(), c.content_digest());
    }
}
