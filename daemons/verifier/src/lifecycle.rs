//! An agent's lifecycle: its in-memory state ([`AgentRuntime`], inside an [`AgentSlot`] of the
//! [`AgentTable`]) and every change of it as a typed transition (enrol, converge, update,
//! stop, resume, record a verdict, miss a round, unenrol) that makes the change and returns
//! the [`Batch`] that stores it, with the events it produces. No transition does I/O: the
//! callers ([`crate::agents`] for operators, [`crate::scheduler`] for rounds) hand the batch
//! to the writer in the same critical section, so the store receives an agent's updates in
//! the order they happened.
//!
//! | transition | from | to | events |
//! |---|---|---|---|
//! | [`enrol`] | (none) | pending | `enrolled` |
//! | [`AgentRuntime::converge`] | any | as before; failed → pending | `policy_changed`, `state_changed` |
//! | [`AgentRuntime::update`] | any | as before; failed (new settings or resume), stopped (resume) → pending | `policy_changed`, `state_changed` |
//! | [`AgentRuntime::stop`] | any but stopped | stopped | `state_changed` |
//! | [`AgentRuntime::resume`] | failed, stopped | pending | `state_changed` |
//! | [`AgentRuntime::record_verdict`] | pending, passed, unreachable | passed or failed | `state_changed` (to passed), `attestation_failed` |
//! | [`AgentRuntime::miss`] | pending, passed | unreachable after `max_retries` misses in a row | `unreachable` |
//! | [`unenrol`] | any | (none) | `unenrolled` |
//!
//! A failed or stopped agent's loop idles, so only an operator (or new settings) moves it on.
//!
//! The in-memory entry of an agent is the authority while the verifier runs; the state it
//! stores is `pb::AgentState as i32`, written only here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use kl_core::appraisal::{AgentPolicy, AttestationState};
use kl_core::tpm2::ClockInfo;
use kl_core::verdict::Verdict;
use kl_proto::agent::v1::agent_client::AgentClient;
use kl_proto::verifier::v1::{AgentState, EventKind};
use kl_store::verifier::{
    AgentEntry, Batch, EventRecord, FindingRecord, HistoryRecord, Timestamp, VerdictRecord,
};
use tokio::sync::Notify;

use crate::channel::AgentChannel;
use crate::convert;

/// How long a passing agent's stored entry may lag behind its routine rounds. Each round's
/// history record is written; the entry (counters, IMA progress) is written with a change of
/// state and otherwise once per this period, and for every agent when the verifier stops. A
/// crash loses at most this much routine progress: counters lag, and the next round re-reads
/// the IMA entries since the stored offset.
pub(crate) const CHECKPOINT: Duration = Duration::from_secs(10);
/// Stripes of the per-agent-id enrolment lock.
const ENROLMENT_LOCK_STRIPES: usize = 1024;

/// An event about `agent_id`'s agent ("" for none).
fn event(
    kind: EventKind,
    agent_id: &str,
    state: AgentState,
    previous: AgentState,
    findings: Vec<FindingRecord>,
    message: String,
) -> EventRecord {
    EventRecord {
        cursor: 0,
        at: Timestamp::now(),
        kind: kind as i32,
        agent_id: agent_id.to_owned(),
        state: state as i32,
        previous_state: previous as i32,
        findings,
        message,
    }
}

/// Whether `a` and `b` name the same agent at the same place: AK, identity certificate and
/// contact (a connection made for one serves the other).
fn same_identity(a: &AgentEntry, b: &AgentEntry) -> bool {
    a.ak_public == b.ak_public
        && a.agent_certificate == b.agent_certificate
        && a.contact_ip == b.contact_ip
        && a.contact_port == b.contact_port
}

fn state_of(state: i32) -> AgentState {
    AgentState::try_from(state).unwrap_or(AgentState::Unspecified)
}

