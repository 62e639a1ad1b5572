//! The registrar's tables in PostgreSQL: `registrar_agents`, the records encoded as in the
//! redb file (postcard), keyed by agent id in byte order (`COLLATE "C"`, as redb orders keys).

use super::{Database, Migration, Schema, Tx, limit};
use crate::StoreError;
use crate::registrar::{Activation, AgentRecord};

const TABLE: &str = "registrar_agents";

/// Version 1: the `registrar_agents` table.
pub(crate) static SCHEMA: Schema = Schema {
    name: "registrar",
    write_lock: 0x6b6c_0001,
    earlier_release_lock: None,
    // Activations are checked inside the write transaction, so registrars may share the table
    // (though a registration must reach the registrar that holds it pending).
    migrations: &[Migration {
        description: "create the registrar_agents table",
        sql: "CREATE TABLE registrar_agents (
                  agent_id TEXT COLLATE \"C\" PRIMARY KEY,
                  record BYTEA NOT NULL
              )",
        rewrite: &[],
    }],
};

fn encode(record: &AgentRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(record).map_err(|source| StoreError::Encode {
        table: TABLE,
        key: record.agent_id.clone(),
        source,
    })
}

fn decode(tx: &Tx<'_>, row: &tokio_postgres::Row) -> Result<AgentRecord, StoreError> {
    let key: String = tx.get(TABLE, row, "agent_id")?;
    let bytes: &[u8] = tx.get(TABLE, row, "record")?;
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { table: TABLE, key, source })
}

async fn get(tx: &Tx<'_>, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
    let row = tx
        .query_opt(
            TABLE,
            "SELECT agent_id, record FROM registrar_agents WHERE agent_id = $1",
            &[&agent_id],
        )
        .await?;
    row.map(|row| decode(tx, &row)).transpose()
}

pub(crate) fn read_all(db: &Database) -> Result<u64, StoreError> {
    db.read("read every agent", async |tx| {
        let rows = tx.query(TABLE, "SELECT agent_id, record FROM registrar_agents", &[]).await?;
        for row in &rows {
            decode(tx, row)?;
        }
        Ok(rows.len() as u64)
    })
}

pub(crate) fn get_agent(db: &Database, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
    db.read("read an agent", async |tx| get(tx, agent_id).await)
}

pub(crate) fn list_agents(
    db: &Database,
    after: Option<&str>,
    count: usize,
) -> Result<Vec<AgentRecord>, StoreError> {
    db.read("list agents", async |tx| {
        let rows = tx
            .query(
                TABLE,
                "SELECT agent_id, record FROM registrar_agents \
                 WHERE $1::text IS NULL OR agent_id > $1 ORDER BY agent_id LIMIT $2",
                &[&after, &limit(count)],
            )
            .await?;
        rows.iter().map(|row| decode(tx, row)).collect()
    })
}

pub(crate) fn activate_many(
    db: &Database,
    records: Vec<AgentRecord>,
) -> Result<Vec<Activation>, StoreError> {
    db.write("activate agents", async |tx| {
        let mut outcomes = Vec::with_capacity(records.len());
        for mut record in records {
            record.registration_count = match get(tx, &record.agent_id).await? {
                Some(old) if !old.same_tpm_identity(&record) => {
                    outcomes.push(Activation::IdentityConflict);
                    continue;
                }
                Some(old) => old.registration_count.saturating_add(1),
                None => 1,
            };
            tx.execute(
                TABLE,
                "INSERT INTO registrar_agents (agent_id, record) VALUES ($1, $2) \
                 ON CONFLICT (agent_id) DO UPDATE SET record = EXCLUDED.record",
                &[&record.agent_id, &encode(&record)?],
            )
            .await?;
            outcomes.push(Activation::Activated(Box::new(record)));
        }
        Ok(outcomes)
    })
}

pub(crate) fn delete_agent(db: &Database, agent_id: &str) -> Result<bool, StoreError> {
    db.write("delete an agent", async |tx| {
        let deleted = tx
            .execute(TABLE, "DELETE FROM registrar_agents WHERE agent_id = $1", &[&agent_id])
            .await?;
        Ok(deleted > 0)
    })
}
