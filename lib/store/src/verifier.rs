//! The verifier's state: enrolled agents (settings and attestation state), policies stored
//! once by content digest with a name -> digest map, the attestation history of each agent and
//! the event outbox with its monotonic cursor.
//!
//! Verdicts and findings are typed records ([`VerdictRecord`], [`FindingRecord`]); a finding's
//! expected and actual values, free-form JSON that postcard cannot carry, are JSON text, as the
//! API carries them. The attestation state carried between rounds is JSON text the store does
//! not interpret.
//! Agent updates, history and events written by one [`Batch`] share a transaction, so an event
//! exists exactly when the state change it reports does, and many agents' rounds cost one disk
//! sync (group commit).
//!
//! # Agent leases
//!
//! Verifier replicas sharing one PostgreSQL database divide the agents between them with
//! leases: an agent is attested by the replica (the *holder*, named by the caller) that holds
//! its unexpired lease. [`VerifierStore::claim_leases`] takes agents whose lease is absent or
//! expired, [`VerifierStore::renew_leases`] extends all of a holder's leases at once and tells
//! it which it still holds (with each agent's revision), [`VerifierStore::release_leases`]
//! gives some back, and [`VerifierStore::commit_as`] writes an agent's entry and history only
//! if no other holder has an unexpired lease on it and the entry was read at the agent's
//! current revision, so a holder that lost an agent cannot overwrite the state written by the
//! agent's new holder, nor one that read an agent before an operator changed it
//! ([`VerifierStore::modify_agent`], which changes one agent under its row lock and counts its
//! revision up). [`VerifierStore::lease_holders`] counts live leases per holder;
//! [`VerifierStore::announce`] keeps a replica present (the others divide the fleet by the
//! replicas present) and [`VerifierStore::withdraw`] ends it with its leases;
//! [`VerifierStore::take_duty`] leases work one replica does for all (webhook delivery,
//! pruning). The redb file has a single verifier and no leases: these calls refuse it with
//! [`StoreError::LeasesNeedDatabase`] (a daemon leases agents only when its state is in a
//! database), except `lease_holders`, which reports none.
//!
//! Lease times are the database server's clock: a lease expires when the server's `now()`
//! passes the `now()` of the claiming or renewing transaction plus the duration, and
//! [`Leases`] reports both times. A holder's own clock cannot be compared with the server's
//! (they may be set apart by any amount), but it can measure durations: the server's `now()`
//! for a claim or renewal is taken after the request is sent, so a lease lasts at least until
//! `sent + duration` on the holder's monotonic clock, where `sent` is an `Instant` read
//! before the call. The holder stops acting for an agent (attesting it, calling it, sending
//! notifications about it) at `sent + duration - margin` unless a renewal sent before then
//! has returned the agent. The margin covers what the database cannot fence: an attestation
//! round already under way when the deadline comes (so at least the longest round, with its
//! network timeouts), and the two clocks running at slightly different rates (well under 0.1%
//! of the duration for clocks kept by NTP, which slews them). A server clock stepped forward
//! ends leases early by the size of the step; keep the server's clock slewed, not stepped.
//! Writes to the database need no margin: [`VerifierStore::commit_as`] checks the lease in
//! the committing transaction itself.
//!
//! Every replica, and the operator changes made through it, writes under the store's write
//! lock, so event cursors are assigned in commit order across replicas.

mod history;

use std::ops::Bound;
use std::path::Path;
use std::time::Duration;

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::legacy;
use crate::postgres::{self, verifier as pg};
pub use crate::registrar::Timestamp;
use crate::{
    Check, Database, Location, Migration, Records, Schema, StoreError, check_database,
    open_database,
};

/// An enrolled agent: what it is attested against and where its attestation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    pub agent_id: String,
    pub contact_ip: String,
    pub contact_port: u16,
    /// Marshalled TPMT_PUBLIC of the AK, from the registrar.
    pub ak_public: Vec<u8>,
    /// DER identity certificate of the agent, pinned when calling it.
    pub agent_certificate: Vec<u8>,
    /// Names of stored policies; empty for none.
    pub runtime_policy: String,
    pub measured_boot_policy: String,
    /// The PCR policy in the project's JSON format; empty for none.
    pub pcr_policy_json: String,
    /// The V half of the payload key; empty for none.
    pub v_key_half: Vec<u8>,
    pub key_delivered: bool,
    pub accept_hash_algorithms: Vec<String>,
    pub accept_signing_algorithms: Vec<String>,
    /// PCR bank to quote (`sha256`, ...).
    pub hash_algorithm: String,
    /// The `AgentState` number of the verifier's API.
    pub state: i32,
    pub attestation_count: u64,
    pub enrolled_at: Timestamp,
    pub last_attestation_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    /// The last verdict; `None` before the first.
    pub last_verdict: Option<VerdictRecord>,
    /// The attestation state carried between rounds, as JSON; empty for a fresh start.
    pub attestation_state_json: String,
    pub ima_offset: u64,
    pub reset_count: u32,
    pub consecutive_errors: u32,
    /// Sequence number of the last history record.
    pub history_sequence: u64,
    /// A digest of the payload delivered with `v_key_half`, as the client gave it; empty for
    /// none or unknown (enrolled before it was recorded).
    pub payload_digest: String,
    /// The revision of the agent's row in a PostgreSQL store, new with each operator change
    /// ([`VerifierStore::modify_agent`]; increasing); a replica writes the agent only at the
    /// revision it read ([`VerifierStore::commit_as`]). A column of its own, not part of the
    /// record; always 0 in the redb file.
    #[serde(skip)]
    pub revision: u64,
}

