//! `kl-store`: the durable state of the keylime-rs daemons.
//!
//! It owns the on-disk format: one redb file per daemon (`registrar.redb`, `verifier.redb`), a
//! `meta` table holding the schema version, the ordered migrations that bring an older file up
//! to date inside one write transaction, and typed tables whose values are serde records
//! encoded with postcard. [`Database`] and [`Records`] are the reusable framework; each
//! daemon's tables sit in their own module ([`registrar`], [`verifier`]) behind a narrow
//! interface of domain operations, so another backend (a shared SQL database) could later serve the same calls.
//!
//! It never decides policy (who may register, what a valid key is), never speaks a protocol and
//! never parses TPM structures: it stores and returns what the daemons hand it, and it refuses a
//! file written by a newer version of the software rather than guessing at its contents.

mod database;
mod records;
pub mod registrar;
pub mod verifier;

use std::path::PathBuf;

pub use database::{Database, Migration, Schema, open_database};
pub use records::Records;

/// Errors from opening, migrating, reading and writing a store; each names the file and, where
/// it applies, the table and key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{}: cannot open the {schema} store: {source}", path.display())]
    Open { path: PathBuf, schema: &'static str, source: Box<redb::DatabaseError> },
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
}