/// One enrolled agent.
#[derive(Debug)]
pub(crate) struct AgentSlot {
    pub id: String,
    pub runtime: tokio::sync::Mutex<AgentRuntime>,
    /// Wakes the attestation loop (resume, policy change, unenrolment, shutdown).
    pub wake: Notify,
    removed: AtomicBool,
    /// On a replica: until when this replica may act for the agent (its lease, less a
    /// margin, by this host's monotonic clock; see [`crate::replica`]). `None`: no limit.
    deadline: std::sync::Mutex<Option<Instant>>,
    /// The revision of the stored agent the runtime was read from (see
    /// `AgentEntry::revision`), readable without the runtime's lock.
    revision: std::sync::atomic::AtomicU64,
}

impl AgentSlot {
    pub fn new(entry: AgentEntry) -> AgentSlot {
        AgentSlot {
            id: entry.agent_id.clone(),
            revision: std::sync::atomic::AtomicU64::new(entry.revision),
            runtime: tokio::sync::Mutex::new(AgentRuntime::new(entry)),
            wake: Notify::new(),
            removed: AtomicBool::new(false),
            deadline: std::sync::Mutex::new(None),
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// `rt` (this slot's runtime, locked) becomes `stored`, if `stored` is newer than what it
    /// was read from ([`AgentRuntime::reload`]); whether it did.
    pub fn reload(&self, rt: &mut AgentRuntime, stored: AgentEntry) -> bool {
        if stored.revision <= rt.entry.revision {
            return false;
        }
        self.revision.store(stored.revision, Ordering::Release);
        rt.reload(stored);
        self.wake.notify_one();
        true
    }

    /// Until when this replica may act for the agent, if there is a limit.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this verifier may attest the agent now (its lease has not run out).
    pub fn may_act(&self) -> bool {
        self.deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|d| Instant::now() < d)
    }

    /// The agent's lease (less the margin) runs until `deadline`.
    pub fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Some(deadline);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Unenrolled: its loop ends, and work in flight for it is dropped.
    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The enrolled agents by id, and the locks that order one id's enrolment changes.
#[derive(Debug)]
pub(crate) struct AgentTable {
    agents: RwLock<BTreeMap<String, Arc<AgentSlot>>>,
    /// Serializes enrolment, update and unenrolment of one agent id (striped by id hash), so
    /// that a removal and a new enrolment of the same id reach the store in the order they
    /// were made.
    enrolment_locks: Vec<tokio::sync::Mutex<()>>,
}

impl AgentTable {
    pub fn new(slots: impl IntoIterator<Item = AgentSlot>) -> AgentTable {
        let agents = slots.into_iter().map(|s| (s.id.clone(), Arc::new(s))).collect();
        AgentTable {
            agents: RwLock::new(agents),
            enrolment_locks: (0..ENROLMENT_LOCK_STRIPES).map(|_| Default::default()).collect(),
        }
    }

    /// The map, also after a panic elsewhere while it was held: every change to it is one
    /// map operation, so it is never left half-made.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<AgentSlot>>> {
        self.agents.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, agent_id: &str) -> Option<Arc<AgentSlot>> {
        self.read().get(agent_id).cloned()
    }

    /// Every agent, in id order.
    pub fn all(&self) -> Vec<Arc<AgentSlot>> {
        self.read().values().cloned().collect()
    }

    /// The agents after `after` in id order (all for "").
    pub fn after(&self, after: &str) -> Vec<Arc<AgentSlot>> {
        use std::ops::Bound;
        let agents = self.read();
        let from =
            if after.is_empty() { Bound::Unbounded } else { Bound::Excluded(after.to_owned()) };
        agents.range::<String, _>((from, Bound::Unbounded)).map(|(_, s)| s.clone()).collect()
    }

    /// Adds `slot`; false when its id is taken.
    pub fn insert(&self, slot: &Arc<AgentSlot>) -> bool {
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        if agents.contains_key(&slot.id) {
            return false;
        }
        agents.insert(slot.id.clone(), slot.clone());
        true
    }

    pub fn remove(&self, agent_id: &str) -> Option<Arc<AgentSlot>> {
        self.agents.write().unwrap_or_else(PoisonError::into_inner).remove(agent_id)
    }

    /// Removes `slot` itself, not a newer slot of the same agent that took its place; whether
    /// it was there. The slot's loop ends.
    pub fn remove_slot(&self, slot: &Arc<AgentSlot>) -> bool {
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        let here = agents.get(&slot.id).is_some_and(|s| Arc::ptr_eq(s, slot));
        if here {
            agents.remove(&slot.id);
        }
        drop(agents);
        slot.mark_removed();
        here
    }

    /// The enrolment lock of `agent_id`.
    pub fn enrolment_lock(&self, agent_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        agent_id.hash(&mut hasher);
        let stripes = self.enrolment_locks.len().max(1);
        &self.enrolment_locks[(hasher.finish() % stripes as u64) as usize]
    }
}

/// What an enrolment asks for, checked as far as it can be without the registrar.
#[derive(Debug)]
pub(crate) struct Enrolment {
    pub agent_id: String,
    pub runtime_policy: String,
    pub measured_boot_policy: String,
    pub pcr_policy_json: String,
    pub v_key_half: Vec<u8>,
    pub payload_digest: String,
    pub accept_hash_algorithms: Vec<String>,
    pub accept_signing_algorithms: Vec<String>,
    pub hash_algorithm: String,
}

/// What the registrar says of an agent.
#[derive(Debug)]
pub(crate) struct Identity {
    pub contact_ip: String,
    pub contact_port: u16,
    pub ak_public: Vec<u8>,
    pub agent_certificate: Vec<u8>,
}

impl Enrolment {
    /// The entry of a new agent: pending, never attested.
    pub fn entry(self, identity: Identity) -> AgentEntry {
        AgentEntry {
            agent_id: self.agent_id,
            contact_ip: identity.contact_ip,
            contact_port: identity.contact_port,
            ak_public: identity.ak_public,
            agent_certificate: identity.agent_certificate,
            runtime_policy: self.runtime_policy,
            measured_boot_policy: self.measured_boot_policy,
            pcr_policy_json: self.pcr_policy_json,
            v_key_half: self.v_key_half,
            key_delivered: false,
            accept_hash_algorithms: self.accept_hash_algorithms,
            accept_signing_algorithms: self.accept_signing_algorithms,
            hash_algorithm: self.hash_algorithm,
            state: AgentState::Pending as i32,
            attestation_count: 0,
            enrolled_at: Timestamp::now(),
            last_attestation_at: None,
            last_success_at: None,
            last_verdict: None,
            attestation_state_json: String::new(),
            ima_offset: 0,
            reset_count: 0,
            consecutive_errors: 0,
            history_sequence: 0,
            payload_digest: self.payload_digest,
            revision: 0,
        }
    }
}

/// A round recorded by [`AgentRuntime::record_verdict`].
#[derive(Debug)]
pub(crate) struct Recorded {
    pub batch: Batch,
    pub passed: bool,
}

/// An agent's mutable state.
#[derive(Debug)]
pub(crate) struct AgentRuntime {
    pub entry: AgentEntry,
    pub attestation: AttestationState,
    /// The appraisal inputs, built from the entry and the policy cache; `None` after a change.
    pub policy: Option<(u64, Arc<AgentPolicy>)>,
    /// The connection to the agent, reused across rounds.
    pub client: Option<AgentClient<AgentChannel>>,
    /// Bumped by every settings change; a round started under another generation is dropped.
    pub generation: u64,
    /// A DeliverKey call is in progress.
    pub delivering_key: bool,
    /// When the entry was last handed to the writer; routine rounds in between leave the
    /// stored entry behind (see [`CHECKPOINT`]), and `unsaved` says so.
    saved_at: Instant,
    pub unsaved: bool,
    /// The writer's ticket of the newest change queued without waiting for its commit; what
    /// clients are shown waits for it (see [`crate::writer::StateWriter::wait_durable`]).
    pub submitted: u64,
}

impl AgentRuntime {
    pub fn new(entry: AgentEntry) -> AgentRuntime {
        let attestation = if entry.attestation_state_json.is_empty() {
            AttestationState::default()
        } else {
            serde_json::from_str(&entry.attestation_state_json).unwrap_or_else(|e| {
                tracing::warn!(agent = %entry.agent_id, error = %e, "stored attestation state unreadable; starting over");
                AttestationState::default()
            })
        };
        AgentRuntime {
            entry,
            attestation,
            policy: None,
            client: None,
            generation: 0,
            delivering_key: false,
            saved_at: Instant::now(),
            unsaved: false,
            submitted: 0,
        }
    }

