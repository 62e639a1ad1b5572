//! `kctl events watch` as a long-running consumer: across verifier crashes and restarts it
//! prints every event once, in order, and keeps running; `--until-now` ends a one-shot read;
//! events pruned before a watch read them are reported as lost.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kl_tests::daemon::{self, KCTL};
use kl_tests::{Result, err};
use serde_json::Value;

use crate::OUTCOME_TIMEOUT;
use crate::attestation::{System, check};

/// `kctl events watch` running as a child process, its output collected line by line.
struct Watch {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn spawn(sys: &System, args: &[&str]) -> Result<Watch> {
        let mut child = Command::new(daemon::binary(KCTL)?)
            .arg("--config")
            .arg(&sys.tenant)
            .args(["events", "watch", "-o", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(std::result::Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().ok_or_else(|| err("no stdout"))?));
        let stderr = collect(Box::new(child.stderr.take().ok_or_else(|| err("no stderr"))?));
        Ok(Watch { child, stdout, stderr })
    }

    fn events(&self) -> Result<Vec<Value>> {
        let lines = self.stdout.lock().map(|l| l.clone()).unwrap_or_default();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).map_err(|e| err(format!("{l:?}: {e}"))))
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    fn wait_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Watch) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + OUTCOME_TIMEOUT;
        while !done(self)? {
            if let Some(status) = self.child.try_wait()? {
                return Err(err(format!(
                    "the watch ended ({status}) before {what}: {}",
                    self.stderr()
                )));
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "{what} did not happen within {OUTCOME_TIMEOUT:?}; stderr: {}; stdout: {:?}",
                    self.stderr(),
                    self.events()?
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn wait_for_cursor(&mut self, cursor: u64) -> Result<()> {
        self.wait_until(&format!("cursor {cursor}"), |w| {
            Ok(w.events()?.iter().any(|e| e["cursor"].as_u64() >= Some(cursor)))
        })
    }

    fn wait_for_stderr(&mut self, text: &str) -> Result<()> {
        self.wait_until(&format!("\"{text}\" on stderr"), |w| Ok(w.stderr().contains(text)))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event the verifier holds now, by `kctl events watch --until-now`.
fn events_so_far(sys: &System) -> Result<Vec<Value>> {
    let out = sys.run(KCTL, &["events", "watch", "--until-now", "-o", "json"])?;
    check(&out, "kctl events watch --until-now")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| err(format!("{l:?}: {e}"))))
        .collect()
}

fn cursors(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["cursor"].as_u64()).collect()
}

fn last_cursor(events: &[Value]) -> Result<u64> {
    cursors(events).last().copied().ok_or_else(|| err("no events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_verifier_restarts_and_sees_every_event_once() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    let (code, doc) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!(code, 0, "{doc}");
    let mut watch = Watch::spawn(&sys, &[])?;
    let before = events_so_far(&sys)?;
    assert!(before.len() >= 2, "policy_changed and enrolled at least: {before:?}");
    watch.wait_for_cursor(last_cursor(&before)?)?;

    // A crash: the stream breaks mid-flight. Events happen after the verifier is back, before
    // and after the watch has reconnected.
    sys.verifier.kill()?;
    watch.wait_for_stderr("went away")?;
    sys.verifier.restart()?;
    let (code, _) = sys.kctl_json(&["agents", "stop", &sys.agent_id])?;
    assert_eq!(code, 0);
    watch.wait_for_stderr("reconnected, resuming after cursor")?;
    let (code, _) = sys.kctl_json(&["agents", "resume", &sys.agent_id])?;
    assert_eq!(code, 0);
    sys.wait_state("passed")?;

    // A graceful restart (SIGTERM), as systemd does it.
    let seen = last_cursor(&events_so_far(&sys)?)?;
    watch.wait_for_cursor(seen)?;
    sys.verifier.restart()?;
    let (code, _) = sys.kctl_json(&["agents", "stop", &sys.agent_id])?;
    assert_eq!(code, 0);

    let all = events_so_far(&sys)?;
    watch.wait_for_cursor(last_cursor(&all)?)?;
    let watched = watch.events()?;
    // Later events (none are expected from a stopped agent) may follow; what both saw is equal.
    assert_eq!(watched.get(..all.len()), Some(&all[..]), "every event once, in order");
    let numbers = cursors(&watched);
    assert_eq!(numbers.len(), watched.len(), "every line has a cursor");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "no gap: {numbers:?}");
    assert!(
        watched.iter().any(|e| e["kind"] == "state_changed" && e["state"] == "stopped"),
        "{watched:?}"
    );
    let stderr = watch.stderr();
    assert_eq!(stderr.matches("went away").count(), 2, "{stderr}");
    assert!(
        stderr.contains(&format!("reconnected, resuming after cursor {seen}")),
        "resumed after the last event printed: {stderr}"
    );
    assert!(watch.child.try_wait()?.is_none(), "the watch keeps running");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_now_prints_the_existing_events_and_reports_pruned_ones() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    sys.apply_policy("other")?;
    let (code, _) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base"])?;
    assert_eq!(code, 0);

    let started = Instant::now();
    let out = sys.run(KCTL, &["events", "watch", "--until-now", "-o", "json"])?;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < OUTCOME_TIMEOUT);
    let existing: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let kinds: Vec<&str> = existing.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(&kinds[..3], ["policy_changed", "policy_changed", "enrolled"], "{existing:?}");
    assert_eq!(existing[0]["uuid"], Value::Null, "a policy event is about no agent");
    assert_eq!(existing[2]["uuid"], sys.agent_id.as_str());
    // Only this agent's events: the stream still ends although the newest event may be
    // about something else.
    let out = sys.run(
        KCTL,
        &["events", "watch", "--until-now", "--uuid", &sys.agent_id, "--from", "1", "-o", "json"],
    )?;
    check(&out, "watch --uuid --until-now")?;
    let filtered = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(filtered.lines().count() >= 1, "{filtered}");
    assert!(filtered.lines().all(|l| l.contains(&sys.agent_id)), "{filtered}");

    // The verifier restarts with a one-second retention: what a watcher at cursor 1 had not
    // read is gone, and it says how much.
    let newest = last_cursor(&existing)?;
    std::thread::sleep(Duration::from_secs(3));
    let mut config = sys.deployment.verifier_config(sys.verifier.port(), sys.registrar.port(), 1.0);
    config.insert("history_max_age".into(), 1.into());
    sys.verifier.stop()?;
    sys.verifier = sys.deployment.start_verifier(&config)?;
    sys.verifier.wait_for_output("pruned", OUTCOME_TIMEOUT)?;
    sys.tenant = sys.deployment.tenant_config(sys.verifier.port(), sys.registrar.port())?;
    let out = sys.run(KCTL, &["events", "watch", "--from", "1", "--until-now", "-o", "json"])?;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let after: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    // "... continuing after cursor X": every event up to X was pruned, those after it follow.
    let resumed: u64 = stderr
        .split("continuing after cursor ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| err(format!("no loss reported: {stderr}")))?;
    assert!(resumed >= newest, "everything read before was pruned: {stderr}");
    assert!(
        stderr.contains(&format!("{} events after cursor 1 were pruned", resumed - 1)),
        "the events from 2 to {resumed} are reported lost: {stderr}"
    );
    if let Some(first) = after.first() {
        assert_eq!(first["cursor"].as_u64(), Some(resumed + 1), "no gap after the loss");
    }
    Ok(())
}
