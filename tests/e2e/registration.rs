//! Registration through the real registrar: the registrar lists what the agent registered,
//! keeps it across restarts, refuses untrusted EK certificates, and is found by the agent's
//! retries when it starts late; quotes verify with the AK the registrar recorded.

use std::path::Path;
use std::time::{Duration, Instant};

use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::registrar::v1::{AgentRecord, GetAgentRequest, ListAgentsRequest};
use kl_tests::daemon;
use kl_tests::deployment::Deployment;
use kl_tests::ima::{ImaWriter, replay};
use kl_tests::{Result, err};
use tonic::Code;
use tonic::transport::Channel;

use crate::{OUTCOME_TIMEOUT, agent_settings, get_quote, nonce, tpm_and_deployment, verify};

/// The agent id the agent wrote for `uuid = "generate"`.
fn generated_id(agent_dir: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(agent_dir.join("agent").join("agent_uuid"))?.trim().to_owned())
}

/// Waits until the registrar shows `agent_id` activated at least `min_count` times.
async fn wait_registered(
    client: &mut RegistrarClient<Channel>,
    agent_id: &str,
    min_count: u64,
) -> Result<AgentRecord> {
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    loop {
        let request = GetAgentRequest { agent_id: agent_id.to_owned() };
        match client.get_agent(request).await {
            Ok(reply) => {
                let record = reply.into_inner().agent.ok_or_else(|| err("GetAgent: no agent"))?;
                if record.registration_count >= min_count {
                    return Ok(record);
                }
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(status.into()),
        }
        if Instant::now() > deadline {
            return Err(err(format!(
                "{agent_id} was not activated {min_count} time(s) within {OUTCOME_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn registrar_config(deployment: &Deployment, store: &Path) -> Result<toml::Table> {
    Ok(deployment.registrar_config(daemon::free_port()?, store, true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_and_the_registrar_lists_it() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let registrar = deployment.start_registrar(&registrar_config(&deployment, &tpm.ca_dir())?)?;
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let agent_id = generated_id(&agent.dir)?;
    let mut client = deployment.registrar_client(registrar.port()).await?;
    let record = wait_registered(&mut client, &agent_id, 1).await?;

    assert!(record.ek_certificate_verified);
    assert_eq!(record.ek_certificate, tpm.ek_certificate()?);
    assert_eq!(record.agent_certificate, agent.certificate()?.to_vec());
    let contact = record.contact.ok_or_else(|| err("no contact"))?;
    assert_eq!((contact.ip.as_str(), contact.port), ("127.0.0.1", u32::from(agent.daemon.port())));

    let list = client.list_agents(ListAgentsRequest::default()).await?.into_inner();
    let ids: Vec<&str> = list.agents.iter().map(|a| a.agent_id.as_str()).collect();
    assert_eq!(ids, [agent_id.as_str()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_restart_keeps_the_agent() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let mut registrar =
        deployment.start_registrar(&registrar_config(&deployment, &tpm.ca_dir())?)?;
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let agent_id = generated_id(&agent.dir)?;
    let before = {
        let mut client = deployment.registrar_client(registrar.port()).await?;
        wait_registered(&mut client, &agent_id, 1).await?
    };
    registrar.restart()?;
    let mut client = deployment.registrar_client(registrar.port()).await?;
    let after = client.get_agent(GetAgentRequest { agent_id: agent_id.clone() }).await?;
    let after = after.into_inner().agent.ok_or_else(|| err("GetAgent: no agent"))?;
    assert_eq!(after.ak_public, before.ak_public);
    assert_eq!(after.ek_public, before.ek_public);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_registers_the_same_ak_again() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let registrar = deployment.start_registrar(&registrar_config(&deployment, &tpm.ca_dir())?)?;
    let mut agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let agent_id = generated_id(&agent.dir)?;
    let mut client = deployment.registrar_client(registrar.port()).await?;
    let first = wait_registered(&mut client, &agent_id, 1).await?;

    agent.daemon.restart()?;
    let second = wait_registered(&mut client, &agent_id, first.registration_count + 1).await?;
    assert_eq!(second.ak_public, first.ak_public);
    assert_eq!(second.ak_name, first.ak_name);
    assert_eq!(second.agent_certificate, first.agent_certificate);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ek_is_refused_until_the_store_is_fixed_and_reloaded_with_sighup() -> Result<()>
{
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    // A store holding only some other vendor's CA.
    let store = deployment.keylime_dir().join("other_vendor_store");
    std::fs::create_dir_all(&store)?;
    let other = kl_svc::tls::CertificateAuthority::generate("Other TPM Vendor Root CA")?;
    std::fs::write(store.join("other-vendor.pem"), other.cert_pem())?;
    let mut registrar = deployment.start_registrar(&registrar_config(&deployment, &store)?)?;

    let mut agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let agent_id = generated_id(&agent.dir)?;
    registrar.wait_for_output("registration refused", OUTCOME_TIMEOUT)?;
    let log = registrar.output();
    let refusal = log.lines().find(|l| l.contains("registration refused")).unwrap_or_default();
    assert!(
        refusal.contains(&agent_id) && refusal.contains("peer=127.0.0.1:"),
        "the registrar logs the id, the peer and the reason: {refusal}"
    );
    agent
        .daemon
        .wait_for_output("retrying until the registrar trusts this TPM", OUTCOME_TIMEOUT)?;
    assert!(agent.daemon.exited().is_none(), "the agent keeps trying: {}", agent.daemon.output());
    let mut client = deployment.registrar_client(registrar.port()).await?;
    let list = client.list_agents(ListAgentsRequest::default()).await?.into_inner();
    assert!(list.agents.is_empty(), "{:?}", list.agents);

    // SIGHUP ends none of the daemons.
    agent.daemon.signal("HUP")?;
    // The operator adds the TPM vendor's CA and tells the registrar: the agent gets in on its
    // own, without a restart.
    for entry in std::fs::read_dir(tpm.ca_dir())? {
        let entry = entry?;
        std::fs::copy(entry.path(), store.join(entry.file_name()))?;
    }
    registrar.signal("HUP")?;
    let record = wait_registered(&mut client, &agent_id, 1).await?;
    assert!(record.ek_certificate_verified);
    assert!(registrar.exited().is_none() && agent.daemon.exited().is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_started_after_the_agent_is_found_by_its_retries() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let config = registrar_config(&deployment, &tpm.ca_dir())?;
    let port = u16::try_from(config.get("port").and_then(toml::Value::as_integer).unwrap_or(0))?;
    let mut agent = deployment.start_agent("agent", &agent_settings(&tpm, port))?;
    agent.daemon.wait_for_output("will retry", OUTCOME_TIMEOUT)?;

    let registrar = deployment.start_registrar(&config)?;
    let mut client = deployment.registrar_client(registrar.port()).await?;
    wait_registered(&mut client, &generated_id(&agent.dir)?, 1).await?;
    agent.daemon.wait_for_output("registered and activated", OUTCOME_TIMEOUT)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_verifies_with_the_ak_the_registrar_recorded() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let registrar = deployment.start_registrar(&registrar_config(&deployment, &tpm.ca_dir())?)?;
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let mut registrar_client = deployment.registrar_client(registrar.port()).await?;
    let record = wait_registered(&mut registrar_client, &generated_id(&agent.dir)?, 1).await?;

    let mut ima = ImaWriter::default();
    for (path, contents) in [("/usr/bin/bash", "bash"), ("/etc/passwd", "root:x:0:0")] {
        ima.measure(&tpm, &agent.ima_log, path, contents.as_bytes())?;
    }
    // The verifier pins the certificate the registrar recorded.
    let cert = rustls::pki_types::CertificateDer::from(record.agent_certificate.clone());
    let contact = record.contact.clone().ok_or_else(|| err("no contact"))?;
    let mut client = deployment.agent_client(u16::try_from(contact.port)?, cert).await?;
    let nonce = nonce();
    let reply = get_quote(&mut client, &nonce, 0).await?;
    let (outcome, values) = verify(&reply, &record.ak_public, &record.agent_certificate, &nonce)?;
    assert!(outcome.verdict.passed(), "{:#?}", outcome.verdict);
    let pcr10 = values.get(10).ok_or_else(|| err("no PCR 10"))?;
    assert_eq!(&replay(&reply.ima_entries, kl_core::alg::HashAlg::Sha256)?, pcr10);
    assert_eq!(pcr10, ima.pcr10_sha256());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tpm_under_a_registered_id_is_refused() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let Some(other_tpm) = kl_tests::swtpm::Swtpm::manufacture()? else { return Ok(()) };
    let config = deployment.registrar_config(daemon::free_port()?, &tpm.ca_dir(), false);
    let registrar = deployment.start_registrar(&config)?;
    let id = "d432fbb3-d2f1-4a97-9ef7-75bd81c00000";
    let mut settings = agent_settings(&tpm, registrar.port());
    settings.uuid = id.to_owned();
    let _first = deployment.start_agent("first", &settings)?;
    let mut client = deployment.registrar_client(registrar.port()).await?;
    let record = wait_registered(&mut client, id, 1).await?;

    let mut settings = agent_settings(&other_tpm, registrar.port());
    settings.uuid = id.to_owned();
    let mut second = deployment.spawn_agent("second", &settings)?;
    let status = second.daemon.wait_exit(OUTCOME_TIMEOUT)?;
    assert_eq!(status.code(), Some(78), "{status}");
    let output = second.daemon.output();
    assert!(
        output.contains("the registrar refused Register (AlreadyExists)"),
        "agent output:\n{output}"
    );
    let after = client.get_agent(GetAgentRequest { agent_id: id.to_owned() }).await?;
    let after = after.into_inner().agent.ok_or_else(|| err("GetAgent: no agent"))?;
    assert_eq!(after.ek_public, record.ek_public);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_registers_only_with_a_registrar_of_its_deployment_ca() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let registrar = deployment.start_registrar(&registrar_config(&deployment, &tpm.ca_dir())?)?;
    // The agent trusts another deployment's CA, so this registrar's certificate fails.
    let other = Deployment::new()?;
    let mut settings = agent_settings(&tpm, registrar.port());
    let other_ca = other.tls().ca_cert().display().to_string();
    settings.extra.insert("trusted_client_ca".into(), other_ca.into());
    let mut agent = deployment.start_agent("agent", &settings)?;
    agent.daemon.wait_for_output("invalid peer certificate", OUTCOME_TIMEOUT)?;
    assert!(agent.daemon.exited().is_none(), "a TLS failure is retried, not fatal");

    let mut client = deployment.registrar_client(registrar.port()).await?;
    let list = client.list_agents(ListAgentsRequest::default()).await?.into_inner();
    assert!(list.agents.is_empty(), "{:?}", list.agents);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_stops_the_registrar_with_one_line_and_the_check_reports_it() -> Result<()>
{
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let mut registrar =
        deployment.start_registrar(&registrar_config(&deployment, &tpm.ca_dir())?)?;
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, registrar.port()))?;
    let agent_id = generated_id(&agent.dir)?;
    wait_registered(&mut deployment.registrar_client(registrar.port()).await?, &agent_id, 1)
        .await?;
    drop(agent);
    registrar.stop()?;
    let store = deployment.keylime_dir().join("registrar.redb");
    let config = registrar.config().to_owned();
    let check = || {
        std::process::Command::new(daemon::binary(daemon::REGISTRAR)?)
            .arg("--config")
            .arg(&config)
            .arg("--check-store")
            .output()
            .map_err(kl_tests::Error::from)
    };
    let sound = check()?;
    assert_eq!(sound.status.code(), Some(0), "{}", String::from_utf8_lossy(&sound.stderr));

    assert!(kl_tests::damage::pages_holding(&store, agent_id.as_bytes())? > 0);
    registrar.start_again()?;
    let status = registrar.wait_exit(daemon::START_TIMEOUT)?;
    let output = registrar.output();
    assert_eq!(status.code(), Some(78), "a restart cannot help: {output}");
    // Besides the log of what it loaded before opening the store: one line says why.
    let errors: Vec<&str> =
        output.lines().filter(|l| l.starts_with("keylime_registrar:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {output}");
    assert!(errors[0].contains(&store.display().to_string()) && errors[0].contains("damaged"));
    assert!(!output.contains("panicked"), "{output}");
    let damaged = check()?;
    assert_eq!(damaged.status.code(), Some(1), "{}", String::from_utf8_lossy(&damaged.stderr));
    Ok(())
}