/// One attestation round in an agent's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub sequence: u64,
    pub at: Timestamp,
    /// `None` only in a record migrated from a verdict text this version could not read.
    pub verdict: Option<VerdictRecord>,
    pub reset_count: u32,
    pub restart_count: u32,
    pub clock: u64,
    pub ima_entries: u64,
    pub duration_us: u64,
}

/// An appraisal's outcome as stored: when, what was evaluated and what did not pass. It passed
/// when it has no findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub at: Timestamp,
    /// What was evaluated: `quote`, `pcrs`, `ima`, `measured_boot`.
    pub checked: Vec<String>,
    pub findings: Vec<FindingRecord>,
}

impl VerdictRecord {
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

/// One reason an appraisal did not pass, as stored and as the API carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingRecord {
    /// The stable rule id, e.g. `ima.not_in_policy`.
    pub rule: String,
    pub message: String,
    pub pcr: Option<u32>,
    /// Event number in a UEFI event log.
    pub event: Option<u64>,
    /// Line number in an IMA log.
    pub line: Option<u64>,
    pub path: Option<String>,
    /// The expected value as JSON text (a value of any JSON type).
    pub expected_json: Option<String>,
    /// The actual value as JSON text.
    pub actual_json: Option<String>,
}

/// One event of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Assigned by [`VerifierStore::commit`]; ignored on input.
    pub cursor: u64,
    pub at: Timestamp,
    /// The `EventKind` number of the verifier's API.
    pub kind: i32,
    pub agent_id: String,
    pub state: i32,
    pub previous_state: i32,
    pub findings: Vec<FindingRecord>,
    pub message: String,
}

/// A stored policy name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyName {
    pub name: String,
    /// SHA-256 of the canonical document, lowercase hex.
    pub digest: String,
    pub entries: u64,
    pub updated_at: Timestamp,
}

/// The two kinds of named policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Runtime,
    MeasuredBoot,
}

impl PolicyKind {
    fn names(self) -> &'static Records<PolicyName> {
        match self {
            PolicyKind::Runtime => &RUNTIME_NAMES,
            PolicyKind::MeasuredBoot => &MB_NAMES,
        }
    }

    fn documents(self) -> &'static Records<Vec<u8>> {
        match self {
            PolicyKind::Runtime => &RUNTIME_DOCUMENTS,
            PolicyKind::MeasuredBoot => &MB_DOCUMENTS,
        }
    }

    fn used_by(self, agent: &AgentEntry) -> &str {
        match self {
            PolicyKind::Runtime => &agent.runtime_policy,
            PolicyKind::MeasuredBoot => &agent.measured_boot_policy,
        }
    }
}

/// What a policy name must be before [`VerifierStore::put_policy`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutPrecondition {
    /// Create or replace.
    Any,
    /// Create only: the name must not exist, whatever it holds.
    Absent,
    /// Replace only: the name must exist.
    Present,
}

/// What [`VerifierStore::put_policy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPut {
    /// `changed` is false when the name already held this digest.
    Stored { record: PolicyName, changed: bool },
    /// Nothing was written: the name exists (precondition `Absent`); its current record.
    Exists(PolicyName),
    /// Nothing was written: the name does not exist (precondition `Present`).
    Missing,
}

/// What [`VerifierStore::delete_policy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDeletion {
    Deleted,
    Absent,
    /// Nothing was deleted: this agent uses the policy.
    InUse(String),
}

