//! kl-store's PostgreSQL backend against a private server: every domain operation of the
//! registrar and verifier stores behaves as it does on the redb file (the same cases as the
//! redb tests in `lib/store`), cursors and schema versions hold across reconnects, a newer
//! schema is refused, and an unreachable server or a missing password is reported naming the
//! URL without the password. The verifier's agent leases: concurrent claims never share an
//! agent, expired leases move, renewals report what is held, and commits are fenced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kl_store::registrar::{Activation, AgentRecord, RegistrarStore};
use kl_store::verifier::{
    AgentEntry, Batch, EventRecord, HistoryRecord, PolicyDeletion, PolicyKind, PolicyPut,
    PutPrecondition, Timestamp, VerifierStore,
};
use kl_store::{Location, StoreError};
use kl_tests::postgres::Postgres;
use kl_tests::{Result, err};

/// A private server and a fresh database on it; `None` when PostgreSQL is not installed (and
/// `CI` is unset).
fn database() -> Result<Option<(Postgres, Location)>> {
    let Some(server) = Postgres::start()? else { return Ok(None) };
    let url = server.create_database("keylime")?;
    let location = Location::new("unused.redb".into(), Some(&url), Some(&server.password_file()))?;
    Ok(Some((server, location)))
}

fn registrar_record(id: &str, ek: u8) -> AgentRecord {
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

fn count(outcome: &Activation) -> Option<u64> {
    match outcome {
        Activation::Activated(record) => Some(record.registration_count),
        Activation::IdentityConflict => None,
    }
}

#[test]
fn registrar_activation_identity_deletion_batches_and_paging() -> Result<()> {
    let Some((_server, location)) = database()? else { return Ok(()) };
    let store = RegistrarStore::open_at(&location)?;
    assert_eq!(count(&store.activate(registrar_record("a", 1))?), Some(1));
    let mut again = registrar_record("a", 1);
    again.ak_public = vec![8; 8];
    assert_eq!(count(&store.activate(again.clone())?), Some(2));
    // Another EK, or another EK certificate, under an activated id changes nothing.
    let before = store.get_agent("a")?;
    assert_eq!(store.activate(registrar_record("a", 2))?, Activation::IdentityConflict);
    let mut other_cert = registrar_record("a", 1);
    other_cert.ek_certificate = vec![1, 2, 3];
    assert_eq!(store.activate(other_cert)?, Activation::IdentityConflict);
    assert_eq!(store.get_agent("a")?, before);
    drop(store);

    // A new connection sees what the old one committed.
    let store = RegistrarStore::open_at(&location)?;
    let kept = store.get_agent("a")?.ok_or_else(|| err("agent a lost"))?;
    assert_eq!((kept.registration_count, kept.ak_public), (2, again.ak_public));
    assert!(store.delete_agent("a")?);
    assert!(!store.delete_agent("a")?);
    assert!(store.get_agent("a")?.is_none());

    let outcomes = store.activate_many(vec![
        registrar_record("a", 1),
        registrar_record("a", 2),
        registrar_record("a", 1),
    ])?;
    assert_eq!(outcomes.iter().map(count).collect::<Vec<_>>(), [Some(1), None, Some(2)]);

    // Byte order, as redb orders keys ("B" before "a"; no locale folding).
    for id in ["c", "e", "b", "d", "B"] {
        store.activate(registrar_record(id, 1))?;
    }
    let ids = |records: Vec<AgentRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.agent_id).collect()
    };
    assert_eq!(ids(store.list_agents(None, 2)?), ["B", "a"]);
    assert_eq!(ids(store.list_agents(Some("a"), 2)?), ["b", "c"]);
    assert_eq!(ids(store.list_agents(Some("c"), 5)?), ["d", "e"]);
    assert!(store.list_agents(Some("e"), 2)?.is_empty());
    assert_eq!(store.read_all()?, 6);
    Ok(())
}

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
        verdict: None,
        reset_count: 1,
        restart_count: 0,
        clock: sequence * 10,
        ima_entries: 0,
        duration_us: 5,
    }
}

fn cursors(events: &[EventRecord]) -> Vec<u64> {
    events.iter().map(|e| e.cursor).collect()
}

fn sequences(records: &[HistoryRecord]) -> Vec<u64> {
    records.iter().map(|r| r.sequence).collect()
}

