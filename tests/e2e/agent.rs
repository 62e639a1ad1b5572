//! The agent on its own (no registrar running): start-up errors, evidence, recovery and
//! persistence of its keys.

use std::time::Duration;

use kl_core::alg::HashAlg;
use kl_core::tpm2::Attest;
use kl_proto::agent::v1::GetInfoRequest;
use kl_tests::daemon::{self, AGENT, Daemon};
use kl_tests::deployment::Deployment;
use kl_tests::ima::{ImaWriter, replay};
use kl_tests::{Result, err};
use tonic::Code;

use crate::{
    OUTCOME_TIMEOUT, agent_settings, get_quote, nonce, quote_request, tpm_and_deployment, verify,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_verifies_with_the_agents_ak_and_ima_replay_matches_pcr10() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let nobody = daemon::free_port()?;
    let mut agent = deployment.start_agent("agent", &agent_settings(&tpm, nobody))?;
    let cert = agent.certificate()?;
    let mut client = deployment.agent_client(agent.daemon.port(), cert.clone()).await?;

    let mut ima = ImaWriter::default();
    for n in 0..5 {
        let contents = format!("#!/bin/sh\necho {n}\n");
        ima.measure(&tpm, &agent.ima_log, &format!("/usr/bin/tool{n}"), contents.as_bytes())?;
    }

    let info = client.get_info(GetInfoRequest {}).await?.into_inner();
    let nonce = nonce();
    let reply = get_quote(&mut client, &nonce, 0).await?;
    let (outcome, values) = verify(&reply, &info.ak_public, &cert, &nonce)?;
    assert!(outcome.verdict.passed(), "{:#?}", outcome.verdict);
    assert_eq!((reply.ima_offset, reply.ima_entry_count, reply.ima_more), (0, 5, false));
    let pcr10 = values.get(10).ok_or_else(|| err("no PCR 10 in the reply"))?;
    assert_eq!(pcr10, ima.pcr10_sha256());
    assert_eq!(&replay(&reply.ima_entries, HashAlg::Sha256)?, pcr10);

    // Another nonce does not verify against this quote.
    let (stale, _) = verify(&reply, &info.ak_public, &cert, &crate::nonce())?;
    assert!(!stale.verdict.passed());

    // Bounded pages from an offset, and a restart from 0 past the end of the list.
    let page = client.get_quote(quote_request(&nonce, 1, 2)).await?.into_inner();
    assert_eq!((page.ima_offset, page.ima_entry_count, page.ima_more), (1, 2, true));
    let all = std::fs::read_to_string(&agent.ima_log)?;
    let expected: String = all.lines().skip(1).take(2).map(|l| format!("{l}\n")).collect();
    assert_eq!(String::from_utf8(page.ima_entries)?, expected);
    let past = get_quote(&mut client, &nonce, 50).await?;
    assert_eq!((past.ima_offset, past.ima_entry_count), (0, 5));
    assert!(past.event_log.is_empty(), "an event log nobody asked for");

    // The UEFI event log, when asked for, is the file's bytes.
    let event_log: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    std::fs::write(agent.dir.join("binary_bios_measurements"), &event_log)?;
    let mut with_log = quote_request(&nonce, 0, 0);
    with_log.include_event_log = true;
    let with_log = client.get_quote(with_log).await?.into_inner();
    assert_eq!(with_log.event_log, event_log);

    // Bad requests name the field.
    let short = client.get_quote(quote_request(&[1; 8], 0, 0)).await.expect_err("short nonce");
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().starts_with("nonce:"), "{}", short.message());
    let mut bad_pcr = quote_request(&nonce, 0, 0);
    bad_pcr.pcrs.push(24);
    let bad_pcr = client.get_quote(bad_pcr).await.expect_err("PCR 24");
    assert_eq!(bad_pcr.code(), Code::InvalidArgument);
    assert!(bad_pcr.message().starts_with("pcrs:"), "{}", bad_pcr.message());
    let mut sha512 = quote_request(&nonce, 0, 0);
    sha512.hash_algorithm = kl_proto::agent::v1::HashAlgorithm::Sha512.into();
    let sha512 = client.get_quote(sha512).await.expect_err("inactive bank");
    assert!(sha512.message().starts_with("hash_algorithm:"), "{}", sha512.message());

    // No payload key yet: VerifyKey says so.
    let no_key = client
        .verify_key(kl_proto::agent::v1::VerifyKeyRequest { challenge: vec![0; 16] })
        .await
        .expect_err("VerifyKey");
    assert_eq!(no_key.code(), Code::FailedPrecondition);
    assert!(no_key.message().contains("not been derived"), "{}", no_key.message());

    // No registrar answered meanwhile: the agent says it keeps trying.
    agent.daemon.wait_for_output("will retry", OUTCOME_TIMEOUT)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_an_admin_or_verifier_certificate_are_refused() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, daemon::free_port()?))?;
    let cert = agent.certificate()?;

    // A certificate from another CA fails the handshake.
    let other = Deployment::new()?;
    let refused = match other.agent_client(agent.daemon.port(), cert.clone()).await {
        Err(_) => true,
        Ok(mut client) => client.get_info(GetInfoRequest {}).await.is_err(),
    };
    assert!(refused, "a client certificate from another CA was accepted");

    // A viewer certificate from the deployment CA may not ask for evidence.
    let ca = kl_svc::tls::CertificateAuthority::read(&deployment.tls())?;
    let viewer = ca.issue(kl_svc::tls::Role::Viewer, "monitoring", &[])?;
    let dir = tempfile::tempdir()?;
    let tls = kl_svc::tls::TlsFiles::new(dir.path());
    std::fs::copy(deployment.tls().ca_cert(), tls.ca_cert())?;
    viewer.write(&tls.client_cert(), &tls.client_key())?;
    let config = kl_svc::tls::client_config(
        &kl_svc::tls::ServerTrust::Pinned(cert),
        Some(tls.client_identity()?),
    )?;
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        agent.daemon.port()
    ))?
    .connect_with_connector(kl_svc::tls::TlsConnector::new(std::sync::Arc::new(config)))
    .await?;
    let mut client = kl_proto::agent::v1::agent_client::AgentClient::new(channel);
    let denied = client.get_info(GetInfoRequest {}).await.expect_err("viewer");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swtpm_restart_is_recovered() -> Result<()> {
    let Some((mut tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let agent = deployment.start_agent("agent", &agent_settings(&tpm, daemon::free_port()?))?;
    let cert = agent.certificate()?;
    let mut client = deployment.agent_client(agent.daemon.port(), cert.clone()).await?;
    let info = client.get_info(GetInfoRequest {}).await?.into_inner();

    let before = get_quote(&mut client, &crate::nonce(), 0).await?;
    tpm.restart_unclean()?;
    let nonce = crate::nonce();
    let after = get_quote(&mut client, &nonce, 0).await?;
    let (outcome, _) = verify(&after, &info.ak_public, &cert, &nonce)?;
    assert!(outcome.verdict.passed(), "{:#?}", outcome.verdict);
    let resets = |attest: &[u8]| Attest::parse(attest).map(|a| a.clock_info.reset_count);
    assert!(resets(&after.attest)? > resets(&before.attest)?, "the TPM did not reset");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_keeps_its_id_ak_and_identity() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let mut agent = deployment.start_agent("agent", &agent_settings(&tpm, daemon::free_port()?))?;
    let cert = agent.certificate()?;
    let mut client = deployment.agent_client(agent.daemon.port(), cert.clone()).await?;
    let before = client.get_info(GetInfoRequest {}).await?.into_inner();

    agent.daemon.restart()?;
    assert_eq!(agent.certificate()?, cert);
    let mut client = deployment.agent_client(agent.daemon.port(), cert).await?;
    let after = client.get_info(GetInfoRequest {}).await?.into_inner();
    assert_eq!(after.agent_id, before.agent_id);
    assert_eq!(after.ak_public, before.ak_public);
    assert!(kl_svc::config::is_uuid(&after.agent_id), "{}", after.agent_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_ek_is_the_sha256_of_the_ek_certificate_key() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let mut settings = agent_settings(&tpm, daemon::free_port()?);
    settings.uuid = "hash_ek".to_owned();
    let agent = deployment.start_agent("agent", &settings)?;
    let mut client = deployment.agent_client(agent.daemon.port(), agent.certificate()?).await?;
    let info = client.get_info(GetInfoRequest {}).await?.into_inner();
    let expected = HashAlg::Sha256.digest(&crate::spki_of(&tpm.ek_certificate()?)?).to_hex();
    assert_eq!(info.agent_id, expected);
    Ok(())
}

/// TPM problems at start are fatal and say what is wrong; no swtpm needed.
#[test]
fn an_unreachable_tpm_stops_the_agent_with_a_clear_error() -> Result<()> {
    let deployment = Deployment::new()?;
    for (tcti, expected) in [
        (
            format!("swtpm:host=127.0.0.1,port={}", daemon::free_port()?),
            "cannot connect to the TPM",
        ),
        ("device:/dev/tpm-none".to_owned(), "no TPM device at /dev/tpm-none"),
    ] {
        let dir = tempfile::tempdir()?;
        let mut config = toml::Table::new();
        config.insert("keylime_dir".into(), dir.path().display().to_string().into());
        config.insert("port".into(), 0.into());
        config.insert("tcti".into(), tcti.clone().into());
        config.insert(
            "trusted_client_ca".into(),
            deployment.tls().ca_cert().display().to_string().into(),
        );
        let path = dir.path().join("agent.conf");
        std::fs::write(&path, toml::to_string(&config)?)?;
        let mut agent = Daemon::start(AGENT, &path, &dir.path().join("agent.log"), 0)?;
        let status = agent.wait_exit(Duration::from_secs(30))?;
        // 1, not 78: the TPM may come back, so systemd restarts the agent.
        assert_eq!(status.code(), Some(1), "the agent without a TPM at {tcti}: {status}");
        let output = agent.output();
        assert!(output.contains(expected) && output.contains(&tcti), "{tcti}: {output}");
    }
    Ok(())
}

/// A bank the TPM has not allocated (swtpm here has sha1 and sha256) stops the agent at start
/// with a configuration error naming the setting, instead of hanging or failing every quote.
#[test]
fn a_pcr_bank_the_tpm_lacks_stops_the_agent_with_a_config_error() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let mut settings = agent_settings(&tpm, daemon::free_port()?);
    settings.extra.insert("tpm_hash_alg".into(), "sha384".into());
    let mut agent = deployment.spawn_agent("agent", &settings)?;
    let status = agent.daemon.wait_exit(Duration::from_secs(60))?;
    assert_eq!(status.code(), Some(78), "{status}: {}", agent.daemon.output());
    let output = agent.daemon.output();
    assert!(output.contains("tpm_hash_alg") && output.contains("sha384"), "{output}");
    Ok(())
}

/// The library entry point: bound to port 0, the agent reports the port it got, serves on it
/// and stops cleanly when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_agent_on_port_0_reports_its_port_and_stops_on_request() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("agent.conf");
    let mut config = toml::Table::new();
    config.insert("keylime_dir".into(), dir.path().display().to_string().into());
    config.insert("port".into(), 0.into());
    config.insert("tcti".into(), tpm.tcti().into());
    config.insert("registrar_port".into(), i64::from(daemon::free_port()?).into());
    let ca = deployment.tls().ca_cert();
    config.insert("trusted_client_ca".into(), ca.display().to_string().into());
    config.insert("metrics_port".into(), 0.into());
    std::fs::write(&file, toml::to_string(&config)?)?;
    let sources = kl_svc::config::Sources {
        roots: Vec::new(),
        config_file: Some(file),
        ..kl_svc::config::Sources::new()
    };
    let config = kl_svc::config::load::<kl_svc::config::AgentConfig>(&sources)?.config;

    let agent = kl_agent::Agent::start(config).await?;
    let port = agent.local_addr().port();
    assert_ne!(port, 0);
    let cert = rustls::pki_types::CertificateDer::from(agent.certificate().to_vec());
    let agent_id = agent.agent_id().to_owned();
    let metrics = agent.metrics_addr().ok_or_else(|| err("no metrics endpoint"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(agent.serve(async {
        let _ = stopped.await;
    }));

    let mut client = deployment.agent_client(port, cert).await?;
    let info = client.get_info(GetInfoRequest {}).await?.into_inner();
    assert_eq!(info.agent_id, agent_id);
    drop(client);
    // The metrics endpoint counts the call.
    let mut stream = tokio::net::TcpStream::connect(metrics).await?;
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\n\r\n").await?;
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await?;
    let line = "keylime_agent_requests_total{rpc=\"GetInfo\",code=\"OK\"} 1";
    assert!(answer.lines().any(|l| l == line), "{answer}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), serving).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_notices_are_taken_only_from_revocation_notification_ip() -> Result<()> {
    let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(()) };
    // A notice signed with the deployment's server key, as the verifier signs them.
    let tls = deployment.tls();
    let server_cert = kl_svc::tls::read_certificates(&tls.server_cert())?;
    let signer = kl_svc::notice::NoticeSigner::from_pem(
        &std::fs::read_to_string(tls.server_key())?,
        server_cert.first().ok_or_else(|| err("no server certificate"))?.to_vec(),
    )?;
    let signed = signer.sign(br#"{"agent_id": "another", "state": "failed"}"#.to_vec())?;
    let notify = || kl_proto::agent::v1::NotifyRevocationRequest {
        notice: signed.notice.clone(),
        signature: signed.signature.clone(),
        signer_certificate: signed.signer_certificate.clone(),
    };

    // The verifier is elsewhere: a correctly signed notice from this address is refused.
    let mut settings = agent_settings(&tpm, daemon::free_port()?);
    settings.extra.insert("revocation_notification_ip".into(), "192.0.2.10, 192.0.2.11".into());
    let mut agent = deployment.start_agent("agent", &settings)?;
    let mut client = deployment.agent_client(agent.daemon.port(), agent.certificate()?).await?;
    let refused = client.notify_revocation(notify()).await.expect_err("from 127.0.0.1");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("127.0.0.1") && refused.message().contains("192.0.2.10"),
        "{}",
        refused.message()
    );
    assert!(agent.daemon.output().contains("revocation notice from 127.0.0.1 refused"));
    agent.daemon.stop()?;
    drop(agent);

    // The default (a verifier on this machine, as the guide's single-host setup has it).
    let agent = deployment.start_agent("agent2", &agent_settings(&tpm, daemon::free_port()?))?;
    let mut client = deployment.agent_client(agent.daemon.port(), agent.certificate()?).await?;
    client.notify_revocation(notify()).await?;
    Ok(())
}
