//! Policies as the verifier holds them: parsed from any accepted format into a canonical
//! document (stored once by its SHA-256), and in memory parsed once per digest and shared by
//! every agent that uses it, so no round ever parses a policy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use kl_core::appraisal::{MeasuredBootRules, RuntimeRules};
use kl_core::policy;
use kl_core::policy::mb::MbPolicy;
use kl_store::verifier::{PolicyKind, VerifierStore};

use crate::Error;

pub(crate) use kl_core::policy::canonical::Canonical;
use kl_core::policy::canonical::{self, CanonicalError};

/// A runtime policy in any format `kl_core::policy::load` accepts, the exclude list merged, in
/// canonical form (`kl_core::policy::canonical`, which kctl's offline digest shares).
pub(crate) fn canonical_runtime(
    document: &[u8],
    exclude_list: &[u8],
    signing_key: &[u8],
) -> Result<Canonical, Error> {
    canonical::runtime(document, exclude_list, signing_key).map_err(invalid)
}

/// This project's measured-boot policy JSON or Keylime's reference state, in canonical form.
pub(crate) fn canonical_mb(document: &[u8]) -> Result<Canonical, Error> {
    canonical::measured_boot(document).map_err(invalid)
}

/// The request field a canonicalisation error is about.
fn invalid(e: CanonicalError) -> Error {
    match e {
        CanonicalError::SigningKey(reason) => Error::invalid("signing_key", reason),
        CanonicalError::ExcludeList(reason) => Error::invalid("exclude_list", reason),
        CanonicalError::Document(reason) => Error::invalid("document", reason),
        _ => Error::invalid("document", e.to_string()),
    }
}

/// Runtime policies kept parsed after their last use.
const RECENT_RUNTIME_POLICIES: usize = 4;

/// Parsed policies by digest, shared while any agent holds them (and the last few runtime
/// policies used).
#[derive(Debug, Default)]
pub(crate) struct PolicyCache {
    runtime: Mutex<HashMap<String, Weak<RuntimeRules>>>,
    measured_boot: Mutex<HashMap<String, Weak<MeasuredBootRules>>>,
    /// The runtime policies used last, kept parsed while no agent holds them (an enrolment
    /// checks its inputs before any agent uses them; on a replica, before the agent is even
    /// claimed), so that a burst of enrolments parses a policy once.
    recent: Mutex<Vec<Arc<RuntimeRules>>>,
    /// Held while a policy is read and parsed: agents that miss the cache at once (a burst of
    /// enrolments, a verifier starting) wait for the one load instead of each reading the
    /// document, which at 12 MB per reader left hundreds of MB to the allocator.
    loading: Mutex<()>,
    /// Bumped by every policy change; agents rebuild their inputs when it moves.
    epoch: AtomicU64,
}

impl PolicyCache {
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Every agent rebuilds its appraisal inputs before its next round.
    pub fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The runtime policy stored under `name`, parsed once per content digest.
    pub fn runtime(&self, store: &VerifierStore, name: &str) -> Result<Arc<RuntimeRules>, Error> {
        let rules = self.runtime_uncached(store, name)?;
        let mut recent = self.recent.lock().map_err(|_| poisoned())?;
        if let Some(at) = recent.iter().position(|r| Arc::ptr_eq(r, &rules)) {
            recent.remove(at);
        }
        recent.insert(0, rules.clone());
        recent.truncate(RECENT_RUNTIME_POLICIES);
        Ok(rules)
    }

    fn runtime_uncached(
        &self,
        store: &VerifierStore,
        name: &str,
    ) -> Result<Arc<RuntimeRules>, Error> {
        let not_found = || Error::PolicyNotFound { kind: "runtime", name: name.to_owned() };
        // The name record first: a cached policy costs no read of its (large) document.
        let record = store.policy_name(PolicyKind::Runtime, name)?.ok_or_else(not_found)?;
        if let Some(rules) = cached(&self.runtime, &record.digest)? {
            return Ok(rules);
        }
        let _loading = self.loading.lock().map_err(|_| poisoned())?;
        let (record, document) =
            store.get_policy(PolicyKind::Runtime, name)?.ok_or_else(not_found)?;
        if let Some(rules) = cached(&self.runtime, &record.digest)? {
            return Ok(rules);
        }
        let parsed = policy::native::parse(&document)
            .map_err(|e| Error::Internal(format!("stored runtime policy {name:?}: {e}")))?;
        drop(document);
        let rules = Arc::new(
            RuntimeRules::new(parsed)
                .map_err(|e| Error::Internal(format!("stored runtime policy {name:?}: {e}")))?,
        );
        remember(&self.runtime, record.digest, &rules)?;
        Ok(rules)
    }

    /// The measured-boot policy stored under `name`, parsed once per content digest.
    pub fn measured_boot(
        &self,
        store: &VerifierStore,
        name: &str,
    ) -> Result<Arc<MeasuredBootRules>, Error> {
        let not_found = || Error::PolicyNotFound { kind: "measured-boot", name: name.to_owned() };
        let record = store.policy_name(PolicyKind::MeasuredBoot, name)?.ok_or_else(not_found)?;
        if let Some(rules) = cached(&self.measured_boot, &record.digest)? {
            return Ok(rules);
        }
        let _loading = self.loading.lock().map_err(|_| poisoned())?;
        let (record, document) =
            store.get_policy(PolicyKind::MeasuredBoot, name)?.ok_or_else(not_found)?;
        if let Some(rules) = cached(&self.measured_boot, &record.digest)? {
            return Ok(rules);
        }
        let parsed =
            Arc::new(MeasuredBootRules::new(MbPolicy::from_json(&document).map_err(|e| {
                Error::Internal(format!("stored measured-boot policy {name:?}: {e}"))
            })?));
        remember(&self.measured_boot, record.digest, &parsed)?;
        Ok(parsed)
    }
}

/// The parsed policy of `digest`, while some holder keeps it.
fn cached<T>(
    cache: &Mutex<HashMap<String, Weak<T>>>,
    digest: &str,
) -> Result<Option<Arc<T>>, Error> {
    Ok(cache.lock().map_err(|_| poisoned())?.get(digest).and_then(Weak::upgrade))
}

/// Notes `parsed` as the policy of `digest`, forgetting those no holder keeps.
fn remember<T>(
    cache: &Mutex<HashMap<String, Weak<T>>>,
    digest: String,
    parsed: &Arc<T>,
) -> Result<(), Error> {
    let mut cache = cache.lock().map_err(|_| poisoned())?;
    cache.retain(|_, weak| weak.strong_count() > 0);
    cache.insert(digest, Arc::downgrade(parsed));
    Ok(())
}

fn poisoned() -> Error {
    Error::Internal("the policy cache lock is poisoned".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_of_one_policy_share_a_digest_and_excludes_change_it() -> Result<(), Error> {
        let digest = "a".repeat(64);
        let flat = format!("{digest}  /usr/bin/bash\n");
        let a = canonical_runtime(flat.as_bytes(), b"", b"")?;
        let again = canonical_runtime(&a.document, b"", b"")?;
        assert_eq!(a.digest, again.digest);
        assert_eq!(a.entries, 1);
        let excluded = canonical_runtime(flat.as_bytes(), b"^/tmp/.*\n", b"")?;
        assert_ne!(a.digest, excluded.digest);
        assert!(matches!(
            canonical_runtime(b"{not json", b"", b""),
            Err(Error::InvalidArgument { field: "document", .. })
        ));
        Ok(())
    }
}
