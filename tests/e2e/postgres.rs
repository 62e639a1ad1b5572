//! The registrar and a verifier with their state in PostgreSQL (`database_url`), each on a
//! private server: what they hold survives their restarts and the server's, no redb file is
//! written, and a server that cannot be reached stops the start with one line naming the URL.

use std::path::Path;
use std::time::{Duration, Instant};

use kl_proto::registrar::v1::{AgentRecord, GetAgentRequest};
use kl_tests::daemon::{self, Daemon, KCTL};
use kl_tests::deployment::Deployment;
use kl_tests::postgres::Postgres;
use kl_tests::{Result, err};

use crate::attestation::System;
use crate::{OUTCOME_TIMEOUT, agent_settings, tpm_and_deployment};

/// `database_url` and `database_password_file` of a fresh database `name` on `server`.
pub(crate) fn database_settings(server: &Postgres, name: &str) -> Result<toml::Table> {
    let mut settings = toml::Table::new();
    settings.insert("database_url".into(), server.create_database(name)?.into());
    settings.insert(
        "database_password_file".into(),
        server.password_file().display().to_string().into(),
    );
    Ok(settings)
}

fn count_rows(server: &Postgres, database: &str, table: &str) -> Result<u64> {
    let count = server.psql(database, &format!("SELECT count(*) FROM {table}"))?;
    count.parse().map_err(|e| err(format!("count of {table}: {count:?}: {e}")))
}

fn no_redb_file(keylime_dir: &Path, name: &str) -> Result<()> {
    let file = keylime_dir.join(name);
    if file.exists() {
        return Err(err(format!("{} was written with database_url set", file.display())));
    }
    Ok(())
}