    pub fn state(&self) -> AgentState {
        state_of(self.entry.state)
    }

    /// Failed or stopped: the attestation loop idles until a resume or new settings.
    pub fn paused(&self) -> bool {
        matches!(self.state(), AgentState::Failed | AgentState::Stopped)
    }

    fn set_state(&mut self, state: AgentState) {
        self.entry.state = state as i32;
    }

    /// The agent as another writer left it in the store (an operator's change through another
    /// replica, or the state after this replica took it over): the entry and attestation
    /// state are `stored`'s, the inputs are rebuilt, and a round in flight is dropped.
    pub fn reload(&mut self, stored: AgentEntry) {
        let identity_changed = !same_identity(&self.entry, &stored);
        let generation = self.generation;
        let client = self.client.take();
        *self = AgentRuntime::new(stored);
        self.generation = generation + 1;
        if !identity_changed {
            self.client = client;
        }
    }

    /// The entry as it stands, with the current attestation state serialized into it.
    pub fn current(&self) -> AgentEntry {
        let mut entry = self.entry.clone();
        entry.attestation_state_json = serde_json::to_string(&self.attestation).unwrap_or_default();
        entry.ima_offset = self.attestation.ima.entries_processed;
        entry
    }

    /// [`AgentRuntime::current`], for the writer: the entry is then stored as it stands.
    pub fn snapshot(&mut self) -> AgentEntry {
        self.saved_at = Instant::now();
        self.unsaved = false;
        self.current()
    }

