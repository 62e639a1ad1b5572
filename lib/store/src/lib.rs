//! `kl-store`: the durable state of the keylime-rs daemons.
//!
//! It owns the stored format: one redb file per daemon (`registrar.redb`, `verifier.redb`), a
//! `meta` table holding the schema version, the ordered migrations that bring an older file up
//! to date inside one write transaction, and typed tables whose values are serde records
//! encoded with postcard. [`Database`] and [`Records`] are the reusable framework; each
//! daemon's tables sit in their own module ([`registrar`], [`verifier`]) behind a narrow
//! interface of domain operations, served either by the redb file (the default) or by a
//! PostgreSQL database ([`postgres`]; `database_url`), chosen with a [`Location`]. The record
//! layouts of earlier schema versions live in `legacy`, read only by the migrations.
//!
//! It never decides policy (who may register, what a valid key is), never speaks a protocol and
//! never parses TPM structures: it stores and returns what the daemons hand it, and it refuses a
//! file written by a newer version of the software rather than guessing at its contents.

mod damage;
mod database;
mod legacy;
pub mod postgres;
mod records;
pub mod registrar;
pub mod verifier;

use std::path::{Path, PathBuf};

pub use database::{
    Check, Database, Migration, Schema, Verdict, check_database, open_database, space_returned,
};
pub use records::Records;

/// Where a daemon keeps its state.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded redb file.
    File(PathBuf),
    /// A PostgreSQL database.
    Postgres(postgres::Target),
}

impl Location {
    /// The redb `file` when there is no `database_url` (or an empty one), else the database
    /// it names (its password read from `password_file` when one is given).
    pub fn new(
        file: PathBuf,
        database_url: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Location, StoreError> {
        match database_url.filter(|url| !url.is_empty()) {
            None => Ok(Location::File(file)),
            Some(url) => postgres::Target::new(url, password_file).map(Location::Postgres),
        }
    }
}

impl std::fmt::Display for Location {
    /// The file's path, or the database URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Postgres(target) => f.write_str(target.shown()),
        }
    }
}

/// Errors from opening, migrating, reading and writing a store; each names the file and, where
/// it applies, the table and key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{}: cannot open the {schema} store: {source}", path.display())]
    Open { path: PathBuf, schema: &'static str, source: Box<redb::DatabaseError> },
    /// `path` is the file, or the database URL without its password.
    #[error(
        "{}: schema version {found} is newer than the {supported} this {schema} supports; \
         use a newer keylime-rs or restore a backup made by this version",
        path.display()
    )]
    NewerSchema { path: PathBuf, schema: &'static str, found: u64, supported: u64 },
    #[error("{}: migration to schema version {version} ({description}) failed: {source}", path.display())]
    Migration { path: PathBuf, version: u64, description: &'static str, source: Box<StoreError> },
    #[error("{}: {operation}: {source}", path.display())]
    Storage { path: PathBuf, operation: String, source: Box<redb::Error> },
    #[error("table {table}, key {key:?}: cannot decode the stored record: {source}")]
    Decode { table: &'static str, key: String, source: postcard::Error },
    #[error("table {table}, key {key:?}: cannot encode the record: {source}")]
    Encode { table: &'static str, key: String, source: postcard::Error },
    #[error("table {table}: {source}")]
    Table { table: &'static str, source: Box<redb::Error> },
    /// The file's contents are not what redb or this software wrote (found by a read that
    /// panicked inside redb, a page that fails its checksum, or a record that does not decode).
    #[error(
        "{}: the {schema} store is damaged ({detail}); restore it from a backup, or run \
         `keylime_{schema} --check-store` to check the whole file",
        path.display()
    )]
    Damaged { path: PathBuf, schema: &'static str, detail: String },
    /// `database_url` does not parse or names a server this backend does not connect to; the
    /// URL is shown without its password.
    #[error("database_url {url:?}: {reason}")]
    DatabaseUrl { url: String, reason: String },
    #[error("{}: cannot read the database password: {source}", path.display())]
    PasswordFile { path: PathBuf, source: std::io::Error },
    #[error("{url}: cannot connect to the {schema} database: {}", postgres::reason(source))]
    Connect { url: String, schema: &'static str, source: Box<tokio_postgres::Error> },
    #[error("{url}: {operation}: {}", postgres::reason(source))]
    Database { url: String, operation: String, source: Box<tokio_postgres::Error> },
    /// Every pooled connection stayed busy for `waited`.
    #[error("{url}: {operation}: no database connection became free in {waited:?}")]
    PoolExhausted { url: String, operation: String, waited: std::time::Duration },
    /// A daemon of an earlier release, which knows nothing of replicas, uses the database.
    #[error(
        "{url}: a keylime_{schema} of an earlier release (one per database) is running on this \
         database; stop it before starting this one"
    )]
    EarlierRelease { url: String, schema: &'static str },
    /// Another verifier process announced itself with the same replica id and is present.
    #[error(
        "{url}: another verifier process uses the replica id {id:?} (set a distinct id in each \
         replica's configuration); this one attests nothing until that one's presence runs out"
    )]
    ReplicaIdTaken { url: String, id: String },
    /// A lease operation on the redb file, which one verifier owns (see
    /// [`verifier`](crate::verifier)'s agent leases).
    #[error(
        "{}: {operation}: agent leases are for verifier replicas sharing a PostgreSQL \
         database (database_url); this store is a file of one verifier",
        path.display()
    )]
    LeasesNeedDatabase { path: PathBuf, operation: String },
    #[error("cannot start the {schema} store's database connections: {source}")]
    Runtime { schema: &'static str, source: std::io::Error },
    #[error("table {table}, key {key:?}: {value} does not fit a BIGINT column")]
    OutOfRange { table: &'static str, key: String, value: u64 },
    /// A write failed earlier and the file has not been opened again yet (see
    /// [`Database::reopen`]).
    #[error(
        "{}: {operation}: the store is closed after a failed write and not opened again yet",
        path.display()
    )]
    Closed { path: PathBuf, operation: String },
}

