//! The PostgreSQL backend: a connection pool, the `meta` table with each store's schema
//! version, versioned migrations, and transactions for the domain operations of
//! [`registrar`](crate::registrar) and [`verifier`](crate::verifier) (in [`registrar`] and
//! [`verifier`] here).
//!
//! The client is `tokio-postgres` (the maintained native client; sqlx would add a query macro
//! layer and a second set of runtime and TLS features for a dozen fixed statements). The stores'
//! interface stays synchronous: the daemons call it from blocking threads, from their writer
//! threads, and from a few async handlers. So the connections are driven by a one-thread tokio
//! runtime owned by the store, and a call waits for its statements on the calling thread with a
//! small `block_on` that parks the thread: it never enters a tokio runtime, so it works from
//! any of those callers (blocking an async worker for the length of the call, as a redb read
//! does).
//!
//! Connections are plain TCP or a Unix socket without TLS, so only servers on a loopback
//! address or a Unix socket are accepted: a shared server on another host needs TLS first.
//!
//! Every write transaction first takes a transaction-level advisory lock of its store, so the
//! writes of one store are serialized as redb serializes them: a read-modify-write (an
//! activation's identity check, a policy precondition) sees no concurrent writer, and event
//! cursors are taken from the `last_event` counter row inside that transaction, so they become
//! visible in cursor order: a reader that has seen cursor N never later sees an event below N
//! appear. (A sequence alone would not do: a transaction holding a lower number may commit
//! after one holding a higher number.)
//!
//! Several daemons may share a database: registrars share their table, and verifiers are
//! replicas that divide the agents with leases (see [`crate::verifier`]).

pub(crate) mod registrar;
pub(crate) mod verifier;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, NoTls, Row, Statement, Transaction};

use crate::StoreError;

/// Where a PostgreSQL store lives: a parsed `database_url` and the password to use.
#[derive(Clone)]
pub struct Target {
    config: Box<tokio_postgres::Config>,
    /// The URL as errors and logs show it: without a password.
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.shown).finish_non_exhaustive()
    }
}

/// How long a connection attempt may take before the store reports the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection counts as broken.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Server-side limits of every session (options in the URL come after, and so win): no
/// statement or lock wait of the daemons takes more than a fraction of these.
const SESSION_TIMEOUTS: &str =
    "-c statement_timeout=120s -c lock_timeout=60s -c idle_in_transaction_session_timeout=300s";
/// How long an operation waits for a pooled connection before it fails as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(60);

impl Target {
    /// Parses `url` (`postgresql://user@host:port/db`); the password comes from the URL, or
    /// from `password_file` (its contents without the trailing newline) when one is given.
    pub fn new(url: &str, password_file: Option<&Path>) -> Result<Target, StoreError> {
        // A value that does not parse is not shown at all: where its password is cannot be
        // known.
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::DatabaseUrl { url: UNPARSED.to_owned(), reason: format!("{e}") }
        })?;
        let shown = shown_url(&config);
        if config.get_hosts().is_empty() {
            return Err(StoreError::DatabaseUrl {
                url: shown,
                reason: "it names no host (a loopback address or a Unix socket directory)".into(),
            });
        }
        // `hostaddr` overrides the host names for the connection itself.
        if let Some(addr) = config.get_hostaddrs().iter().find(|a| !a.is_loopback()) {
            return Err(StoreError::DatabaseUrl {
                url: shown,
                reason: format!(
                    "hostaddr {addr} is not a loopback address; connections are not encrypted \
                     (no TLS yet), so only a local server is accepted"
                ),
            });
        }
        for host in config.get_hosts() {
            if let tokio_postgres::config::Host::Tcp(name) = host
                && !is_loopback(name)
            {
                return Err(StoreError::DatabaseUrl {
                    url: shown,
                    reason: format!(
                        "host {name:?} is not a loopback address or a Unix socket directory; \
                         connections are not encrypted (no TLS yet), so only a local server \
                         is accepted"
                    ),
                });
            }
        }
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| StoreError::PasswordFile { path: path.to_owned(), source })?;
            config.password(text.trim_end_matches(['\r', '\n']));
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        // A server that vanishes without closing the connection (a cut network, a frozen
        // host) is noticed within about a minute rather than the kernel's two hours, and a
        // statement or lock wait that hangs ends in an error the writer holds and retries.
        config
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        let options = match config.get_options() {
            Some(own) if !own.is_empty() => format!("{SESSION_TIMEOUTS} {own}"),
            _ => SESSION_TIMEOUTS.to_owned(),
        };
        config.options(options);
        Ok(Target { config: Box::new(config), shown })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `postgresql://user@host:port/db`, rebuilt from the parsed URL so no password can remain.