    /// A settings change: the policy is rebuilt and any round in flight is discarded.
    fn changed(&mut self) {
        self.policy = None;
        self.generation += 1;
    }

    /// An enrolment of an agent already enrolled: its settings become `wanted`'s (an empty V
    /// half keeps the payload delivered before), and a failed agent is attested again. `None`
    /// when nothing changed.
    pub fn converge(&mut self, wanted: AgentEntry) -> Option<Batch> {
        let before = self.entry.clone();
        let current = &mut self.entry;
        let identity_changed = !same_identity(current, &wanted);
        current.contact_ip = wanted.contact_ip;
        current.contact_port = wanted.contact_port;
        current.ak_public = wanted.ak_public;
        current.agent_certificate = wanted.agent_certificate;
        current.runtime_policy = wanted.runtime_policy;
        current.measured_boot_policy = wanted.measured_boot_policy;
        current.pcr_policy_json = wanted.pcr_policy_json;
        // No V half means no payload this time: the one delivered before stays delivered.
        if !wanted.v_key_half.is_empty() && current.v_key_half != wanted.v_key_half {
            current.v_key_half = wanted.v_key_half;
            current.key_delivered = false;
            current.payload_digest = wanted.payload_digest;
        }
        current.accept_hash_algorithms = wanted.accept_hash_algorithms;
        current.accept_signing_algorithms = wanted.accept_signing_algorithms;
        current.hash_algorithm = wanted.hash_algorithm;
        if self.entry == before {
            return None;
        }
        self.changed();
        if identity_changed {
            self.client = None;
        }
        let id = self.entry.agent_id.clone();
        let state = self.state();
        let mut events = vec![event(
            EventKind::PolicyChanged,
            &id,
            state,
            state,
            Vec::new(),
            "enrolment settings converged".to_owned(),
        )];
        // As with an update, new settings attest a failed agent again.
        if state == AgentState::Failed {
            self.set_state(AgentState::Pending);
            events.push(event(
                EventKind::StateChanged,
                &id,
                AgentState::Pending,
                AgentState::Failed,
                Vec::new(),
                "attestation resumed by a new enrolment".to_owned(),
            ));
        }
        Some(Batch { agents: vec![self.snapshot()], events, ..Batch::default() })
    }

