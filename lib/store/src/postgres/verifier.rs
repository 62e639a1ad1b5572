//! The verifier's tables in PostgreSQL. Records are encoded as in the redb file (postcard);
//! the columns beside them are what queries select or order on: agent ids in byte order
//! (`COLLATE "C"`, as redb orders keys), the policies an agent uses (for the in-use check of a
//! deletion), history by agent and sequence, events by cursor, and the times pruning compares.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Row;

use super::{Database, Migration, Rewrite, Schema, Tx, bigint, bound, limit, unsigned};
use crate::StoreError;
use crate::legacy;
use crate::verifier::{
    AgentEntry, AgentRead, Batch, Committed, EventRecord, HistoryRecord, Leases, Modified,
    PolicyDeletion, PolicyKind, PolicyName, PolicyPut, Pruned, PutPrecondition, Timestamp,
};

const AGENTS: &str = "verifier_agents";
const NAMES: &str = "verifier_policy_names";
const DOCUMENTS: &str = "verifier_policy_documents";
const CURSORS: &str = "verifier_cursors";
const HISTORY: &str = "verifier_history";
const EVENTS: &str = "verifier_events";

const LEASES: &str = "verifier_leases";
const REPLICAS: &str = "verifier_replicas";
const DUTIES: &str = "verifier_duties";

const LAST_EVENT: &str = "last_event";

/// Version 1: agents, policies, history, events, cursors (records as redb's schema version 2
/// encodes them). Version 2: agent leases (see [`crate::verifier`]). Version 3: agent
/// revisions, the replicas present, and duties (leases on work that one replica does). Version
/// 4: verdicts and findings as typed records (redb's schema version 3).
pub(crate) static SCHEMA: Schema = Schema {
    name: "verifier",
    write_lock: 0x6b6c_0002,
    // The lock verifiers of schema versions 1 and 2 held, one verifier per database.
    earlier_release_lock: Some(0x6b6c_0012),
    migrations: &[
        Migration {
            description: "create the agents, policy, history, event and cursor tables",
            sql: "CREATE TABLE verifier_agents (
                  agent_id TEXT COLLATE \"C\" PRIMARY KEY,
                  runtime_policy TEXT NOT NULL,
                  measured_boot_policy TEXT NOT NULL,
                  record BYTEA NOT NULL
              );
              CREATE TABLE verifier_policy_names (
                  kind TEXT NOT NULL,
                  name TEXT COLLATE \"C\" NOT NULL,
                  digest TEXT NOT NULL,
                  record BYTEA NOT NULL,
                  PRIMARY KEY (kind, name)
              );
              CREATE TABLE verifier_policy_documents (
                  kind TEXT NOT NULL,
                  digest TEXT NOT NULL,
                  document BYTEA NOT NULL,
                  PRIMARY KEY (kind, digest)
              );
              CREATE TABLE verifier_cursors (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
              CREATE TABLE verifier_history (
                  agent_id TEXT COLLATE \"C\" NOT NULL,
                  sequence BIGINT NOT NULL,
                  at_seconds BIGINT NOT NULL,
                  record BYTEA NOT NULL,
                  PRIMARY KEY (agent_id, sequence)
              );
              CREATE INDEX verifier_history_at ON verifier_history (at_seconds);
              CREATE TABLE verifier_events (
                  cursor BIGINT PRIMARY KEY,
                  at_seconds BIGINT NOT NULL,
                  record BYTEA NOT NULL
              );",
            rewrite: &[],
        },
        Migration {
            description: "create the agent lease table",
            // A lease goes with its agent; a holder's leases are renewed and counted together.
            sql: "CREATE TABLE verifier_leases (
                  agent_id TEXT COLLATE \"C\" PRIMARY KEY
                      REFERENCES verifier_agents (agent_id) ON DELETE CASCADE,
                  holder TEXT NOT NULL,
                  expires_at TIMESTAMPTZ NOT NULL
              );
              CREATE INDEX verifier_leases_holder ON verifier_leases (holder);",
            rewrite: &[],
        },
        Migration {
            description: "add agent revisions, replica presence and duties",
            // Revisions come from a sequence, so an agent enrolled again never has a revision
            // its earlier enrolment had.
            sql: "ALTER TABLE verifier_agents ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
              CREATE SEQUENCE verifier_agent_revisions;
              CREATE TABLE verifier_replicas (
                  id TEXT PRIMARY KEY,
                  token TEXT NOT NULL,
                  expires_at TIMESTAMPTZ NOT NULL
              );
              CREATE TABLE verifier_duties (
                  name TEXT PRIMARY KEY,
                  holder TEXT NOT NULL,
                  expires_at TIMESTAMPTZ NOT NULL
              );",
            rewrite: &[],
        },
        Migration {
            description: "store verdicts and findings as typed records",
            // Replicas of the earlier release read records in the earlier layout.
            sql: "DO $$ BEGIN
                  IF EXISTS (SELECT 1 FROM verifier_replicas WHERE expires_at > now()) THEN
                      RAISE EXCEPTION 'verifier replicas of an earlier release are running: \
                          stop every replica, then start this release';
                  END IF;
              END $$;",
            rewrite: &[
                Rewrite { table: AGENTS, key: "agent_id", apply: legacy::agent_record_v4 },
                Rewrite {
                    table: HISTORY,
                    key: "agent_id || '/' || sequence",
                    apply: legacy::history_record_v4,
                },
                Rewrite { table: EVENTS, key: "cursor", apply: legacy::event_record_v4 },
            ],
        },
    ],
};

