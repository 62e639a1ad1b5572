//! Opening a store file: the `meta` table, the schema version and migrations.
//!
//! A schema is an ordered list of migrations; migration `i` (from zero) brings a file from
//! version `i` to version `i + 1`, so a new file (version 0, no `meta` table) runs them all and
//! the schema's version is the number of migrations. Pending migrations run in one write
//! transaction together with the version update: a crash half way leaves the file as it was.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::StoreError;
use crate::damage::guard;

/// Holds `schema_version` (and nothing else yet).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_VERSION: &str = "schema_version";

/// One step of a schema: creates or reshapes tables inside the migration transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// What the step does, for error messages and logs ("create the agents table").
    pub description: &'static str,
    pub apply: fn(&WriteTransaction) -> Result<(), StoreError>,
}

/// A store's layout over time.
#[derive(Debug)]
pub struct Schema {
    /// Which daemon's store this is ("registrar"), for error messages.
    pub name: &'static str,
    pub migrations: &'static [Migration],
}

impl Schema {
    /// The version a file has once every migration ran.
    pub fn version(&self) -> u64 {
        self.migrations.len() as u64
    }
}

/// redb's page cache (read cache and write buffer). redb's default is 1 GiB, which a busy
/// verifier fills with pages it rarely reads again: its hot state lives in memory, and the
/// store is mostly written. At 10,000 agents, 32 MiB instead of 64 saves the verifier about
/// 6 KiB per agent and costs its store writer about 3 µs more per attestation (see
/// docs/benchmarks.md).
const CACHE_BYTES: usize = 32 << 20;

/// An open store file at the current schema version.
///
/// After a failed write (a full disk), redb refuses every later operation on its handle; the
/// handle can be replaced with [`Database::reopen`] once the cause is gone.
#[derive(Debug)]
pub struct Database {
    /// `None` while being reopened, or after a reopen failed.
    db: RwLock<Option<redb::Database>>,
    path: PathBuf,
    schema: &'static Schema,
}

/// Opens the redb file at `path` (creating it), with the store's cache size.
fn open_redb(path: &Path, schema: &'static Schema) -> Result<redb::Database, StoreError> {
    guard(path, schema.name, || {
        redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| {
            StoreError::Open { path: path.to_owned(), schema: schema.name, source: Box::new(e) }
        })
    })
}

/// Opens (creating it if absent) the store at `path` and migrates it to `schema`'s version.
/// Refuses a file whose version is newer than `schema`'s. redb locks the file, so a second
/// process opening it gets an error naming it. A file that redb finds damaged on the way is
/// reported as [`StoreError::Damaged`], never as a panic.
pub fn open_database(path: &Path, schema: &'static Schema) -> Result<Database, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            schema: schema.name,
            source: Box::new(redb::DatabaseError::Storage(redb::StorageError::Io(e))),
        })?;
    }
    let db = open_redb(path, schema)?;
    let database = Database { db: RwLock::new(Some(db)), path: path.to_owned(), schema };
    database.migrate()?;
    Ok(database)
}

/// What [`check_database`] found in a sound file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The file needed redb's repair (it was not closed cleanly, or its newest commit was
    /// damaged and redb went back to the one before); it is sound now.
    pub repaired: bool,
    pub schema_version: u64,
    /// Records read and decoded, by table.
    pub tables: Vec<(&'static str, u64)>,
}

impl Check {
    /// Records read in all tables.
    pub fn records(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// Checks the existing store at `path` in full without starting anything on it: redb verifies
/// the checksum of every page it holds (repairing what it can, as an open after a crash
/// does), then `read_all` reads and decodes every record and says how many each table holds.
/// Takes redb's lock, so it fails while a daemon has the file open.
pub fn check_database(
    path: &Path,
    schema: &'static Schema,
    read_all: impl FnOnce(&ReadTransaction) -> Result<Vec<(&'static str, u64)>, StoreError>,
) -> Result<Check, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        schema: schema.name,
        source: Box::new(source),
    };
    // `open` would create a missing file; a check never writes one.
    std::fs::metadata(path)
        .map_err(|e| open_error(redb::DatabaseError::Storage(redb::StorageError::Io(e))))?;
    let db = guard(path, schema.name, || {
        let mut db =
            redb::Builder::new().set_cache_size(CACHE_BYTES).open(path).map_err(open_error)?;
        let clean = db.check_integrity().map_err(open_error)?;
        Ok(Database { db: RwLock::new(Some(db)), path: path.to_owned(), schema })
            .map(|db| (db, clean))
    });
    let (database, clean) = db?;
    let schema_version = database.schema_version()?;
    if schema_version > schema.version() {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            schema: schema.name,
            found: schema_version,
            supported: schema.version(),
        });
    }
    // An older file's tables may not have the current layout yet (the next start migrates it).
    let tables = if schema_version == schema.version() {
        database.read("read every record", read_all)?
    } else {
        Vec::new()
    };
    Ok(Check { repaired: !clean, schema_version, tables })
}

