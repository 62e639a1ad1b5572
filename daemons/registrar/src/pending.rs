//! Registrations waiting for Activate, held in memory only.
//!
//! A pending registration is invisible: no RPC reads it, it never reaches the store, and it
//! expires after a short time. Register needs no credentials, so anybody can send one under any
//! agent id; this module keeps such registrations from getting in the way of the genuine one:
//!
//! - entries are kept per agent id *and* TPM keys (the EK and AK names), a few per id: a
//!   registration under a victim's id with other keys sits beside the victim's instead of
//!   replacing it, and only the same EK with the same AK (the agent registering again) replaces
//!   an entry. When an id already has [`MAX_PER_ID`] entries, its oldest one makes room;
//! - Activate tries the proof against every entry of the id and removes only the one it opens. A
//!   wrong proof removes nothing (the entries expire): counting failures per entry would let
//!   anybody knock the victim's entry out with a few garbage proofs, and guessing a 256-bit
//!   HMAC key is hopeless, rate limit or not;
//! - the whole set is bounded by count and by bytes (EK and identity certificates are the bulk),
//!   and expired entries are swept in expiry order, each at most once, so no call scans the set.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kl_store::registrar::AgentRecord;

use crate::registration::SECRET_LEN;

/// Most registrations pending for one agent id.
pub const MAX_PER_ID: usize = 4;

/// A registration waiting for its activation proof.
#[derive(Debug)]
pub struct Pending {
    pub record: AgentRecord,
    pub secret: [u8; SECRET_LEN],
    expires: Instant,
    serial: u64,
    bytes: usize,
}

impl Pending {
    fn same_keys(&self, record: &AgentRecord) -> bool {
        self.record.ek_public == record.ek_public && self.record.ak_name == record.ak_name
    }
}

/// Why [`PendingRegistrations::insert`] found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// [`PendingRegistrations::new`]'s `capacity` entries are pending.
    Count,
    /// The entries pending and this one would exceed the byte budget.
    Bytes,
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<String, Vec<Pending>>,
    /// (expiry, agent id, serial) in insertion order, which is expiry order (one TTL for all).
    /// Items of entries already removed stay until swept or compacted.
    expiry: VecDeque<(Instant, String, u64)>,
    count: usize,
    bytes: usize,
    next_serial: u64,
}

impl Entries {
    /// Removes the entry `serial` of `agent_id` if it is still there.
    fn remove(&mut self, agent_id: &str, serial: u64) -> Option<Pending> {
        let list = self.by_id.get_mut(agent_id)?;
        let index = list.iter().position(|p| p.serial == serial)?;
        let removed = list.remove(index);
        if list.is_empty() {
            self.by_id.remove(agent_id);
        }
        self.count -= 1;
        self.bytes -= removed.bytes;
        Some(removed)
    }

    /// Drops every entry expired at `now`; O(1) amortised, since each queue item goes once.
    fn sweep(&mut self, now: Instant) {
        while let Some((expires, _, _)) = self.expiry.front() {
            if *expires > now {
                break;
            }
            if let Some((_, id, serial)) = self.expiry.pop_front() {
                self.remove(&id, serial);
            }
        }
        // Replaced and activated entries leave items behind; keep the queue within a constant
        // factor of the live entries (each compaction is paid for by as many pushes).
        if self.expiry.len() > 2 * self.count + 64 {
            let by_id = &self.by_id;
            self.expiry.retain(|(_, id, serial)| {
                by_id.get(id).is_some_and(|list| list.iter().any(|p| p.serial == *serial))
            });
        }
    }
}

/// Pending registrations by agent id and TPM keys.
#[derive(Debug)]
pub struct PendingRegistrations {
    ttl: Duration,
    capacity: usize,
    max_bytes: usize,
    entries: Mutex<Entries>,
}

/// The bytes a pending record holds, as counted against the budget.
pub fn record_bytes(record: &AgentRecord) -> usize {
    record.agent_id.len()
        + record.ek_public.len()
        + record.ek_certificate.len()
        + record.ek_intermediate_certificates.iter().map(Vec::len).sum::<usize>()
        + record.ak_public.len()
        + record.ak_name.len()
        + record.agent_certificate.len()
        + record.contact_ip.len()
        + std::mem::size_of::<Pending>()
}

impl PendingRegistrations {
    /// At most `capacity` entries holding at most `max_bytes` (see [`record_bytes`]), each
    /// for `ttl`.
    pub fn new(ttl: Duration, capacity: usize, max_bytes: usize) -> PendingRegistrations {
        PendingRegistrations { ttl, capacity, max_bytes, entries: Mutex::new(Entries::default()) }
    }

