//! Registrations waiting for Activate, held in memory only.
//!
//! A pending registration is invisible: no RPC reads it, it never reaches the store, and it
//! expires after a short time. A newer Register for the same id replaces it, so a client that
//! lost its challenge (or a restarted agent) simply registers again; an Activate with a wrong
//! proof removes it. Both mean that somebody else registering a victim's id can at worst make
//! the victim register once more, never take the id: only a successful activation, which needs
//! the TPM, writes anything.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kl_store::registrar::AgentRecord;

use crate::registration::SECRET_LEN;

/// A registration waiting for its activation proof.
#[derive(Debug)]
pub struct Pending {
    pub record: AgentRecord,
    pub secret: [u8; SECRET_LEN],
    expires: Instant,
}

/// Pending registrations by agent id.
#[derive(Debug)]
pub struct PendingRegistrations {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Pending>>,
}

/// [`PendingRegistrations::insert`] found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl PendingRegistrations {
    pub fn new(ttl: Duration, capacity: usize) -> PendingRegistrations {
        PendingRegistrations { ttl, capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// Keeps `record` and its secret until activation or expiry, replacing an earlier pending
    /// registration of the same id.
    pub fn insert(&self, record: AgentRecord, secret: [u8; SECRET_LEN]) -> Result<(), Full> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&record.agent_id) {
            entries.retain(|_, p| p.expires > now);
            if entries.len() >= self.capacity {
                return Err(Full);
            }
        }
        let id = record.agent_id.clone();
        entries.insert(id, Pending { record, secret, expires: now + self.ttl });
        Ok(())
    }

    /// Removes and returns the pending registration of `agent_id` if it has not expired.
    pub fn take(&self, agent_id: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.remove(agent_id).filter(|p| p.expires > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use kl_store::registrar::Timestamp;

    use super::*;

    fn record(id: &str) -> AgentRecord {
        let t = Timestamp { seconds: 0, nanos: 0 };
        AgentRecord {
            agent_id: id.to_owned(),
            ek_public: Vec::new(),
            ek_certificate: Vec::new(),
            ek_intermediate_certificates: Vec::new(),
            ek_certificate_verified: false,
            ak_public: Vec::new(),
            ak_name: Vec::new(),
            agent_certificate: Vec::new(),
            contact_ip: String::new(),
            contact_port: 1,
            registration_count: 0,
            registered_at: t,
            activated_at: t,
        }
    }

    #[test]
    fn replace_take_expire_and_capacity() {
        let pending = PendingRegistrations::new(Duration::from_secs(60), 2);
        assert_eq!(pending.insert(record("a"), [1; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("a"), [2; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("b"), [3; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("c"), [4; SECRET_LEN]), Err(Full));
        assert_eq!(pending.take("a").map(|p| p.secret), Some([2; SECRET_LEN]));
        assert!(pending.take("a").is_none(), "taken once");

        let expired = PendingRegistrations::new(Duration::ZERO, 1);
        assert_eq!(expired.insert(record("a"), [1; SECRET_LEN]), Ok(()));
        assert!(expired.take("a").is_none());
        assert_eq!(
            expired.insert(record("b"), [1; SECRET_LEN]),
            Ok(()),
            "expired entries make room"
        );
    }
}
