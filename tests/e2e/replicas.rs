//! Two verifier replicas on one PostgreSQL database, three agents on swtpm: a replica that joins
//! takes a share of the fleet, either answers for the whole fleet, and a replica killed with
//! SIGKILL has its agents taken over by the other, which still finds a tampered agent.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kl_tests::daemon::{self, KCTL};
use kl_tests::postgres::Postgres;
use kl_tests::swtpm::Swtpm;
use kl_tests::{Result, err};
use serde_json::Value;

use crate::OUTCOME_TIMEOUT;
use crate::attestation::{System, Webhook};
use crate::postgres::database_settings;

/// `kctl -o json` with the tenant config `tenant` (pointing at one replica).
fn kctl(tenant: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new(daemon::binary(KCTL)?)
        .arg("--config")
        .arg(tenant)
        .args(args)
        .args(["-o", "json"])
        .output()?;
    if !out.status.success() {
        return Err(err(format!(
            "kctl {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The events of the whole outbox through the replica of `tenant`.
fn events(tenant: &Path) -> Result<Vec<Value>> {
    let out = Command::new(daemon::binary(KCTL)?)
        .arg("--config")
        .arg(tenant)
        .args(["events", "watch", "--until-now", "-o", "json"])
        .output()?;
    if !out.status.success() {
        return Err(err(format!("events watch: {}", String::from_utf8_lossy(&out.stderr))));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).map_err(|e| err(format!("{line}: {e}"))))
        .collect()
}

/// Waits until `done` holds of what the replica of `tenant` shows of agent `id`.
fn wait_agent(tenant: &Path, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    let mut last = Value::Null;
    loop {
        last = kctl(tenant, &["agents", "show", id]).unwrap_or(last);
        if done(&last) {
            return Ok(last);
        }
        if Instant::now() > deadline {
            return Err(err(format!("agent {id}: {what} did not happen: {last}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The holders of live leases and how many agents each holds.
fn lease_holders(server: &Postgres) -> Result<Vec<(String, u64)>> {
    let text = server.psql(
        "verifier",
        "SELECT holder || '=' || count(*) FROM verifier_leases WHERE expires_at > now() \
         GROUP BY holder ORDER BY holder",
    )?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (holder, count) =
                line.rsplit_once('=').ok_or_else(|| err(format!("lease row {line:?}")))?;
            Ok((holder.to_owned(), count.parse().map_err(|e| err(format!("{line}: {e}")))?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_takes_a_share_and_a_killed_ones_agents_are_taken_over() -> Result<()> {
    let Some(server) = Postgres::start()? else { return Ok(()) };
    let (Some(tpm2), Some(tpm3)) = (Swtpm::manufacture()?, Swtpm::manufacture()?) else {
        return Ok(());
    };
    let mut settings = database_settings(&server, "verifier")?;
    settings.insert("agent_lease_seconds".into(), 3.into());
    // Both replicas name the one receiver; one replica at a time delivers.
    let webhook = Webhook::start()?;
    settings
        .insert("webhook_url".into(), format!("http://127.0.0.1:{}/events", webhook.port).into());
    let Some(mut sys) =
        System::start_with(toml::Table::new(), &[&tpm2, &tpm3], settings.clone(), true)?
    else {
        return Ok(());
    };
    let tenant1 = sys.tenant.clone();
    let tpms = [tpm2, tpm3];
    let others = sys.more_agents(&tpms)?;
    let mut ids = vec![sys.agent_id.clone()];
    ids.extend(others.iter().map(|(_, id)| id.clone()));

    // Enrolled through replica 1, the only one yet: it takes the whole fleet.
    sys.apply_policy("base")?;
    for id in &ids {
        let enrolled = kctl(&tenant1, &["agents", "enroll", id, "--runtime-policy", "base"])?;
        assert_eq!(enrolled["changed"], true, "{enrolled}");
    }
    for id in &ids {
        wait_agent(&tenant1, id, "passing", |a| a["state"] == "passed")?;
    }
    assert_eq!(lease_holders(&server)?.len(), 1);

    // A second replica joins: the same database, CA and keylime_dir, its own port (and so its
    // own default id, host:port). It answers for the whole fleet at once, and the fleet is
    // divided between the two.
    let mut config2 =
        sys.deployment.verifier_config(daemon::free_port()?, sys.registrar.port(), 1.0);
    config2.extend(settings);
    let mut replica2 = sys.deployment.start_verifier_named("verifier2", &config2)?;
    let tenant2 = sys.deployment.tenant_config_named(
        "tenant2.conf",
        replica2.port(),
        sys.registrar.port(),
    )?;
    for id in &ids {
        wait_agent(&tenant2, id, "passing", |a| a["state"] == "passed")?;
    }
    let listed = kctl(&tenant2, &["agents", "list"])?;
    let listed: BTreeSet<String> = listed["agents"]
        .as_array()
        .map(|agents| {
            agents
                .iter()
                .filter(|a| a["state"] == "passed")
                .filter_map(|a| a["uuid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed, ids.iter().cloned().collect::<BTreeSet<_>>());
    // Enrolling again through the other replica changes nothing.
    let again = kctl(&tenant2, &["agents", "enroll", &ids[1], "--runtime-policy", "base"])?;
    assert_eq!(again["changed"], false, "{again}");

    // Both replicas attest a share of the fleet, and every agent goes on passing.
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    let holders = loop {
        let holders = lease_holders(&server)?;
        if holders.len() == 2 && holders.iter().map(|(_, n)| n).sum::<u64>() == 3 {
            break holders;
        }
        if Instant::now() > deadline {
            return Err(err(format!(
                "the fleet was not divided between the replicas: {holders:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(holders.iter().all(|(_, n)| (1..=2).contains(n)), "{holders:?}");
    for id in &ids {
        let before = kctl(&tenant2, &["agents", "show", id])?["attestation_count"].as_u64();
        wait_agent(&tenant2, id, "attested after the division", |a| {
            a["state"] == "passed" && a["attestation_count"].as_u64() > before
        })?;
    }

    // Operator changes through either replica reach the holder, whichever it is: stopped
    // through one replica, the agent is no longer attested; resumed through the other, it is.
    let third = &ids[2];
    let stopped = kctl(&tenant2, &["agents", "stop", third])?;
    assert_eq!(stopped["changed"], true, "{stopped}");
    let at_stop = wait_agent(&tenant1, third, "stopped", |a| a["state"] == "stopped")?;
    std::thread::sleep(Duration::from_secs(3));
    let still = kctl(&tenant1, &["agents", "show", third])?;
    assert_eq!(still["attestation_count"], at_stop["attestation_count"], "{still}");
    let resumed = kctl(&tenant1, &["agents", "resume", third])?;
    assert_eq!(resumed["changed"], true, "{resumed}");
    wait_agent(&tenant2, third, "attested after the resume", |a| {
        a["state"] == "passed"
            && a["attestation_count"].as_u64() > at_stop["attestation_count"].as_u64()
    })?;
    // Unenrolled through one and enrolled again through the other: a new history, nothing of
    // the old enrolment written into it.
    let before = kctl(&tenant1, &["agents", "show", third])?["attestation_count"].as_u64();
    assert_eq!(kctl(&tenant2, &["agents", "unenroll", third])?["changed"], true);
    let again = kctl(&tenant1, &["agents", "enroll", third, "--runtime-policy", "base"])?;
    assert_eq!(again["changed"], true, "{again}");
    wait_agent(&tenant2, third, "attested after enrolling again", |a| {
        a["state"] == "passed" && a["attestation_count"].as_u64() >= Some(1)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let history = kctl(&tenant2, &["agents", "attestations", third])?;
    let sequences: Vec<u64> = history["attestations"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["sequence"].as_u64()).collect())
        .unwrap_or_default();
    let shown = kctl(&tenant2, &["agents", "show", third])?;
    assert!(
        sequences.first().copied() < before && shown["attestation_count"].as_u64() < before,
        "a new history: {sequences:?} {shown} (before: {before:?})"
    );

    // Replica 1 is killed; agent 1 is tampered with. Replica 2 takes every agent over: the
    // tampered one fails, the others go on being attested.
    let counts: Vec<u64> = ids
        .iter()
        .map(|id| {
            Ok(kctl(&tenant2, &["agents", "show", id])?["attestation_count"].as_u64().unwrap_or(0))
        })
        .collect::<Result<_>>()?;
    sys.verifier.kill()?;
    let killed = Instant::now();
    sys.ima.measure(&sys.tpm, &sys.agent.ima_log, "/usr/bin/evil", b"evil")?;
    let failed = wait_agent(&tenant2, &ids[0], "failing", |a| a["state"] == "failed")?;
    assert!(failed.to_string().contains("/usr/bin/evil"), "{failed}");
    for (id, before) in ids.iter().zip(&counts).skip(1) {
        wait_agent(&tenant2, id, "attested after the kill", |a| {
            a["state"] == "passed" && a["attestation_count"].as_u64() > Some(*before + 2)
        })?;
    }
    let taken_over = killed.elapsed();
    let holders = lease_holders(&server)?;
    assert_eq!(holders.len(), 1, "one replica left holds every agent: {holders:?}");
    assert_eq!(holders[0].1, 3, "{holders:?}");
    assert!(replica2.exited().is_none(), "{}", replica2.output());

    // Replica 1 comes back: events written by both replicas read through either, in one
    // order without gaps.
    sys.verifier.start_again()?;
    sys.verifier.wait_listening()?;
    let through1 = events(&tenant1)?;
    let through2 = events(&tenant2)?;
    let cursors: Vec<u64> = through2.iter().filter_map(|e| e["cursor"].as_u64()).collect();
    assert_eq!(through1.iter().filter_map(|e| e["cursor"].as_u64()).collect::<Vec<_>>(), cursors);
    assert!(
        cursors.windows(2).all(|w| w[1] == w[0] + 1),
        "cursors in order without gaps: {cursors:?}"
    );
    let kinds_of = |id: &str| -> Vec<String> {
        through1
            .iter()
            .filter(|e| e["uuid"] == id)
            .filter_map(|e| e["kind"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(kinds_of(&ids[0]).contains(&"enrolled".to_owned()), "{through1:?}");
    assert!(kinds_of(&ids[0]).contains(&"attestation_failed".to_owned()), "{through1:?}");

    // The webhook received every event, each once (but for one a killed replica may have
    // delivered without storing its cursor).
    let delivered = || -> Vec<u64> {
        let mut cursors: Vec<u64> = webhook
            .bodies()
            .iter()
            .filter_map(|(_, body)| serde_json::from_str::<Value>(body).ok())
            .filter_map(|event| event["cursor"].as_u64())
            .collect();
        cursors.sort_unstable();
        cursors
    };
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    while !cursors.iter().all(|c| delivered().contains(c)) {
        if Instant::now() > deadline {
            return Err(err(format!("not every event reached the webhook: {:?}", delivered())));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = delivered();
    let mut once = all.clone();
    once.dedup();
    assert!(all.len() - once.len() <= 1, "events delivered twice: {all:?}");
    println!("agents taken over {taken_over:?} after the kill");
    Ok(())
}