/// The registrar's record of `agent_id` once it is activated.
async fn wait_activated(deployment: &Deployment, port: u16, agent_id: &str) -> Result<AgentRecord> {
    let mut client = deployment.registrar_client(port).await?;
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    loop {
        let request = GetAgentRequest { agent_id: agent_id.to_owned() };
        if let Ok(reply) = client.get_agent(request).await
            && let Some(record) = reply.into_inner().agent
        {
            return Ok(record);
        }
        if Instant::now() > deadline {
            return Err(err(format!("{agent_id} was not activated within {OUTCOME_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_on_postgres_keeps_its_agents_across_a_restart() -> Result<()> {
    let Some(server) = Postgres::start()? else { return Ok(()) };
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let mut config = deployment.registrar_config(daemon::free_port()?, &tpm.ca_dir(), true);
    config.extend(database_settings(&server, "registrar")?);
    let mut registrar = deployment.start_registrar(&config)?;
    assert!(
        registrar.output().contains(&format!("state={}", server.url("registrar"))),
        "the start names the database: {}",
        registrar.output()
    );
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let agent_id = agent.uuid()?;
    let before = wait_activated(&deployment, registrar.port(), &agent_id).await?;
    assert_eq!(count_rows(&server, "registrar", "registrar_agents")?, 1);

    registrar.restart()?;
    let mut client = deployment.registrar_client(registrar.port()).await?;
    let after = client.get_agent(GetAgentRequest { agent_id: agent_id.clone() }).await?;
    let after = after.into_inner().agent.ok_or_else(|| err("GetAgent: no agent"))?;
    assert_eq!(after.ek_public, before.ek_public);
    assert_eq!(after.ak_public, before.ak_public);
    assert_eq!(after.registration_count, before.registration_count);
    no_redb_file(deployment.keylime_dir(), "registrar.redb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_on_postgres_attests_an_agent_and_keeps_it_across_a_restart() -> Result<()> {
    let Some(mut server) = Postgres::start()? else { return Ok(()) };
    let mut settings = database_settings(&server, "verifier")?;
    settings.insert("agent_lease_seconds".into(), 3.into());
    let Some(mut sys) = System::start_with(toml::Table::new(), &[], settings, true)? else {
        return Ok(());
    };
    sys.apply_policy("base")?;
    let (code, enrolled) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!(code, 0, "{enrolled}");
    let passed = sys.wait_state("passed")?;
    let count = passed["attestation_count"].as_u64().unwrap_or(0);
    assert_eq!(count_rows(&server, "verifier", "verifier_agents")?, 1);
    assert!(count_rows(&server, "verifier", "verifier_events")? > 0);

    sys.verifier.restart()?;
    sys.wait(
        |s| Ok(s.show()?["attestation_count"].as_u64() > Some(count)),
        "an attestation after the restart",
    )?;
    let after = sys.wait_state("passed")?;
    assert_eq!(after["runtime_policy"], "base", "{after}");
    let (_, policies) = sys.kctl_json(&["policies", "runtime", "list"])?;
    assert!(policies.to_string().contains("\"base\""), "{policies}");
    let (_, history) = sys.kctl_json(&["agents", "attestations", &sys.agent_id])?;
    let newest = history["attestations"][0]["sequence"].as_u64().unwrap_or(0);
    assert!(newest > count, "history goes on after the restart: {history}");

    // The server goes away for longer than a lease: the verifier holds its writes, reports
    // NOT_SERVING, stops attesting once its lease runs out, and commits what it held once the
    // server is back (before it takes its agents' leases again).
    server.stop()?;
    sys.verifier.wait_for_output("committing attestation state failed", OUTCOME_TIMEOUT)?;
    let health = |sys: &System| sys.run(KCTL, &["health"]).map(|o| o.status.code());
    sys.wait(|s| Ok(health(s)? == Some(1)), "NOT_SERVING while the database is away")?;
    std::thread::sleep(Duration::from_secs(4));
    server.start_again()?;
    sys.verifier.wait_for_output("the state store can be written again", OUTCOME_TIMEOUT)?;
    sys.wait(|s| Ok(health(s)? == Some(0)), "SERVING again")?;
    let during = sys.show()?["attestation_count"].as_u64().unwrap_or(0);
    sys.wait(
        |s| Ok(s.show()?["attestation_count"].as_u64() > Some(during)),
        "an attestation after the database came back",
    )?;
    assert!(sys.verifier.exited().is_none(), "{}", sys.verifier.output());
    let committed = count_rows(&server, "verifier", "verifier_history")?;
    sys.verifier.restart()?;
    let after = sys.wait_state("passed")?;
    assert!(
        after["attestation_count"].as_u64() >= Some(during),
        "rounds made while the server was away are kept: {during} -> {after}"
    );
    assert!(committed > 0);
    no_redb_file(sys.deployment.keylime_dir(), "verifier.redb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_stops_the_start_naming_the_url() -> Result<()> {
    let Some(mut server) = Postgres::start()? else { return Ok(()) };
    let deployment = Deployment::new()?;
    let mut settings = database_settings(&server, "verifier")?;
    // The password in the URL this time: it must not be shown.
    let password = std::fs::read_to_string(server.password_file())?;
    let url = server.url("verifier");
    let with_password = url.replace("postgres@", &format!("postgres:{}@", password.trim()));
    settings.insert("database_url".into(), with_password.into());
    settings.remove("database_password_file");
    server.stop()?;
    let mut config = deployment.verifier_config(daemon::free_port()?, daemon::free_port()?, 1.0);
    config.extend(settings);
    let path = deployment.write_config("verifier.conf", &config)?;
    let log = deployment.keylime_dir().join("verifier.log");
    let mut verifier = Daemon::start(daemon::VERIFIER, &path, &log, 0)?;
    let status = verifier.wait_exit(daemon::START_TIMEOUT)?;
    let output = verifier.output();
    assert_eq!(status.code(), Some(1), "the database may come back, so systemd restarts: {output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {output}");
    let expected =
        format!("keylime_verifier: state store: {url}: cannot connect to the verifier database: ");
    assert!(lines[0].starts_with(&expected), "{output}");
    assert!(!output.contains(password.trim()), "{output}");
    no_redb_file(deployment.keylime_dir(), "verifier.redb")?;

    // --check-store checks redb files only, and says so.
    let check = std::process::Command::new(daemon::binary(daemon::VERIFIER)?)
        .arg("--config")
        .arg(&path)
        .arg("--check-store")
        .output()?;
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--check-store checks the redb file, and database_url is set"),
        "{stderr}"
    );
    Ok(())
}