impl StoreError {
    /// A redb failure during `operation` on the file at `path`.
    pub fn storage(
        path: &std::path::Path,
        operation: &str,
        source: impl Into<redb::Error>,
    ) -> Self {
        StoreError::Storage {
            path: path.to_owned(),
            operation: operation.to_owned(),
            source: Box::new(source.into()),
        }
    }

    fn table(table: &'static str, source: impl Into<redb::Error>) -> Self {
        StoreError::Table { table, source: Box::new(source.into()) }
    }

    /// Whether this is an I/O failure of the file (a full disk, a failing device), or the
    /// refusal that follows one until the store is reopened, or a database server that cannot
    /// be reached or is out of resources: the store can work again once the cause is gone,
    /// unlike a damaged file.
    pub fn is_io(&self) -> bool {
        match self {
            StoreError::Closed { .. }
            | StoreError::Connect { .. }
            | StoreError::PoolExhausted { .. } => true,
            StoreError::Database { source, .. } => postgres::is_transient(source),
            StoreError::Storage { source, .. } | StoreError::Table { source, .. } => {
                matches!(**source, redb::Error::Io(_) | redb::Error::PreviousIo)
            }
            StoreError::Open { source, .. } => {
                matches!(**source, redb::DatabaseError::Storage(redb::StorageError::Io(_)))
            }
            _ => false,
        }
    }

    /// Whether the store file is damaged (see [`StoreError::Damaged`]).
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::Damaged { .. })
    }

    /// This error, as [`StoreError::Damaged`] when it means that the file at `path` is damaged.
    fn damaged(self, path: &std::path::Path, schema: &'static str) -> Self {
        let corrupted = match &self {
            StoreError::Decode { .. } => true,
            StoreError::Table { source, .. } | StoreError::Storage { source, .. } => {
                damage::is_corruption(source)
            }
            StoreError::Open { source, .. } => {
                matches!(**source, redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)))
            }
            _ => false,
        };
        if !corrupted {
            return self;
        }
        let detail = match &self {
            // The path is said once, by the damage message.
            StoreError::Storage { operation, source, .. } => format!("{operation}: {source}"),
            StoreError::Open { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        StoreError::Damaged { path: path.to_owned(), schema, detail: damage::one_line(&detail) }
    }
}