    /// UpdateAgent: new `settings` (the entry with changed policies), and `resume` to attest
    /// a failed or stopped agent again; new settings resume a failed agent anyway. `None` when
    /// nothing changes.
    pub fn update(&mut self, settings: AgentEntry, resume: bool) -> Option<Batch> {
        let settings_changed = settings != self.entry;
        let previous = self.state();
        let resume = previous == AgentState::Failed && settings_changed
            || resume && matches!(previous, AgentState::Failed | AgentState::Stopped);
        if !settings_changed && !resume {
            return None;
        }
        self.entry = settings;
        self.changed();
        let id = self.entry.agent_id.clone();
        let mut batch = Batch::default();
        if settings_changed {
            batch.events.push(event(
                EventKind::PolicyChanged,
                &id,
                previous,
                previous,
                Vec::new(),
                "policies updated".to_owned(),
            ));
        }
        if resume {
            self.set_state(AgentState::Pending);
            batch.events.push(event(
                EventKind::StateChanged,
                &id,
                AgentState::Pending,
                previous,
                Vec::new(),
                "attestation resumed by an update".to_owned(),
            ));
        }
        batch.agents.push(self.snapshot());
        Some(batch)
    }

    /// An operator stops attestation. `None` when already stopped.
    pub fn stop(&mut self) -> Option<Batch> {
        (self.state() != AgentState::Stopped)
            .then(|| self.move_to(AgentState::Stopped, "stopped by an operator"))
    }

    /// An operator resumes a failed or stopped agent. `None` when it is neither.
    pub fn resume(&mut self) -> Option<Batch> {
        self.paused().then(|| self.move_to(AgentState::Pending, "resumed by an operator"))
    }

    fn move_to(&mut self, state: AgentState, why: &str) -> Batch {
        let previous = self.state();
        self.set_state(state);
        self.changed();
        let id = self.entry.agent_id.clone();
        Batch {
            agents: vec![self.snapshot()],
            events: vec![event(
                EventKind::StateChanged,
                &id,
                state,
                previous,
                Vec::new(),
                why.to_owned(),
            )],
            ..Batch::default()
        }
    }