fn kind_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Runtime => "runtime",
        PolicyKind::MeasuredBoot => "measured_boot",
    }
}

fn encode<T: serde::Serialize>(
    table: &'static str,
    key: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|source| StoreError::Encode {
        table,
        key: key.to_owned(),
        source,
    })
}

/// The `record` column of `row`, decoded; `key` names it in errors.
fn decode<T: for<'de> serde::Deserialize<'de>>(
    tx: &Tx<'_>,
    table: &'static str,
    row: &Row,
    key: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    let bytes: &[u8] = tx.get(table, row, "record")?;
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { table, key: key(), source })
}

/// An agent's row (`agent_id`, `revision`, `record`), decoded.
fn decode_agent(tx: &Tx<'_>, row: &Row) -> Result<AgentEntry, StoreError> {
    let id: String = tx.get(AGENTS, row, "agent_id")?;
    let revision: i64 = tx.get(AGENTS, row, "revision")?;
    let mut entry: AgentEntry = decode(tx, AGENTS, row, || id)?;
    entry.revision = unsigned(revision);
    Ok(entry)
}

/// The agent `agent_id`; with `for_update`, its row stays locked until the transaction ends.
async fn select_agent(
    tx: &Tx<'_>,
    agent_id: &str,
    for_update: bool,
) -> Result<Option<AgentEntry>, StoreError> {
    let sql = if for_update {
        "SELECT agent_id, revision, record FROM verifier_agents WHERE agent_id = $1 FOR UPDATE"
    } else {
        "SELECT agent_id, revision, record FROM verifier_agents WHERE agent_id = $1"
    };
    let row = tx.query_opt(AGENTS, sql, &[&agent_id]).await?;
    row.map(|row| decode_agent(tx, &row)).transpose()
}

fn decode_event(tx: &Tx<'_>, row: &Row) -> Result<EventRecord, StoreError> {
    let cursor: i64 = tx.get(EVENTS, row, "cursor")?;
    decode(tx, EVENTS, row, || cursor.to_string())
}

fn decode_name(tx: &Tx<'_>, row: &Row) -> Result<PolicyName, StoreError> {
    let name: String = tx.get(NAMES, row, "name")?;
    decode(tx, NAMES, row, || name)
}

fn decode_history(tx: &Tx<'_>, agent_id: &str, row: &Row) -> Result<HistoryRecord, StoreError> {
    let sequence: i64 = tx.get(HISTORY, row, "sequence")?;
    decode(tx, HISTORY, row, || format!("{agent_id}/{sequence}"))
}

pub(crate) fn get_agent(db: &Database, agent_id: &str) -> Result<Option<AgentEntry>, StoreError> {
    db.read("read an agent", async |tx| select_agent(tx, agent_id, false).await)
}

/// Each of `agent_ids` that is enrolled, with its newest history record, in one statement; a
/// record that cannot be decoded is an error of its agent alone.
pub(crate) fn agents_with_newest_history(
    db: &Database,
    agent_ids: &[String],
) -> Result<Vec<(String, AgentRead)>, StoreError> {
    db.read("read agents", async |tx| {
        let rows = tx
            .query(
                AGENTS,
                "SELECT a.agent_id, a.revision, a.record, h.sequence, h.record AS history \
                 FROM verifier_agents a LEFT JOIN LATERAL ( \
                     SELECT sequence, record FROM verifier_history \
                     WHERE agent_id = a.agent_id ORDER BY sequence DESC LIMIT 1) h ON true \
                 WHERE a.agent_id = ANY($1) ORDER BY a.agent_id",
                &[&agent_ids],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = tx.get(AGENTS, row, "agent_id")?;
            let read = decode_agent(tx, row).and_then(|entry| {
                let sequence: Option<i64> = tx.get(HISTORY, row, "sequence")?;
                let newest = match sequence {
                    None => None,
                    Some(sequence) => {
                        let bytes: &[u8] = tx.get(HISTORY, row, "history")?;
                        Some(postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
                            table: HISTORY,
                            key: format!("{id}/{sequence}"),
                            source,
                        })?)
                    }
                };
                Ok((entry, newest))
            });
            out.push((id, read));
        }
        Ok(out)
    })
}

pub(crate) fn list_agents(
    db: &Database,
    after: Option<&str>,
    count: usize,
) -> Result<Vec<AgentEntry>, StoreError> {
    db.read("list agents", async |tx| {
        let rows = tx
            .query(
                AGENTS,
                "SELECT agent_id, revision, record FROM verifier_agents \
                 WHERE $1::text IS NULL OR agent_id > $1 ORDER BY agent_id LIMIT $2",
                &[&after, &limit(count)],
            )
            .await?;
        rows.iter().map(|row| decode_agent(tx, row)).collect()
    })
}

/// Columns of rows to insert together with `UNNEST`, one statement for a whole batch.
#[derive(Default)]
struct AgentColumns {
    ids: Vec<String>,
    runtime: Vec<String>,
    measured_boot: Vec<String>,
    records: Vec<Vec<u8>>,
}

#[derive(Default)]
struct HistoryColumns {
    ids: Vec<String>,
    sequences: Vec<i64>,
    at: Vec<i64>,
    records: Vec<Vec<u8>>,
}

