//! Operations: the Grafana dashboard in docs/grafana queries only metrics the running daemons
//! export, and shows every one of them; the file decodes under Grafana's dashboard schema.
//!
//! The metric names come from scraping a real registrar, verifier and agent, so the dashboard
//! cannot drift from the code. The schema check runs scripts/check-grafana-dashboard.py in the
//! virtual environment scripts/install-deps.sh makes (`KEYLIME_ANSIBLE_VENV`, set by
//! scripts/test.sh); without it that part is skipped, except when `CI` is set: then it fails.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kl_tests::daemon;
use kl_tests::{Result, err};
use serde_json::Value;

use crate::{OUTCOME_TIMEOUT, agent_settings, tpm_and_deployment};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `GET /metrics`, retried until the endpoint answers (daemons bind it as they start).
fn scrape(port: u16) -> Result<String> {
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        let attempt = (|| -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match attempt {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => {
                let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
                return Ok(body.to_owned());
            }
            Ok(answer) if Instant::now() >= deadline => {
                return Err(err(format!("metrics on port {port}: {answer}")));
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(err(format!("metrics on port {port}: {e}")));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Metric families (`# TYPE` lines) of an exposition.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The `keylime_*` metric names each query of the dashboard reads.
fn queried(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let title = panel["title"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("keylime_") {
                    out.push((title.to_owned(), word.to_owned()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_shows_exactly_the_metrics_the_daemons_export() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let [registrar_metrics, verifier_metrics, agent_metrics] =
        [daemon::free_port()?, daemon::free_port()?, daemon::free_port()?];
    let mut config = deployment.registrar_config(daemon::free_port()?, &tpm.ca_dir(), true);
    config.insert("metrics_port".into(), i64::from(registrar_metrics).into());
    let registrar = deployment.start_registrar(&config)?;
    let mut config = deployment.verifier_config(daemon::free_port()?, registrar.port(), 2.0);
    config.insert("metrics_port".into(), i64::from(verifier_metrics).into());
    let _verifier = deployment.start_verifier(&config)?;
    let mut settings = agent_settings(&tpm, registrar.port());
    settings.extra.insert("metrics_port".into(), i64::from(agent_metrics).into());
    let _agent = deployment.start_agent("agent", &settings)?;

    let mut exported = BTreeSet::new();
    for (name, port) in
        [("registrar", registrar_metrics), ("verifier", verifier_metrics), ("agent", agent_metrics)]
    {
        let text = scrape(port)?;
        let found = families(&text);
        assert!(found.iter().any(|f| f.starts_with(&format!("keylime_{name}_"))), "{name}: {text}");
        exported.extend(found);
    }

    let path = workspace().join("docs/grafana/keylime-rs.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let queries = queried(&dashboard);
    let base = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
            .unwrap_or(name)
            .to_owned()
    };
    for (panel, name) in &queries {
        assert!(exported.contains(&base(name)), "panel {panel:?}: {name} is not exported");
    }
    let shown: BTreeSet<String> = queries.iter().map(|(_, n)| base(n)).collect();
    let missing: Vec<&String> = exported.difference(&shown).collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");

    match crate::ansible::venv()? {
        Some(venv) => {
            let mut check = Command::new(venv.join("bin").join("python"));
            // The schema only: which metrics are queried is checked above, against the daemons.
            check.arg(workspace().join("scripts/check-grafana-dashboard.py")).arg(&path);
            let out = check.output()?;
            assert!(
                out.status.success(),
                "check-grafana-dashboard.py: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!("KEYLIME_ANSIBLE_VENV not set: the schema check is skipped"),
    }
    Ok(())
}