    /// Registrations pending (expired ones not yet swept included) and the bytes they hold.
    pub fn usage(&self) -> (usize, usize) {
        self.entries.lock().map(|e| (e.count, e.bytes)).unwrap_or_default()
    }

    /// Keeps `record` and its secret until activation or expiry. It replaces a pending entry of
    /// the same id, EK and AK; otherwise it is added, making room by dropping the oldest entry
    /// of the id when it has [`MAX_PER_ID`].
    pub fn insert(&self, record: AgentRecord, secret: [u8; SECRET_LEN]) -> Result<(), Full> {
        self.insert_at(record, secret, Instant::now())
    }

    fn insert_at(
        &self,
        record: AgentRecord,
        secret: [u8; SECRET_LEN],
        now: Instant,
    ) -> Result<(), Full> {
        let bytes = record_bytes(&record);
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.sweep(now);
        // What this insertion frees: the entry it replaces, or the id's oldest when it is full.
        let freed = entries.by_id.get(&record.agent_id).and_then(|list| {
            list.iter()
                .find(|p| p.same_keys(&record))
                .or_else(|| list.first().filter(|_| list.len() >= MAX_PER_ID))
                .map(|p| (p.serial, p.bytes))
        });
        let (freed_count, freed_bytes) = freed.map_or((0, 0), |(_, b)| (1, b));
        if entries.count - freed_count >= self.capacity {
            return Err(Full::Count);
        }
        if entries.bytes - freed_bytes + bytes > self.max_bytes {
            return Err(Full::Bytes);
        }
        if let Some((serial, _)) = freed {
            entries.remove(&record.agent_id, serial);
        }
        let serial = entries.next_serial;
        entries.next_serial += 1;
        let expires = now + self.ttl;
        let id = record.agent_id.clone();
        entries.expiry.push_back((expires, id.clone(), serial));
        entries.by_id.entry(id).or_default().push(Pending {
            record,
            secret,
            expires,
            serial,
            bytes,
        });
        entries.count += 1;
        entries.bytes += bytes;
        Ok(())
    }

    /// Removes and returns the unexpired pending registration of `agent_id` for which
    /// `opens(secret)` holds; `Err(false)` when the id has no pending registration,
    /// `Err(true)` when none of its registrations opens (nothing is removed then).
    pub fn take_matching(
        &self,
        agent_id: &str,
        opens: impl Fn(&[u8; SECRET_LEN]) -> bool,
    ) -> Result<Pending, bool> {
        self.take_matching_at(agent_id, opens, Instant::now())
    }

    fn take_matching_at(
        &self,
        agent_id: &str,
        opens: impl Fn(&[u8; SECRET_LEN]) -> bool,
        now: Instant,
    ) -> Result<Pending, bool> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.sweep(now);
        let Some(list) = entries.by_id.get(agent_id) else { return Err(false) };
        // Every live entry is tried, so the time taken does not tell which one matched.
        let mut matched = None;
        for pending in list.iter().filter(|p| p.expires > now) {
            if opens(&pending.secret) && matched.is_none() {
                matched = Some(pending.serial);
            }
        }
        match matched {
            Some(serial) => entries.remove(agent_id, serial).ok_or(true),
            None => Err(true),
        }
    }

    #[cfg(test)]
    fn stats(&self) -> (usize, usize, usize) {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (entries.count, entries.bytes, entries.expiry.len())
    }
}

#[cfg(test)]
mod tests {
    use kl_store::registrar::Timestamp;

    use super::*;

    fn record(id: &str, ek: u8, ak: u8) -> AgentRecord {
        let t = Timestamp { seconds: 0, nanos: 0 };
        AgentRecord {
            agent_id: id.to_owned(),
            ek_public: vec![ek; 8],
            ek_certificate: Vec::new(),
            ek_intermediate_certificates: Vec::new(),
            ek_certificate_verified: false,
            ak_public: Vec::new(),
            ak_name: vec![ak; 4],
            agent_certificate: Vec::new(),
            contact_ip: String::new(),
            contact_port: 1,
            registration_count: 0,
            registered_at: t,
            activated_at: t,
        }
    }

    const BIG: usize = 1 << 30;

    fn take(pending: &PendingRegistrations, id: &str, secret: u8) -> Result<u8, bool> {
        pending.take_matching(id, |s| *s == [secret; SECRET_LEN]).map(|p| p.secret[0])
    }

