//! kctl and keylime_tenant against the real registrar: what an operator's scripts read.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kl_tests::daemon::{self, KCTL, Program, TENANT};
use kl_tests::deployment::Deployment;
use kl_tests::{Result, err};
use serde_json::Value;

use crate::{OUTCOME_TIMEOUT, agent_settings, tpm_and_deployment};

/// A tenant config pointing kctl at the deployment's TLS files and the registrar.
fn tenant_config(deployment: &Deployment, registrar_port: u16) -> Result<std::path::PathBuf> {
    let mut t = toml::Table::new();
    t.insert("keylime_dir".into(), deployment.keylime_dir().display().to_string().into());
    t.insert("registrar_ip".into(), "127.0.0.1".into());
    t.insert("registrar_port".into(), i64::from(registrar_port).into());
    deployment.write_config("tenant.conf", &t)
}

fn run(program: Program, config: &std::path::Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(daemon::binary(program)?).arg("--config").arg(config).args(args).output()?)
}

fn json(out: &Output) -> Result<Value> {
    serde_json::from_slice(&out.stdout).map_err(|e| {
        err(format!(
            "not one JSON document ({e}); stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kctl_and_the_tenant_list_show_and_delete_registered_agents() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let registrar_config = deployment.registrar_config(daemon::free_port()?, &tpm.ca_dir(), true);
    let registrar = deployment.start_registrar(&registrar_config)?;
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let agent_id = agent.uuid()?;
    let config = tenant_config(&deployment, registrar.port())?;

    // Wait until the agent shows up, as a script polling `kctl registrar list` would.
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    let listed = loop {
        let out = run(KCTL, &config, &["registrar", "list", "-o", "json"])?;
        if out.status.code() != Some(0) {
            return Err(err(format!(
                "kctl registrar list: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let doc = json(&out)?;
        let found = doc["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["agent_id"] == agent_id.as_str()).cloned());
        if let Some(record) = found {
            break record;
        }
        if Instant::now() > deadline {
            return Err(err(format!("{agent_id} never listed: {doc}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed["registration_count"], 1);
    assert_eq!(listed["ek_certificate_verified"], true);
    assert!(listed["ak_public"].as_str().is_some_and(|s| !s.is_empty()));

    let show = run(KCTL, &config, &["registrar", "show", &agent_id, "-o", "json"])?;
    assert_eq!(show.status.code(), Some(0));
    assert_eq!(json(&show)?["agent_id"], agent_id.as_str());
    let unknown = run(KCTL, &config, &["registrar", "show", "no-such-agent", "-o", "json"])?;
    assert_eq!(unknown.status.code(), Some(3), "show of an unknown id exits 3");
    assert!(unknown.stdout.is_empty());

    // The guide's command lists it too.
    let reglist = run(TENANT, &config, &["-c", "reglist"])?;
    assert_eq!(reglist.status.code(), Some(0), "{}", String::from_utf8_lossy(&reglist.stderr));
    assert!(String::from_utf8_lossy(&reglist.stdout).contains(&agent_id));

    // Delete is idempotent.
    let absent = run(KCTL, &config, &["registrar", "delete", "no-such-agent", "-o", "json"])?;
    assert_eq!(json(&absent)?["changed"], false);
    let deleted = run(TENANT, &config, &["-u", &agent_id, "-c", "regdelete"])?;
    assert_eq!(deleted.status.code(), Some(0), "{}", String::from_utf8_lossy(&deleted.stderr));
    let gone = run(KCTL, &config, &["registrar", "show", &agent_id, "-o", "json"])?;
    assert_eq!(gone.status.code(), Some(3));
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_told_why_it_is_refused() -> Result<()> {
    let deployment = Deployment::new()?;
    let verifier_config = deployment.verifier_config(daemon::free_port()?, 1, 1.0);
    let verifier = deployment.start_verifier(&verifier_config)?;
    // Another deployment's admin certificate, with this deployment's CA to check the server.
    let other = Deployment::new()?;
    std::fs::copy(deployment.tls().ca_cert(), other.tls().ca_cert())?;
    let config = other.tenant_config(verifier.port(), 1)?;

    let out = run(KCTL, &config, &["agents", "show", "some-agent", "-o", "json"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("refused this client")
            && stderr.contains("not issued by a CA the server trusts")
            && stderr.contains("client-cert.crt"),
        "says why and which certificate: {stderr}"
    );
    assert!(!stderr.contains("Cancelled") && !stderr.contains("canceled"), "{stderr}");
    assert!(out.stdout.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kctl_json_has_null_for_what_is_absent_and_uuid_for_the_agent() -> Result<()> {
    let Some(sys) = crate::attestation::System::start()? else { return Ok(()) };
    let id = sys.agent_id.as_str();

    // Registered, not enrolled: listed with state `not_enrolled` and no settings.
    let (code, list) = sys.kctl_json(&["agents", "list"])?;
    assert_eq!(code, 0);
    let entry = list["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["uuid"] == id).cloned())
        .ok_or_else(|| err(format!("{id} not listed: {list}")))?;
    assert_eq!(entry["state"], "not_enrolled");
    assert_eq!(
        (entry["enrolled"].clone(), entry["registered"].clone()),
        (false.into(), true.into())
    );
    for key in ["runtime_policy", "measured_boot_policy", "pcr_policy", "last_verdict"] {
        assert_eq!(entry.get(key), Some(&Value::Null), "{key} in {entry}");
    }

    // Enrolled without any policy: each is null, not "".
    let (code, enrolled) = sys.kctl_json(&["agents", "enroll", id])?;
    assert_eq!(code, 0, "{enrolled}");
    let shown = sys.show()?;
    for doc in [&enrolled, &shown] {
        assert_eq!(doc["uuid"], id);
        for key in ["runtime_policy", "measured_boot_policy", "pcr_policy"] {
            assert_eq!(doc.get(key), Some(&Value::Null), "{key} in {doc}");
        }
    }

    // The registrar's record and delete answer name the agent `uuid`, `agent_id` kept too.
    let (code, record) = sys.kctl_json(&["registrar", "show", id])?;
    assert_eq!(code, 0);
    assert_eq!((record["uuid"].as_str(), record["agent_id"].as_str()), (Some(id), Some(id)));
    let (_, listed) = sys.kctl_json(&["registrar", "list"])?;
    assert!(
        listed["agents"].as_array().is_some_and(|a| a.iter().all(|r| r["uuid"] == r["agent_id"]))
    );
    let (_, history) = sys.kctl_json(&["agents", "attestations", id])?;
    assert_eq!(history["uuid"], id);
    let (code, unenrolled) = sys.kctl_json(&["agents", "unenroll", id])?;
    assert_eq!((code, unenrolled["uuid"].as_str()), (0, Some(id)));
    let (code, deleted) = sys.kctl_json(&["registrar", "delete", id])?;
    assert_eq!(
        (code, deleted["uuid"].as_str(), deleted["changed"].clone()),
        (0, Some(id), true.into())
    );
    Ok(())
}
