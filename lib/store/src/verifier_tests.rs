use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn agent(id: &str, runtime_policy: &str) -> AgentEntry {
    AgentEntry {
        agent_id: id.to_owned(),
        contact_ip: "127.0.0.1".to_owned(),
        contact_port: 9002,
        ak_public: vec![1, 2, 3],
        agent_certificate: vec![4, 5],
        runtime_policy: runtime_policy.to_owned(),
        measured_boot_policy: String::new(),
        pcr_policy_json: String::new(),
        v_key_half: Vec::new(),
        key_delivered: false,
        accept_hash_algorithms: Vec::new(),
        accept_signing_algorithms: Vec::new(),
        hash_algorithm: "sha256".to_owned(),
        state: 1,
        attestation_count: 0,
        enrolled_at: Timestamp::now(),
        last_attestation_at: None,
        last_success_at: None,
        last_verdict: None,
        attestation_state_json: String::new(),
        ima_offset: 0,
        reset_count: 0,
        consecutive_errors: 0,
        history_sequence: 0,
        payload_digest: String::new(),
        revision: 0,
    }
}

fn event(agent_id: &str, at: Timestamp) -> EventRecord {
    EventRecord {
        cursor: 0,
        at,
        kind: 3,
        agent_id: agent_id.to_owned(),
        state: 2,
        previous_state: 1,
        findings: Vec::new(),
        message: "passed".to_owned(),
    }
}

fn record(sequence: u64, at: Timestamp) -> HistoryRecord {
    HistoryRecord {
        sequence,
        at,
        verdict: Some(VerdictRecord {
            at,
            checked: vec!["quote".to_owned()],
            findings: Vec::new(),
        }),
        reset_count: 1,
        restart_count: 0,
        clock: sequence * 10,
        ima_entries: 0,
        duration_us: 5,
    }
}

#[test]
fn events_get_increasing_cursors_that_survive_reopen_and_pruning() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let store = VerifierStore::open(&path)?;
    let old = Timestamp { seconds: 10, nanos: 0 };
    let batch = Batch {
        agents: vec![agent("a", "")],
        events: vec![event("a", old), event("a", Timestamp::now())],
        ..Batch::default()
    };
    let events = store.commit(batch, 0)?;
    assert_eq!(events.iter().map(|e| e.cursor).collect::<Vec<_>>(), [1, 2]);
    store.commit(Batch { events: vec![event("a", Timestamp::now())], ..Batch::default() }, 0)?;
    drop(store);
    let store = VerifierStore::open(&path)?;
    assert_eq!(store.get_agent("a")?.map(|a| a.agent_id), Some("a".to_owned()));
    assert_eq!(store.events_after(1, 10)?.iter().map(|e| e.cursor).collect::<Vec<_>>(), [2, 3]);
    // The event older than the age limit goes.
    assert_eq!(store.prune(Duration::from_secs(3600), 100)?.events, 1);
    assert_eq!(store.oldest_event()?, Some(2));
    // Keep at most one event: the oldest goes, and cursors are not reused.
    assert_eq!(store.prune(Duration::from_secs(3600), 1)?.events, 1);
    assert_eq!(store.oldest_event()?, Some(3));
    let next = store
        .commit(Batch { events: vec![event("a", Timestamp::now())], ..Batch::default() }, 0)?;
    assert_eq!(next[0].cursor, 4);
    assert_eq!(store.last_event()?, 4);
    Ok(())
}

