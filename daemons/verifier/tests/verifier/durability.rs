//! Restarts and retention.

use kl_proto::verifier::v1 as pb;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{DEADLINE, Fixture, TestResult, https_webhook_receiver, webhook_receiver};

#[tokio::test]
async fn a_restarted_verifier_continues_without_reenrolment_or_lost_events() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    let before = fx.wait_for(&agent.id, "three passes", |s| s.attestation_count >= 3).await?;
    let events_before =
        fx.events_until(0, |e| e.kind == pb::EventKind::StateChanged as i32).await?;

    fx.stop_verifier().await?;
    let stopped = kl_store::verifier::VerifierStore::open(&kl_verifier::store_path(&fx.config))?;
    let stored = stopped.get_agent(&agent.id)?.ok_or("agent not stored")?;
    assert!(stored.attestation_count >= before.attestation_count, "state was committed");
    drop(stopped);
    fx.start_verifier().await?;

    let after = fx
        .wait_for(&agent.id, "more passes", |s| s.attestation_count > stored.attestation_count)
        .await?;
    assert_eq!(after.state, pb::AgentState::Passed as i32);
    assert!(after.ima_offset >= before.ima_offset, "IMA progress kept");
    // A file measured after the restart is still caught, from the stored offset.
    agent.with(|m| m.ima.measure("/opt/new", b"new"));
    let failed = fx.wait_state(&agent.id, pb::AgentState::Failed).await?;
    let finding = &failed.last_verdict.ok_or("no verdict")?.findings[0];
    assert_eq!(finding.path.as_deref(), Some("/opt/new"));
    // Every event from before the restart is still there, with the same cursors.
    let last_before = events_before.last().map(|e| e.cursor).ok_or("no events")?;
    let replayed = fx.events_until(0, |e| e.cursor == last_before).await?;
    assert_eq!(
        replayed.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        events_before.iter().map(|e| e.cursor).collect::<Vec<_>>()
    );
    let newer =
        fx.events_until(last_before, |e| e.kind == pb::EventKind::AttestationFailed as i32).await?;
    assert!(newer.iter().all(|e| e.cursor > last_before));
    fx.stop_verifier().await
}

/// A crash can leave history records newer than the stored entry that numbers them (routine
/// entries are checkpointed less often); a restarted verifier numbers on from the newest.
#[tokio::test]
async fn history_numbering_continues_after_a_crash_left_the_entry_behind() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_for(&agent.id, "three passes", |s| s.attestation_count >= 3).await?;
    fx.stop_verifier().await?;
    let store = kl_store::verifier::VerifierStore::open(&kl_verifier::store_path(&fx.config))?;
    let newest = store.last_history_sequence(&agent.id)?.ok_or("no history")?;
    let mut entry = store.get_agent(&agent.id)?.ok_or("agent not stored")?;
    let count = entry.attestation_count;
    // Both move together, one per round.
    entry.attestation_count = 1;
    entry.history_sequence = 1;
    store.commit(kl_store::verifier::Batch { agents: vec![entry], ..Default::default() }, 0)?;
    drop(store);
    fx.start_verifier().await?;
    fx.wait_for(&agent.id, "a pass after the restart", |s| s.attestation_count > count).await?;
    let request = pb::ListAttestationsRequest { agent_id: agent.id.clone(), ..Default::default() };
    let history = fx.admin().await?.list_attestations(request).await?.into_inner();
    let sequences: Vec<u64> = history.attestations.iter().map(|a| a.sequence).collect();
    assert!(sequences[0] > newest, "numbered on from {newest}: {sequences:?}");
    assert!(sequences.windows(2).all(|w| w[0] > w[1]), "no sequence reused: {sequences:?}");
    fx.stop_verifier().await
}

/// Seconds and nanoseconds of a protobuf time, comparable.
fn instant(t: Option<&prost_types::Timestamp>) -> Option<(i64, i32)> {
    t.map(|t| (t.seconds, t.nanos))
}