/// Writes that commit together. A batch applies its removals first, then its agent entries
/// (the last entry of an agent wins), then history records and events.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Agents to insert or replace.
    pub agents: Vec<AgentEntry>,
    /// Agents to remove, with their history.
    pub removed: Vec<String>,
    /// History records to append, by agent id.
    pub history: Vec<(String, HistoryRecord)>,
    /// Events to append; their cursors are assigned in order.
    pub events: Vec<EventRecord>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.removed.is_empty()
            && self.history.is_empty()
            && self.events.is_empty()
    }

    /// Adds `later`'s writes as coming after this batch's: an agent that `later` removes loses
    /// the entry and history this batch held for it, and an agent written by both keeps
    /// `later`'s entry.
    pub fn extend(&mut self, later: Batch) {
        for id in &later.removed {
            self.agents.retain(|a| &a.agent_id != id);
            self.history.retain(|(agent, _)| agent != id);
            if !self.removed.contains(id) {
                self.removed.push(id.clone());
            }
        }
        self.agents.extend(later.agents);
        self.history.extend(later.history);
        self.events.extend(later.events);
    }

    /// Every agent the batch writes, removes, or records history or events for; sorted, once
    /// each.
    pub fn agent_ids(&self) -> Vec<String> {
        let ids: std::collections::BTreeSet<&str> = self
            .agents
            .iter()
            .map(|a| a.agent_id.as_str())
            .chain(self.removed.iter().map(String::as_str))
            .chain(self.history.iter().map(|(id, _)| id.as_str()))
            .chain(self.events.iter().map(|e| e.agent_id.as_str()).filter(|id| !id.is_empty()))
            .collect();
        ids.into_iter().map(str::to_owned).collect()
    }
}

/// Leases a holder took or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leases {
    /// The agents, in id order.
    pub agents: Vec<String>,
    /// The revision of each agent of `agents` (see [`AgentEntry::revision`]) as the statement
    /// saw it.
    pub revisions: Vec<u64>,
    /// The server's `now()` when they were taken or renewed.
    pub granted_at: Timestamp,
    /// The server's time at which they expire unless renewed: `granted_at` plus the duration.
    pub expires_at: Timestamp,
}

/// What [`VerifierStore::commit_as`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The batch's events in its order, with their cursors; cursor 0 for those not written
    /// (of agents whose entry was read before an operator changed or removed them).
    pub events: Vec<EventRecord>,
    /// The agents whose entries and history were not written, in id order: not leased to the
    /// holder, expired, removed, or changed by an operator since the holder read them.
    pub refused: Vec<String>,
}

/// An agent as stored with its newest history record, or why its records cannot be read.
pub type AgentRead = Result<(AgentEntry, Option<HistoryRecord>), StoreError>;

/// What [`VerifierStore::modify_agent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modified<T> {
    /// The events written, with their cursors.
    pub events: Vec<EventRecord>,
    /// The agents written, as stored, with their new revisions.
    pub stored: Vec<AgentEntry>,
    /// What the change answered.
    pub answer: T,
}

/// How many records a [`VerifierStore::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub history: u64,
    pub events: u64,
}

const AGENTS: Records<AgentEntry> = Records::new("agents");
const AGENTS_V1: Records<legacy::AgentEntryV1> = Records::new("agents");
const AGENTS_V2: Records<legacy::AgentEntryV2> = Records::new("agents");
static RUNTIME_NAMES: Records<PolicyName> = Records::new("runtime_policy_names");
static RUNTIME_DOCUMENTS: Records<Vec<u8>> = Records::new("runtime_policy_documents");
static MB_NAMES: Records<PolicyName> = Records::new("mb_policy_names");
static MB_DOCUMENTS: Records<Vec<u8>> = Records::new("mb_policy_documents");
/// Named positions: `last_event` (the highest cursor ever assigned), `webhook` (delivered up
/// to).
const CURSORS: Records<u64> = Records::new("cursors");
/// Key: `<agent id>\0<sequence, 20 digits>`; schema versions 1 to 3 (then [`history`]).
const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

const LAST_EVENT: &str = "last_event";

fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    AGENTS.create(txn)?;
    RUNTIME_NAMES.create(txn)?;
    RUNTIME_DOCUMENTS.create(txn)?;
    MB_NAMES.create(txn)?;
    MB_DOCUMENTS.create(txn)?;
    CURSORS.create(txn)?;
    txn.open_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
    txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
    Ok(())
}

/// Re-encodes every agent with an empty payload digest.
fn add_payload_digest(txn: &WriteTransaction) -> Result<(), StoreError> {
    for (key, old) in AGENTS_V1.all_for_update(txn)? {
        AGENTS_V2.insert(txn, &key, &legacy::AgentEntryV2::from(old))?;
    }
    Ok(())
}