#[test]
fn history_is_bounded_per_agent_newest_first_and_removed_with_the_agent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = VerifierStore::open(&dir.path().join("verifier.redb"))?;
    for seq in 1..=5 {
        let batch = Batch {
            history: vec![
                ("a".to_owned(), record(seq, Timestamp::now())),
                ("b".to_owned(), record(seq, Timestamp::now())),
            ],
            ..Batch::default()
        };
        store.commit(batch, 3)?;
    }
    assert_eq!(seqs(store.history("a", None, 10)?), [5, 4, 3]);
    assert_eq!(seqs(store.history("a", Some(5), 1)?), [4]);
    store.commit(Batch { removed: vec!["a".to_owned()], ..Batch::default() }, 3)?;
    assert!(store.history("a", None, 10)?.is_empty());
    assert_eq!(seqs(store.history("b", None, 10)?), [5, 4, 3]);
    let old = Timestamp { seconds: 10, nanos: 0 };
    store
        .commit(Batch { history: vec![("b".to_owned(), record(6, old))], ..Batch::default() }, 0)?;
    assert_eq!(store.prune(Duration::from_secs(60), 100)?.history, 1);
    assert_eq!(seqs(store.history("b", None, 10)?), [5, 4, 3]);
    Ok(())
}

#[test]
fn create_only_and_replace_only_puts_leave_the_other_case_untouched() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = VerifierStore::open(&dir.path().join("verifier.redb"))?;
    let kind = PolicyKind::MeasuredBoot;
    let absent = PutPrecondition::Absent;
    let present = PutPrecondition::Present;
    assert_eq!(store.put_policy(kind, "fw", present, "d1", b"one", 1)?, PolicyPut::Missing);
    assert!(store.get_policy(kind, "fw")?.is_none(), "replace-only created the name");
    assert!(matches!(
        store.put_policy(kind, "fw", absent, "d1", b"one", 1)?,
        PolicyPut::Stored { changed: true, .. }
    ));
    // Taken is taken, even with the same content: Keylime answers 409 there too.
    for digest in ["d1", "d2"] {
        match store.put_policy(kind, "fw", absent, digest, b"two", 2)? {
            PolicyPut::Exists(old) => assert_eq!(old.digest, "d1"),
            other => panic!("create-only over {digest}: {other:?}"),
        }
    }
    assert_eq!(store.get_policy(kind, "fw")?.map(|(_, d)| d), Some(b"one".to_vec()));
    assert!(matches!(
        store.put_policy(kind, "fw", present, "d2", b"two", 2)?,
        PolicyPut::Stored { changed: true, .. }
    ));
    assert_eq!(store.get_policy(kind, "fw")?.map(|(_, d)| d), Some(b"two".to_vec()));
    Ok(())
}

#[test]
fn policies_are_shared_by_digest_idempotent_and_protected_while_used() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = VerifierStore::open(&dir.path().join("verifier.redb"))?;
    let kind = PolicyKind::Runtime;
    let changed = |put: PolicyPut| match put {
        PolicyPut::Stored { changed, .. } => changed,
        other => panic!("not stored: {other:?}"),
    };
    let any = PutPrecondition::Any;
    assert!(changed(store.put_policy(kind, "p1", any, "d1", b"doc one", 1)?));
    assert!(!changed(store.put_policy(kind, "p1", any, "d1", b"doc one", 1)?));
    assert!(changed(store.put_policy(kind, "p2", any, "d1", b"doc one", 1)?));
    assert!(changed(store.put_policy(kind, "p1", any, "d2", b"doc two", 2)?));
    assert_eq!(store.get_policy(kind, "p2")?.map(|(_, d)| d), Some(b"doc one".to_vec()));
    assert_eq!(store.get_policy(kind, "p1")?.map(|(p, _)| p.digest), Some("d2".to_owned()));
    assert!(store.get_policy(PolicyKind::MeasuredBoot, "p1")?.is_none());
    assert_eq!(store.policy_name(kind, "p1")?.map(|p| p.digest), Some("d2".to_owned()));
    assert!(store.policy_name(PolicyKind::MeasuredBoot, "p1")?.is_none());
    store.commit(Batch { agents: vec![agent("x", "p2")], ..Batch::default() }, 0)?;
    assert_eq!(store.delete_policy(kind, "p2")?, PolicyDeletion::InUse("x".to_owned()));
    assert_eq!(store.delete_policy(kind, "p1")?, PolicyDeletion::Deleted);
    assert_eq!(store.delete_policy(kind, "p1")?, PolicyDeletion::Absent);
    let names: Vec<String> = store.list_policies(kind)?.into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["p2"]);
    Ok(())
}