fn shown_url(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgresql://{user}{}/{db}", hosts.join(","))
}

/// How errors show a `database_url` that does not parse.
const UNPARSED: &str = "(database_url, not shown: it does not parse)";

/// One step of a PostgreSQL schema: SQL run inside the migration transaction, then the
/// records it re-encodes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub description: &'static str,
    pub sql: &'static str,
    pub rewrite: &'static [Rewrite],
}

/// A migration's re-encoding of every postcard `record` of a table, for a change of a record's
/// layout that SQL cannot make.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rewrite {
    pub table: &'static str,
    /// An SQL expression naming a row in errors, e.g. `agent_id`.
    pub key: &'static str,
    /// A record of the previous layout in the new one.
    pub apply: fn(&[u8]) -> Result<Vec<u8>, postcard::Error>,
}

/// How many records a [`Rewrite`] reads before writing them back.
const REWRITE_CHUNK: i32 = 4096;

impl Rewrite {
    /// Re-encodes every record of the table, a chunk at a time. The rows are read through a
    /// portal, whose snapshot is the transaction's before the first update: a rewritten row is
    /// never read again.
    async fn run(&self, tx: &Tx<'_>) -> Result<(), StoreError> {
        let error = |e| tx.error(self.table, e);
        let select = format!(
            "SELECT ctid::text AS id, ({})::text AS key, record FROM {}",
            self.key, self.table
        );
        let update = format!(
            "UPDATE {0} SET record = u.record FROM unnest($1::text[], $2::bytea[]) AS u(id, record) \
             WHERE {0}.ctid = u.id::tid",
            self.table
        );
        let select = tx.txn.prepare(&select).await.map_err(error)?;
        let update = tx.txn.prepare(&update).await.map_err(error)?;
        let portal = tx.txn.bind(&select, &[]).await.map_err(error)?;
        loop {
            let rows = tx.txn.query_portal(&portal, REWRITE_CHUNK).await.map_err(error)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = tx.get(self.table, row, "id")?;
                let key: String = tx.get(self.table, row, "key")?;
                let record: &[u8] = tx.get(self.table, row, "record")?;
                let record = (self.apply)(record).map_err(|source| StoreError::Decode {
                    table: self.table,
                    key,
                    source,
                })?;
                ids.push(id);
                records.push(record);
            }
            tx.txn.execute(&update, &[&ids, &records]).await.map_err(error)?;
        }
    }
}

/// A store's tables in PostgreSQL over time. Its versions count on their own, apart from the
/// redb file's.
#[derive(Debug)]
pub(crate) struct Schema {
    /// Which daemon's store this is ("registrar"): the key of its row in `meta`, and in errors.
    pub name: &'static str,
    /// The advisory lock every write transaction of this store takes.
    pub write_lock: i64,
    /// A session advisory lock that daemons of earlier releases held while they ran, one per
    /// database: while it is held, this store is not opened (an earlier verifier attests every
    /// agent, beside replicas it does not know of).
    pub earlier_release_lock: Option<i64>,
    pub migrations: &'static [Migration],
}