    #[test]
    fn another_registration_under_the_id_neither_replaces_nor_drops_the_genuine_one() {
        let pending = PendingRegistrations::new(Duration::from_secs(60), 100, BIG);
        assert_eq!(pending.insert(record("a", 1, 1), [1; SECRET_LEN]), Ok(()));
        // Another EK (or the same EK with another AK) under the same id.
        assert_eq!(pending.insert(record("a", 2, 2), [2; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("a", 1, 3), [3; SECRET_LEN]), Ok(()));
        // Wrong proofs remove nothing.
        for _ in 0..10 {
            assert_eq!(take(&pending, "a", 9), Err(true));
        }
        assert_eq!(take(&pending, "a", 1), Ok(1));
        assert_eq!(take(&pending, "a", 1), Err(true), "taken once");
        assert_eq!(take(&pending, "a", 3), Ok(3));
        assert_eq!(take(&pending, "a", 2), Ok(2));
        assert_eq!(take(&pending, "a", 2), Err(false));
        assert_eq!(pending.stats().0, 0);
    }

    #[test]
    fn same_keys_replace_and_a_full_id_drops_its_oldest() {
        let pending = PendingRegistrations::new(Duration::from_secs(60), 100, BIG);
        assert_eq!(pending.insert(record("a", 1, 1), [1; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("a", 1, 1), [2; SECRET_LEN]), Ok(()));
        assert_eq!(take(&pending, "a", 1), Err(true), "replaced");
        for n in 0..MAX_PER_ID as u8 {
            assert_eq!(pending.insert(record("b", n, 0), [n; SECRET_LEN]), Ok(()));
        }
        assert_eq!(pending.insert(record("b", 99, 0), [99; SECRET_LEN]), Ok(()));
        assert_eq!(take(&pending, "b", 0), Err(true), "the oldest made room");
        assert_eq!(take(&pending, "b", 1), Ok(1));
        assert_eq!(take(&pending, "b", 99), Ok(99));
        assert_eq!(pending.stats().0, 3);
    }

    #[test]
    fn bounded_by_count_and_bytes_and_expired_entries_make_room() {
        let pending = PendingRegistrations::new(Duration::from_secs(60), 2, BIG);
        assert_eq!(pending.insert(record("a", 1, 1), [1; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("b", 1, 1), [1; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("c", 1, 1), [1; SECRET_LEN]), Err(Full::Count));
        assert_eq!(pending.insert(record("a", 1, 1), [2; SECRET_LEN]), Ok(()), "a replacement");

        let one = record_bytes(&record("a", 1, 1));
        let pending = PendingRegistrations::new(Duration::from_secs(60), 100, 2 * one);
        assert_eq!(pending.insert(record("a", 1, 1), [1; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("b", 1, 1), [1; SECRET_LEN]), Ok(()));
        assert_eq!(pending.insert(record("c", 1, 1), [1; SECRET_LEN]), Err(Full::Bytes));
        let mut big = record("c", 1, 1);
        big.ek_certificate = vec![0; 3 * one];
        let pending = PendingRegistrations::new(Duration::from_secs(60), 100, 2 * one);
        assert_eq!(pending.insert(big, [1; SECRET_LEN]), Err(Full::Bytes));

        let pending = PendingRegistrations::new(Duration::from_secs(60), 1, BIG);
        let start = Instant::now();
        assert_eq!(pending.insert_at(record("a", 1, 1), [1; SECRET_LEN], start), Ok(()));
        let later = start + Duration::from_secs(61);
        assert_eq!(
            pending.take_matching_at("a", |s| *s == [1; SECRET_LEN], later).map(|p| p.serial),
            Err(false),
            "expired"
        );
        assert_eq!(pending.insert_at(record("b", 1, 1), [1; SECRET_LEN], later), Ok(()));
        assert_eq!(pending.stats(), (1, one, 1));
    }

    #[test]
    fn the_expiry_queue_stays_proportional_to_the_live_entries() {
        let pending = PendingRegistrations::new(Duration::from_secs(60), 100, BIG);
        for n in 0..10_000u32 {
            let id = format!("agent-{}", n % 3);
            assert_eq!(pending.insert(record(&id, 1, 1), [1; SECRET_LEN]), Ok(()));
        }
        let (count, _, queued) = pending.stats();
        assert_eq!(count, 3);
        assert!(queued <= 2 * count + 65, "{queued} queue items for {count} entries");
    }
}