/// A crash leaves a passing agent's stored entry up to one checkpoint behind its history (its
/// routine rounds are recorded; the entry is rewritten every few seconds). What clients were
/// shown before the crash (count, times, the last verdict) is never taken back afterwards.
#[tokio::test]
async fn a_crash_that_left_the_entry_behind_takes_back_nothing_clients_saw() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    let shown = fx.wait_for(&agent.id, "five passes", |s| s.attestation_count >= 5).await?;
    fx.stop_verifier().await?;
    // The entry as a crash right after the first pass would have left it: stored with the
    // state change, then only history records.
    let store = kl_store::verifier::VerifierStore::open(&kl_verifier::store_path(&fx.config))?;
    let first = store.history(&agent.id, Some(2), 1)?.pop().ok_or("no first record")?;
    let mut entry = store.get_agent(&agent.id)?.ok_or("agent not stored")?;
    entry.attestation_count = 1;
    entry.history_sequence = 1;
    entry.last_attestation_at = Some(first.at);
    entry.last_success_at = Some(first.at);
    entry.last_verdict = first.verdict.clone();
    store.commit(kl_store::verifier::Batch { agents: vec![entry], ..Default::default() }, 0)?;
    drop(store);

    fx.start_verifier().await?;
    let after = fx.status(&agent.id).await?;
    assert!(
        after.attestation_count >= shown.attestation_count,
        "count went from {} to {}",
        shown.attestation_count,
        after.attestation_count
    );
    for (what, before, now) in [
        ("last_attestation_at", &shown.last_attestation_at, &after.last_attestation_at),
        ("last_success_at", &shown.last_success_at, &after.last_success_at),
    ] {
        assert!(instant(now.as_ref()) >= instant(before.as_ref()), "{what}: {before:?} -> {now:?}");
    }
    let verdict_at =
        |s: &pb::AgentStatus| instant(s.last_verdict.as_ref().and_then(|v| v.at.as_ref()));
    assert!(verdict_at(&after) >= verdict_at(&shown), "the last verdict went back in time");
    assert_eq!(after.state, pb::AgentState::Passed as i32);
    fx.stop_verifier().await
}

#[tokio::test]
async fn history_is_pruned_to_the_configured_count() -> TestResult {
    let mut fx = Fixture::start(|c| c.history_max_entries = 3).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_for(&agent.id, "six passes", |s| s.attestation_count >= 6).await?;
    let request = pb::ListAttestationsRequest { agent_id: agent.id.clone(), ..Default::default() };
    let history = fx.admin().await?.list_attestations(request).await?.into_inner();
    let sequences: Vec<u64> = history.attestations.iter().map(|a| a.sequence).collect();
    assert!(sequences.len() <= 3 && sequences.len() >= 2, "{sequences:?}");
    assert!(sequences.windows(2).all(|w| w[0] > w[1]), "newest first: {sequences:?}");
    assert!(sequences[0] >= 5, "{sequences:?}");
    assert!(history.attestations.iter().all(|a| a.verdict.as_ref().is_some_and(|v| v.passed)));
    fx.stop_verifier().await
}

#[tokio::test]
async fn webhooks_are_retried_until_acknowledged_across_a_restart() -> TestResult {
    let status = Arc::new(AtomicU16::new(503));
    let (hook, mut deliveries, _server) = webhook_receiver(status.clone()).await?;
    let mut fx = Fixture::start(|c| {
        c.webhook_url = Some(format!("http://{hook}/"));
        c.webhook_secret = Some("k".to_owned());
    })
    .await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
    // Refused twice: the first event is offered again.
    for _ in 0..2 {
        let refused = tokio::time::timeout(DEADLINE, deliveries.recv()).await?.ok_or("closed")?;
        assert_eq!(refused.status, 503);
        let json: serde_json::Value = serde_json::from_slice(&refused.body)?;
        assert_eq!(json["cursor"], 1);
    }
    fx.stop_verifier().await?;
    status.store(200, Ordering::SeqCst);
    while deliveries.try_recv().is_ok() {}
    fx.start_verifier().await?;
    // Every event, from the first, in order, once acknowledged.
    let mut expected = 1u64;
    while expected <= 3 {
        let delivery = tokio::time::timeout(DEADLINE, deliveries.recv()).await?.ok_or("closed")?;
        let json: serde_json::Value = serde_json::from_slice(&delivery.body)?;
        assert_eq!(json["cursor"], expected, "{json}");
        assert_eq!(
            delivery.signature.as_deref(),
            Some(kl_verifier::webhook_signature("k", &delivery.body).as_str())
        );
        expected += 1;
    }
    fx.stop_verifier().await
}