/// The rows of a batch, as columns for `UNNEST`.
struct Prepared {
    agents: AgentColumns,
    history: HistoryColumns,
    /// Agents whose history is trimmed, and the sequence up to which.
    trim_ids: Vec<String>,
    trim_upto: Vec<i64>,
}

impl Prepared {
    /// The rows of `batch`, leaving out the entries and history of the agents in `skip`.
    fn new(
        batch: &Batch,
        history_max_entries: u64,
        skip: &BTreeSet<String>,
    ) -> Result<Prepared, StoreError> {
        // Of an agent (or history record) written twice, the later write is kept.
        let agents: BTreeMap<&str, &AgentEntry> = batch
            .agents
            .iter()
            .filter(|a| !skip.contains(&a.agent_id))
            .map(|a| (a.agent_id.as_str(), a))
            .collect();
        let mut agent_rows = AgentColumns::default();
        for (id, agent) in &agents {
            agent_rows.ids.push((*id).to_owned());
            agent_rows.runtime.push(agent.runtime_policy.clone());
            agent_rows.measured_boot.push(agent.measured_boot_policy.clone());
            agent_rows.records.push(encode(AGENTS, id, *agent)?);
        }
        let history: BTreeMap<(&str, u64), &HistoryRecord> = batch
            .history
            .iter()
            .filter(|(id, _)| !skip.contains(id))
            .map(|(id, r)| ((id.as_str(), r.sequence), r))
            .collect();
        let mut history_rows = HistoryColumns::default();
        // The newest sequence written per agent; older records fall out of the bound.
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for ((id, sequence), record) in &history {
            let key = format!("{id}/{sequence}");
            history_rows.ids.push((*id).to_owned());
            history_rows.sequences.push(bigint(HISTORY, &key, *sequence)?);
            history_rows.at.push(record.at.seconds);
            history_rows.records.push(encode(HISTORY, &key, *record)?);
            let top = newest.entry(id).or_default();
            *top = (*top).max(*sequence);
        }
        let (trim_ids, trim_upto) = newest
            .iter()
            .filter(|(_, top)| history_max_entries != 0 && **top > history_max_entries)
            .map(|(id, top)| ((*id).to_owned(), bound(top - history_max_entries)))
            .unzip();
        Ok(Prepared { agents: agent_rows, history: history_rows, trim_ids, trim_upto })
    }
}

/// Commits `batch` ([`crate::verifier::VerifierStore::commit`]).
pub(crate) fn commit(
    db: &Database,
    batch: &Batch,
    history_max_entries: u64,
) -> Result<Vec<EventRecord>, StoreError> {
    let prepared = Prepared::new(batch, history_max_entries, &BTreeSet::new())?;
    db.write("commit attestation state", async |tx| {
        write_batch(tx, batch, &batch.removed, &prepared).await
    })
}

/// Commits `batch` for `holder` ([`crate::verifier::VerifierStore::commit_as`]): the agents it
/// does not hold at the revision written are refused.
pub(crate) fn commit_as(
    db: &Database,
    holder: &str,
    batch: &Batch,
    history_max_entries: u64,
) -> Result<Committed, StoreError> {
    db.write("commit attestation state", async |tx| {
        let Fenced { refused, superseded } = fence(tx, holder, batch).await?;
        let prepared = Prepared::new(batch, history_max_entries, &refused)?;
        let removed: Vec<String> =
            batch.removed.iter().filter(|id| !refused.contains(*id)).cloned().collect();
        if superseded.is_empty() {
            let events = write_batch(tx, batch, &removed, &prepared).await?;
            return Ok(Committed { events, refused: refused.into_iter().collect() });
        }
        let kept = |e: &EventRecord| !superseded.contains(&e.agent_id);
        let written = Batch {
            events: batch.events.iter().filter(|e| kept(e)).cloned().collect(),
            ..Batch::default()
        };
        let mut written = write_batch(tx, &written, &removed, &prepared).await?.into_iter();
        // In the batch's order; those not written keep cursor 0.
        let events = batch
            .events
            .iter()
            .map(|e| if kept(e) { written.next().unwrap_or_else(|| e.clone()) } else { e.clone() })
            .collect();
        Ok(Committed { events, refused: refused.into_iter().collect() })
    })
}

/// Changes one agent under its row lock ([`crate::verifier::VerifierStore::modify_agent`]).
pub(crate) fn modify_agent<T>(
    db: &Database,
    agent_id: &str,
    history_max_entries: u64,
    change: impl FnOnce(Option<(AgentEntry, Option<HistoryRecord>)>) -> (Option<Batch>, T),
) -> Result<Modified<T>, StoreError> {
    db.write("change an agent", async |tx| {
        // Every write holds the store's write lock: the agent cannot change until this commits.
        let current = match select_agent(tx, agent_id, true).await? {
            Some(entry) => {
                let row = tx
                    .query_opt(
                        HISTORY,
                        "SELECT sequence, record FROM verifier_history WHERE agent_id = $1 \
                         ORDER BY sequence DESC LIMIT 1",
                        &[&agent_id],
                    )
                    .await?;
                let newest = row.map(|row| decode_history(tx, agent_id, &row)).transpose()?;
                Some((entry, newest))
            }
            None => None,
        };
        let (batch, answer) = change(current);
        let Some(batch) = batch else {
            return Ok(Modified { events: Vec::new(), stored: Vec::new(), answer });
        };
        let prepared = Prepared::new(&batch, history_max_entries, &BTreeSet::new())?;
        let events = write_batch(tx, &batch, &batch.removed, &prepared).await?;
        let written: Vec<String> = batch.agents.iter().map(|a| a.agent_id.clone()).collect();
        let rows = tx
            .query(
                AGENTS,
                "UPDATE verifier_agents SET revision = nextval('verifier_agent_revisions') \
                 WHERE agent_id = ANY($1) RETURNING agent_id, revision, record",
                &[&written],
            )
            .await?;
        let stored = rows.iter().map(|row| decode_agent(tx, row)).collect::<Result<_, _>>()?;
        Ok(Modified { events, stored, answer })
    })
}