#[test]
fn verifier_events_history_batches_and_pruning() -> Result<()> {
    let Some((_server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    assert_eq!((store.last_event()?, store.oldest_event()?), (0, None));
    let old = Timestamp { seconds: 10, nanos: 0 };
    let batch = Batch {
        agents: vec![agent("a", "")],
        events: vec![event("a", old), event("a", Timestamp::now())],
        ..Batch::default()
    };
    assert_eq!(cursors(&store.commit(batch, 0)?), [1, 2]);
    store.commit(Batch { events: vec![event("a", Timestamp::now())], ..Batch::default() }, 0)?;
    drop(store);
    let store = VerifierStore::open_at(&location)?;
    assert_eq!(store.get_agent("a")?.map(|a| a.agent_id), Some("a".to_owned()));
    let after_one = store.events_after(1, 10)?;
    assert_eq!(cursors(&after_one), [2, 3]);
    assert_eq!(after_one[0].message, "passed");
    assert_eq!(cursors(&store.events_after(0, 1)?), [1]);
    assert!(store.events_after(u64::MAX, 10)?.is_empty());
    // The event older than the age limit goes.
    assert_eq!(store.prune(Duration::from_secs(3600), 100)?.events, 1);
    assert_eq!(store.oldest_event()?, Some(2));
    // Keep at most one event: the oldest goes, and cursors are not reused.
    assert_eq!(store.prune(Duration::from_secs(3600), 1)?.events, 1);
    assert_eq!(store.oldest_event()?, Some(3));
    let next = store
        .commit(Batch { events: vec![event("a", Timestamp::now())], ..Batch::default() }, 0)?;
    assert_eq!(cursors(&next), [4]);
    assert_eq!(store.last_event()?, 4);

    // History: bounded per agent, newest first, removed with its agent, pruned by age.
    for seq in 1..=5 {
        let batch = Batch {
            history: vec![
                ("h".to_owned(), record(seq, Timestamp::now())),
                ("hb".to_owned(), record(seq, Timestamp::now())),
            ],
            ..Batch::default()
        };
        store.commit(batch, 3)?;
    }
    assert_eq!(sequences(&store.history("h", None, 10)?), [5, 4, 3]);
    assert_eq!(sequences(&store.history("h", Some(5), 1)?), [4]);
    assert_eq!(store.last_history_sequence("h")?, Some(5));
    assert_eq!(store.last_history_sequence("nobody")?, None);
    store.commit(Batch { removed: vec!["h".to_owned()], ..Batch::default() }, 3)?;
    assert!(store.history("h", None, 10)?.is_empty());
    assert_eq!(sequences(&store.history("hb", None, 10)?), [5, 4, 3]);
    store.commit(
        Batch { history: vec![("hb".to_owned(), record(6, old))], ..Batch::default() },
        0,
    )?;
    assert_eq!(store.prune(Duration::from_secs(60), 100)?.history, 1);
    assert_eq!(sequences(&store.history("hb", None, 10)?), [5, 4, 3]);
    // A lowered limit applies at once at the next commit of the agent: the bound counts
    // sequences, so 3 to 5 fall out (6 went by age).
    store.commit(
        Batch { history: vec![("hb".to_owned(), record(7, Timestamp::now()))], ..Batch::default() },
        2,
    )?;
    assert_eq!(sequences(&store.history("hb", None, 10)?), [7]);

    // Merged batches keep the order of writes: a removal drops what came before it.
    let with_count =
        |id: &str, count: u64| AgentEntry { attestation_count: count, ..agent(id, "") };
    let mut merged = Batch {
        agents: vec![with_count("m2", 1), with_count("m1", 1)],
        history: vec![("m1".to_owned(), record(1, Timestamp::now()))],
        ..Batch::default()
    };
    merged.extend(Batch { removed: vec!["m1".to_owned()], ..Batch::default() });
    merged.extend(Batch {
        agents: vec![with_count("m1", 7), with_count("m2", 2)],
        history: vec![("m1".to_owned(), record(2, Timestamp::now()))],
        ..Batch::default()
    });
    store.commit(merged, 10)?;
    let attestations = |id: &str| store.get_agent(id).map(|a| a.map(|a| a.attestation_count));
    assert_eq!((attestations("m1")?, attestations("m2")?), (Some(7), Some(2)));
    assert_eq!(sequences(&store.history("m1", None, 10)?), [2]);
    let listed: Vec<String> =
        store.list_agents(Some("a"), 10)?.into_iter().map(|a| a.agent_id).collect();
    assert_eq!(listed, ["m1", "m2"]);

    // Named cursors.
    assert_eq!(store.cursor("webhook")?, None);
    store.set_cursor("webhook", 3)?;
    store.set_cursor("webhook", 4)?;
    assert_eq!(store.cursor("webhook")?, Some(4));
    Ok(())
}

#[test]
fn verifier_policies_with_preconditions_sharing_and_use() -> Result<()> {
    let Some((_server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    // Verifier replicas share a database, and so do registrars.
    let second = VerifierStore::open_at(&location)?;
    assert_eq!(second.agent_count()?, store.agent_count()?);
    drop(second);
    let registrars = (RegistrarStore::open_at(&location)?, RegistrarStore::open_at(&location)?);
    drop(registrars);
    let kind = PolicyKind::MeasuredBoot;
    let (absent, present, any) =
        (PutPrecondition::Absent, PutPrecondition::Present, PutPrecondition::Any);
    assert_eq!(store.put_policy(kind, "fw", present, "d1", b"one", 1)?, PolicyPut::Missing);
    assert!(store.get_policy(kind, "fw")?.is_none(), "replace-only created the name");
    assert!(matches!(
        store.put_policy(kind, "fw", absent, "d1", b"one", 1)?,
        PolicyPut::Stored { changed: true, .. }
    ));
    for digest in ["d1", "d2"] {
        match store.put_policy(kind, "fw", absent, digest, b"two", 2)? {
            PolicyPut::Exists(old) => assert_eq!(old.digest, "d1"),
            other => return Err(err(format!("create-only over {digest}: {other:?}"))),
        }
    }
    assert_eq!(store.get_policy(kind, "fw")?.map(|(_, d)| d), Some(b"one".to_vec()));
    assert!(matches!(
        store.put_policy(kind, "fw", present, "d2", b"two", 2)?,
        PolicyPut::Stored { changed: true, .. }
    ));
    assert_eq!(store.get_policy(kind, "fw")?.map(|(_, d)| d), Some(b"two".to_vec()));

    let kind = PolicyKind::Runtime;
    let changed = |put: PolicyPut| match put {
        PolicyPut::Stored { changed, .. } => Ok(changed),
        other => Err(err(format!("not stored: {other:?}"))),
    };
    assert!(changed(store.put_policy(kind, "p1", any, "d1", b"doc one", 1)?)?);
    assert!(!changed(store.put_policy(kind, "p1", any, "d1", b"doc one", 1)?)?);
    assert!(changed(store.put_policy(kind, "p2", any, "d1", b"doc one", 1)?)?);
    assert!(changed(store.put_policy(kind, "p1", any, "d2", b"doc two", 2)?)?);
    assert_eq!(store.get_policy(kind, "p2")?.map(|(_, d)| d), Some(b"doc one".to_vec()));
    assert_eq!(store.get_policy(kind, "p1")?.map(|(p, _)| p.digest), Some("d2".to_owned()));
    assert!(store.get_policy(PolicyKind::MeasuredBoot, "p1")?.is_none());
    assert_eq!(store.policy_name(kind, "p1")?.map(|p| p.entries), Some(2));
    store.commit(Batch { agents: vec![agent("x", "p2")], ..Batch::default() }, 0)?;
    assert_eq!(store.delete_policy(kind, "p2")?, PolicyDeletion::InUse("x".to_owned()));
    assert_eq!(store.delete_policy(kind, "p1")?, PolicyDeletion::Deleted);
    assert_eq!(store.delete_policy(kind, "p1")?, PolicyDeletion::Absent);
    let names: Vec<String> = store.list_policies(kind)?.into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["p2"]);
    // The document d2 went with p1; d1 stays for p2 and is found again under a new name.
    store.commit(Batch { removed: vec!["x".to_owned()], ..Batch::default() }, 0)?;
    assert_eq!(store.delete_policy(kind, "p2")?, PolicyDeletion::Deleted);
    assert!(store.list_policies(kind)?.is_empty());
    // Closing the store lets the next verifier in.
    drop(store);
    assert!(VerifierStore::open_at(&location)?.list_policies(kind)?.is_empty());
    Ok(())
}

#[test]
fn concurrent_commits_make_events_visible_in_cursor_order() -> Result<()> {
    let Some((_server, location)) = database()? else { return Ok(()) };
    let store = std::sync::Arc::new(VerifierStore::open_at(&location)?);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || -> Result<()> {
                for _ in 0..25 {
                    let events = vec![event(&format!("w{w}"), Timestamp::now()); 3];
                    store.commit(Batch { events, ..Batch::default() }, 0)?;
                }
                Ok(())
            })
        })
        .collect();
    // A reader following the stream as a watcher does never sees a gap filled in later.
    let mut seen = 0;
    let mut order = Vec::new();
    while seen < 300 {
        let page = store.events_after(seen, 50)?;
        for e in &page {
            if e.cursor != seen + 1 {
                return Err(err(format!("cursor {} after {seen}: a gap", e.cursor)));
            }
            seen = e.cursor;
            order.push(e.cursor);
        }
        if page.is_empty() && writers.iter().all(|w| w.is_finished()) && store.last_event()? == seen
        {
            break;
        }
    }
    for w in writers {
        w.join().map_err(|_| err("a writer panicked"))??;
    }
    assert_eq!(order, (1..=300).collect::<Vec<u64>>());
    Ok(())
}