#[test]
fn merged_batches_keep_the_order_of_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = VerifierStore::open(&dir.path().join("verifier.redb"))?;
    let with_count =
        |id: &str, count: u64| AgentEntry { attestation_count: count, ..agent(id, "") };
    // Rounds of a and b, a unenrolled, a enrolled again and attested, b attested again.
    let mut merged = Batch {
        agents: vec![with_count("b", 1), with_count("a", 1)],
        history: vec![("a".to_owned(), record(1, Timestamp::now()))],
        ..Batch::default()
    };
    merged.extend(Batch { removed: vec!["a".to_owned()], ..Batch::default() });
    merged.extend(Batch {
        agents: vec![with_count("a", 7), with_count("b", 2)],
        history: vec![("a".to_owned(), record(2, Timestamp::now()))],
        ..Batch::default()
    });
    store.commit(merged, 10)?;
    let count = |id: &str| store.get_agent(id).map(|a| a.map(|a| a.attestation_count));
    assert_eq!((count("a")?, count("b")?), (Some(7), Some(2)));
    assert_eq!(
        seqs(store.history("a", None, 10)?),
        [2],
        "the history of the removed enrolment is gone"
    );
    Ok(())
}

fn seqs(records: Vec<HistoryRecord>) -> Vec<u64> {
    records.iter().map(|r| r.sequence).collect()
}

fn rounds(agent_id: &str, sequences: std::ops::RangeInclusive<u64>, at: Timestamp) -> Batch {
    Batch {
        history: sequences.map(|s| (agent_id.to_owned(), record(s, at))).collect(),
        ..Batch::default()
    }
}

/// History records held in the file, by a full check (the store closed).
fn stored_history(path: &Path) -> Result<u64, StoreError> {
    let check = VerifierStore::check(path)?;
    Ok(check.tables.iter().find(|(t, _)| *t == "history").map_or(0, |(_, n)| *n))
}

#[test]
fn a_lowered_history_limit_is_shown_at_once_and_stored_blocks_follow() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let store = VerifierStore::open(&path)?;
    store.commit(rounds("a", 1..=250, Timestamp::now()), 100)?;
    assert_eq!(seqs(store.history("a", None, 1000)?), (151..=250).rev().collect::<Vec<_>>());
    store.commit(rounds("a", 251..=255, Timestamp::now()), 10)?;
    assert_eq!(seqs(store.history("a", None, 1000)?), (246..=255).rev().collect::<Vec<_>>());
    assert_eq!(seqs(store.history("a", Some(250), 3)?), [249, 248, 247]);
    assert_eq!(seqs(store.history("a", Some(247), 3)?), [246]);
    assert!(store.history("a", Some(246), 3)?.is_empty());
    // The next full block leaves only itself stored: every older block is past the limit.
    store.commit(rounds("a", 256..=256, Timestamp::now()), 10)?;
    assert_eq!(seqs(store.history("a", None, 1000)?), (247..=256).rev().collect::<Vec<_>>());
    drop(store);
    assert_eq!(stored_history(&path)?, history::BLOCK as u64);
    Ok(())
}

#[test]
fn a_raised_limit_brings_no_record_back_and_a_zero_limit_reads_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = VerifierStore::open(&dir.path().join("verifier.redb"))?;
    store.commit(rounds("a", 1..=5, Timestamp::now()), 3)?;
    assert_eq!(seqs(store.history("a", None, 10)?), [5, 4, 3]);
    store.commit(rounds("a", 6..=6, Timestamp::now()), 1000)?;
    assert_eq!(seqs(store.history("a", None, 10)?), [6, 5, 4, 3]);
    store.commit(rounds("a", 7..=7, Timestamp::now()), 0)?;
    assert_eq!(seqs(store.history("a", None, 10)?), [7, 6, 5, 4, 3]);
    assert!(store.history("a", None, 0)?.is_empty());
    Ok(())
}