/// Writes `batch`'s rows (`prepared`), removing `removed`, and appends its events.
async fn write_batch(
    tx: &Tx<'_>,
    batch: &Batch,
    removed: &[String],
    prepared: &Prepared,
) -> Result<Vec<EventRecord>, StoreError> {
    let Prepared { agents: agent_rows, history: history_rows, trim_ids, trim_upto } = prepared;
    if !removed.is_empty() {
        tx.execute(AGENTS, "DELETE FROM verifier_agents WHERE agent_id = ANY($1)", &[&removed])
            .await?;
        tx.execute(HISTORY, "DELETE FROM verifier_history WHERE agent_id = ANY($1)", &[&removed])
            .await?;
    }
    if !agent_rows.ids.is_empty() {
        tx.execute(
            AGENTS,
            "INSERT INTO verifier_agents (agent_id, runtime_policy, measured_boot_policy, record) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[]) \
             ON CONFLICT (agent_id) DO UPDATE SET runtime_policy = EXCLUDED.runtime_policy, \
             measured_boot_policy = EXCLUDED.measured_boot_policy, record = EXCLUDED.record",
            &[&agent_rows.ids, &agent_rows.runtime, &agent_rows.measured_boot, &agent_rows.records],
        )
        .await?;
    }
    if !history_rows.ids.is_empty() {
        tx.execute(
            HISTORY,
            "INSERT INTO verifier_history (agent_id, sequence, at_seconds, record) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bytea[]) \
             ON CONFLICT (agent_id, sequence) DO UPDATE SET at_seconds = EXCLUDED.at_seconds, \
             record = EXCLUDED.record",
            &[&history_rows.ids, &history_rows.sequences, &history_rows.at, &history_rows.records],
        )
        .await?;
    }
    if !trim_ids.is_empty() {
        tx.execute(
            HISTORY,
            "DELETE FROM verifier_history h USING UNNEST($1::text[], $2::bigint[]) AS t(agent_id, upto) \
             WHERE h.agent_id = t.agent_id AND h.sequence <= t.upto",
            &[&trim_ids, &trim_upto],
        )
        .await?;
    }
    if batch.events.is_empty() {
        return Ok(Vec::new());
    }
    // The counter row is updated under the store's write lock, so cursors are committed in
    // the order they are assigned (see the module docs of `postgres`).
    let count = batch.events.len() as i64;
    let row = tx
        .query_opt(
            CURSORS,
            "INSERT INTO verifier_cursors (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = verifier_cursors.value + EXCLUDED.value \
             RETURNING value",
            &[&LAST_EVENT, &count],
        )
        .await?;
    let last = match &row {
        Some(row) => unsigned(tx.get(CURSORS, row, "value")?),
        None => 0,
    };
    let mut cursor = last.saturating_sub(batch.events.len() as u64);
    let mut out = Vec::with_capacity(batch.events.len());
    let (mut cursors, mut at, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for event in &batch.events {
        cursor += 1;
        let mut event = event.clone();
        event.cursor = cursor;
        cursors.push(bigint(EVENTS, &cursor.to_string(), cursor)?);
        at.push(event.at.seconds);
        records.push(encode(EVENTS, &cursor.to_string(), &event)?);
        out.push(event);
    }
    tx.execute(
        EVENTS,
        "INSERT INTO verifier_events (cursor, at_seconds, record) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[])",
        &[&cursors, &at, &records],
    )
    .await?;
    Ok(out)
}

pub(crate) fn history(
    db: &Database,
    agent_id: &str,
    before: Option<u64>,
    count: usize,
) -> Result<Vec<HistoryRecord>, StoreError> {
    db.read("read attestation history", async |tx| {
        let rows = tx
            .query(
                HISTORY,
                "SELECT sequence, record FROM verifier_history \
                 WHERE agent_id = $1 AND ($2::bigint IS NULL OR sequence < $2) \
                 ORDER BY sequence DESC LIMIT $3",
                &[&agent_id, &before.map(bound), &limit(count)],
            )
            .await?;
        rows.iter().map(|row| decode_history(tx, agent_id, row)).collect()
    })
}

pub(crate) fn last_history_sequence(
    db: &Database,
    agent_id: &str,
) -> Result<Option<u64>, StoreError> {
    db.read("read attestation history", async |tx| {
        let row = tx
            .query_opt(
                HISTORY,
                "SELECT max(sequence) AS sequence FROM verifier_history WHERE agent_id = $1",
                &[&agent_id],
            )
            .await?;
        let newest: Option<i64> = match &row {
            Some(row) => tx.get(HISTORY, row, "sequence")?,
            None => None,
        };
        Ok(newest.map(unsigned))
    })
}

pub(crate) fn events_after(
    db: &Database,
    after: u64,
    count: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    db.read("read events", async |tx| {
        let rows = tx
            .query(
                EVENTS,
                "SELECT cursor, record FROM verifier_events WHERE cursor > $1 \
                 ORDER BY cursor LIMIT $2",
                &[&bound(after), &limit(count)],
            )
            .await?;
        rows.iter().map(|row| decode_event(tx, row)).collect()
    })
}

pub(crate) fn oldest_event(db: &Database) -> Result<Option<u64>, StoreError> {
    db.read("read events", async |tx| {
        let row =
            tx.query_opt(EVENTS, "SELECT min(cursor) AS cursor FROM verifier_events", &[]).await?;
        let oldest: Option<i64> = match &row {
            Some(row) => tx.get(EVENTS, row, "cursor")?,
            None => None,
        };
        Ok(oldest.map(unsigned))
    })
}

pub(crate) fn cursor(db: &Database, name: &str) -> Result<Option<u64>, StoreError> {
    db.read("read a cursor", async |tx| {
        let row = tx
            .query_opt(CURSORS, "SELECT value FROM verifier_cursors WHERE name = $1", &[&name])
            .await?;
        row.map(|row| tx.get::<i64>(CURSORS, &row, "value").map(unsigned)).transpose()
    })
}

pub(crate) fn set_cursor(db: &Database, name: &str, value: u64) -> Result<(), StoreError> {
    let value = bigint(CURSORS, name, value)?;
    db.write("write a cursor", async |tx| {
        tx.execute(
            CURSORS,
            "INSERT INTO verifier_cursors (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = GREATEST(verifier_cursors.value, EXCLUDED.value)",
            &[&name, &value],
        )
        .await?;
        Ok(())
    })
}

async fn name_record(
    tx: &Tx<'_>,
    kind: PolicyKind,
    name: &str,
) -> Result<Option<PolicyName>, StoreError> {
    let row = tx
        .query_opt(
            NAMES,
            "SELECT name, record FROM verifier_policy_names WHERE kind = $1 AND name = $2",
            &[&kind_name(kind), &name],
        )
        .await?;
    row.map(|row| decode_name(tx, &row)).transpose()
}

/// Removes the document under `digest` unless a name still points at it.
async fn drop_unreferenced(tx: &Tx<'_>, kind: PolicyKind, digest: &str) -> Result<(), StoreError> {
    tx.execute(
        DOCUMENTS,
        "DELETE FROM verifier_policy_documents d WHERE d.kind = $1 AND d.digest = $2 \
         AND NOT EXISTS (SELECT 1 FROM verifier_policy_names n WHERE n.kind = $1 AND n.digest = $2)",
        &[&kind_name(kind), &digest],
    )
    .await?;
    Ok(())
}

pub(crate) fn put_policy(
    db: &Database,
    kind: PolicyKind,
    name: &str,
    precondition: PutPrecondition,
    digest: &str,
    document: &[u8],
    entries: u64,
) -> Result<PolicyPut, StoreError> {
    db.write("store a policy", async |tx| {
        let previous = name_record(tx, kind, name).await?;
        match (precondition, previous) {
            (PutPrecondition::Absent, Some(old)) => Ok(PolicyPut::Exists(old)),
            (PutPrecondition::Present, None) => Ok(PolicyPut::Missing),
            (_, Some(old)) if old.digest == digest => {
                Ok(PolicyPut::Stored { record: old, changed: false })
            }
            (_, previous) => {
                tx.execute(
                    DOCUMENTS,
                    "INSERT INTO verifier_policy_documents (kind, digest, document) \
                     VALUES ($1, $2, $3) ON CONFLICT (kind, digest) DO NOTHING",
                    &[&kind_name(kind), &digest, &document],
                )
                .await?;
                let record = PolicyName {
                    name: name.to_owned(),
                    digest: digest.to_owned(),
                    entries,
                    updated_at: Timestamp::now(),
                };
                tx.execute(
                    NAMES,
                    "INSERT INTO verifier_policy_names (kind, name, digest, record) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (kind, name) \
                     DO UPDATE SET digest = EXCLUDED.digest, record = EXCLUDED.record",
                    &[&kind_name(kind), &name, &digest, &encode(NAMES, name, &record)?],
                )
                .await?;
                if let Some(previous) = previous {
                    drop_unreferenced(tx, kind, &previous.digest).await?;
                }
                Ok(PolicyPut::Stored { record, changed: true })
            }
        }
    })
}

pub(crate) fn policy_name(
    db: &Database,
    kind: PolicyKind,
    name: &str,
) -> Result<Option<PolicyName>, StoreError> {
    db.read("read a policy name", async |tx| name_record(tx, kind, name).await)
}

pub(crate) fn get_policy(
    db: &Database,
    kind: PolicyKind,
    name: &str,
) -> Result<Option<(PolicyName, Vec<u8>)>, StoreError> {
    db.read("read a policy", async |tx| {
        let Some(record) = name_record(tx, kind, name).await? else {
            return Ok(None);
        };
        let row = tx
            .query_opt(
                DOCUMENTS,
                "SELECT document FROM verifier_policy_documents WHERE kind = $1 AND digest = $2",
                &[&kind_name(kind), &record.digest],
            )
            .await?;
        let document = match &row {
            Some(row) => tx.get(DOCUMENTS, row, "document")?,
            None => Vec::new(),
        };
        Ok(Some((record, document)))
    })
}

pub(crate) fn list_policies(
    db: &Database,
    kind: PolicyKind,
) -> Result<Vec<PolicyName>, StoreError> {
    db.read("list policies", async |tx| {
        let rows = tx
            .query(
                NAMES,
                "SELECT name, record FROM verifier_policy_names WHERE kind = $1 ORDER BY name",
                &[&kind_name(kind)],
            )
            .await?;
        rows.iter().map(|row| decode_name(tx, row)).collect()
    })
}

pub(crate) fn delete_policy(
    db: &Database,
    kind: PolicyKind,
    name: &str,
) -> Result<PolicyDeletion, StoreError> {
    let users = match kind {
        PolicyKind::Runtime => {
            "SELECT agent_id FROM verifier_agents WHERE runtime_policy = $1 \
             ORDER BY agent_id LIMIT 1"
        }
        PolicyKind::MeasuredBoot => {
            "SELECT agent_id FROM verifier_agents WHERE measured_boot_policy = $1 \
             ORDER BY agent_id LIMIT 1"
        }
    };
    db.write("delete a policy", async |tx| {
        let Some(record) = name_record(tx, kind, name).await? else {
            return Ok(PolicyDeletion::Absent);
        };
        if let Some(row) = tx.query_opt(AGENTS, users, &[&name]).await? {
            return Ok(PolicyDeletion::InUse(tx.get(AGENTS, &row, "agent_id")?));
        }
        tx.execute(
            NAMES,
            "DELETE FROM verifier_policy_names WHERE kind = $1 AND name = $2",
            &[&kind_name(kind), &name],
        )
        .await?;
        drop_unreferenced(tx, kind, &record.digest).await?;
        Ok(PolicyDeletion::Deleted)
    })
}

pub(crate) fn prune(
    db: &Database,
    max_age: Duration,
    max_events: u64,
) -> Result<Pruned, StoreError> {
    let cutoff = Timestamp::now().seconds.saturating_sub(max_age.as_secs() as i64);
    db.write("prune history and events", async |tx| {
        let history = tx
            .execute(HISTORY, "DELETE FROM verifier_history WHERE at_seconds < $1", &[&cutoff])
            .await?;
        // The oldest events beyond the count, then (as in the redb file) the old events before
        // the first one that is not old.
        let excess = tx
            .execute(
                EVENTS,
                "DELETE FROM verifier_events WHERE cursor IN (SELECT cursor FROM verifier_events \
                 ORDER BY cursor LIMIT GREATEST((SELECT count(*) FROM verifier_events) - $1, 0))",
                &[&bound(max_events)],
            )
            .await?;
        let old = tx
            .execute(
                EVENTS,
                "DELETE FROM verifier_events WHERE at_seconds < $1 AND cursor < COALESCE( \
                 (SELECT min(cursor) FROM verifier_events WHERE at_seconds >= $1), \
                 9223372036854775807)",
                &[&cutoff],
            )
            .await?;
        Ok(Pruned { history, events: excess + old })
    })
}

/// A lease duration as the milliseconds the SQL adds to `now()`; at most a century, as an
/// interval holds no more than a few million years.
fn lease_millis(duration: Duration) -> i64 {
    const CENTURY_MS: i64 = 100 * 366 * 24 * 3600 * 1000;
    i64::try_from(duration.as_millis()).unwrap_or(CENTURY_MS).min(CENTURY_MS)
}

fn timestamp(at: SystemTime) -> Timestamp {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: since_epoch.subsec_nanos(),
    }
}