#[test]
fn newer_schema_unreachable_server_and_missing_password_are_named() -> Result<()> {
    let Some((mut server, location)) = database()? else { return Ok(()) };
    drop(VerifierStore::open_at(&location)?);
    drop(RegistrarStore::open_at(&location)?);
    // Both stores share the database; each has its own version row.
    let url = server.url("keylime");
    let psql = |sql: &str| server.psql("keylime", sql);
    assert_eq!(
        psql("SELECT store || '=' || schema_version FROM meta ORDER BY store")?,
        "registrar=1\nverifier=4"
    );
    psql("UPDATE meta SET schema_version = 7 WHERE store = 'registrar'")?;
    let refused = RegistrarStore::open_at(&location).err().map(|e| e.to_string());
    let expected = format!(
        "{url}: schema version 7 is newer than the 1 this registrar supports; use a newer \
         keylime-rs or restore a backup made by this version"
    );
    assert_eq!(refused.as_deref(), Some(expected.as_str()));
    drop(VerifierStore::open_at(&location)?);

    // Without the password the server refuses; the error names the URL.
    let no_password = Location::new("unused.redb".into(), Some(&url), None)?;
    let refused = VerifierStore::open_at(&no_password).err().map(|e| e.to_string());
    let refused = refused.unwrap_or_default();
    assert!(
        refused.starts_with(&format!("{url}: cannot connect to the verifier database")),
        "{refused}"
    );
    assert!(refused.contains("password"), "{refused}");

    // A password in the URL works too, and is never shown.
    let password = std::fs::read_to_string(server.password_file())?;
    let with_password = url.replace("postgres@", &format!("postgres:{}@", password.trim()));
    let store =
        VerifierStore::open_at(&Location::new("unused.redb".into(), Some(&with_password), None)?)?;
    assert_eq!(store.location(), url);

    // A stopped server: operations fail as I/O failures (retried by the daemons' writers) and
    // work again once it is back, on new connections.
    server.stop()?;
    let failed = store.last_event().err().ok_or_else(|| err("read from a stopped server"))?;
    assert!(failed.is_io(), "{failed}");
    assert!(failed.to_string().starts_with(&url), "{failed}");
    let refused = VerifierStore::open_at(&location).err().map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.starts_with(&format!("{url}: cannot connect"))),
        "{refused:?}"
    );
    server.start_again()?;
    store.reopen()?;
    assert_eq!(store.last_event()?, 0);

    // After a server restart, the store writes again (its broken connections are replaced),
    // beside another store on the same database: replicas share it.
    server.stop()?;
    server.start_again()?;
    let other = VerifierStore::open_at(&location)?;
    store.set_cursor("webhook", 1)?;
    other.set_cursor("webhook", 2)?;
    assert_eq!(store.cursor("webhook")?, Some(2));
    // A cursor never goes back, whoever writes it late.
    store.set_cursor("webhook", 1)?;
    assert_eq!(other.cursor("webhook")?, Some(2));
    Ok(())
}

