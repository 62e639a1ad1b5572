//! What a full check of a verifier store costs: populates a store of N agents with H history
//! records each (sizes as a real verifier writes them), then times a plain open with the
//! start-up reads of the verifier (every agent and its newest record) against
//! `VerifierStore::check` (every page's checksum, every record decoded).
//!
//! `cargo bench -p kl-store --bench check -- 10000 100 /var/tmp/kl-check`
//!
//! With a fourth argument `version-3`, the store is written as schema version 3 laid it out
//! (one history record per key) and the first open, which migrates it, is timed as well.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kl_store::verifier::{
    AgentEntry, Batch, HistoryRecord, SCHEMA, Timestamp, VerdictRecord, VerifierStore,
};
use kl_store::{Records, Schema, StoreError, open_database};

type BoxError = Box<dyn std::error::Error>;

fn entry(id: &str, rounds: u64) -> AgentEntry {
    AgentEntry {
        agent_id: id.to_owned(),
        contact_ip: "10.0.0.1".to_owned(),
        contact_port: 9002,
        ak_public: vec![7; 280],
        agent_certificate: vec![9; 520],
        runtime_policy: "fleet".to_owned(),
        measured_boot_policy: String::new(),
        pcr_policy_json: String::new(),
        v_key_half: vec![1; 32],
        key_delivered: true,
        accept_hash_algorithms: vec!["sha256".to_owned()],
        accept_signing_algorithms: vec!["ecdsa".to_owned()],
        hash_algorithm: "sha256".to_owned(),
        state: 2,
        attestation_count: rounds,
        enrolled_at: Timestamp::now(),
        last_attestation_at: Some(Timestamp::now()),
        last_success_at: Some(Timestamp::now()),
        last_verdict: Some(verdict()),
        attestation_state_json: format!(
            "{{\"ima\":{{\"entries_processed\":{rounds},\"pcr\":\"{}\"}},\"boot\":null}}",
            "ab".repeat(32)
        ),
        ima_offset: rounds * 2,
        reset_count: 1,
        consecutive_errors: 0,
        history_sequence: rounds,
        payload_digest: String::new(),
        revision: 0,
    }
}

fn verdict() -> VerdictRecord {
    VerdictRecord {
        at: Timestamp { seconds: 1_764_000_000, nanos: 123_456_789 },
        checked: vec!["pcrs".to_owned(), "ima".to_owned(), "measured_boot".to_owned()],
        findings: Vec::new(),
    }
}

fn record(sequence: u64) -> HistoryRecord {
    HistoryRecord {
        sequence,
        at: Timestamp::now(),
        verdict: Some(verdict()),
        reset_count: 1,
        restart_count: 0,
        clock: sequence * 2000,
        ima_entries: 2,
        duration_us: 4200,
    }
}

/// Round by round, as the fleet writes them: one transaction holds one round of every agent.
fn populate(path: &Path, ids: &[String], history: u64) -> Result<(), BoxError> {
    let store = VerifierStore::open(path)?;
    store.commit(
        Batch { agents: ids.iter().map(|id| entry(id, history)).collect(), ..Batch::default() },
        0,
    )?;
    for sequence in 1..=history {
        let mut batch = Batch::default();
        for id in ids {
            batch.history.push((id.clone(), record(sequence)));
        }
        store.commit(batch, 0)?;
    }
    Ok(())
}

/// The layout of schema version 3: the history table holds one record per key,
/// `<agent id>\0<sequence, 20 digits>`.
static VERSION_3: Schema = Schema { name: "verifier", migrations: SCHEMA.migrations.split_at(3).0 };

fn populate_version_3(path: &Path, ids: &[String], history: u64) -> Result<(), BoxError> {
    let db = open_database(path, &VERSION_3)?;
    let agents: Records<AgentEntry> = Records::new("agents");
    let table = redb::TableDefinition::<&str, &[u8]>::new("history");
    let failed = |e: redb::Error| StoreError::Table { table: "history", source: Box::new(e) };
    db.write("populate", |txn| {
        let entries: Vec<AgentEntry> = ids.iter().map(|id| entry(id, history)).collect();
        agents.insert_all(txn, entries.iter().map(|e| (e.agent_id.as_str(), e)))?;
        let mut table = txn.open_table(table).map_err(|e| failed(e.into()))?;
        for id in ids {
            for sequence in 1..=history {
                let key = format!("{id}\0{sequence:020}");
                let bytes = postcard::to_allocvec(&record(sequence)).map_err(|source| {
                    StoreError::Encode { table: "history", key: key.clone(), source }
                })?;
                table.insert(key.as_str(), bytes.as_slice()).map_err(|e| failed(e.into()))?;
            }
        }
        Ok(())
    })?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let agents: u64 = args.first().map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let history: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(100);
    let dir = PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "/var/tmp/kl-check".to_owned()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("verifier.redb");
    let _ = std::fs::remove_file(&path);

    let ids: Vec<String> = (0..agents)
        .map(|n| format!("{:08x}-0000-4000-8000-{n:012x}", n * 2654435761 % (1 << 32)))
        .collect();
    let version_3 = args.get(3).map(String::as_str) == Some("version-3");
    let started = Instant::now();
    if version_3 {
        populate_version_3(&path, &ids, history)?;
    } else {
        populate(&path, &ids, history)?;
    }
    let bytes = std::fs::metadata(&path)?.len();
    eprintln!(
        "populated {agents} agents x {history} records in {:.1} s: {:.0} MB",
        started.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );
    if version_3 {
        let _ = std::process::Command::new("sh")
            .args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
            .status();
        let started = Instant::now();
        drop(VerifierStore::open(&path)?);
        println!(
            "migration to schema version {} ({} records): {:.3} s, then {:.0} MB",
            SCHEMA.version(),
            agents * history,
            started.elapsed().as_secs_f64(),
            std::fs::metadata(&path)?.len() as f64 / 1e6
        );
    }

    // Twice each: the first from a cold page cache, the second warm.
    for _ in 0..2 {
        let _ = std::process::Command::new("sh")
            .args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
            .status();
        let started = Instant::now();
        let store = VerifierStore::open(&path)?;
        let mut loaded = 0;
        let mut after: Option<String> = None;
        loop {
            let page = store.list_agents(after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.agent_id.clone());
            for agent in &page {
                loaded += store.history(&agent.agent_id, None, 1)?.len();
            }
        }
        drop(store);
        let open = started.elapsed();
        let _ = std::process::Command::new("sh")
            .args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
            .status();
        let started = Instant::now();
        let check = VerifierStore::check(&path)?;
        let full = started.elapsed();
        println!(
            "open + start-up reads ({loaded} newest records): {:.3} s; full check ({} records, repaired: {}): {:.3} s",
            open.as_secs_f64(),
            check.records(),
            check.repaired,
            full.as_secs_f64()
        );
    }
    Ok(())
}