/// The transaction's `now()` (what its lease statements compare and add to) and `now()` plus
/// `millis`.
async fn lease_clock(tx: &Tx<'_>, millis: i64) -> Result<(Timestamp, Timestamp), StoreError> {
    let row = tx
        .query_opt(
            LEASES,
            "SELECT now() AS granted_at, now() + $1::bigint * interval '1 millisecond' AS expires_at",
            &[&millis],
        )
        .await?;
    // Never taken: a SELECT without FROM returns one row.
    let Some(row) = row else {
        let now = Timestamp::now();
        return Ok((now, now));
    };
    let granted: SystemTime = tx.get(LEASES, &row, "granted_at")?;
    let expires: SystemTime = tx.get(LEASES, &row, "expires_at")?;
    Ok((timestamp(granted), timestamp(expires)))
}

/// The `agent_id` and `revision` columns of `rows`, in id order.
fn held_agents(tx: &Tx<'_>, rows: &[Row]) -> Result<Vec<(String, u64)>, StoreError> {
    let mut agents = rows
        .iter()
        .map(|row| {
            let revision: i64 = tx.get(LEASES, row, "revision")?;
            Ok((tx.get::<String>(LEASES, row, "agent_id")?, unsigned(revision)))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    agents.sort();
    Ok(agents)
}

fn leases(
    tx: &Tx<'_>,
    rows: &[Row],
    granted_at: Timestamp,
    expires_at: Timestamp,
) -> Result<Leases, StoreError> {
    let (agents, revisions) = held_agents(tx, rows)?.into_iter().unzip();
    Ok(Leases { agents, revisions, granted_at, expires_at })
}

pub(crate) fn claim_leases(
    db: &Database,
    holder: &str,
    max: usize,
    duration: Duration,
) -> Result<Leases, StoreError> {
    let millis = lease_millis(duration);
    db.write_unserialized("claim agent leases", async |tx| {
        let (granted_at, expires_at) = lease_clock(tx, millis).await?;
        // The agent rows are the claim's locks: claimers skip the ones another has locked, so
        // they never wait for each other. A lease taken by a claimer that committed after this
        // statement's snapshot (its agent row no longer locked, its lease row not yet visible)
        // is left alone by the conflict clause, which sees the committed row.
        let rows = tx
            .query(
                LEASES,
                "WITH candidates AS ( \
                     SELECT a.agent_id FROM verifier_agents a \
                     LEFT JOIN verifier_leases l ON l.agent_id = a.agent_id \
                     WHERE l.agent_id IS NULL OR l.expires_at <= now() \
                     ORDER BY a.agent_id LIMIT $2 \
                     FOR UPDATE OF a SKIP LOCKED) \
                 INSERT INTO verifier_leases (agent_id, holder, expires_at) \
                 SELECT agent_id, $1, now() + $3::bigint * interval '1 millisecond' \
                 FROM candidates \
                 ON CONFLICT (agent_id) DO UPDATE \
                 SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE verifier_leases.expires_at <= now() \
                 RETURNING agent_id, \
                     (SELECT revision FROM verifier_agents a WHERE a.agent_id = verifier_leases.agent_id) \
                     AS revision",
                &[&holder, &limit(max), &millis],
            )
            .await?;
        leases(tx, &rows, granted_at, expires_at)
    })
}

pub(crate) fn renew_leases(
    db: &Database,
    holder: &str,
    duration: Duration,
) -> Result<Leases, StoreError> {
    let millis = lease_millis(duration);
    db.write_unserialized("renew agent leases", async |tx| {
        let (granted_at, expires_at) = lease_clock(tx, millis).await?;
        // An expired lease is lost even while no other holder has taken it: its holder has
        // stopped attesting the agent by then (see the module docs of `verifier`).
        let rows = tx
            .query(
                LEASES,
                "UPDATE verifier_leases l \
                 SET expires_at = now() + $2::bigint * interval '1 millisecond' \
                 FROM verifier_agents a \
                 WHERE l.holder = $1 AND l.expires_at > now() AND a.agent_id = l.agent_id \
                 RETURNING l.agent_id, a.revision",
                &[&holder, &millis],
            )
            .await?;
        leases(tx, &rows, granted_at, expires_at)
    })
}

pub(crate) fn release_leases(
    db: &Database,
    holder: &str,
    agent_ids: &[String],
) -> Result<u64, StoreError> {
    db.write_unserialized("release agent leases", async |tx| {
        tx.execute(
            LEASES,
            "DELETE FROM verifier_leases WHERE holder = $1 AND agent_id = ANY($2)",
            &[&holder, &agent_ids],
        )
        .await
    })
}

pub(crate) fn lease_holders(db: &Database) -> Result<Vec<(String, u64)>, StoreError> {
    db.read("count agent leases", async |tx| {
        let rows = tx
            .query(
                LEASES,
                "SELECT holder, count(*) AS held FROM verifier_leases WHERE expires_at > now() \
                 GROUP BY holder ORDER BY holder",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((tx.get(LEASES, row, "holder")?, unsigned(tx.get(LEASES, row, "held")?))))
            .collect()
    })
}

pub(crate) fn policy_users(db: &Database, kind: PolicyKind, name: &str) -> Result<u64, StoreError> {
    let sql = match kind {
        PolicyKind::Runtime => {
            "SELECT count(*) AS agents FROM verifier_agents WHERE runtime_policy = $1"
        }
        PolicyKind::MeasuredBoot => {
            "SELECT count(*) AS agents FROM verifier_agents WHERE measured_boot_policy = $1"
        }
    };
    db.read("count the agents using a policy", async |tx| {
        let row = tx.query_opt(AGENTS, sql, &[&name]).await?;
        Ok(match &row {
            Some(row) => unsigned(tx.get(AGENTS, row, "agents")?),
            None => 0,
        })
    })
}

pub(crate) fn agent_count(db: &Database) -> Result<u64, StoreError> {
    db.read("count agents", async |tx| {
        let row =
            tx.query_opt(AGENTS, "SELECT count(*) AS agents FROM verifier_agents", &[]).await?;
        Ok(match &row {
            Some(row) => unsigned(tx.get(AGENTS, row, "agents")?),
            None => 0,
        })
    })
}

pub(crate) fn announce(
    db: &Database,
    replica: &str,
    token: &str,
    duration: Duration,
) -> Result<Vec<String>, StoreError> {
    let millis = lease_millis(duration);
    db.write_unserialized("announce a replica", async |tx| {
        // Another process with the same id and an unexpired presence keeps it.
        let row = tx
            .query_opt(
                REPLICAS,
                "INSERT INTO verifier_replicas (id, token, expires_at) \
                 VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
                 ON CONFLICT (id) DO UPDATE \
                 SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at \
                 WHERE verifier_replicas.token = EXCLUDED.token \
                     OR verifier_replicas.expires_at <= now() \
                 RETURNING id",
                &[&replica, &token, &millis],
            )
            .await?;
        if row.is_none() {
            return Err(StoreError::ReplicaIdTaken {
                url: db.url().to_owned(),
                id: replica.to_owned(),
            });
        }
        tx.execute(
            REPLICAS,
            "DELETE FROM verifier_replicas WHERE expires_at < now() - interval '1 day'",
            &[],
        )
        .await?;
        let rows = tx
            .query(
                REPLICAS,
                "SELECT id FROM verifier_replicas WHERE expires_at > now() ORDER BY id",
                &[],
            )
            .await?;
        rows.iter().map(|row| tx.get(REPLICAS, row, "id")).collect()
    })
}

pub(crate) fn withdraw(
    db: &Database,
    replica: &str,
    token: &str,
    holder: &str,
) -> Result<(), StoreError> {
    db.write_unserialized("withdraw a replica", async |tx| {
        let present = tx
            .execute(
                REPLICAS,
                "DELETE FROM verifier_replicas WHERE id = $1 AND token = $2",
                &[&replica, &token],
            )
            .await?;
        // Another process of this id holds them now.
        if present == 0 {
            return Ok(());
        }
        tx.execute(DUTIES, "DELETE FROM verifier_duties WHERE holder = $1", &[&holder]).await?;
        tx.execute(LEASES, "DELETE FROM verifier_leases WHERE holder = $1", &[&holder]).await?;
        Ok(())
    })
}

pub(crate) fn take_duty(
    db: &Database,
    name: &str,
    holder: &str,
    duration: Duration,
) -> Result<Option<Leases>, StoreError> {
    let millis = lease_millis(duration);
    db.write_unserialized("take a duty", async |tx| {
        let (granted_at, expires_at) = lease_clock(tx, millis).await?;
        let row = tx
            .query_opt(
                DUTIES,
                "INSERT INTO verifier_duties (name, holder, expires_at) \
                 VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE \
                 SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE verifier_duties.holder = EXCLUDED.holder \
                     OR verifier_duties.expires_at <= now() \
                 RETURNING holder",
                &[&name, &holder, &millis],
            )
            .await?;
        Ok(row.map(|_| Leases {
            agents: Vec::new(),
            revisions: Vec::new(),
            granted_at,
            expires_at,
        }))
    })
}

/// The agents whose rows `batch` writes (entries, history, removals) that `holder` may not
/// write: those whose row is gone, whose lease row names another holder or none (an agent
/// enrolled again has no lease until it is claimed), or whose row is at another revision than
/// the entry the batch writes for it. The holder's own expired lease does not refuse it: once
/// another claims the agent, the lease row names the other. The agent rows are locked first: a
/// claim must lock an agent's row to take its lease, so no other holder can take one of these
/// leases before this transaction ends (and one that a claim is taking right now is seen once
/// that claim has committed).
async fn fence(tx: &Tx<'_>, holder: &str, batch: &Batch) -> Result<Fenced, StoreError> {
    // Events are written in any case: the agents the batch writes rows of are fenced.
    let agent_ids: Vec<String> = batch
        .agents
        .iter()
        .map(|a| &a.agent_id)
        .chain(&batch.removed)
        .chain(batch.history.iter().map(|(id, _)| id))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if agent_ids.is_empty() {
        return Ok(Fenced::default());
    }
    tx.query(
        AGENTS,
        "SELECT agent_id FROM verifier_agents WHERE agent_id = ANY($1) ORDER BY agent_id \
         FOR UPDATE",
        &[&agent_ids],
    )
    .await?;
    // A statement of its own, so that its snapshot (read committed) sees what a claim that
    // held the rows committed.
    let rows = tx
        .query(
            LEASES,
            "SELECT a.agent_id, a.revision, l.holder IS NOT DISTINCT FROM $2 AS mine \
             FROM verifier_agents a LEFT JOIN verifier_leases l ON l.agent_id = a.agent_id \
             WHERE a.agent_id = ANY($1)",
            &[&agent_ids, &holder],
        )
        .await?;
    // Each stored agent's revision, and whether its lease row names the holder.
    let mut stored = BTreeMap::new();
    for row in &rows {
        let id: String = tx.get(LEASES, row, "agent_id")?;
        let revision: i64 = tx.get(LEASES, row, "revision")?;
        let mine: Option<bool> = tx.get(LEASES, row, "mine")?;
        stored.insert(id, (unsigned(revision), mine == Some(true)));
    }
    // The revision each agent's written entry was read at (the last entry of an agent wins).
    let written: BTreeMap<&str, u64> =
        batch.agents.iter().map(|a| (a.agent_id.as_str(), a.revision)).collect();
    let mut fenced = Fenced::default();
    for id in agent_ids {
        let superseded = written
            .get(id.as_str())
            .is_some_and(|w| stored.get(&id).is_none_or(|(revision, _)| w != revision));
        if superseded {
            fenced.superseded.insert(id.clone());
        }
        if superseded || !stored.get(&id).is_some_and(|(_, mine)| *mine) {
            fenced.refused.insert(id);
        }
    }
    Ok(fenced)
}

/// What [`fence`] keeps a holder from writing.
#[derive(Default)]
struct Fenced {
    /// Agents whose rows are not written.
    refused: BTreeSet<String>,
    /// Of those, the agents whose entry was read before an operator changed or removed the
    /// agent: their events are not written either (they report a round under settings that
    /// are no longer the agent's).
    superseded: BTreeSet<String>,
}