#[test]
fn rounds_written_again_replace_theirs_in_full_blocks_too() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let store = VerifierStore::open(&path)?;
    let again = |sequence: u64| {
        let mut record = record(sequence, Timestamp::now());
        record.duration_us = 1000 + sequence;
        ("a".to_owned(), record)
    };
    // 16 fills the first block and leaves the open block empty; a commit applied again
    // (its transaction reached the disk though the call failed) brings it once more.
    store.commit(rounds("a", 1..=16, Timestamp::now()), 0)?;
    store.commit(Batch { history: vec![again(16)], ..Batch::default() }, 0)?;
    store.commit(rounds("a", 17..=20, Timestamp::now()), 0)?;
    // A record of a full block, one of the open block, and the same one twice in a batch.
    let history = vec![again(3), again(18), again(3)];
    store.commit(Batch { history, ..Batch::default() }, 0)?;
    let all = store.history("a", None, 100)?;
    assert_eq!(seqs(all.clone()), (1..=20).rev().collect::<Vec<_>>());
    let rewritten: Vec<u64> =
        all.iter().filter(|r| r.duration_us > 1000).map(|r| r.sequence).collect();
    assert_eq!(rewritten, [18, 16, 3]);
    assert_eq!(seqs(store.history("a", Some(17), 2)?), [16, 15]);
    drop(store);
    assert_eq!(stored_history(&path)?, 20);
    Ok(())
}

#[test]
fn an_open_block_that_cannot_be_decoded_stops_no_write_and_is_pruned() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let garble = || -> TestResult {
        let db = open_database(&path, &SCHEMA)?;
        db.write("garble", |txn| {
            let mut open =
                txn.open_table(history::OPEN).map_err(|e| StoreError::table("history_open", e))?;
            open.insert("a", [0xff_u8; 3].as_slice())
                .map_err(|e| StoreError::table("history_open", e))?;
            Ok(())
        })?;
        Ok(())
    };
    let store = VerifierStore::open(&path)?;
    store.commit(rounds("a", 1..=3, Timestamp::now()), 0)?;
    store.commit(rounds("b", 1..=3, Timestamp::now()), 0)?;
    drop(store);
    garble()?;
    let store = VerifierStore::open(&path)?;
    assert!(store.history("a", None, 10).is_err(), "the garbled block is not read as empty");
    // Both agents' rounds are written; a's unreadable records are replaced.
    let mut batch = rounds("a", 4..=4, Timestamp::now());
    batch.history.extend(rounds("b", 4..=4, Timestamp::now()).history);
    store.commit(batch, 0)?;
    assert_eq!(seqs(store.history("a", None, 10)?), [4]);
    assert_eq!(seqs(store.history("b", None, 10)?), [4, 3, 2, 1]);
    drop(store);
    garble()?;
    let store = VerifierStore::open(&path)?;
    assert_eq!(store.prune(Duration::from_secs(60), 100)?.history, 1);
    assert!(store.history("a", None, 10)?.is_empty());
    assert_eq!(seqs(store.history("b", None, 10)?), [4, 3, 2, 1]);
    Ok(())
}

#[test]
fn history_pages_across_blocks_and_is_kept_whole_without_a_limit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let store = VerifierStore::open(&path)?;
    // Round by round, as the verifier commits them, with a neighbour in between.
    for sequence in 1..=100 {
        let mut batch = rounds("a", sequence..=sequence, Timestamp::now());
        batch.history.push(("a2".to_owned(), record(sequence, Timestamp::now())));
        store.commit(batch, 0)?;
    }
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = store.history("a", before, 7)?;
        let Some(last) = page.last() else { break };
        before = Some(last.sequence);
        paged.extend(seqs(page));
    }
    assert_eq!(paged, (1..=100).rev().collect::<Vec<_>>());
    assert_eq!(store.last_history_sequence("a")?, Some(100));
    // A round written again (a retried commit) replaces the one stored.
    let mut again = record(100, Timestamp::now());
    again.duration_us = 99;
    store.commit(Batch { history: vec![("a".to_owned(), again)], ..Batch::default() }, 0)?;
    let newest = store.history("a", None, 2)?;
    assert_eq!((seqs(newest.clone()), newest[0].duration_us), (vec![100, 99], 99));
    drop(store);
    assert_eq!(stored_history(&path)?, 200);
    Ok(())
}