/// Re-encodes agents, history records and events with typed verdicts and findings in place of
/// their JSON text.
fn type_verdicts(txn: &WriteTransaction) -> Result<(), StoreError> {
    for (key, old) in AGENTS_V2.all_for_update(txn)? {
        AGENTS.insert(txn, &key, &AgentEntry::from(old))?;
    }
    // A chunk at a time: redb does not write a table while a range of it is read.
    let mut history = txn.open_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
    let mut after: Option<String> = None;
    loop {
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let chunk = history
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| StoreError::table("history", e))?
            .take(REWRITE_CHUNK)
            .map(|entry| entry.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::table("history", e))?;
        for (key, bytes) in &chunk {
            let old: legacy::HistoryRecordV1 = decode("history", key, bytes)?;
            let new = encode("history", key, &HistoryRecord::from(old))?;
            history
                .insert(key.as_str(), new.as_slice())
                .map_err(|e| StoreError::table("history", e))?;
        }
        match chunk.into_iter().last() {
            Some((key, _)) => after = Some(key),
            None => break,
        }
    }
    let mut events = txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
    let mut after = None;
    loop {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let chunk = events
            .range::<u64>((start, Bound::Unbounded))
            .map_err(|e| StoreError::table("events", e))?
            .take(REWRITE_CHUNK)
            .map(|entry| entry.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::table("events", e))?;
        for (cursor, bytes) in &chunk {
            let key = cursor.to_string();
            let old: legacy::EventRecordV1 = decode("events", &key, bytes)?;
            let new = encode("events", &key, &EventRecord::from(old))?;
            events.insert(cursor, new.as_slice()).map_err(|e| StoreError::table("events", e))?;
        }
        match chunk.last() {
            Some((cursor, _)) => after = Some(*cursor),
            None => break,
        }
    }
    Ok(())
}

/// How many records a migration reads before writing them back.
const REWRITE_CHUNK: usize = 4096;

/// Version 1: agents, policies, history, events, cursors. Version 2: agents record the digest
/// of their payload. Version 3: verdicts and findings are typed records. Version 4: history
/// in blocks ([`history`]).
pub static SCHEMA: Schema = Schema {
    name: "verifier",
    migrations: &[
        Migration {
            description: "create the agents, policy, history, event and cursor tables",
            apply: create_tables,
        },
        Migration { description: "record a payload digest per agent", apply: add_payload_digest },
        Migration {
            description: "store verdicts and findings as typed records",
            apply: type_verdicts,
        },
        Migration {
            description: "keep attestation history in blocks of records",
            apply: history::move_into_blocks,
        },
    ],
};

/// A key of the history table of schema versions 1 to 3.
#[cfg(test)]
fn history_key(agent_id: &str, sequence: u64) -> String {
    format!("{agent_id}\0{sequence:020}")
}

fn encode<T: Serialize>(table: &'static str, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|source| StoreError::Encode {
        table,
        key: key.to_owned(),
        source,
    })
}

fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
        table,
        key: key.to_owned(),
        source,
    })
}

fn older_than(at: &Timestamp, cutoff: i64) -> bool {
    at.seconds < cutoff
}

/// The verifier's store (`verifier.redb`, or its tables in PostgreSQL).
#[derive(Debug)]
pub struct VerifierStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Redb(Database),
    Postgres(Box<postgres::Database>),
}

impl VerifierStore {
    /// Opens or creates the store at `path`, migrating an older file.
    pub fn open(path: &Path) -> Result<VerifierStore, StoreError> {
        Ok(VerifierStore { backend: Backend::Redb(open_database(path, &SCHEMA)?) })
    }

    /// Opens the store at `location`: the redb file as [`VerifierStore::open`] does, or the
    /// PostgreSQL database (connecting to it, creating or migrating its tables).
    pub fn open_at(location: &Location) -> Result<VerifierStore, StoreError> {
        match location {
            Location::File(path) => VerifierStore::open(path),
            Location::Postgres(target) => Ok(VerifierStore {
                backend: Backend::Postgres(Box::new(postgres::Database::open(
                    target,
                    &pg::SCHEMA,
                )?)),
            }),
        }
    }

    /// Checks the existing store at `path` in full (see [`check_database`]): every page's
    /// checksum, then every record of every table read and decoded. Nothing else may have the
    /// file open.
    pub fn check(path: &Path) -> Result<Check, StoreError> {
        check_database(path, &SCHEMA, |txn| {
            let mut tables = vec![
                (AGENTS.name(), AGENTS.decode_all(txn)?),
                (RUNTIME_NAMES.name(), RUNTIME_NAMES.decode_all(txn)?),
                (RUNTIME_DOCUMENTS.name(), RUNTIME_DOCUMENTS.decode_all(txn)?),
                (MB_NAMES.name(), MB_NAMES.decode_all(txn)?),
                (MB_DOCUMENTS.name(), MB_DOCUMENTS.decode_all(txn)?),
                (CURSORS.name(), CURSORS.decode_all(txn)?),
            ];
            tables.push(("history", history::check(txn)?));
            let events = txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
            let mut count = 0;
            for entry in events.iter().map_err(|e| StoreError::table("events", e))? {
                let (key, value) = entry.map_err(|e| StoreError::table("events", e))?;
                decode::<EventRecord>("events", &key.value().to_string(), value.value())?;
                count += 1;
            }
            tables.push(("events", count));
            Ok(tables)
        })
    }