/// How a daemon's `--check-store` reports a [`check_database`]: one line and an exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// 0 sound; 1 damaged, or repaired by this check; 2 not checked (absent, in use, unreadable).
    pub exit_code: u8,
    /// The verdict, naming the file; for stdout when sound, stderr otherwise.
    pub line: String,
}

impl Verdict {
    pub fn of(path: &Path, result: Result<Check, StoreError>) -> Verdict {
        let shown = path.display();
        match result {
            Ok(check) if !check.repaired => {
                let tables: Vec<String> =
                    check.tables.iter().map(|(table, n)| format!("{table} {n}")).collect();
                Verdict {
                    exit_code: 0,
                    line: format!(
                        "{shown}: sound: every page verified, schema version {}, {} records read \
                         ({})",
                        check.schema_version,
                        check.records(),
                        tables.join(", ")
                    ),
                }
            }
            Ok(_) => Verdict {
                exit_code: 1,
                line: format!(
                    "{shown}: damaged, and repaired by redb (its newest commit or its page \
                     allocation did not verify): the newest writes may be lost; it is sound now"
                ),
            },
            Err(StoreError::Damaged { schema, detail, .. }) => Verdict {
                exit_code: 1,
                line: format!(
                    "{shown}: damaged ({detail}); stop keylime_{schema} and restore the file from \
                     a backup"
                ),
            },
            Err(StoreError::Open { schema, source, .. })
                if matches!(*source, redb::DatabaseError::DatabaseAlreadyOpen) =>
            {
                Verdict {
                    exit_code: 2,
                    line: format!(
                        "{shown}: not checked: a running keylime_{schema} has it open; stop it first"
                    ),
                }
            }
            Err(other) => Verdict { exit_code: 2, line: format!("not checked: {other}") },
        }
    }
}

impl Database {
    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        self.read("read the schema version", |txn| match txn.open_table(META) {
            Ok(meta) => read_version(&meta).map_err(|e| StoreError::table("meta", e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(StoreError::table("meta", e)),
        })
    }

    /// Runs `body` in a write transaction and commits it when `body` succeeds; on an error
    /// nothing `body` wrote is kept. `operation` names the work in errors.
    pub fn write<T>(
        &self,
        operation: &str,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let handle = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = handle.as_ref().ok_or_else(|| self.closed(operation))?;
        guard(&self.path, self.schema.name, || {
            let txn =
                db.begin_write().map_err(|e| StoreError::storage(&self.path, operation, e))?;
            let out = body(&txn)?;
            txn.commit().map_err(|e| StoreError::storage(&self.path, operation, e))?;
            Ok(out)
        })
    }

    /// Runs `body` in a read transaction (a consistent snapshot).
    pub fn read<T>(
        &self,
        operation: &str,
        body: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let handle = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = handle.as_ref().ok_or_else(|| self.closed(operation))?;
        guard(&self.path, self.schema.name, || {
            let txn = db.begin_read().map_err(|e| StoreError::storage(&self.path, operation, e))?;
            body(&txn)
        })
    }

    /// Replaces redb's handle with a new one on the same file: after a failed write (a full
    /// disk) redb refuses everything on the old handle until it is closed. The old handle is
    /// closed first (redb locks the file), so operations that start meanwhile fail with
    /// [`StoreError::Closed`] rather than wait; opening after a failed write runs redb's
    /// repair, which reads the whole file. When the new handle cannot be opened (the disk is
    /// still full), the store stays closed until a later `reopen` succeeds.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let old = self.db.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(old) = old {
            // Its error is the failure being recovered from; the open below reports what matters.
            let _ = old.close();
        }
        let db = open_redb(&self.path, self.schema)?;
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(db);
        Ok(())
    }

    fn closed(&self, operation: &str) -> StoreError {
        StoreError::Closed { path: self.path.clone(), operation: operation.to_owned() }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let schema = self.schema;
        let supported = schema.version();
        self.write("migrate the schema", |txn| {
            let found = {
                let meta = txn.open_table(META).map_err(|e| StoreError::table("meta", e))?;
                read_version(&meta).map_err(|e| StoreError::table("meta", e))?
            };
            if found > supported {
                return Err(StoreError::NewerSchema {
                    path: self.path.clone(),
                    schema: schema.name,
                    found,
                    supported,
                });
            }
            for (index, migration) in schema.migrations.iter().enumerate().skip(found as usize) {
                (migration.apply)(txn).map_err(|e| StoreError::Migration {
                    path: self.path.clone(),
                    version: index as u64 + 1,
                    description: migration.description,
                    source: Box::new(e),
                })?;
            }
            if found != supported {
                let mut meta = txn.open_table(META).map_err(|e| StoreError::table("meta", e))?;
                meta.insert(SCHEMA_VERSION, supported).map_err(|e| StoreError::table("meta", e))?;
            }
            Ok(())
        })
    }
}