impl Schema {
    fn version(&self) -> u64 {
        self.migrations.len() as u64
    }
}

/// The advisory lock of migrations, shared by every store so that a registrar and a verifier
/// using one database do not create `meta` at once.
const MIGRATION_LOCK: i64 = 0x6b6c_0000;

/// Most connections a store opens; callers beyond wait for one to be free.
const MAX_CONNECTIONS: usize = 16;

#[derive(Default)]
struct Connections {
    idle: Vec<Connection>,
    open: usize,
}

/// A pooled connection and the statements prepared on it: each statement is parsed once per
/// connection, so a query is one round trip.
struct Connection {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// An open PostgreSQL store at its schema's current version.
pub(crate) struct Database {
    /// Drives the connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    target: Target,
    schema: &'static Schema,
    connections: Mutex<Connections>,
    freed: Condvar,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.target.shown)
            .field("schema", &self.schema.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            // On an async worker, waiting for the runtime (or dropping it) would panic.
            runtime.shutdown_background();
        } else {
            // The connection tasks close their sockets as they are dropped.
            runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

/// How long closing a store waits for its connections to close.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// A transaction and what its errors name.
pub(crate) struct Tx<'a> {
    txn: Transaction<'a>,
    statements: RefCell<&'a mut HashMap<&'static str, Statement>>,
    url: &'a str,
    operation: &'a str,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    fn error(&self, table: &str, source: tokio_postgres::Error) -> StoreError {
        StoreError::Database {
            url: self.url.to_owned(),
            operation: format!("{} (table {table})", self.operation),
            source: Box::new(source),
        }
    }

    /// `sql` prepared on this connection (once).
    async fn statement(&self, table: &str, sql: &'static str) -> Result<Statement, StoreError> {
        let known = self.statements.borrow().get(sql).cloned();
        if let Some(statement) = known {
            return Ok(statement);
        }
        let statement = self.txn.prepare(sql).await.map_err(|e| self.error(table, e))?;
        self.statements.borrow_mut().insert(sql, statement.clone());
        Ok(statement)
    }

    pub async fn query(
        &self,
        table: &str,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(table, sql).await?;
        self.txn.query(&statement, params).await.map_err(|e| self.error(table, e))
    }

    pub async fn query_opt(
        &self,
        table: &str,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(table, sql).await?;
        self.txn.query_opt(&statement, params).await.map_err(|e| self.error(table, e))
    }

    pub async fn execute(
        &self,
        table: &str,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<u64, StoreError> {
        let statement = self.statement(table, sql).await?;
        self.txn.execute(&statement, params).await.map_err(|e| self.error(table, e))
    }

    /// Column `column` of `row`.
    pub fn get<'r, T: FromSql<'r>>(
        &self,
        table: &str,
        row: &'r Row,
        column: &str,
    ) -> Result<T, StoreError> {
        row.try_get(column).map_err(|e| self.error(table, e))
    }
}

impl Database {
    /// Connects to `target` and migrates its tables to its version; refuses a database whose
    /// version of them is newer.
    pub fn open(target: &Target, schema: &'static Schema) -> Result<Database, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("{}-postgres", schema.name))
            .enable_all()
            .build()
            .map_err(|source| StoreError::Runtime { schema: schema.name, source })?;
        let database = Database {
            runtime: Some(runtime),
            target: target.clone(),
            schema,
            connections: Mutex::new(Connections::default()),
            freed: Condvar::new(),
        };
        database.refuse_earlier_release()?;
        database.migrate()?;
        Ok(database)
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.target.shown
    }

    /// Runs `body` in a write transaction holding the store's write lock, and commits it when
    /// `body` succeeds; on an error nothing `body` wrote is kept.
    pub fn write<T>(
        &self,
        operation: &str,
        body: impl AsyncFnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(operation, false, async |tx| {
            tx.execute("meta", "SELECT pg_advisory_xact_lock($1)", &[&self.schema.write_lock])
                .await?;
            body(tx).await
        })
    }