/// An `https://` receiver whose certificate chains to the deployment CA gets the events; with
/// `webhook_ca` naming another CA, the verifier refuses the receiver's certificate and keeps
/// retrying without delivering.
#[tokio::test]
async fn https_webhooks_check_the_receivers_certificate() -> TestResult {
    for trusted in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let hook = listener.local_addr()?;
        let other_ca = tempfile::tempdir()?;
        let other = kl_svc::tls::CertificateAuthority::generate("another CA")?;
        let other_file = other_ca.path().join("ca.pem");
        std::fs::write(&other_file, other.cert_pem())?;
        let mut fx = Fixture::start(|c| {
            c.webhook_url = Some(format!("https://{hook}/events"));
            c.webhook_secret = Some("k".to_owned());
            c.webhook_ca = (!trusted).then(|| other_file.clone());
        })
        .await?;
        // The verifier's own server certificate (deployment CA, 127.0.0.1) serves as the
        // receiver's.
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let (mut deliveries, _server) =
            https_webhook_receiver(listener, fx.tls().server_identity()?, status, refused.clone())?;
        let agent = fx.agent().await?;
        fx.put_policy("p", &agent).await?;
        fx.enroll(&agent, "p").await?;
        fx.wait_state(&agent.id, pb::AgentState::Passed).await?;
        if trusted {
            let delivery =
                tokio::time::timeout(DEADLINE, deliveries.recv()).await?.ok_or("closed")?;
            let json: serde_json::Value = serde_json::from_slice(&delivery.body)?;
            assert_eq!(json["cursor"], 1, "{json}");
            assert_eq!(
                delivery.signature.as_deref(),
                Some(kl_verifier::webhook_signature("k", &delivery.body).as_str())
            );
        } else {
            let started = std::time::Instant::now();
            while refused.load(Ordering::SeqCst) < 2 {
                assert!(started.elapsed() < DEADLINE, "the verifier never tried the receiver");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert!(deliveries.try_recv().is_err(), "delivered to an untrusted receiver");
        }
        fx.stop_verifier().await?;
    }
    Ok(())
}

/// A webhook that cannot work (its CA file is missing) stops the start instead of leaving
/// events undelivered.
#[tokio::test]
async fn an_unusable_webhook_ca_refuses_the_start() -> TestResult {
    let missing = std::env::temp_dir().join("no-such-dir-kl").join("ca.pem");
    let started = Fixture::start(|c| {
        c.webhook_url = Some("https://127.0.0.1:1/events".to_owned());
        c.webhook_ca = Some(missing.clone());
    })
    .await;
    let message = started.err().map(|e| e.to_string()).ok_or("the verifier started")?;
    assert!(message.contains("webhook_ca") && message.contains("no-such-dir-kl"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_verifier_generates_its_ca_on_first_start() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    fx.stop_verifier().await?;
    let home = fx.dir().join("fresh");
    fx.config.keylime_dir = home.clone();
    fx.config.tls_dir = kl_svc::tls::TlsDir::Generate;
    fx.start_verifier().await?;
    for file in ["cacert.crt", "cakey.pem", "server-cert.crt", "client-cert.crt"] {
        assert!(home.join("cv_ca").join(file).exists(), "{file}");
    }
    fx.stop_verifier().await
}

#[tokio::test]
async fn events_older_than_the_age_limit_are_pruned_and_their_cursors_refused() -> TestResult {
    let mut fx = Fixture::start(|_| {}).await?;
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    let events = fx.events_until(0, |e| e.kind == pb::EventKind::StateChanged as i32).await?;
    let last = events.last().map(|e| e.cursor).ok_or("no events")?;
    fx.stop_verifier().await?;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Pruning runs at start-up: with no retention everything older than now goes.
    fx.config.history_max_age = std::time::Duration::ZERO;
    fx.start_verifier().await?;
    let request =
        pb::WatchEventsRequest { from_cursor: 1, agent_id: String::new(), until_cursor: 0 };
    let mut admin = fx.admin().await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match admin.watch_events(request.clone()).await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
                break;
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Ok(_) => return Err("cursor 1 was never pruned".into()),
        }
    }
    // New events continue after the old cursors.
    assert!(fx.put_policy("q", &agent).await?);
    let newer = fx.events_until(last, |_| true).await?;
    assert!(newer.iter().all(|e| e.cursor > last), "{newer:?}");
    fx.stop_verifier().await
}