const LONG: Duration = Duration::from_secs(600);

/// Waits until one session of `server` sleeps in `pg_sleep` (`who`, started by the test, holds
/// its locks by then).
fn wait_sleeping(server: &Postgres, who: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .psql("keylime", "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")?
        != "1"
    {
        if Instant::now() > deadline {
            return Err(err(format!("{who} never started sleeping")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Enrolls `count` agents `agent-000`, `agent-001`, ... and returns their ids.
fn enroll(store: &VerifierStore, count: usize) -> Result<Vec<String>> {
    let ids: Vec<String> = (0..count).map(|i| format!("agent-{i:03}")).collect();
    let agents = ids.iter().map(|id| agent(id, "")).collect();
    store.commit(Batch { agents, ..Batch::default() }, 0)?;
    Ok(ids)
}

/// Each holder claims `max` agents at a time on its own thread, all at once, until a claim
/// returns none; the agents each one took.
fn claim_concurrently(
    store: &VerifierStore,
    holders: &[&str],
    max: usize,
) -> Result<Vec<Vec<String>>> {
    let start = std::sync::Barrier::new(holders.len());
    std::thread::scope(|scope| {
        let threads: Vec<_> = holders
            .iter()
            .map(|holder| {
                let start = &start;
                scope.spawn(move || -> std::result::Result<Vec<String>, StoreError> {
                    start.wait();
                    let mut taken = Vec::new();
                    loop {
                        let leases = store.claim_leases(holder, max, LONG)?;
                        if leases.agents.is_empty() {
                            return Ok(taken);
                        }
                        taken.extend(leases.agents);
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| err("a claiming thread panicked"))?.map_err(Into::into))
            .collect()
    })
}

/// Asserts that `taken` are disjoint and together `all`.
fn assert_partition(taken: &[Vec<String>], all: &[String]) {
    let mut seen = BTreeSet::new();
    for ids in taken {
        for id in ids {
            assert!(seen.insert(id.clone()), "{id} was claimed twice: {taken:?}");
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), all);
}

#[test]
fn leases_claimed_concurrently_are_disjoint_and_expired_ones_move_to_other_holders() -> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 300)?;
    let holders = ["r0", "r1", "r2", "r3"];
    let taken = claim_concurrently(&store, &holders, 7)?;
    assert_partition(&taken, &all);
    assert!(store.claim_leases("late", 1000, LONG)?.agents.is_empty());
    let counts: Vec<(String, u64)> = holders
        .iter()
        .zip(&taken)
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(holder, ids)| ((*holder).to_owned(), ids.len() as u64))
        .collect();
    assert_eq!(store.lease_holders()?, counts);

    // Claims take at most `max`, in id order, and report the server's times.
    let psql = |sql: &str| server.psql("keylime", sql);
    store.release_leases("r1", &taken[1])?;
    let before = Timestamp::now();
    let some = store.claim_leases("r9", 2, Duration::from_secs(30))?;
    let mut expected = taken[1].clone();
    expected.sort();
    assert_eq!(some.agents, expected[..2.min(expected.len())]);
    assert_eq!(some.expires_at.seconds - some.granted_at.seconds, 30);
    assert!((some.granted_at.seconds - before.seconds).abs() <= 5, "{some:?} at {before:?}");

    // r0's leases expire (as after a crash): the others take them, still never the same one.
    psql(
        "UPDATE verifier_leases SET expires_at = now() - interval '1 second' WHERE holder = 'r0'",
    )?;
    let lost = store.renew_leases("r0", LONG)?;
    assert!(lost.agents.is_empty(), "{lost:?}");
    let mut r0 = taken[0].clone();
    r0.sort();
    let moved = claim_concurrently(&store, &["s1", "s2", "s3"], 5)?;
    let leftover: Vec<String> = expected[2.min(expected.len())..].to_vec();
    let mut freed: Vec<String> = r0.iter().chain(&leftover).cloned().collect();
    freed.sort();
    assert_partition(&moved, &freed);
    // Renewal returns exactly what the holder still holds.
    let mut r2 = taken[2].clone();
    r2.sort();
    assert_eq!(store.renew_leases("r2", LONG)?.agents, r2);
    assert!(store.renew_leases("r0", LONG)?.agents.is_empty());

    // A short lease lapses by the server's clock and another holder takes it.
    let moved_first = moved.iter().flatten().min().cloned().ok_or_else(|| err("none moved"))?;
    let holder = moved.iter().position(|ids| ids.contains(&moved_first)).unwrap_or(0);
    let holder = ["s1", "s2", "s3"][holder];
    assert_eq!(store.release_leases(holder, std::slice::from_ref(&moved_first))?, 1);
    assert_eq!(store.release_leases(holder, std::slice::from_ref(&moved_first))?, 0);
    let short = store.claim_leases("short", 1, Duration::from_millis(300))?;
    assert_eq!(short.agents, std::slice::from_ref(&moved_first));
    assert_eq!(
        store.renew_leases("short", Duration::from_millis(300))?.agents,
        std::slice::from_ref(&moved_first)
    );
    assert!(store.claim_leases("other", 10, LONG)?.agents.is_empty());
    std::thread::sleep(Duration::from_millis(700));
    assert!(store.renew_leases("short", LONG)?.agents.is_empty());
    assert_eq!(store.claim_leases("other", 10, LONG)?.agents, [moved_first]);
    Ok(())
}

#[test]
fn postgres_claims_skip_agents_locked_by_another_transaction_without_waiting() -> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 4)?;
    std::thread::scope(|scope| -> Result<()> {
        // Another session locks two agent rows for a few seconds (as a claim or a fenced commit
        // in progress does).
        let holding = scope.spawn(|| {
            server.psql(
                "keylime",
                "BEGIN; SELECT agent_id FROM verifier_agents \
                 WHERE agent_id IN ('agent-000', 'agent-002') FOR UPDATE; \
                 SELECT pg_sleep(4); COMMIT;",
            )
        });
        wait_sleeping(&server, "the locking session")?;
        let started = Instant::now();
        let claimed = store.claim_leases("r1", 10, LONG)?;
        let took = started.elapsed();
        assert_eq!(claimed.agents, [all[1].clone(), all[3].clone()]);
        assert!(took < Duration::from_secs(2), "the claim waited {took:?} for locked rows");
        holding.join().map_err(|_| err("psql thread panicked"))??;
        Ok(())
    })?;
    // Once the other transaction ended, the skipped agents are claimable.
    assert_eq!(store.claim_leases("r2", 10, LONG)?.agents, [all[0].clone(), all[2].clone()]);
    Ok(())
}

#[test]
fn postgres_commit_as_writes_only_agents_held_at_their_revision_and_keeps_what_they_saw()
-> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 3)?;
    let (a, b, c) = (&all[0], &all[1], &all[2]);
    assert_eq!(store.claim_leases("r1", 2, LONG)?.agents, [a.clone(), b.clone()]);
    assert_eq!(store.claim_leases("r2", 2, LONG)?.agents, std::slice::from_ref(c));
    let write = |id: &str, policy: &str| Batch {
        agents: vec![agent(id, policy)],
        history: vec![(id.to_owned(), record(1, Timestamp::now()))],
        events: vec![event(id, Timestamp::now())],
        ..Batch::default()
    };
    // Its own agents: written, with events and history.
    let committed = store.commit_as("r1", write(a, "p1"), 0)?;
    assert_eq!((cursors(&committed.events), committed.refused), (vec![1], vec![]));
    assert_eq!(store.get_agent(a)?.map(|x| x.runtime_policy), Some("p1".to_owned()));

    // Another holder's agent among its own: that agent's entry and history are left out,
    // its event is kept (it reports what r1 saw).
    let mut both = write(a, "p2");
    both.extend(write(c, "p2"));
    let committed = store.commit_as("r1", &both, 0)?;
    assert_eq!((cursors(&committed.events), committed.refused), (vec![2, 3], vec![c.clone()]));
    assert_eq!(store.get_agent(a)?.map(|x| x.runtime_policy), Some("p2".to_owned()));
    assert_eq!(store.get_agent(c)?.map(|x| x.runtime_policy), Some(String::new()));
    assert!(store.history(c, None, 10)?.is_empty());
    // A removal of another holder's agent is refused too.
    let removal = Batch { removed: vec![c.clone()], ..Batch::default() };
    assert_eq!(store.commit_as("r1", &removal, 0)?.refused, std::slice::from_ref(c));
    assert!(store.get_agent(c)?.is_some());

    // An expired lease nobody took yet: written (what r1 found while it held the agent),
    // but no longer renewed; once another holder takes it, refused.
    server.psql(
        "keylime",
        &format!(
            "UPDATE verifier_leases SET expires_at = now() - interval '1 second' \
             WHERE agent_id = '{b}'"
        ),
    )?;
    assert!(store.commit_as("r1", write(b, "p3"), 0)?.refused.is_empty());
    assert_eq!(store.get_agent(b)?.map(|x| x.runtime_policy), Some("p3".to_owned()));
    assert!(!store.renew_leases("r1", LONG)?.agents.contains(b));
    assert_eq!(store.claim_leases("r3", 10, LONG)?.agents, std::slice::from_ref(b));
    assert_eq!(store.commit_as("r1", write(b, "p4"), 0)?.refused, std::slice::from_ref(b));
    assert_eq!(store.get_agent(b)?.map(|x| x.runtime_policy), Some("p3".to_owned()));
    // An agent without a row (a new one, or one removed): refused, its event too; an
    // operator's change enrols it.
    let unknown = store.commit_as("r1", write("new", "p"), 0)?;
    assert_eq!((unknown.refused, cursors(&unknown.events)), (vec!["new".to_owned()], vec![0]));
    assert!(store.get_agent("new")?.is_none());
    let modified =
        store.modify_agent("new", 0, |current| (Some(write("new", "p")), current.is_some()))?;
    assert!(
        store
            .modify_agent("new", 0, |current| (None, current.and_then(|(_, h)| h)))?
            .answer
            .is_some()
    );
    assert_eq!((cursors(&modified.events), modified.answer), (vec![6], false));
    assert_eq!(modified.stored.iter().map(|x| x.revision).collect::<Vec<_>>(), [1]);
    assert_eq!(
        store.get_agent("new")?.map(|x| (x.runtime_policy, x.revision)),
        Some(("p".to_owned(), 1))
    );

    // An operator changes r1's agent: r1's writes made at the old revision are refused
    // until it reads the agent again; the renewal reports the new revision.
    let seen = store
        .modify_agent(a, 0, |current| {
            let revision = current.as_ref().map(|(x, _)| x.revision);
            let mut entry = current.map(|(x, _)| x).unwrap_or_else(|| agent(a, ""));
            entry.runtime_policy = "operator".to_owned();
            (Some(Batch { agents: vec![entry], ..Batch::default() }), revision)
        })?
        .answer;
    assert_eq!(seen, Some(0));
    let last = store.last_event()?;
    let stale = store.commit_as("r1", write(a, "stale"), 0)?;
    assert_eq!(stale.refused, std::slice::from_ref(a));
    // Its event reports a round under settings that are gone: not written.
    assert_eq!(cursors(&stale.events), [0]);
    assert_eq!(store.last_event()?, last);
    let renewed = store.renew_leases("r1", LONG)?;
    // Revisions come from one sequence: "new" took 1.
    assert_eq!((renewed.agents, renewed.revisions), (vec![a.clone()], vec![2]));
    let mut fresh = store.get_agent(a)?.ok_or_else(|| err("agent a is gone"))?;
    assert_eq!((fresh.runtime_policy.as_str(), fresh.revision), ("operator", 2));
    fresh.attestation_count = 7;
    let batch = Batch { agents: vec![fresh], ..Batch::default() };
    assert!(store.commit_as("r1", batch, 0)?.refused.is_empty());
    assert_eq!(store.get_agent(a)?.map(|x| x.attestation_count), Some(7));
    // No change: nothing is written and the revision stays.
    let unchanged = store.modify_agent(a, 0, |_| (None, ()))?;
    assert!(unchanged.events.is_empty() && unchanged.stored.is_empty());
    assert_eq!(store.get_agent(a)?.map(|x| x.revision), Some(2));

    // An operator unenrols r2's agent: the lease goes with it. Enrolled again, it has a new
    // revision and no lease: r2's late writes of the old enrolment are refused.
    store.modify_agent(c, 0, |_| (Some(removal), ()))?;
    assert!(store.get_agent(c)?.is_none());
    assert!(store.renew_leases("r2", LONG)?.agents.is_empty());
    store.modify_agent(c, 0, |_| (Some(write(c, "again")), ()))?;
    assert_eq!(store.get_agent(c)?.map(|x| x.revision), Some(3));
    let mut late = write(c, "late");
    late.agents[0].revision = 3;
    assert_eq!(store.commit_as("r2", late, 0)?.refused, std::slice::from_ref(c));
    assert_eq!(store.get_agent(c)?.map(|x| x.runtime_policy), Some("again".to_owned()));
    store.modify_agent(c, 0, |current| {
        (current.map(|(x, _)| Batch { removed: vec![x.agent_id], ..Batch::default() }), ())
    })?;
    assert_eq!(store.lease_holders()?, [("r1".to_owned(), 1), ("r3".to_owned(), 1)]);
    assert_eq!(store.agent_count()?, 3);
    Ok(())
}

#[test]
fn postgres_replicas_announce_themselves_take_duties_one_at_a_time_and_withdraw() -> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 2)?;
    assert_eq!(store.announce("r2", "t2", LONG)?, ["r2"]);
    assert_eq!(store.announce("r1", "t1", LONG)?, ["r1", "r2"]);
    assert!(store.take_duty("webhook", "r1", LONG)?.is_some());
    assert!(store.take_duty("webhook", "r2", LONG)?.is_none());
    assert!(store.take_duty("prune", "r2", LONG)?.is_some());
    // The holder renews its duty.
    assert!(store.take_duty("webhook", "r1", LONG)?.is_some());
    assert_eq!(store.claim_leases("r1", 10, LONG)?.agents, all);

    // Another process with r1's id is refused while r1 is present, and cannot withdraw it.
    let taken = store.announce("r1", "other", LONG).err().map(|e| e.to_string());
    assert!(
        taken.is_some_and(|e| e.contains("another verifier process uses the replica id \"r1\""))
    );
    store.withdraw("r1", "other", "r1")?;
    assert_eq!(store.lease_holders()?, [("r1".to_owned(), 2)]);

    // r1 withdraws: its presence, duties and leases go at once.
    store.withdraw("r1", "t1", "r1")?;
    assert_eq!(store.announce("r2", "t2", LONG)?, ["r2"]);
    assert!(store.take_duty("webhook", "r2", LONG)?.is_some());
    assert_eq!(store.claim_leases("r2", 10, LONG)?.agents, all);

    // A replica that stops announcing itself is no longer present once its time runs out.
    server.psql(
        "keylime",
        "UPDATE verifier_replicas SET expires_at = now() - interval '1 second' WHERE id = 'r2'; \
         UPDATE verifier_duties SET expires_at = now() - interval '1 second'",
    )?;
    assert_eq!(store.announce("r3", "t3", LONG)?, ["r3"]);
    assert!(store.take_duty("webhook", "r3", LONG)?.is_some());
    Ok(())
}

