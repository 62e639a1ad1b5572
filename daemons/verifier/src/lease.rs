//! A verifier as one of the replicas sharing a database: its name, the length of its leases,
//! and the duties it holds; the lease loop that keeps them is [`crate::replica`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kl_svc::config::VerifierConfig;
use tokio::sync::Notify;

/// The duty of delivering webhooks.
pub(crate) const WEBHOOK: &str = "webhook";
/// The duty of pruning history and events.
pub(crate) const PRUNE: &str = "prune";

/// This verifier as a replica.
#[derive(Debug)]
pub(crate) struct Replica {
    /// Its name among the replicas (`id`).
    pub id: String,
    /// `agent_lease_seconds`.
    pub lease: Duration,
    /// Wakes the lease loop before its period ends (an enrolment, refused writes).
    pub wake: Arc<Notify>,
    /// Until when this replica may do each duty it holds.
    duties: Mutex<HashMap<&'static str, Instant>>,
    /// When the last renewal that reached the database was sent.
    renewed: Mutex<Option<Instant>>,
    /// When its lease loop started.
    started: Mutex<Instant>,
    /// The stored policies (names and digests) as the lease loop last saw them.
    policies: Mutex<Option<Vec<(String, String)>>>,
    /// Tells this process from another started with the same id.
    pub token: String,
    /// The holder name of its leases and duties: `id/token`, so that the leases of an earlier
    /// process with this id (killed, or cut off from the database) are never taken for its
    /// own, nor its late writes for this one's.
    pub holder: String,
}

impl Replica {
    /// The replica this verifier is when its state is in a database; `port` is the port it
    /// listens on (part of its default id).
    pub fn new(config: &VerifierConfig, port: u16) -> Option<Replica> {
        config.database_url.as_deref().filter(|url| !url.is_empty())?;
        let id = match config.id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => format!("{}:{port}", host_name()),
        };
        let token = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        Some(Replica {
            lease: config.agent_lease_seconds.max(Duration::from_secs(1)),
            wake: Arc::new(Notify::new()),
            duties: Mutex::new(HashMap::new()),
            renewed: Mutex::new(None),
            started: Mutex::new(Instant::now()),
            policies: Mutex::new(None),
            holder: format!("{id}/{token}"),
            token,
            id,
        })
    }

    /// The lease loop starts now (what `stale` counts from before the first renewal).
    pub fn starting(&self) {
        *self.started.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// How often leases are renewed.
    pub fn period(&self) -> Duration {
        self.lease / 6
    }

    /// What is kept off the end of a lease: rounds ending later are dropped.
    pub fn margin(&self) -> Duration {
        self.lease / 5
    }

    /// A renewal sent at `sent` reached the database; of `duties`, those held run until
    /// `deadline`, the others are another replica's.
    pub fn renewed(&self, sent: Instant, duties: &[(&'static str, bool)], deadline: Instant) {
        *self.renewed.lock().unwrap_or_else(PoisonError::into_inner) = Some(sent);
        let mut held = self.duties.lock().unwrap_or_else(PoisonError::into_inner);
        for (duty, taken) in duties {
            if *taken {
                held.insert(duty, deadline);
            } else {
                held.remove(duty);
            }
        }
    }

    /// Records the stored policies; whether they differ from those seen before (not at the
    /// first look).
    pub fn policies_seen(&self, policies: Vec<(String, String)>) -> bool {
        let mut seen = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = seen.as_ref().is_some_and(|before| *before != policies);
        *seen = Some(policies);
        changed
    }

    /// Whether this replica holds `duty` now.
    pub fn has_duty(&self, duty: &str) -> bool {
        let duties = self.duties.lock().unwrap_or_else(PoisonError::into_inner);
        duties.get(duty).is_some_and(|until| Instant::now() < *until)
    }

    /// Why this replica cannot attest anything now: its leases have not been renewed for a
    /// whole lease period.
    pub fn stale(&self) -> Option<String> {
        let renewed = *self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
        // Not yet renewed once: counted from the start of the lease loop.
        let since = renewed.unwrap_or(*self.started.lock().unwrap_or_else(PoisonError::into_inner));
        (since.elapsed() >= self.lease).then(|| {
            format!(
                "no agent lease renewed for {} s (agent_lease_seconds = {})",
                since.elapsed().as_secs(),
                self.lease.as_secs_f64()
            )
        })
    }
}

/// This host's name, for a replica's default id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