    /// Opens the file again after a failed write (see [`Database::reopen`]); for a database,
    /// drops the idle connections.
    pub fn reopen(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.reopen(),
            Backend::Postgres(db) => db.reopen(),
        }
    }

    /// The file, or the database URL without its password, for logs.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Redb(db) => db.path().display().to_string(),
            Backend::Postgres(db) => db.url().to_owned(),
        }
    }

    /// Whether writes may succeed again after an I/O failure: for the redb file, whether its
    /// file system takes writes again (see [`crate::space_returned`]); a database is simply
    /// tried again.
    pub fn space_returned(&self) -> bool {
        match &self.backend {
            Backend::Redb(db) => crate::space_returned(db.path()),
            Backend::Postgres(_) => true,
        }
    }

    pub fn get_agent(&self, agent_id: &str) -> Result<Option<AgentEntry>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.read("read an agent", |txn| AGENTS.get(txn, agent_id)),
            Backend::Postgres(db) => pg::get_agent(db, agent_id),
        }
    }

    /// The redb file, or the PostgreSQL backend's answer to `operation`.
    fn redb(&self) -> Result<&Database, &postgres::Database> {
        match &self.backend {
            Backend::Redb(db) => Ok(db),
            Backend::Postgres(db) => Err(db),
        }
    }

    /// At most `limit` agents ordered by id, after `after`.
    pub fn list_agents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgentEntry>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::list_agents(pg, after, limit),
        };
        let page = db.read("list agents", |txn| AGENTS.page(txn, after, limit))?;
        Ok(page.into_iter().map(|(_, a)| a).collect())
    }

    /// Commits `batch` in one transaction and returns its events with their cursors.
    /// `history_max_entries` bounds each agent's history (0: unbounded).
    /// Takes the batch by reference too, so that a caller can keep writes that failed.
    pub fn commit(
        &self,
        batch: impl std::borrow::Borrow<Batch>,
        history_max_entries: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::commit(pg, batch.borrow(), history_max_entries),
        };
        let batch = batch.borrow();
        let mut agents: Vec<&AgentEntry> = batch.agents.iter().collect();
        // Key order writes neighbouring pages together; of an agent written twice, the
        // later entry is kept (the sort is stable).
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let mut history: Vec<(&str, &HistoryRecord)> =
            batch.history.iter().map(|(agent_id, record)| (agent_id.as_str(), record)).collect();
        history.sort_by(|a, b| a.0.cmp(b.0).then(a.1.sequence.cmp(&b.1.sequence)));
        db.write("commit attestation state", |txn| {
            for agent_id in &batch.removed {
                AGENTS.remove(txn, agent_id)?;
                history::remove(txn, agent_id)?;
            }
            let last_of_each = agents.iter().enumerate().filter(|(i, agent)| {
                agents.get(i + 1).is_none_or(|next| next.agent_id != agent.agent_id)
            });
            AGENTS.insert_all(txn, last_of_each.map(|(_, a)| (a.agent_id.as_str(), *a)))?;
            history::append(txn, &history, history_max_entries)?;
            let mut last = CURSORS.get_for_update(txn, LAST_EVENT)?.unwrap_or(0);
            let mut events = txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
            let mut out = Vec::with_capacity(batch.events.len());
            for event in &batch.events {
                let mut event = event.clone();
                last += 1;
                event.cursor = last;
                let bytes = encode("events", &last.to_string(), &event)?;
                events
                    .insert(last, bytes.as_slice())
                    .map_err(|e| StoreError::table("events", e))?;
                out.push(event);
            }
            drop(events);
            if !out.is_empty() {
                CURSORS.insert(txn, LAST_EVENT, &last)?;
            }
            Ok(out)
        })
    }

    /// [`VerifierStore::commit`] for the replica `holder`: the entry, history or removal of an
    /// agent is written only if the agent's lease row names `holder` (live, or expired while
    /// nobody else took it: what it found while it held the agent, written late because the
    /// database was away) and the entry was read at the agent's current revision (no operator
    /// changed it since; see [`VerifierStore::modify_agent`]), all checked in the committing
    /// transaction. The events are written too (they report what the holder saw while it held
    /// the agent), except those of an agent whose written entry was read before an operator
    /// changed or removed the agent: they report a round under settings that are gone. A
    /// holder takes no new leases while it holds unwritten writes, so what it reads of an
    /// agent it takes includes them. [`Committed::refused`] names the agents whose writes were
    /// left out; their holder must read them again or drop them. A new agent has no row yet:
    /// enrolling it is a [`VerifierStore::modify_agent`].
    pub fn commit_as(
        &self,
        holder: &str,
        batch: impl std::borrow::Borrow<Batch>,
        history_max_entries: u64,
    ) -> Result<Committed, StoreError> {
        let pg = self.leased("commit attestation state")?;
        pg::commit_as(pg, holder, batch.borrow(), history_max_entries)
    }

    /// An operator's change of one agent on a database shared by replicas: `change` is given
    /// the agent as stored with its newest history record (`None` when it is not enrolled;
    /// the entry may lag its history, which its holder writes first) while its row is locked, and
    /// returns the batch that stores the change (`None` for no change) and an answer for the
    /// caller. The batch is committed in the same transaction and every agent it writes gets a
    /// new revision (from a sequence: higher than any before, also across an unenrolment and
    /// a new enrolment), so that the agent's holder reads the agent again before writing it
    /// ([`VerifierStore::commit_as`]).
    pub fn modify_agent<T>(
        &self,
        agent_id: &str,
        history_max_entries: u64,
        change: impl FnOnce(Option<(AgentEntry, Option<HistoryRecord>)>) -> (Option<Batch>, T),
    ) -> Result<Modified<T>, StoreError> {
        let pg = self.leased("change an agent")?;
        pg::modify_agent(pg, agent_id, history_max_entries, change)
    }

    /// How many agents use the `kind` policy `name`.
    pub fn policy_users(&self, kind: PolicyKind, name: &str) -> Result<u64, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::policy_users(pg, kind, name),
        };
        db.read("count the agents using a policy", |txn| {
            let mut count = 0;
            let mut after: Option<String> = None;
            loop {
                let page = AGENTS.page(txn, after.as_deref(), 1000)?;
                let Some((last, _)) = page.last() else { return Ok(count) };
                after = Some(last.clone());
                count += page
                    .iter()
                    .filter(|(_, agent)| match kind {
                        PolicyKind::Runtime => agent.runtime_policy == name,
                        PolicyKind::MeasuredBoot => agent.measured_boot_policy == name,
                    })
                    .count() as u64;
            }
        })
    }

    /// Each of `agent_ids` that is enrolled (those that are not are left out), with its newest
    /// history record, in id order: one statement on a database, whatever the count. An agent
    /// whose records cannot be decoded gets its own error; an error reaching the store is the
    /// call's.
    pub fn agents_with_newest_history(
        &self,
        agent_ids: &[String],
    ) -> Result<Vec<(String, AgentRead)>, StoreError> {
        if let Err(pg) = self.redb() {
            return pg::agents_with_newest_history(pg, agent_ids);
        }
        let mut ids = agent_ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(entry) = self.get_agent(&id)? else { continue };
            let newest = self.history(&id, None, 1)?.into_iter().next();
            out.push((id, Ok((entry, newest))));
        }
        Ok(out)
    }

    /// How many agents are enrolled.
    pub fn agent_count(&self) -> Result<u64, StoreError> {
        match self.redb() {
            Ok(db) => db.read("count agents", |txn| AGENTS.count(txn)),
            Err(pg) => pg::agent_count(pg),
        }
    }

    /// Marks `replica` present for `duration` (by the server's clock) and returns the replicas
    /// present, in id order, itself included: replicas divide the agents between those.
    /// `token` tells processes apart: while another process has announced the same id with
    /// another token and its presence has not run out, the answer is
    /// [`StoreError::ReplicaIdTaken`] (two processes with one id would attest the same agents).
    pub fn announce(
        &self,
        replica: &str,
        token: &str,
        duration: Duration,
    ) -> Result<Vec<String>, StoreError> {
        pg::announce(self.leased("announce a replica")?, replica, token, duration)
    }

    /// Ends the presence of `replica` (announced with `token`) and gives back the leases and
    /// duties of `holder` (at shutdown), so other replicas take its agents at once. Nothing is
    /// given back when another process has announced the id since.
    pub fn withdraw(&self, replica: &str, token: &str, holder: &str) -> Result<(), StoreError> {
        pg::withdraw(self.leased("withdraw a replica")?, replica, token, holder)
    }

    /// Takes or renews the duty `name` (work one replica does for all, such as delivering
    /// webhooks) for `holder` for `duration`, if no other holder has it unexpired. `None` when
    /// another has it. The times are the server's, as for agent leases.
    pub fn take_duty(
        &self,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Result<Option<Leases>, StoreError> {
        pg::take_duty(self.leased("take a duty")?, name, holder, duration)
    }

    /// Leases up to `max` agents whose lease is absent or expired to `holder` for `duration`
    /// (by the server's clock; see the module docs), in one transaction that skips the agents
    /// another claim is taking meanwhile, so two holders never take the same agent. Returns
    /// only the agents taken now, not those `holder` already held.
    pub fn claim_leases(
        &self,
        holder: &str,
        max: usize,
        duration: Duration,
    ) -> Result<Leases, StoreError> {
        pg::claim_leases(self.leased("claim agent leases")?, holder, max, duration)
    }

    /// Extends every unexpired lease of `holder` to `duration` from now (one statement) and
    /// returns the agents it still holds: an agent missing from them is lost (its lease
    /// expired, was released, or the agent was removed) and must no longer be attested.
    pub fn renew_leases(&self, holder: &str, duration: Duration) -> Result<Leases, StoreError> {
        pg::renew_leases(self.leased("renew agent leases")?, holder, duration)
    }

    /// Ends the leases of `agent_ids` that `holder` holds, so another holder may claim them at
    /// once; returns how many it held.
    pub fn release_leases(&self, holder: &str, agent_ids: &[String]) -> Result<u64, StoreError> {
        pg::release_leases(self.leased("release agent leases")?, holder, agent_ids)
    }

    /// How many unexpired leases each holder has, by holder name; none for the redb file.
    pub fn lease_holders(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(Vec::new()),
            Backend::Postgres(db) => pg::lease_holders(db),
        }
    }

    /// The database, for a lease operation; the redb file has none.
    fn leased(&self, operation: &str) -> Result<&postgres::Database, StoreError> {
        match &self.backend {
            Backend::Postgres(db) => Ok(db),
            Backend::Redb(db) => Err(StoreError::LeasesNeedDatabase {
                path: db.path().to_owned(),
                operation: operation.to_owned(),
            }),
        }
    }

    /// An agent's history, newest first: at most `limit` records with a sequence below
    /// `before` (from the newest when `None`).
    pub fn history(
        &self,
        agent_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::history(pg, agent_id, before, limit),
        };
        db.read("read attestation history", |txn| history::read(txn, agent_id, before, limit))
    }

    /// The sequence of the newest history record of an agent, if it has any.
    pub fn last_history_sequence(&self, agent_id: &str) -> Result<Option<u64>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::last_history_sequence(pg, agent_id),
        };
        let newest =
            db.read("read attestation history", |txn| history::read(txn, agent_id, None, 1))?;
        Ok(newest.first().map(|record| record.sequence))
    }

    /// At most `limit` events with a cursor above `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::events_after(pg, after, limit),
        };
        db.read("read events", |txn| events_after(txn, after, limit))
    }

    /// The oldest retained cursor, if any event is held.
    pub fn oldest_event(&self) -> Result<Option<u64>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::oldest_event(pg),
        };
        db.read("read events", |txn| {
            let table = txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
            let first = table.first().map_err(|e| StoreError::table("events", e))?;
            Ok(first.map(|(k, _)| k.value()))
        })
    }

    /// The highest cursor ever assigned (0 before the first event).
    pub fn last_event(&self) -> Result<u64, StoreError> {
        self.cursor(LAST_EVENT).map(|c| c.unwrap_or(0))
    }

    /// A named position (e.g. `webhook`: delivered up to).
    pub fn cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::cursor(pg, name),
        };
        db.read("read a cursor", |txn| CURSORS.get(txn, name))
    }

    /// Moves the cursor `name` forward to `value`; a lower value leaves it where it is (a
    /// delivery cursor never goes back, whoever writes it late).
    pub fn set_cursor(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::set_cursor(pg, name, value),
        };
        db.write("write a cursor", |txn| {
            let current = CURSORS.get_for_update(txn, name)?.unwrap_or(0);
            if value > current { CURSORS.insert(txn, name, &value) } else { Ok(()) }
        })
    }

    /// Stores `document` under `digest` and points `name` at it, if `precondition` holds for
    /// `name` (checked in the same transaction, so two writers cannot both create a name).
    pub fn put_policy(
        &self,
        kind: PolicyKind,
        name: &str,
        precondition: PutPrecondition,
        digest: &str,
        document: &[u8],
        entries: u64,
    ) -> Result<PolicyPut, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => {
                return pg::put_policy(pg, kind, name, precondition, digest, document, entries);
            }
        };
        db.write("store a policy", |txn| {
            let previous = kind.names().get_for_update(txn, name)?;
            match (precondition, previous) {
                (PutPrecondition::Absent, Some(old)) => Ok(PolicyPut::Exists(old)),
                (PutPrecondition::Present, None) => Ok(PolicyPut::Missing),
                (_, Some(old)) if old.digest == digest => {
                    Ok(PolicyPut::Stored { record: old, changed: false })
                }
                (_, previous) => {
                    if kind.documents().get_for_update(txn, digest)?.is_none() {
                        kind.documents().insert(txn, digest, &document.to_vec())?;
                    }
                    let record = PolicyName {
                        name: name.to_owned(),
                        digest: digest.to_owned(),
                        entries,
                        updated_at: Timestamp::now(),
                    };
                    kind.names().insert(txn, name, &record)?;
                    if let Some(previous) = previous {
                        drop_unreferenced(txn, kind, &previous.digest)?;
                    }
                    Ok(PolicyPut::Stored { record, changed: true })
                }
            }
        })
    }

    /// The name record of a policy (its current digest), without reading its document.
    pub fn policy_name(
        &self,
        kind: PolicyKind,
        name: &str,
    ) -> Result<Option<PolicyName>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::policy_name(pg, kind, name),
        };
        db.read("read a policy name", |txn| kind.names().get(txn, name))
    }

    /// The name record and canonical document of a policy.
    pub fn get_policy(
        &self,
        kind: PolicyKind,
        name: &str,
    ) -> Result<Option<(PolicyName, Vec<u8>)>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::get_policy(pg, kind, name),
        };
        db.read("read a policy", |txn| {
            let Some(record) = kind.names().get(txn, name)? else {
                return Ok(None);
            };
            let document = kind.documents().get(txn, &record.digest)?.unwrap_or_default();
            Ok(Some((record, document)))
        })
    }

    /// Every policy name of `kind`, in name order.
    pub fn list_policies(&self, kind: PolicyKind) -> Result<Vec<PolicyName>, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::list_policies(pg, kind),
        };
        let page = db.read("list policies", |txn| kind.names().page(txn, None, usize::MAX))?;
        Ok(page.into_iter().map(|(_, p)| p).collect())
    }

    /// Removes a policy name (and its document when no other name shares it), unless an
    /// enrolled agent uses it; checked in the same transaction.
    pub fn delete_policy(
        &self,
        kind: PolicyKind,
        name: &str,
    ) -> Result<PolicyDeletion, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::delete_policy(pg, kind, name),
        };
        db.write("delete a policy", |txn| {
            let Some(record) = kind.names().get_for_update(txn, name)? else {
                return Ok(PolicyDeletion::Absent);
            };
            if let Some((id, _)) =
                AGENTS.all_for_update(txn)?.into_iter().find(|(_, a)| kind.used_by(a) == name)
            {
                return Ok(PolicyDeletion::InUse(id));
            }
            kind.names().remove(txn, name)?;
            drop_unreferenced(txn, kind, &record.digest)?;
            Ok(PolicyDeletion::Deleted)
        })
    }

    /// Removes history records and events older than `max_age`, and the oldest events beyond
    /// `max_events`.
    pub fn prune(&self, max_age: Duration, max_events: u64) -> Result<Pruned, StoreError> {
        let db = match self.redb() {
            Ok(db) => db,
            Err(pg) => return pg::prune(pg, max_age, max_events),
        };
        let cutoff = Timestamp::now().seconds.saturating_sub(max_age.as_secs() as i64);
        db.write("prune history and events", |txn| {
            let mut pruned =
                Pruned { history: history::prune_older(txn, cutoff)?, ..Pruned::default() };
            let mut events = txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
            let total = events.len().map_err(|e| StoreError::table("events", e))?;
            let mut excess = total.saturating_sub(max_events);
            while let Some((cursor, at)) = first_event(&events)? {
                if excess == 0 && !older_than(&at, cutoff) {
                    break;
                }
                events.remove(cursor).map_err(|e| StoreError::table("events", e))?;
                excess = excess.saturating_sub(1);
                pruned.events += 1;
            }
            Ok(pruned)
        })
    }
}