#[test]
fn postgres_verifier_schema_1_migrates_to_leases_keeping_its_data_and_newer_is_refused()
-> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let psql = |sql: &str| server.psql("keylime", sql);
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 3)?;
    store.commit(
        Batch {
            history: vec![(all[0].clone(), record(1, Timestamp::now()))],
            events: vec![event(&all[0], Timestamp::now())],
            ..Batch::default()
        },
        0,
    )?;
    store.set_cursor("webhook", 1)?;
    drop(store);
    // The database as schema version 1 left it: the same tables, without those of leases,
    // replicas and duties, and without agent revisions.
    psql(
        "DROP TABLE verifier_leases, verifier_replicas, verifier_duties; \
         DROP SEQUENCE verifier_agent_revisions; \
         ALTER TABLE verifier_agents DROP COLUMN revision; \
         UPDATE meta SET schema_version = 1 WHERE store = 'verifier'",
    )?;
    assert_eq!(psql("SELECT to_regclass('verifier_leases') IS NULL")?, "t");

    let store = VerifierStore::open_at(&location)?;
    assert_eq!(psql("SELECT schema_version FROM meta WHERE store = 'verifier'")?, "4");
    let ids: Vec<String> = store.list_agents(None, 10)?.into_iter().map(|a| a.agent_id).collect();
    assert_eq!(ids, all);
    assert_eq!(sequences(&store.history(&all[0], None, 10)?), [1]);
    assert_eq!(cursors(&store.events_after(0, 10)?), [1]);
    assert_eq!(store.cursor("webhook")?, Some(1));
    assert_eq!(store.claim_leases("r1", 10, LONG)?.agents, all);
    drop(store);

    psql("UPDATE meta SET schema_version = 5 WHERE store = 'verifier'")?;
    let url = server.url("keylime");
    let refused = VerifierStore::open_at(&location).err().map(|e| e.to_string());
    let expected = format!(
        "{url}: schema version 5 is newer than the 4 this verifier supports; use a newer \
         keylime-rs or restore a backup made by this version"
    );
    assert_eq!(refused.as_deref(), Some(expected.as_str()));
    // Refused before touching anything.
    assert_eq!(psql("SELECT count(*) FROM verifier_leases")?, "3");
    Ok(())
}