    /// Runs `body` in a write transaction without the store's write lock: for statements whose
    /// own row locks keep concurrent callers apart (the verifier's agent leases), so that they
    /// neither wait for nor delay other writes.
    pub fn write_unserialized<T>(
        &self,
        operation: &str,
        body: impl AsyncFnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(operation, false, body)
    }

    /// Runs `body` in a read-only transaction (a consistent snapshot).
    pub fn read<T>(
        &self,
        operation: &str,
        body: impl AsyncFnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(operation, true, body)
    }

    /// Drops the idle connections, so the next operations connect again (after the server
    /// restarted, say; a broken connection is replaced anyway when it is next taken).
    pub fn reopen(&self) -> Result<(), StoreError> {
        {
            let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
            connections.open -= connections.idle.len();
            connections.idle.clear();
        }
        self.freed.notify_all();
        Ok(())
    }

    fn transaction<T>(
        &self,
        operation: &str,
        read_only: bool,
        body: impl AsyncFnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut lease = self.lease(operation)?;
        let connection = lease.connection.as_mut().ok_or_else(|| self.closed(operation))?;
        let (client, statements) = (&mut connection.client, &mut connection.statements);
        let url = self.target.shown.as_str();
        block_on(async {
            let begin = |e| StoreError::Database {
                url: url.to_owned(),
                operation: operation.to_owned(),
                source: Box::new(e),
            };
            let txn = if read_only {
                client
                    .build_transaction()
                    .read_only(true)
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .start()
                    .await
            } else {
                client.transaction().await
            }
            .map_err(begin)?;
            let tx = Tx { txn, statements: RefCell::new(statements), url, operation };
            let out = body(&tx).await?;
            tx.txn.commit().await.map_err(begin)?;
            Ok(out)
        })
    }

    fn closed(&self, operation: &str) -> StoreError {
        StoreError::Closed {
            path: PathBuf::from(&self.target.shown),
            operation: operation.to_owned(),
        }
    }

