//! The replicas' PostgreSQL database: a private server started with kl-tests' harness, and what
//! the benchmark reads of it. Over the window: transactions committed and rows written (the
//! server's statistics of the database and of each table, which backends report up to about a
//! second late, so both ends of a window lag alike), WAL bytes, and the server's CPU time (the
//! postmaster and its children, from `/proc`). At the end: the database's size and each
//! table's rows and bytes. During a failover: which agents a replica holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kl_tests::postgres::Postgres;

use crate::BoxError;
use crate::verifier;

/// The database the replicas share.
const NAME: &str = "fleet";

/// The private server and the replicas' database on it.
#[derive(Clone)]
pub struct FleetDatabase {
    server: Arc<Postgres>,
}

/// Counters of the database at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Transactions committed (`xact_commit`), read-only ones included.
    pub commits: u64,
    /// Rows inserted, updated and deleted in the database (`tup_*` of `pg_stat_database`).
    pub rows: u64,
    /// WAL written by the server since it was created.
    pub wal_bytes: u64,
    /// Per table: rows inserted, updated (of which HOT), deleted.
    pub tables: BTreeMap<String, TableWrites>,
    /// The server's CPU time: postmaster, backends, workers.
    pub server_cpu: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TableWrites {
    pub inserted: u64,
    pub updated: u64,
    pub hot_updated: u64,
    pub deleted: u64,
}

/// One table at the end of a run.
#[derive(Debug, Clone)]
pub struct TableSize {
    pub name: String,
    pub rows: u64,
    /// Row versions updated or deleted and not yet vacuumed (`n_dead_tup`, an estimate).
    pub dead: u64,
    /// With its indexes and TOAST.
    pub bytes: u64,
}

fn number(text: &str, what: &str) -> Result<u64, BoxError> {
    text.trim().parse::<u64>().map_err(|e| format!("{what}: {text:?}: {e}").into())
}

/// `name` as an SQL string literal.
fn literal(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

impl FleetDatabase {
    /// Starts a server in a temporary directory and creates the database.
    pub fn start() -> Result<FleetDatabase, BoxError> {
        let server = Postgres::start()?
            .ok_or("--postgres and --replicas need PostgreSQL (initdb, pg_ctl) installed")?;
        server.create_database(NAME)?;
        Ok(FleetDatabase { server: Arc::new(server) })
    }

    /// The verifier configuration lines that put its state in this database.
    pub fn settings(&self) -> String {
        format!(
            "database_url = {:?}\ndatabase_password_file = {:?}\n",
            self.server.url(NAME),
            self.server.password_file().display().to_string()
        )
    }

    /// The server's process id (the postmaster).
    pub fn server_pid(&self) -> Result<u32, BoxError> {
        self.server.server_pid()
    }

    fn psql(&self, sql: &str) -> Result<String, BoxError> {
        self.server.psql(NAME, sql)
    }

    /// [`FleetDatabase::snapshot`] and the others run `psql`: off the runtime's workers, which
    /// serve the simulated agents.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FleetDatabase) -> Result<T, BoxError> + Send + 'static,
    ) -> Result<T, BoxError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || work(&db)).await?
    }

    pub fn snapshot(&self) -> Result<Snapshot, BoxError> {
        let line = self.psql(
            "SELECT xact_commit || ' ' || (tup_inserted + tup_updated + tup_deleted) || ' ' || \
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint \
             FROM pg_stat_database WHERE datname = current_database()",
        )?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [commits, rows, wal] = fields[..] else {
            return Err(format!("pg_stat_database: {line:?}").into());
        };
        let mut tables = BTreeMap::new();
        let text = self.psql(
            "SELECT relname || ' ' || n_tup_ins || ' ' || n_tup_upd || ' ' || n_tup_hot_upd \
             || ' ' || n_tup_del FROM pg_stat_user_tables ORDER BY relname",
        )?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, inserted, updated, hot, deleted] = fields[..] else {
                return Err(format!("pg_stat_user_tables: {line:?}").into());
            };
            tables.insert(
                name.to_owned(),
                TableWrites {
                    inserted: number(inserted, name)?,
                    updated: number(updated, name)?,
                    hot_updated: number(hot, name)?,
                    deleted: number(deleted, name)?,
                },
            );
        }
        Ok(Snapshot {
            commits: number(commits, "xact_commit")?,
            rows: number(rows, "tup_*")?,
            wal_bytes: number(wal, "WAL position")?,
            tables,
            server_cpu: verifier::tree_cpu(self.server.server_pid()?)?,
        })
    }

    /// The database's size on disk (`pg_database_size`).
    pub fn size(&self) -> Result<u64, BoxError> {
        number(&self.psql("SELECT pg_database_size(current_database())")?, "pg_database_size")
    }

    /// Every table of the database: its rows (counted) and its bytes with indexes and TOAST.
    pub fn tables(&self) -> Result<Vec<TableSize>, BoxError> {
        let text = self.psql(
            "SELECT relname || ' ' || pg_total_relation_size(relid) || ' ' || n_dead_tup \
             FROM pg_stat_user_tables ORDER BY relname",
        )?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, bytes, dead] = fields[..] else {
                return Err(format!("table sizes: {line:?}").into());
            };
            // Table names come from the catalog; quoted as identifiers all the same.
            let rows = self.psql(&format!("SELECT count(*) FROM \"{}\"", name.replace('"', "")))?;
            out.push(TableSize {
                name: name.to_owned(),
                rows: number(&rows, name)?,
                dead: number(dead, name)?,
                bytes: number(bytes, name)?,
            });
        }
        Ok(out)
    }

    /// Live agent leases per holder.
    pub fn lease_holders(&self) -> Result<BTreeMap<String, u64>, BoxError> {
        let text = self.psql(
            "SELECT holder || ' ' || count(*) FROM verifier_leases WHERE expires_at > now() \
             GROUP BY holder ORDER BY holder",
        )?;
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (holder, count) =
                line.rsplit_once(' ').ok_or_else(|| format!("lease holders: {line:?}"))?;
            out.insert(holder.to_owned(), number(count, holder)?);
        }
        Ok(out)
    }

    /// The agents whose live lease replica `holder` holds (leases are held as `id/token`).
    pub fn held_by(&self, holder: &str) -> Result<Vec<String>, BoxError> {
        let text = self.psql(&format!(
            "SELECT agent_id FROM verifier_leases WHERE split_part(holder, '/', 1) = {} \
             AND expires_at > now() \
             ORDER BY agent_id",
            literal(holder)
        ))?;
        Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
    }

    /// Leases still in replica `holder`'s name (any of its processes), expired or not (a lease changes hands when another
    /// replica claims it).
    pub fn leases_of(&self, holder: &str) -> Result<u64, BoxError> {
        let sql = format!(
            "SELECT count(*) FROM verifier_leases WHERE split_part(holder, '/', 1) = {}",
            literal(holder)
        );
        number(&self.psql(&sql)?, "leases")
    }
}