/// A history record as schema version 3 wrote it: the verdict as JSON text.
#[derive(serde::Serialize)]
struct HistoryRecordV3 {
    sequence: u64,
    at: Timestamp,
    verdict_json: String,
    reset_count: u32,
    restart_count: u32,
    clock: u64,
    ima_entries: u64,
    duration_us: u64,
}

/// An event as schema version 3 wrote it: the findings as a JSON array.
#[derive(serde::Serialize)]
struct EventRecordV3 {
    cursor: u64,
    at: Timestamp,
    kind: i32,
    agent_id: String,
    state: i32,
    previous_state: i32,
    findings_json: String,
    message: String,
}

/// `record` as a bytea literal of SQL.
fn bytea<T: serde::Serialize>(record: &T) -> Result<String> {
    Ok(format!("'\\x{}'::bytea", hex::encode(postcard::to_allocvec(record)?)))
}

#[test]
fn postgres_verifier_schema_3_verdicts_become_records_unless_earlier_replicas_run() -> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let psql = |sql: &str| server.psql("keylime", sql);
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 1)?;
    let id = &all[0];
    store.commit(
        Batch {
            history: vec![(id.clone(), record(1, Timestamp::now()))],
            events: vec![event(id, Timestamp::now())],
            ..Batch::default()
        },
        0,
    )?;
    drop(store);
    // The database as schema version 3 left it: a failed round's verdict and event as JSON
    // text, and more passed rounds than a migration reads at once.
    let at = Timestamp { seconds: 1_795_756_037, nanos: 0 };
    let failed = HistoryRecordV3 {
        sequence: 1,
        at,
        verdict_json: r#"{"verdict":{"findings":[{"rule":"pcr.mismatch","message":"PCR 7","pcr":7,"expected":["ab"],"actual":"cd"}],"checked":["quote","pcrs"]},"at":{"seconds":1795756037,"nanos":0}}"#.to_owned(),
        reset_count: 1,
        restart_count: 0,
        clock: 10,
        ima_entries: 0,
        duration_us: 5,
    };
    let passed = HistoryRecordV3 {
        verdict_json: r#"{"verdict":{"findings":[],"checked":["quote"]},"at":{"seconds":1795756039,"nanos":0}}"#.to_owned(),
        ..failed
    };
    let event = EventRecordV3 {
        cursor: 1,
        at,
        kind: 4,
        agent_id: id.clone(),
        state: 3,
        previous_state: 2,
        findings_json: r#"[{"rule":"pcr.mismatch","message":"PCR 7","pcr":7,"expected":{"a":1}}]"#
            .to_owned(),
        message: "attestation failed: pcr.mismatch".to_owned(),
    };
    psql(&format!(
        "UPDATE verifier_history SET record = {} WHERE sequence = 1; \
         INSERT INTO verifier_history (agent_id, sequence, at_seconds, record) \
             SELECT '{id}', n, 0, {} FROM generate_series(2, 5000) AS n; \
         UPDATE verifier_events SET record = {}; \
         UPDATE meta SET schema_version = 3 WHERE store = 'verifier'; \
         INSERT INTO verifier_replicas VALUES ('earlier:8881', 't', now() + interval '1 hour')",
        bytea(&failed)?,
        bytea(&passed)?,
        bytea(&event)?,
    ))?;

    // A replica of the earlier release is present: nothing is rewritten.
    let refused = VerifierStore::open_at(&location).err().map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains(
            "migration to schema version 4 (store verdicts and findings as typed records) failed"
        ) && e
            .contains("verifier replicas of an earlier release are running")),
        "{refused:?}"
    );
    assert_eq!(psql("SELECT schema_version FROM meta WHERE store = 'verifier'")?, "3");

    psql("DELETE FROM verifier_replicas")?;
    let store = VerifierStore::open_at(&location)?;
    assert_eq!(psql("SELECT schema_version FROM meta WHERE store = 'verifier'")?, "4");
    let history = store.history(id, None, 5000)?;
    assert_eq!(history.len(), 5000);
    assert!(history[..4999].iter().all(|h| h.verdict.as_ref().is_some_and(|v| v.passed())));
    let verdict = history[4999].verdict.clone().ok_or("the failed verdict is gone")?;
    assert_eq!((verdict.at, verdict.checked.len()), (at, 2));
    let finding = &verdict.findings[0];
    assert_eq!(
        (finding.pcr, finding.expected_json.as_deref(), finding.actual_json.as_deref()),
        (Some(7), Some(r#"["ab"]"#), Some(r#""cd""#))
    );
    let events = store.events_after(0, 10)?;
    assert_eq!(events[0].findings[0].expected_json.as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(events[0].message, "attestation failed: pcr.mismatch");
    assert!(store.get_agent(id)?.is_some_and(|a| a.last_verdict.is_none()));
    Ok(())
}

#[test]
fn postgres_commit_as_waits_for_a_claim_in_progress_and_is_refused_after_it() -> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 1)?;
    let a = &all[0];
    assert_eq!(store.claim_leases("r1", 1, LONG)?.agents, all);
    std::thread::scope(|scope| -> Result<()> {
        // Another session takes the lease as a claim does (agent row locked first), slowly;
        // r1's lease is still live when r1 commits.
        let claiming = scope.spawn(|| {
            server.psql(
                "keylime",
                &format!(
                    "BEGIN; SELECT agent_id FROM verifier_agents WHERE agent_id = '{a}' \
                     FOR UPDATE; SELECT pg_sleep(2); UPDATE verifier_leases SET holder = 'r2', \
                     expires_at = now() + interval '10 minutes' WHERE agent_id = '{a}'; COMMIT;"
                ),
            )
        });
        wait_sleeping(&server, "the claiming session")?;
        let batch = Batch { agents: vec![agent(a, "late")], ..Batch::default() };
        assert_eq!(store.commit_as("r1", batch, 0)?.refused, all);
        claiming.join().map_err(|_| err("psql thread panicked"))??;
        Ok(())
    })?;
    assert_eq!(store.get_agent(a)?.map(|x| x.runtime_policy), Some(String::new()));
    assert_eq!(store.lease_holders()?, [("r2".to_owned(), 1)]);
    Ok(())
}