    /// Records a verdict: counters, last verdict, history, state change and its event. A
    /// routine pass leaves the entry to the next checkpoint ([`CHECKPOINT`]).
    pub fn record_verdict(
        &mut self,
        verdict: Verdict,
        clock: Option<ClockInfo>,
        ima_entries: u64,
        duration: Duration,
    ) -> Recorded {
        let now = Timestamp::now();
        let passed = verdict.passed();
        let previous = self.state();
        let entry = &mut self.entry;
        entry.attestation_count += 1;
        entry.consecutive_errors = 0;
        entry.last_attestation_at = Some(now);
        if let Some(clock) = clock {
            entry.reset_count = clock.reset_count;
        }
        entry.history_sequence += 1;
        let stored = convert::verdict_record(verdict, now);
        entry.last_verdict = Some(stored.clone());
        let history = HistoryRecord {
            sequence: entry.history_sequence,
            at: now,
            verdict: Some(stored),
            reset_count: clock.map_or(entry.reset_count, |c| c.reset_count),
            restart_count: clock.map_or(0, |c| c.restart_count),
            clock: clock.map_or(0, |c| c.clock),
            ima_entries,
            duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        };
        let id = entry.agent_id.clone();
        let mut batch = Batch::default();
        if passed {
            self.set_state(AgentState::Passed);
            self.entry.last_success_at = Some(now);
            if previous != AgentState::Passed {
                batch.events.push(event(
                    EventKind::StateChanged,
                    &id,
                    AgentState::Passed,
                    previous,
                    Vec::new(),
                    format!("attestation passed ({} before)", convert::state_name(previous as i32)),
                ));
            }
        } else {
            self.set_state(AgentState::Failed);
            let findings = self.entry.last_verdict.as_ref().map_or(&[][..], |v| &v.findings);
            let rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
            tracing::warn!(agent = %id, rules = ?rules, "attestation failed");
            batch.events.push(event(
                EventKind::AttestationFailed,
                &id,
                AgentState::Failed,
                previous,
                findings.to_vec(),
                format!("attestation failed: {}", rules.join(", ")),
            ));
        }
        batch.history.push((id, history));
        if batch.events.is_empty() && passed && self.saved_at.elapsed() < CHECKPOINT {
            self.unsaved = true;
        } else {
            batch.agents.push(self.snapshot());
        }
        Recorded { batch, passed }
    }

    /// A round the agent did not answer; after `max_retries` in a row it is unreachable.
    pub fn miss(&mut self, reason: &str, max_retries: u64) -> Batch {
        self.client = None;
        self.entry.consecutive_errors = self.entry.consecutive_errors.saturating_add(1);
        let misses = self.entry.consecutive_errors;
        let id = self.entry.agent_id.clone();
        let previous = self.state();
        let mut batch = Batch::default();
        if u64::from(misses) >= max_retries.max(1) && previous != AgentState::Unreachable {
            self.set_state(AgentState::Unreachable);
            tracing::warn!(agent = %id, misses, reason = %reason, "agent unreachable");
            batch.events.push(event(
                EventKind::Unreachable,
                &id,
                AgentState::Unreachable,
                previous,
                Vec::new(),
                format!("no answer after {misses} attempts: {reason}"),
            ));
        } else {
            tracing::info!(agent = %id, misses, reason = %reason, "agent did not answer");
        }
        batch.agents.push(self.snapshot());
        batch
    }