/// A tmpfs of `size` on a new directory, unmounted when dropped, also when the test fails
/// (lazily: the verifier may still hold its file open). Mounting needs root.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            return Err(format!(
                "mount -t tmpfs on {}: {status} (needs root)",
                dir.path().display()
            )
            .into());
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the file system holding it is full (ENOSPC).
fn fill(path: &std::path::Path) -> TestResult {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0x5au8; 64 << 10];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The value of the metric line starting with `name` in a scrape of `addr`.
async fn metric(
    addr: std::net::SocketAddr,
    name: &str,
) -> Result<Option<f64>, crate::support::BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: verifier\r\n\r\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()))
}

/// A runtime policy of about `bytes` (allowlist lines), to make a write that needs space.
fn big_policy(name: &str, bytes: usize) -> pb::PutRuntimePolicyRequest {
    let document: String =
        (0..bytes / 90).map(|n| format!("{n:064x}  /opt/filler/{n:08}\n")).collect();
    pb::PutRuntimePolicyRequest {
        name: name.to_owned(),
        document: document.into_bytes(),
        ..Default::default()
    }
}

/// The verifier's state directory on a 4 MiB tmpfs, filled while an agent attests: reads keep
/// answering, operator writes are refused with UNAVAILABLE naming the file and the cause, the
/// metrics say so; once space returns the store is opened again by itself, the held rounds
/// are committed and attestation goes on, and nothing shown before is lost, also across a
/// restart.
#[tokio::test]
async fn a_full_disk_holds_writes_refuses_changes_and_recovers_when_space_returns() -> TestResult {
    let tmpfs = Tmpfs::mount("4m")?;
    let keylime_dir = tmpfs.dir.path().join("verifier");
    let mut fx = Fixture::start(|c| {
        c.keylime_dir = keylime_dir.clone();
        c.metrics_port = Some(0);
    })
    .await?;
    fx.wait_health(ServingStatus::Serving).await?;
    let metrics = fx.metrics_addr.ok_or("no metrics endpoint")?;
    let store = kl_verifier::store_path(&fx.config).display().to_string();
    let agent = fx.agent().await?;
    fx.put_policy("p", &agent).await?;
    fx.enroll(&agent, "p").await?;
    let before = fx.wait_for(&agent.id, "three passes", |s| s.attestation_count >= 3).await?;
    // A second agent, which fails while the disk is full.
    let victim = fx.agent().await?;
    fx.put_policy("v", &victim).await?;
    fx.enroll(&victim, "v").await?;
    fx.wait_state(&victim.id, pb::AgentState::Passed).await?;

    let filler = tmpfs.dir.path().join("filler");
    fill(&filler)?;
    // A write that needs new space fails at once; routine rounds fail once the file must grow.
    let refused = fx.admin().await?.put_runtime_policy(big_policy("big", 600_000)).await;
    let status = refused.err().ok_or("a 600 kB policy was stored on a full disk")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&store), "{status:?}");
    assert!(status.message().contains("No space left on device"), "{status:?}");
    let started = std::time::Instant::now();
    while metric(metrics, "keylime_verifier_store_writable").await? != Some(0.0) {
        assert!(started.elapsed() < DEADLINE, "the store never became unwritable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Load balancers and probes are told: the verifier cannot do its job.
    fx.wait_health(ServingStatus::NotServing).await?;
    let errors = metric(metrics, "keylime_verifier_store_commits_total{result=\"error\"}").await?;
    assert!(errors.is_some_and(|n| n >= 1.0), "failed commits are counted: {errors:?}");

    // Reads answer promptly from memory; rounds go on.
    let during = tokio::time::timeout(Duration::from_secs(5), fx.status(&agent.id)).await??;
    assert!(during.attestation_count >= before.attestation_count);
    assert!(during.last_verdict.is_some(), "the last verdict is shown");
    let listed = tokio::time::timeout(
        Duration::from_secs(5),
        fx.admin().await?.list_agents(pb::ListAgentsRequest::default()),
    )
    .await??;
    assert_eq!(listed.into_inner().agents.len(), 2);
    let later = fx
        .wait_for(&agent.id, "rounds while the disk is full", |s| {
            s.attestation_count > during.attestation_count
        })
        .await?;
    // The history already stored can still be read.
    let request = pb::ListAttestationsRequest {
        agent_id: agent.id.clone(),
        page_size: 5,
        ..Default::default()
    };
    let stored =
        tokio::time::timeout(Duration::from_secs(5), fx.admin().await?.list_attestations(request))
            .await??;
    assert!(!stored.into_inner().attestations.is_empty(), "history reads while the disk is full");
    // A failure now still sends its revocation notice to the other agent.
    victim.with(|m| m.ima.measure("/tmp/evil.sh", b"evil"));
    fx.wait_state(&victim.id, pb::AgentState::Failed).await?;
    let started = std::time::Instant::now();
    while agent.with(|m| m.notices.is_empty()) {
        assert!(started.elapsed() < DEADLINE, "no revocation notice while the disk is full");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Operator changes are refused before anything changes.
    let update = pb::UpdateAgentRequest { agent_id: agent.id.clone(), ..Default::default() };
    let status = fx.admin().await?.update_agent(update).await.err().ok_or("update accepted")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("No space left on device"), "{status:?}");
    assert!(status.message().contains(&store), "{status:?}");
    let status = fx
        .admin()
        .await?
        .put_runtime_policy(big_policy("small", 1000))
        .await
        .err()
        .ok_or("put accepted")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Space returns: the store is opened again, what was held is committed, writes work.
    std::fs::remove_file(&filler)?;
    let started = std::time::Instant::now();
    while metric(metrics, "keylime_verifier_store_writable").await? != Some(1.0) {
        assert!(started.elapsed() < DEADLINE, "the store was never written again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fx.wait_health(ServingStatus::Serving).await?;
    assert!(
        fx.admin().await?.put_runtime_policy(big_policy("small", 1000)).await?.into_inner().changed
    );
    let resumed = fx
        .wait_for(&agent.id, "rounds after space returned", |s| {
            s.attestation_count > later.attestation_count + 2
        })
        .await?;
    assert_eq!(resumed.state, pb::AgentState::Passed as i32);
    let failures = fx
        .events_until(0, |e| {
            e.kind == pb::EventKind::AttestationFailed as i32 && e.agent_id == victim.id
        })
        .await?;
    assert!(!failures.is_empty(), "the failure of the full-disk time was stored");
    let request = pb::ListAttestationsRequest {
        agent_id: agent.id.clone(),
        page_size: 1000,
        ..Default::default()
    };
    let history = fx.admin().await?.list_attestations(request).await?.into_inner().attestations;
    let sequences: Vec<u64> = history.iter().map(|a| a.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] == w[1] + 1) && sequences.last() == Some(&1),
        "the rounds of the full disk were committed, none missing: {sequences:?}"
    );

    fx.stop_verifier().await?;
    fx.start_verifier().await?;
    let restarted = fx.status(&agent.id).await?;
    assert!(restarted.attestation_count >= resumed.attestation_count, "{restarted:?}");
    let request = pb::GetRuntimePolicyRequest { name: "small".to_owned() };
    fx.admin().await?.get_runtime_policy(request).await?;

    // A stop while the disk is full ends promptly (the held writes are reported lost).
    fill(&filler)?;
    let _ = fx.admin().await?.put_runtime_policy(big_policy("big", 600_000)).await;
    let started = std::time::Instant::now();
    while metric(metrics_of(&fx)?, "keylime_verifier_store_writable").await? != Some(0.0) {
        assert!(started.elapsed() < DEADLINE, "the store never became unwritable again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(30), fx.stop_verifier())
        .await
        .map_err(|_| "the verifier did not stop while the disk was full")??;
    std::fs::remove_file(&filler)?;
    drop(fx);
    drop(tmpfs);
    Ok(())
}

fn metrics_of(fx: &Fixture) -> Result<std::net::SocketAddr, crate::support::BoxError> {
    fx.metrics_addr.ok_or_else(|| "no metrics endpoint".into())
}