/// The cursor and time of the oldest event.
fn first_event(
    events: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<(u64, Timestamp)>, StoreError> {
    let first = events.first().map_err(|e| StoreError::table("events", e))?;
    let Some((key, value)) = first else {
        return Ok(None);
    };
    let cursor = key.value();
    let event: EventRecord = decode("events", &cursor.to_string(), value.value())?;
    Ok(Some((cursor, event.at)))
}

fn events_after(
    txn: &ReadTransaction,
    after: u64,
    limit: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    let table = txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
    let range = table
        .range::<u64>((Bound::Excluded(after), Bound::Unbounded))
        .map_err(|e| StoreError::table("events", e))?;
    let mut out = Vec::new();
    for entry in range.take(limit) {
        let (key, value) = entry.map_err(|e| StoreError::table("events", e))?;
        out.push(decode("events", &key.value().to_string(), value.value())?);
    }
    Ok(out)
}

fn drop_unreferenced(
    txn: &WriteTransaction,
    kind: PolicyKind,
    digest: &str,
) -> Result<(), StoreError> {
    let shared = kind.names().all_for_update(txn)?.iter().any(|(_, p)| p.digest == digest);
    if !shared {
        kind.documents().remove(txn, digest)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "verifier_tests.rs"]
mod tests;