    /// The agent took its V key half.
    pub fn key_delivered(&mut self) -> Batch {
        self.entry.key_delivered = true;
        Batch { agents: vec![self.snapshot()], ..Batch::default() }
    }
}

/// A new agent: stored with its `enrolled` event.
pub(crate) fn enrol(entry: AgentEntry) -> Batch {
    let id = entry.agent_id.clone();
    Batch {
        agents: vec![entry],
        events: vec![event(
            EventKind::Enrolled,
            &id,
            AgentState::Pending,
            AgentState::Unspecified,
            Vec::new(),
            "enrolled".to_owned(),
        )],
        ..Batch::default()
    }
}

/// An agent removed from the table: its records go, with an `unenrolled` event.
pub(crate) fn unenrol(rt: &AgentRuntime) -> Batch {
    let id = rt.entry.agent_id.clone();
    Batch {
        removed: vec![id.clone()],
        events: vec![event(
            EventKind::Unenrolled,
            &id,
            AgentState::Unspecified,
            rt.state(),
            Vec::new(),
            "unenrolled".to_owned(),
        )],
        ..Batch::default()
    }
}

/// A stored policy changed (every agent using it rebuilds its inputs).
pub(crate) fn policy_changed(message: String) -> Batch {
    let (none, empty) = (AgentState::Unspecified, Vec::new());
    Batch {
        events: vec![event(EventKind::PolicyChanged, "", none, none, empty, message)],
        ..Batch::default()
    }
}

/// The revocation notice of `failure` went out.
pub(crate) fn revocation_sent(failure: &EventRecord, message: String) -> Batch {
    let state = state_of(failure.state);
    Batch {
        events: vec![event(
            EventKind::RevocationSent,
            &failure.agent_id,
            state,
            state,
            Vec::new(),
            message,
        )],
        ..Batch::default()
    }
}

/// Brings an entry read at start-up up to its newest history record. A passing agent's entry
/// is stored only every [`CHECKPOINT`], its rounds' history records within
/// `writer::LINGER`, and clients are shown a round only once its record is committed: after a
/// crash the records newer than the entry are rounds that clients may have seen, so the entry
/// counts them, and numbering goes on after the newest. Those rounds were all routine passes
/// (a failure or a change of state stores the entry with its record).
pub(crate) fn catch_up(entry: &mut AgentEntry, newest: &HistoryRecord) {
    if newest.sequence <= entry.history_sequence {
        return;
    }
    entry.attestation_count += newest.sequence - entry.history_sequence;
    entry.history_sequence = newest.sequence;
    entry.last_attestation_at = Some(newest.at);
    entry.last_verdict = newest.verdict.clone();
    entry.reset_count = newest.reset_count;
    entry.consecutive_errors = 0;
    if newest.verdict.as_ref().is_some_and(VerdictRecord::passed) {
        entry.last_success_at = Some(newest.at);
    }
}

#[cfg(test)]
mod tests {
    use kl_core::verdict::{Finding, rule};

    use super::*;

    fn entry() -> AgentEntry {
        let enrolment = Enrolment {
            agent_id: "a".to_owned(),
            runtime_policy: String::new(),
            measured_boot_policy: String::new(),
            pcr_policy_json: String::new(),
            v_key_half: vec![7; 32],
            payload_digest: String::new(),
            accept_hash_algorithms: Vec::new(),
            accept_signing_algorithms: Vec::new(),
            hash_algorithm: "sha256".to_owned(),
        };
        enrolment.entry(Identity {
            contact_ip: "127.0.0.1".to_owned(),
            contact_port: 9002,
            ak_public: vec![1],
            agent_certificate: vec![2],
        })
    }

    /// Each event of `batch` as (kind, state, previous state).
    fn events(batch: &Batch) -> Vec<(i32, i32, i32)> {
        batch.events.iter().map(|e| (e.kind, e.state, e.previous_state)).collect()
    }

    fn ev(kind: EventKind, state: AgentState, previous: AgentState) -> (i32, i32, i32) {
        (kind as i32, state as i32, previous as i32)
    }

    fn failing() -> Verdict {
        let mut verdict = Verdict::default();
        verdict.push(Finding::new(rule::PCR_MISMATCH, "PCR 7"));
        verdict
    }

    #[test]
    fn verdicts_move_the_state_and_only_changes_make_events() {
        let mut rt = AgentRuntime::new(entry());
        let first = rt.record_verdict(Verdict::default(), None, 3, Duration::ZERO);
        assert!(first.passed);
        let passed = ev(EventKind::StateChanged, AgentState::Passed, AgentState::Pending);
        assert_eq!(events(&first.batch), [passed]);
        assert_eq!(first.batch.agents.len(), 1, "a change of state stores the entry");
        let routine = rt.record_verdict(Verdict::default(), None, 0, Duration::ZERO);
        assert!(events(&routine.batch).is_empty());
        assert!(routine.batch.agents.is_empty() && rt.unsaved, "a routine pass waits");
        assert_eq!(routine.batch.history.len(), 1);
        let failed = rt.record_verdict(failing(), None, 0, Duration::ZERO);
        assert!(!failed.passed);
        let failure = ev(EventKind::AttestationFailed, AgentState::Failed, AgentState::Passed);
        assert_eq!(events(&failed.batch), [failure]);
        assert_eq!(failed.batch.events[0].findings[0].rule, rule::PCR_MISMATCH);
        assert_eq!(
            (rt.state(), rt.entry.attestation_count, rt.entry.history_sequence),
            (AgentState::Failed, 3, 3)
        );
        let stored = rt.entry.last_verdict.clone().map(|v| (v.checked, v.findings));
        let expected = failing();
        let findings = expected.findings.into_iter().map(convert::finding_record).collect();
        assert_eq!(stored, Some((expected.checked, findings)));
        assert!(rt.paused());
    }