#[test]
fn a_verifier_of_an_earlier_release_on_the_database_keeps_replicas_out() -> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    drop(VerifierStore::open_at(&location)?);
    std::thread::scope(|scope| -> Result<()> {
        // The session lock verifiers of schema versions 1 and 2 held while they ran.
        let earlier = scope
            .spawn(|| server.psql("keylime", "SELECT pg_advisory_lock(1802240018), pg_sleep(3)"));
        wait_sleeping(&server, "the earlier verifier's session")?;
        let refused = VerifierStore::open_at(&location).err().map(|e| e.to_string());
        let expected = format!(
            "{}: a keylime_verifier of an earlier release (one per database) is running on this \
             database; stop it before starting this one",
            server.url("keylime")
        );
        assert_eq!(refused.as_deref(), Some(expected.as_str()));
        // Registrars never held it.
        drop(RegistrarStore::open_at(&location)?);
        earlier.join().map_err(|_| err("psql thread panicked"))??;
        Ok(())
    })?;
    // Once it is gone, replicas open the database.
    drop(VerifierStore::open_at(&location)?);
    Ok(())
}

#[test]
fn agents_are_read_with_their_newest_history_record_in_one_go() -> Result<()> {
    let Some((server, location)) = database()? else { return Ok(()) };
    let store = VerifierStore::open_at(&location)?;
    let all = enroll(&store, 3)?;
    let history = (1..=3).map(|n| (all[0].clone(), record(n, Timestamp::now()))).collect();
    store.commit(Batch { history, ..Batch::default() }, 0)?;
    let wanted = [all[2].clone(), "missing".to_owned(), all[0].clone()];
    let read = store.agents_with_newest_history(&wanted)?;
    let shown: Vec<(String, Option<u64>)> = read
        .iter()
        .map(|(id, r)| {
            (id.clone(), r.as_ref().ok().and_then(|(_, h)| h.as_ref().map(|h| h.sequence)))
        })
        .collect();
    assert_eq!(shown, [(all[0].clone(), Some(3)), (all[2].clone(), None)]);
    // A record that cannot be decoded is its agent's error alone.
    server.psql(
        "keylime",
        &format!(
            "UPDATE verifier_agents SET record = '\\x00ff'::bytea WHERE agent_id = '{}'",
            all[2]
        ),
    )?;
    let read = store.agents_with_newest_history(&wanted)?;
    assert!(read[0].1.is_ok() && read[1].1.is_err(), "{read:?}");
    Ok(())
}