    /// An idle connection, or a new one while fewer than [`MAX_CONNECTIONS`] are open.
    fn lease(&self, operation: &str) -> Result<Lease<'_>, StoreError> {
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(connection) = connections.idle.pop() {
                if connection.client.is_closed() {
                    connections.open -= 1;
                    continue;
                }
                return Ok(Lease { database: self, connection: Some(connection) });
            }
            if connections.open < MAX_CONNECTIONS {
                connections.open += 1;
                drop(connections);
                return match self.connect(operation) {
                    Ok(client) => Ok(Lease {
                        database: self,
                        connection: Some(Connection { client, statements: HashMap::new() }),
                    }),
                    Err(e) => {
                        self.connections.lock().unwrap_or_else(PoisonError::into_inner).open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let (guard, waited) = self
                .freed
                .wait_timeout(connections, POOL_WAIT)
                .unwrap_or_else(PoisonError::into_inner);
            connections = guard;
            if waited.timed_out() && connections.idle.is_empty() {
                return Err(StoreError::PoolExhausted {
                    url: self.target.shown.clone(),
                    operation: operation.to_owned(),
                    waited: POOL_WAIT,
                });
            }
        }
    }

    fn connect(&self, operation: &str) -> Result<Client, StoreError> {
        let Some(runtime) = self.runtime.as_ref().map(|r| r.handle().clone()) else {
            return Err(self.closed(operation));
        };
        let config = (*self.target.config).clone();
        let connecting = runtime.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            // Ends when the client is dropped or the server goes away; the client then
            // reports it closed and the pool replaces it.
            tokio::spawn(connection);
            Ok::<_, tokio_postgres::Error>(client)
        });
        match block_on(connecting) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(StoreError::Connect {
                url: self.target.shown.clone(),
                schema: self.schema.name,
                source: Box::new(source),
            }),
            // The runtime is shutting down: the store is being dropped.
            Err(_) => Err(self.closed(operation)),
        }
    }

    /// Refuses to open while a daemon of an earlier release holds
    /// [`Schema::earlier_release_lock`] (exclusively, for its whole session; taking it shared
    /// for a moment does not keep out another daemon of this release doing the same).
    fn refuse_earlier_release(&self) -> Result<(), StoreError> {
        let Some(key) = self.schema.earlier_release_lock else { return Ok(()) };
        let held =
            self.transaction("look for a verifier of an earlier release", false, async |tx| {
                let row = tx
                    .query_opt(
                        "meta",
                        "SELECT NOT pg_try_advisory_xact_lock_shared($1) AS held",
                        &[&key],
                    )
                    .await?;
                match &row {
                    Some(row) => tx.get::<bool>("meta", row, "held"),
                    None => Ok(false),
                }
            })?;
        if held {
            return Err(StoreError::EarlierRelease {
                url: self.target.shown.clone(),
                schema: self.schema.name,
            });
        }
        Ok(())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let schema = self.schema;
        let supported = schema.version();
        let url = self.target.shown.clone();
        self.transaction("migrate the schema", false, async |tx| {
            tx.execute("meta", "SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.execute(
                "meta",
                "CREATE TABLE IF NOT EXISTS meta \
                 (store TEXT PRIMARY KEY, schema_version BIGINT NOT NULL)",
                &[],
            )
            .await?;
            let row = tx
                .query_opt(
                    "meta",
                    "SELECT schema_version FROM meta WHERE store = $1",
                    &[&schema.name],
                )
                .await?;
            let found = match row {
                Some(row) => u64::try_from(tx.get::<i64>("meta", &row, "schema_version")?)
                    .unwrap_or(u64::MAX),
                None => 0,
            };
            if found > supported {
                return Err(StoreError::NewerSchema {
                    path: PathBuf::from(&url),
                    schema: schema.name,
                    found,
                    supported,
                });
            }
            for (index, migration) in schema.migrations.iter().enumerate().skip(found as usize) {
                tx.txn.batch_execute(migration.sql).await.map_err(|e| StoreError::Migration {
                    path: PathBuf::from(&url),
                    version: index as u64 + 1,
                    description: migration.description,
                    source: Box::new(tx.error("meta", e)),
                })?;
                for rewrite in migration.rewrite {
                    rewrite.run(tx).await.map_err(|e| StoreError::Migration {
                        path: PathBuf::from(&url),
                        version: index as u64 + 1,
                        description: migration.description,
                        source: Box::new(e),
                    })?;
                }
            }
            if found != supported {
                let version = supported as i64;
                tx.execute(
                    "meta",
                    "INSERT INTO meta (store, schema_version) VALUES ($1, $2) \
                     ON CONFLICT (store) DO UPDATE SET schema_version = EXCLUDED.schema_version",
                    &[&schema.name, &version],
                )
                .await?;
            }
            Ok(())
        })
    }
}

/// A connection taken from the pool; back to it when dropped, unless it broke.
struct Lease<'a> {
    database: &'a Database,
    connection: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut connections =
            self.database.connections.lock().unwrap_or_else(PoisonError::into_inner);
        match self.connection.take() {
            Some(connection) if !connection.client.is_closed() => connections.idle.push(connection),
            _ => connections.open -= 1,
        }
        self.database.freed.notify_one();
    }
}