    #[test]
    fn operators_stop_and_resume_and_updates_resume_a_failed_agent() {
        let mut rt = AgentRuntime::new(entry());
        assert!(rt.resume().is_none(), "a pending agent is not paused");
        let stop = rt.stop().map(|b| events(&b));
        assert_eq!(
            stop,
            Some(vec![ev(EventKind::StateChanged, AgentState::Stopped, AgentState::Pending)])
        );
        assert!(rt.stop().is_none(), "stopping twice changes nothing");
        let generation = rt.generation;
        assert!(rt.update(rt.entry.clone(), false).is_none(), "same settings, no resume");
        let resumed = rt.update(rt.entry.clone(), true).map(|b| events(&b));
        assert_eq!(
            resumed,
            Some(vec![ev(EventKind::StateChanged, AgentState::Pending, AgentState::Stopped)])
        );
        assert!(rt.generation > generation, "a round in flight is dropped");
        rt.record_verdict(failing(), None, 0, Duration::ZERO);
        let mut settings = rt.entry.clone();
        settings.runtime_policy = "other".to_owned();
        let updated = rt.update(settings, false).map(|b| events(&b));
        assert_eq!(
            updated,
            Some(vec![
                ev(EventKind::PolicyChanged, AgentState::Failed, AgentState::Failed),
                ev(EventKind::StateChanged, AgentState::Pending, AgentState::Failed),
            ])
        );
    }

    #[test]
    fn misses_make_an_agent_unreachable_once() {
        let mut rt = AgentRuntime::new(entry());
        assert!(events(&rt.miss("refused", 2)).is_empty());
        let unreachable = ev(EventKind::Unreachable, AgentState::Unreachable, AgentState::Pending);
        assert_eq!(events(&rt.miss("refused", 2)), [unreachable]);
        assert!(events(&rt.miss("refused", 2)).is_empty(), "unreachable once");
        assert_eq!(rt.entry.consecutive_errors, 3);
        rt.record_verdict(Verdict::default(), None, 0, Duration::ZERO);
        assert_eq!((rt.state(), rt.entry.consecutive_errors), (AgentState::Passed, 0));
    }

    #[test]
    fn enrolling_again_converges_and_keeps_a_delivered_payload_without_a_new_v() {
        let mut rt = AgentRuntime::new(entry());
        rt.key_delivered();
        assert!(rt.converge(entry()).is_none(), "the same enrolment changes nothing");
        let mut again = entry();
        again.v_key_half = Vec::new();
        again.runtime_policy = "p".to_owned();
        let converged = rt.converge(again).map(|b| events(&b));
        assert_eq!(
            converged,
            Some(vec![ev(EventKind::PolicyChanged, AgentState::Pending, AgentState::Pending)])
        );
        assert!(rt.entry.key_delivered && rt.entry.v_key_half == vec![7; 32]);
        rt.record_verdict(failing(), None, 0, Duration::ZERO);
        let mut new_v = entry();
        new_v.v_key_half = vec![8; 32];
        let converged = rt.converge(new_v).map(|b| events(&b));
        assert_eq!(converged.map(|e| e.len()), Some(2), "settings changed and resumed");
        assert_eq!((rt.state(), rt.entry.key_delivered), (AgentState::Pending, false));
    }
}
