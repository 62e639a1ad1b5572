//! The registrar's state: activated agents, keyed by agent id.
//!
//! Only activated agents are stored; a registration that has not proved its AK yet lives in the
//! registrar's memory and never reaches this file. Activation is the one write that can race
//! (two registrations of one id with different EKs, each pending), so the identity rule is
//! checked inside the write transaction that stores the record: the first activation of an id
//! fixes its TPM identity until [`RegistrarStore::delete_agent`].

use std::path::Path;

use redb::WriteTransaction;
use serde::{Deserialize, Serialize};

use crate::postgres::{self, registrar as pg};
use crate::{
    Check, Database, Location, Migration, Records, Schema, StoreError, check_database,
    open_database,
};

/// A point in time as the protobuf `Timestamp` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
            nanos: since_epoch.subsec_nanos(),
        }
    }
}

/// An activated agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: String,
    /// Marshalled TPMT_PUBLIC of the EK.
    pub ek_public: Vec<u8>,
    /// DER EK certificate, empty if none was supplied.
    pub ek_certificate: Vec<u8>,
    pub ek_intermediate_certificates: Vec<Vec<u8>>,
    /// Whether the EK certificate chained to the TPM vendor CA store at registration.
    pub ek_certificate_verified: bool,
    /// Marshalled TPMT_PUBLIC of the AK.
    pub ak_public: Vec<u8>,
    /// The AK's TPM name.
    pub ak_name: Vec<u8>,
    /// DER identity certificate of the agent.
    pub agent_certificate: Vec<u8>,
    pub contact_ip: String,
    pub contact_port: u16,
    /// How many times this TPM identity was activated under this id.
    pub registration_count: u64,
    pub registered_at: Timestamp,
    pub activated_at: Timestamp,
}

impl AgentRecord {
    /// Whether `other` presents the same TPM identity: the same EK and the same EK certificate.
    pub fn same_tpm_identity(&self, other: &AgentRecord) -> bool {
        self.ek_public == other.ek_public && self.ek_certificate == other.ek_certificate
    }
}

/// What [`RegistrarStore::activate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// The record is stored; this is it, with its registration count.
    Activated(Box<AgentRecord>),
    /// A different TPM identity holds the id; nothing was written.
    IdentityConflict,
}

const AGENTS: Records<AgentRecord> = Records::new("agents");

fn create_agents(txn: &WriteTransaction) -> Result<(), StoreError> {
    AGENTS.create(txn)
}

/// Version 1: the `agents` table.
pub static SCHEMA: Schema = Schema {
    name: "registrar",
    migrations: &[Migration { description: "create the agents table", apply: create_agents }],
};

/// The registrar's store (`registrar.redb`, or its tables in PostgreSQL).
#[derive(Debug)]
pub struct RegistrarStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Redb(Database),
    Postgres(Box<postgres::Database>),
}

impl RegistrarStore {
    /// Opens or creates the store at `path`, migrating an older file.
    pub fn open(path: &Path) -> Result<RegistrarStore, StoreError> {
        Ok(RegistrarStore { backend: Backend::Redb(open_database(path, &SCHEMA)?) })
    }

    /// Opens the store at `location`: the redb file as [`RegistrarStore::open`] does, or the
    /// PostgreSQL database (connecting to it, creating or migrating its tables).
    pub fn open_at(location: &Location) -> Result<RegistrarStore, StoreError> {
        match location {
            Location::File(path) => RegistrarStore::open(path),
            Location::Postgres(target) => Ok(RegistrarStore {
                backend: Backend::Postgres(Box::new(postgres::Database::open(
                    target,
                    &pg::SCHEMA,
                )?)),
            }),
        }
    }

    /// Checks the existing store at `path` in full (see [`crate::check_database`]): every
    /// page's checksum, then every record read and decoded. Nothing else may have the file open.
    pub fn check(path: &Path) -> Result<Check, StoreError> {
        check_database(path, &SCHEMA, |txn| Ok(vec![(AGENTS.name(), AGENTS.decode_all(txn)?)]))
    }

    /// Reads and decodes every record; returns how many there are. A start-up pass that finds
    /// a damaged file before the registrar serves from it.
    pub fn read_all(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.read("read every agent", |txn| AGENTS.decode_all(txn)),
            Backend::Postgres(db) => pg::read_all(db),
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

    /// Replaces the handle after a failed write (redb refuses every later operation on it);
    /// for a database, drops the idle connections.
    pub fn reopen(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.reopen(),
            Backend::Postgres(db) => db.reopen(),
        }
    }