/// Runs `future` to completion on this thread, parking it while the future waits. The
/// futures it runs only wait on the connection tasks of the store's runtime, never on a
/// reactor of their own.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// `error` and its causes on one line: the client's own text is often only its kind ("invalid
/// configuration", "db error"), with what went wrong in the causes.
pub(crate) fn reason(error: &tokio_postgres::Error) -> String {
    let mut line = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

/// Whether `error` may pass once the server is reachable again or has resources again: a
/// broken or refused connection, or a server error of class 08 (connection), 53 (insufficient
/// resources: a full disk), 57P (shutting down, starting up). Other server errors (a constraint,
/// a syntax error) would fail the same way again.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => error.as_db_error().is_none(),
        // Connection failures, lack of resources, a server shutting down, and a statement or
        // lock wait the session timeouts cut short (57014, 55P03): all pass.
        Some(code) => {
            ["08", "53", "57P", "57014", "55P03"].iter().any(|class| code.code().starts_with(class))
        }
    }
}

/// `value` as a BIGINT column holds it.
pub(crate) fn bigint(table: &'static str, key: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { table, key: key.to_owned(), value })
}

/// A bound in a query: values beyond BIGINT compare as its largest.
pub(crate) fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A row limit (`usize::MAX` for none).
pub(crate) fn limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored BIGINT read back as the u64 it was written from.
pub(crate) fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_password_and_remote_hosts_refused() {
        let target = Target::new("postgresql://keylime:s3cret@127.0.0.1:5433/fleet", None);
        let shown = target.map(|t| t.shown().to_owned()).unwrap_or_default();
        assert_eq!(shown, "postgresql://keylime@127.0.0.1:5433/fleet");
        let remote = Target::new("postgresql://keylime:s3cret@db.example.com/fleet", None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(remote.contains("\"db.example.com\" is not a loopback address"), "{remote}");
        assert!(!remote.contains("s3cret"), "{remote}");
        let bad = Target::new("postgresql://keylime:s3cret@[::1/fleet", None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(bad.contains("not shown: it does not parse"), "{bad}");
        assert!(!bad.contains("s3cret"), "{bad}");
        let err =
            |url: &str| Target::new(url, None).err().map(|e| e.to_string()).unwrap_or_default();
        // hostaddr is where the connection goes, whatever the host names say.
        let around = err("postgresql://u:p@localhost/db?hostaddr=203.0.113.5");
        assert!(around.contains("hostaddr 203.0.113.5 is not a loopback address"), "{around}");
        let keyword = err("host=localhost hostaddr=203.0.113.5 user=u password=s3cret");
        assert!(keyword.contains("hostaddr 203.0.113.5"), "{keyword}");
        assert!(!keyword.contains("s3cret"), "{keyword}");
        let no_host = err("user=u password=s3cret dbname=fleet");
        assert!(no_host.contains("names no host"), "{no_host}");
        let unparsed = err("host=127.0.0.1 password=s3cret port=abc");
        assert!(!unparsed.contains("s3cret"), "{unparsed}");
        assert!(Target::new("postgresql://u@127.0.0.1/db?hostaddr=127.0.0.1", None).is_ok());
    }

    #[test]
    fn sessions_carry_timeouts_that_the_url_can_override() -> Result<(), StoreError> {
        let plain = Target::new("postgresql://keylime@localhost/fleet", None)?;
        assert_eq!(plain.config.get_options(), Some(SESSION_TIMEOUTS));
        assert_eq!(plain.config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(plain.config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        let own = Target::new(
            "postgresql://keylime@localhost/fleet?options=-c%20statement_timeout%3D5s",
            None,
        )?;
        // PostgreSQL applies the options in order, so the URL's come last.
        assert_eq!(
            own.config.get_options(),
            Some(format!("{SESSION_TIMEOUTS} -c statement_timeout=5s").as_str())
        );
        Ok(())
    }

    #[test]
    fn password_file_is_read_and_a_missing_one_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n")?;
        let target = Target::new("postgresql://keylime@localhost/fleet", Some(&file))?;
        assert_eq!(target.config.get_password(), Some(&b"hunter2"[..]));
        let missing = dir.path().join("absent");
        let err = Target::new("postgresql://keylime@localhost/fleet", Some(&missing))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with(&format!("{}: cannot read", missing.display())), "{err}");
        Ok(())
    }
}