/// What the window cost the database, and what the database held at its end.
pub struct Window<'a> {
    pub before: &'a Snapshot,
    pub after: &'a Snapshot,
    pub seconds: f64,
    /// Quotes served in the window.
    pub attestations: u64,
    /// The verifiers' CPU time in the window, seconds.
    pub verifier_cpu: f64,
    pub agents: usize,
    /// The database's size with the policy stored, before the agents were enrolled.
    pub size_without_agents: u64,
    pub size: u64,
    pub tables: &'a [TableSize],
    pub holders: &'a BTreeMap<String, u64>,
}

/// Prints the database's table of the window and its per-table rows.
pub fn print_window(w: &Window<'_>) {
    let attestations = w.attestations.max(1) as f64;
    let per = |count: u64| count as f64 / attestations;
    let server_cpu = w.after.server_cpu.saturating_sub(w.before.server_cpu).as_secs_f64();
    let commits = w.after.commits.saturating_sub(w.before.commits);
    let rows = w.after.rows.saturating_sub(w.before.rows);
    let wal = w.after.wal_bytes.saturating_sub(w.before.wal_bytes);
    let holders: Vec<String> = w.holders.iter().map(|(id, n)| format!("{id} {n}")).collect();
    println!("PostgreSQL (over the window, per attestation served):");
    println!();
    println!("| | |");
    println!("|---|---:|");
    println!("| live agent leases at the end | {} |", holders.join(", "));
    println!("| server CPU per attestation | {:.1} µs |", server_cpu * 1e6 / attestations);
    println!("| server CPU use | {:.1} % of a core |", server_cpu * 100.0 / w.seconds);
    println!(
        "| verifiers + server CPU per attestation | {:.1} µs |",
        (w.verifier_cpu + server_cpu) * 1e6 / attestations
    );
    println!(
        "| transactions committed (xact_commit, reads included) | {:.3} per attestation, {:.0}/s |",
        per(commits),
        commits as f64 / w.seconds
    );
    println!(
        "| rows written (inserted + updated + deleted) | {:.3} per attestation, {:.0}/s |",
        per(rows),
        rows as f64 / w.seconds
    );
    println!(
        "| WAL written | {:.0} bytes per attestation, {:.0} KiB/s |",
        per(wal),
        wal as f64 / w.seconds / 1024.0
    );
    println!(
        "| database size with the policy, no agents / after the window | {:.1} / {:.1} MiB |",
        w.size_without_agents as f64 / (1024.0 * 1024.0),
        w.size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "| database bytes per agent (after the window - no agents) / N | {:.1} KiB |",
        w.size.saturating_sub(w.size_without_agents) as f64 / w.agents as f64 / 1024.0
    );
    println!();
    println!(
        "Per table: rows written per attestation over the window; rows, dead rows (not yet \
         vacuumed) and size at the end:"
    );
    println!();
    println!(
        "| table | inserted | updated (of which HOT) | deleted | rows | dead rows | size | bytes \
         per row |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let empty = TableWrites::default();
    for table in w.tables {
        let a = w.before.tables.get(&table.name).unwrap_or(&empty);
        let b = w.after.tables.get(&table.name).unwrap_or(&empty);
        println!(
            "| {} | {:.3} | {:.3} ({:.3}) | {:.3} | {} | {} | {:.1} KiB | {:.0} |",
            table.name,
            per(b.inserted.saturating_sub(a.inserted)),
            per(b.updated.saturating_sub(a.updated)),
            per(b.hot_updated.saturating_sub(a.hot_updated)),
            per(b.deleted.saturating_sub(a.deleted)),
            table.rows,
            table.dead,
            table.bytes as f64 / 1024.0,
            table.bytes as f64 / table.rows.max(1) as f64
        );
    }
    println!();
}