    /// The activated agent with this id.
    pub fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.read("read an agent", |txn| AGENTS.get(txn, agent_id)),
            Backend::Postgres(db) => pg::get_agent(db, agent_id),
        }
    }

    /// At most `limit` agents ordered by id, after `after` (from the first when `None`).
    pub fn list_agents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => {
                let page = db.read("list agents", |txn| AGENTS.page(txn, after, limit))?;
                Ok(page.into_iter().map(|(_, record)| record).collect())
            }
            Backend::Postgres(db) => pg::list_agents(db, after, limit),
        }
    }

    /// Stores an activated agent. When the id is free the record is stored with
    /// `registration_count = 1`; when it holds the same TPM identity the record replaces it
    /// with the count incremented; when it holds another identity nothing is written.
    pub fn activate(&self, record: AgentRecord) -> Result<Activation, StoreError> {
        let agent_id = record.agent_id.clone();
        self.activate_many(vec![record])?.pop().ok_or_else(|| StoreError::Table {
            table: AGENTS.name(),
            source: Box::new(redb::Error::Corrupted(format!(
                "activating {agent_id:?} gave no outcome"
            ))),
        })
    }

    /// [`RegistrarStore::activate`] for several records in one transaction (one sync to disk),
    /// applied in order; the outcomes are in the same order.
    pub fn activate_many(&self, records: Vec<AgentRecord>) -> Result<Vec<Activation>, StoreError> {
        let db = match &self.backend {
            Backend::Redb(db) => db,
            Backend::Postgres(db) => return pg::activate_many(db, records),
        };
        db.write("activate agents", |txn| {
            let mut outcomes = Vec::with_capacity(records.len());
            for mut record in records {
                let existing = AGENTS.get_for_update(txn, &record.agent_id)?;
                record.registration_count = match existing {
                    Some(old) if !old.same_tpm_identity(&record) => {
                        outcomes.push(Activation::IdentityConflict);
                        continue;
                    }
                    Some(old) => old.registration_count.saturating_add(1),
                    None => 1,
                };
                AGENTS.insert(txn, &record.agent_id, &record)?;
                outcomes.push(Activation::Activated(Box::new(record)));
            }
            Ok(outcomes)
        })
    }

    /// Removes an agent and frees its id; returns whether there was one.
    pub fn delete_agent(&self, agent_id: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.write("delete an agent", |txn| AGENTS.remove(txn, agent_id)),
            Backend::Postgres(db) => pg::delete_agent(db, agent_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn record(id: &str, ek: u8) -> AgentRecord {
        AgentRecord {
            agent_id: id.to_owned(),
            ek_public: vec![ek; 8],
            ek_certificate: Vec::new(),
            ek_intermediate_certificates: Vec::new(),
            ek_certificate_verified: false,
            ak_public: vec![7; 8],
            ak_name: vec![0, 11, 1],
            agent_certificate: vec![3; 4],
            contact_ip: "127.0.0.1".to_owned(),
            contact_port: 9002,
            registration_count: 0,
            registered_at: Timestamp { seconds: 1, nanos: 2 },
            activated_at: Timestamp { seconds: 3, nanos: 4 },
        }
    }

    #[test]
    fn activation_counts_and_survives_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registrar.redb");
        let store = RegistrarStore::open(&path)?;
        let Activation::Activated(first) = store.activate(record("a", 1))? else {
            return Err("first activation refused".into());
        };
        assert_eq!(first.registration_count, 1);
        let mut again = record("a", 1);
        again.ak_public = vec![8; 8];
        let Activation::Activated(second) = store.activate(again)? else {
            return Err("same EK refused".into());
        };
        assert_eq!(second.registration_count, 2);
        drop(store);
        let store = RegistrarStore::open(&path)?;
        assert_eq!(store.get_agent("a")?, Some(*second));
        Ok(())
    }

    #[test]
    fn different_identity_changes_nothing_until_deleted() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = RegistrarStore::open(&dir.path().join("registrar.redb"))?;
        store.activate(record("a", 1))?;
        let before = store.get_agent("a")?;
        assert_eq!(store.activate(record("a", 2))?, Activation::IdentityConflict);
        let mut other_cert = record("a", 1);
        other_cert.ek_certificate = vec![1, 2, 3];
        assert_eq!(store.activate(other_cert)?, Activation::IdentityConflict);
        assert_eq!(store.get_agent("a")?, before);
        assert!(store.delete_agent("a")?);
        assert!(!store.delete_agent("a")?);
        assert!(matches!(store.activate(record("a", 2))?, Activation::Activated(_)));
        Ok(())
    }

    #[test]
    fn batch_applies_in_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = RegistrarStore::open(&dir.path().join("registrar.redb"))?;
        let outcomes = store.activate_many(vec![record("a", 1), record("a", 2), record("a", 1)])?;
        let counts: Vec<Option<u64>> = outcomes
            .iter()
            .map(|o| match o {
                Activation::Activated(r) => Some(r.registration_count),
                Activation::IdentityConflict => None,
            })
            .collect();
        assert_eq!(counts, vec![Some(1), None, Some(2)]);
        Ok(())
    }

    #[test]
    fn listing_pages_in_id_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = RegistrarStore::open(&dir.path().join("registrar.redb"))?;
        for id in ["c", "a", "e", "b", "d"] {
            store.activate(record(id, 1))?;
        }
        let ids = |records: Vec<AgentRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.agent_id).collect()
        };
        assert_eq!(ids(store.list_agents(None, 2)?), ["a", "b"]);
        assert_eq!(ids(store.list_agents(Some("b"), 2)?), ["c", "d"]);
        assert_eq!(ids(store.list_agents(Some("d"), 2)?), ["e"]);
        assert!(store.list_agents(Some("e"), 2)?.is_empty());
        Ok(())
    }

    #[test]
    fn newer_registrar_file_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registrar.redb");
        drop(RegistrarStore::open(&path)?);
        {
            let db = redb::Database::create(&path)?;
            let txn = db.begin_write()?;
            txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))?
                .insert("schema_version", 7)?;
            txn.commit()?;
        }
        let err = RegistrarStore::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        let expected = format!(
            "{}: schema version 7 is newer than the 1 this registrar supports",
            path.display()
        );
        assert!(err.starts_with(&expected), "{err}");
        Ok(())
    }
}