#[test]
fn pruning_by_age_takes_old_records_out_of_blocks_and_keeps_the_rest_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let store = VerifierStore::open(&path)?;
    let old = Timestamp { seconds: 10, nanos: 0 };
    // 1-20 old, 21-36 new, 37-40 old again (a clock set back), 41-45 new: full blocks
    // 1-16 (all old) and 17-32 (partly old), 33-45 open (partly old).
    store.commit(rounds("a", 1..=20, old), 0)?;
    store.commit(rounds("a", 21..=36, Timestamp::now()), 0)?;
    store.commit(rounds("a", 37..=40, old), 0)?;
    store.commit(rounds("a", 41..=45, Timestamp::now()), 0)?;
    assert_eq!(store.prune(Duration::from_secs(60), 100)?.history, 24);
    let kept: Vec<u64> = (21..=36).chain(41..=45).rev().collect();
    assert_eq!(seqs(store.history("a", None, 100)?), kept);
    assert_eq!(seqs(store.history("a", Some(41), 2)?), [36, 35]);
    assert_eq!(store.prune(Duration::from_secs(60), 100)?.history, 0);
    drop(store);
    assert_eq!(stored_history(&path)?, 21);
    Ok(())
}

#[test]
fn the_newest_history_sequence_is_found_per_agent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = VerifierStore::open(&dir.path().join("verifier.redb"))?;
    assert_eq!(store.last_history_sequence("a")?, None);
    let batch = Batch {
        history: vec![
            ("a".to_owned(), record(9, Timestamp::now())),
            ("a".to_owned(), record(10, Timestamp::now())),
            ("ab".to_owned(), record(50, Timestamp::now())),
        ],
        ..Batch::default()
    };
    store.commit(batch, 0)?;
    assert_eq!(store.last_history_sequence("a")?, Some(10), "not the neighbouring agent's");
    assert_eq!(store.last_history_sequence("ab")?, Some(50));
    Ok(())
}

/// A tmpfs of `size` mounted on a new temporary directory, unmounted when dropped (also when
/// the test fails). Mounting needs root, as the tests that use it say.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            return Err(
                format!("mount -t tmpfs on {} failed (root needed)", dir.path().display()).into()
            );
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `path` with `path` until a write fails with ENOSPC.
fn fill(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0xa5u8; 64 << 10];
    loop {
        if let Err(e) = file.write_all(&block) {
            if e.raw_os_error() == Some(28) {
                return Ok(());
            }
            return Err(e.into());
        }
    }
}

#[test]
fn full_disk_fails_commits_and_reopen_recovers_once_space_returns() -> TestResult {
    let fs = Tmpfs::mount("4m")?;
    let path = fs.dir.path().join("verifier.redb");
    let store = VerifierStore::open(&path)?;
    store.commit(Batch { agents: vec![agent("kept", "")], ..Batch::default() }, 0)?;
    let filler = fs.dir.path().join("filler");
    fill(&filler)?;
    let mut failure = None;
    for n in 0..2000 {
        let batch = Batch {
            agents: vec![agent(&format!("agent-{n:04}-{}", "x".repeat(200)), "")],
            ..Batch::default()
        };
        if let Err(e) = store.commit(batch, 0) {
            failure = Some(e);
            break;
        }
    }
    let failure = failure.ok_or("a full disk never failed a commit")?;
    assert!(failure.is_io(), "{failure}");
    assert!(failure.to_string().contains("No space left on device"), "{failure}");
    assert!(failure.to_string().contains(&path.display().to_string()), "{failure}");
    // Reopening while the disk is still full works, and the next write fails the same way.
    store.reopen()?;
    assert!(store.get_agent("kept")?.is_some());
    let big = Batch { agents: vec![agent(&"y".repeat(60_000), "")], ..Batch::default() };
    let again = store.commit(big, 0).err().ok_or("a commit succeeded on a full disk")?;
    assert!(again.is_io(), "{again}");
    std::fs::remove_file(&filler)?;
    store.reopen()?;
    assert!(store.get_agent("kept")?.is_some());
    store.commit(Batch { agents: vec![agent("after", "")], ..Batch::default() }, 0)?;
    drop(store);
    let store = VerifierStore::open(&path)?;
    assert!(store.get_agent("kept")?.is_some());
    assert!(store.get_agent("after")?.is_some());
    Ok(())
}