fn read_version(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, redb::StorageError> {
    Ok(meta.get(SCHEMA_VERSION)?.map(|v| v.value()).unwrap_or(0))
}

/// Bytes the space probe writes: more than one commit of routine state needs.
const SPACE_PROBE_BYTES: usize = 1 << 20;

/// Whether the file system of the store at `path` takes writes again: a small file written and
/// synced beside it, then removed. A daemon asks this before reopening a store whose writes
/// failed, since opening it again has redb check the whole file and closes the handle reads
/// still use.
pub fn space_returned(path: &Path) -> bool {
    use std::io::Write;
    let mut name = path.as_os_str().to_owned();
    name.push(".space-probe");
    let probe = PathBuf::from(name);
    let written = std::fs::File::create(&probe).and_then(|mut file| {
        file.write_all(&[0; SPACE_PROBE_BYTES]).and_then(|()| file.sync_all())
    });
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::Records;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct NoteV1 {
        text: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct NoteV2 {
        text: String,
        words: u32,
    }

    const NOTES_V1: Records<NoteV1> = Records::new("notes");
    const NOTES_V2: Records<NoteV2> = Records::new("notes");

    fn create_notes(txn: &WriteTransaction) -> Result<(), StoreError> {
        NOTES_V1.create(txn)
    }

    /// Re-encodes every note with its word count.
    fn count_words(txn: &WriteTransaction) -> Result<(), StoreError> {
        for (key, old) in NOTES_V1.all_for_update(txn)? {
            let words = old.text.split_whitespace().count() as u32;
            NOTES_V2.insert(txn, &key, &NoteV2 { text: old.text, words })?;
        }
        Ok(())
    }

    fn broken(_txn: &WriteTransaction) -> Result<(), StoreError> {
        Err(StoreError::Table {
            table: "notes",
            source: Box::new(redb::Error::Corrupted("test migration refuses".to_owned())),
        })
    }

    static V1: Schema = Schema {
        name: "test",
        migrations: &[Migration { description: "create the notes table", apply: create_notes }],
    };
    static V2: Schema = Schema {
        name: "test",
        migrations: &[
            Migration { description: "create the notes table", apply: create_notes },
            Migration { description: "count the words of each note", apply: count_words },
        ],
    };
    static V2_BROKEN: Schema = Schema {
        name: "test",
        migrations: &[
            Migration { description: "create the notes table", apply: create_notes },
            Migration { description: "a step that fails", apply: broken },
        ],
    };

    #[test]
    fn new_file_gets_the_current_version_and_keeps_data_across_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state/test.redb");
        let db = open_database(&path, &V1)?;
        assert_eq!(db.schema_version()?, 1);
        db.write("add", |txn| NOTES_V1.insert(txn, "a", &NoteV1 { text: "hello".into() }))?;
        drop(db);
        let db = open_database(&path, &V1)?;
        let note = db.read("get", |txn| NOTES_V1.get(txn, "a"))?;
        assert_eq!(note, Some(NoteV1 { text: "hello".into() }));
        Ok(())
    }

    #[test]
    fn older_file_is_migrated_in_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("test.redb");
        let db = open_database(&path, &V1)?;
        db.write("add", |txn| NOTES_V1.insert(txn, "a", &NoteV1 { text: "one two three".into() }))?;
        drop(db);
        let db = open_database(&path, &V2)?;
        assert_eq!(db.schema_version()?, 2);
        let note = db.read("get", |txn| NOTES_V2.get(txn, "a"))?;
        assert_eq!(note, Some(NoteV2 { text: "one two three".into(), words: 3 }));
        Ok(())
    }

    #[test]
    fn failed_migration_leaves_the_file_unchanged_and_names_the_step() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("test.redb");
        let db = open_database(&path, &V1)?;
        db.write("add", |txn| NOTES_V1.insert(txn, "a", &NoteV1 { text: "kept".into() }))?;
        drop(db);
        let err = open_database(&path, &V2_BROKEN).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("migration to schema version 2 (a step that fails) failed"), "{err}");
        let db = open_database(&path, &V1)?;
        assert_eq!(db.schema_version()?, 1);
        assert_eq!(
            db.read("get", |txn| NOTES_V1.get(txn, "a"))?,
            Some(NoteV1 { text: "kept".into() })
        );
        Ok(())
    }

    #[test]
    fn newer_file_is_refused_naming_file_and_versions() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("test.redb");
        drop(open_database(&path, &V2)?);
        let err = open_database(&path, &V1).err().map(|e| e.to_string()).unwrap_or_default();
        let expected =
            format!("{}: schema version 2 is newer than the 1 this test supports", path.display());
        assert!(err.starts_with(&expected), "{err}");
        Ok(())
    }
}