/// `entry` in schema version 1's layout, with `last_verdict_json` as its verdict text.
fn agent_v1(entry: &AgentEntry, last_verdict_json: &str) -> legacy::AgentEntryV1 {
    legacy::AgentEntryV1 {
        agent_id: entry.agent_id.clone(),
        contact_ip: entry.contact_ip.clone(),
        contact_port: entry.contact_port,
        ak_public: entry.ak_public.clone(),
        agent_certificate: entry.agent_certificate.clone(),
        runtime_policy: entry.runtime_policy.clone(),
        measured_boot_policy: entry.measured_boot_policy.clone(),
        pcr_policy_json: entry.pcr_policy_json.clone(),
        v_key_half: entry.v_key_half.clone(),
        key_delivered: entry.key_delivered,
        accept_hash_algorithms: entry.accept_hash_algorithms.clone(),
        accept_signing_algorithms: entry.accept_signing_algorithms.clone(),
        hash_algorithm: entry.hash_algorithm.clone(),
        state: entry.state,
        attestation_count: entry.attestation_count,
        enrolled_at: entry.enrolled_at,
        last_attestation_at: entry.last_attestation_at,
        last_success_at: entry.last_success_at,
        last_verdict_json: last_verdict_json.to_owned(),
        attestation_state_json: entry.attestation_state_json.clone(),
        ima_offset: entry.ima_offset,
        reset_count: entry.reset_count,
        consecutive_errors: entry.consecutive_errors,
        history_sequence: entry.history_sequence,
    }
}

/// The layout before the payload digest: only the first migration.
static SCHEMA_V1: Schema = Schema {
    name: "verifier",
    migrations: &[Migration {
        description: "create the agents, policy, history, event and cursor tables",
        apply: create_tables,
    }],
};

#[test]
fn agents_of_a_version_1_file_get_an_empty_payload_digest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let entry = agent("old", "base");
    let mut old = agent_v1(
        &entry,
        r#"{"verdict":{"findings":[],"checked":["quote"]},"at":{"seconds":9,"nanos":0}}"#,
    );
    old.v_key_half = vec![7; 32];
    old.key_delivered = true;
    old.attestation_count = 12;
    let db = open_database(&path, &SCHEMA_V1)?;
    db.write("add", |txn| AGENTS_V1.insert(txn, "old", &old))?;
    drop(db);

    let store = VerifierStore::open(&path)?;
    let migrated = store.get_agent("old")?.ok_or("the agent is gone")?;
    assert_eq!(migrated.payload_digest, "");
    assert_eq!(migrated.v_key_half, vec![7; 32]);
    assert!(migrated.key_delivered);
    assert_eq!(migrated.attestation_count, 12);
    assert_eq!(migrated.runtime_policy, "base");
    let verdict = migrated.last_verdict.ok_or("the verdict is gone")?;
    assert_eq!((verdict.at.seconds, verdict.checked), (9, vec!["quote".to_owned()]));
    Ok(())
}

/// The layout with verdicts as JSON text: the first two migrations.
static SCHEMA_V2: Schema = Schema { name: "verifier", migrations: SCHEMA.migrations.split_at(2).0 };

#[test]
fn verdicts_and_findings_of_a_version_2_file_become_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let failed = r#"{"verdict":{"findings":[{"rule":"ima.not_in_policy","message":"not allowed","line":4,"path":"/bin/x","actual":"sha256:ab"}],"checked":["quote","ima"]},"at":{"seconds":7,"nanos":3}}"#;
    let passed = |seconds: u64| {
        format!(
            r#"{{"verdict":{{"findings":[],"checked":["quote"]}},"at":{{"seconds":{seconds},"nanos":0}}}}"#
        )
    };
    let mut old = agent_v1(&agent("old", ""), failed);
    (old.state, old.attestation_count, old.history_sequence) = (3, 5000, 5000);
    old.attestation_state_json = "{}".to_owned();
    let mut entry = legacy::AgentEntryV2::from(old);
    entry.payload_digest = "digest".to_owned();
    // More history records than a migration reads at once.
    let rounds = REWRITE_CHUNK as u64 + 10;
    let db = open_database(&path, &SCHEMA_V2)?;
    db.write("add", |txn| {
        AGENTS_V2.insert(txn, "old", &entry)?;
        let mut history = txn.open_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
        for sequence in 1..=rounds {
            let key = history_key("old", sequence);
            let text = if sequence == rounds { failed.to_owned() } else { passed(sequence) };
            let old = legacy::HistoryRecordV1 {
                sequence,
                at: Timestamp { seconds: 1, nanos: 0 },
                verdict_json: text,
                reset_count: 0,
                restart_count: 0,
                clock: sequence,
                ima_entries: 1,
                duration_us: 2,
            };
            let bytes = encode("history", &key, &old)?;
            history
                .insert(key.as_str(), bytes.as_slice())
                .map_err(|e| StoreError::table("history", e))?;
        }
        let mut events = txn.open_table(EVENTS).map_err(|e| StoreError::table("events", e))?;
        let old = legacy::EventRecordV1 {
            cursor: 1,
            at: Timestamp { seconds: 7, nanos: 3 },
            kind: 4,
            agent_id: "old".to_owned(),
            state: 3,
            previous_state: 2,
            findings_json:
                r#"[{"rule":"ima.not_in_policy","message":"not allowed","expected":{"a":[1]}}]"#
                    .to_owned(),
            message: "failed".to_owned(),
        };
        let bytes = encode("events", "1", &old)?;
        events.insert(1, bytes.as_slice()).map_err(|e| StoreError::table("events", e))?;
        Ok(())
    })?;
    drop(db);

    let store = VerifierStore::open(&path)?;
    let migrated = store.get_agent("old")?.ok_or("the agent is gone")?;
    assert_eq!(migrated.payload_digest, "digest");
    let verdict = migrated.last_verdict.ok_or("the verdict is gone")?;
    assert!(!verdict.passed());
    assert_eq!(verdict.checked, ["quote", "ima"]);
    assert_eq!(verdict.at, Timestamp { seconds: 7, nanos: 3 });
    let finding = &verdict.findings[0];
    assert_eq!(
        (
            finding.rule.as_str(),
            finding.line,
            finding.path.as_deref(),
            finding.actual_json.as_deref()
        ),
        ("ima.not_in_policy", Some(4), Some("/bin/x"), Some(r#""sha256:ab""#))
    );
    let newest = store.history("old", None, 2)?;
    assert_eq!(newest[0].verdict.as_ref().map(VerdictRecord::passed), Some(false));
    assert_eq!(newest[1].verdict.as_ref().map(|v| v.at.seconds), Some(i64::try_from(rounds - 1)?));
    let oldest = store.history("old", Some(2), 1)?;
    assert_eq!(oldest[0].verdict.as_ref().map(|v| (v.at.seconds, v.passed())), Some((1, true)));
    assert_eq!(store.last_history_sequence("old")?, Some(rounds));
    let events = store.events_after(0, 10)?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].findings[0].expected_json.as_deref(), Some(r#"{"a":[1]}"#));
    assert_eq!(events[0].message, "failed");
    drop(store);
    assert_eq!(stored_history(&path)?, rounds, "every record was moved into blocks");
    Ok(())
}

#[test]
fn leases_on_the_file_are_refused_naming_it_and_none_are_counted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let store = VerifierStore::open(&path)?;
    store.commit(Batch { agents: vec![agent("a", "")], ..Batch::default() }, 0)?;
    let refused =
        store.claim_leases("r1", 10, Duration::from_secs(30)).err().map(|e| e.to_string());
    assert_eq!(
        refused.as_deref(),
        Some(
            format!(
                "{}: claim agent leases: agent leases are for verifier replicas sharing a \
                 PostgreSQL database (database_url); this store is a file of one verifier",
                path.display()
            )
            .as_str()
        )
    );
    assert!(store.renew_leases("r1", Duration::from_secs(30)).is_err());
    assert!(store.release_leases("r1", &["a".to_owned()]).is_err());
    let batch = Batch { agents: vec![agent("a", "x")], ..Batch::default() };
    assert!(matches!(store.commit_as("r1", &batch, 0), Err(StoreError::LeasesNeedDatabase { .. })));
    // Nothing was written by the refused commit.
    assert_eq!(store.get_agent("a")?.map(|a| a.runtime_policy), Some(String::new()));
    assert!(store.lease_holders()?.is_empty());
    Ok(())
}

#[test]
fn a_record_the_migration_cannot_read_stops_it_naming_the_record_and_changes_nothing() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    let db = open_database(&path, &SCHEMA_V2)?;
    db.write("add", |txn| {
        let mut history = txn.open_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
        let key = history_key("old", 1);
        history
            .insert(key.as_str(), [0xff_u8; 3].as_slice())
            .map_err(|e| StoreError::table("history", e))?;
        Ok(())
    })?;
    drop(db);

    let refused = VerifierStore::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refused.starts_with(&format!(
            "{}: migration to schema version 3 (store verdicts and findings as typed records) \
             failed: table history, key \"old\\0",
            path.display()
        )),
        "{refused}"
    );
    // The file is as it was: still version 2, the record untouched.
    let db = open_database(&path, &SCHEMA_V2)?;
    let bytes = db.read("read", |txn| {
        let history = txn.open_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
        let key = history_key("old", 1);
        let value = history.get(key.as_str()).map_err(|e| StoreError::table("history", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    })?;
    assert_eq!(bytes, Some(vec![0xff; 3]));
    Ok(())
}

#[test]
fn each_agents_history_is_moved_into_blocks_of_its_own() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("verifier.redb");
    static SCHEMA_V3: Schema =
        Schema { name: "verifier", migrations: SCHEMA.migrations.split_at(3).0 };
    // "a" a whole number of blocks, "a1" less than one, "b" one more than a block.
    let counts = [("a", 32_u64), ("a1", 5), ("b", 17)];
    let db = open_database(&path, &SCHEMA_V3)?;
    db.write("add", |txn| {
        let mut history = txn.open_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
        for (id, count) in counts {
            for sequence in 1..=count {
                let key = history_key(id, sequence);
                let bytes = encode("history", &key, &record(sequence, Timestamp::now()))?;
                history
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(|e| StoreError::table("history", e))?;
            }
        }
        Ok(())
    })?;
    drop(db);

    let store = VerifierStore::open(&path)?;
    for (id, count) in counts {
        assert_eq!(seqs(store.history(id, None, 100)?), (1..=count).rev().collect::<Vec<_>>());
    }
    // Rounds go on from where each history ended, the limit now applied.
    store.commit(rounds("a", 33..=33, Timestamp::now()), 20)?;
    assert_eq!(seqs(store.history("a", None, 100)?), (14..=33).rev().collect::<Vec<_>>());
    store.commit(rounds("a1", 6..=16, Timestamp::now()), 0)?;
    assert_eq!(store.last_history_sequence("a1")?, Some(16));
    drop(store);
    assert_eq!(stored_history(&path)?, 32 + 1 + 16 + 17);
    Ok(())
}
