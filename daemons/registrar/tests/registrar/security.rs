//! The properties Keylime's registrar needed security fixes for: failed activations leak and
//! keep nothing, an activated id cannot be taken by another TPM, and stalled TLS clients block
//! nobody.

use std::time::Duration;

use kl_core::credential::activation_proof;
use kl_proto::registrar::v1 as pb;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::Code;

use crate::support::{Agent, DEADLINE, EkCa, Registrar, SoftTpm, TestResult, lookup, new_id};

/// Everything a status carries that a client could read.
fn status_text(status: &tonic::Status) -> String {
    format!("{} {:?} {:?}", status.message(), status.details(), status.metadata())
}

#[tokio::test]
async fn failed_activation_returns_and_keeps_nothing_and_the_genuine_agent_still_registers()
-> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let agent = Agent::new(&new_id(100), SoftTpm::ecc())?;

    let secret = agent.register(&mut client).await??;
    let good_tag = activation_proof(&secret, &agent.id);
    let mut wrong_tag = good_tag;
    wrong_tag[0] ^= 1;
    let request =
        |tag: &[u8]| pb::ActivateRequest { agent_id: agent.id.clone(), auth_tag: tag.to_vec() };
    let status = client.activate(request(&wrong_tag)).await.err().ok_or("wrong proof accepted")?;
    assert_eq!(status.code(), Code::PermissionDenied);
    let text = status_text(&status).to_lowercase();
    for derived in [hex::encode(secret), hex::encode(good_tag)] {
        assert!(!text.contains(&derived), "status reveals {derived}: {text}");
    }
    assert!(status.details().is_empty());
    assert_eq!(lookup(&registrar, &agent.id).await?.err().map(|s| s.code()), Some(Code::NotFound));
    // The pending registration is gone: the right proof no longer activates it.
    let status =
        client.activate(request(&good_tag)).await.err().ok_or("dropped registration activated")?;
    assert_eq!(status.code(), Code::NotFound);

    assert_eq!(agent.enroll(&mut client).await??, 1);
    assert_eq!(lookup(&registrar, &agent.id).await??.registration_count, 1);
    Ok(())
}

#[tokio::test]
async fn failed_reactivation_leaves_the_active_record_intact() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let mut agent = Agent::new(&new_id(101), SoftTpm::ecc())?;
    agent.enroll(&mut client).await??;
    let before = lookup(&registrar, &agent.id).await??;

    // Someone replays the agent's public EK with an AK of their own and cannot activate.
    agent.tpm.new_ak();
    agent.register(&mut client).await??;
    let wrong = pb::ActivateRequest { agent_id: agent.id.clone(), auth_tag: vec![0; 32] };
    assert_eq!(client.activate(wrong).await.err().map(|s| s.code()), Some(Code::PermissionDenied));
    assert_eq!(lookup(&registrar, &agent.id).await??, before);
    Ok(())
}

#[tokio::test]
async fn another_tpm_cannot_take_an_activated_id_until_an_admin_deletes_it() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let mut genuine = Agent::new(&new_id(102), SoftTpm::ecc())?;
    genuine.enroll(&mut client).await??;
    let before = lookup(&registrar, &genuine.id).await??;

    // A different EK under the same id.
    let mut impostor = Agent::new(&genuine.id, SoftTpm::ecc())?;
    impostor.contact_port = 6666;
    let status = impostor.enroll(&mut client).await?.err().ok_or("different EK accepted")?;
    assert_eq!(status.code(), Code::AlreadyExists);
    // The same EK with a different EK certificate.
    let mut recertified = Agent::new(&genuine.id, SoftTpm::ecc())?;
    recertified.tpm.ek_public = genuine.tpm.ek_public.clone();
    recertified.ek_certificate = EkCa::new("Other CA")?.issue(&genuine.tpm.ek().spki_der()?)?;
    let status =
        recertified.register(&mut client).await?.err().ok_or("different EK cert accepted")?;
    assert_eq!(status.code(), Code::AlreadyExists);
    // Nothing changed: EK, AK, identity certificate, contact, count.
    assert_eq!(lookup(&registrar, &genuine.id).await??, before);

    // The genuine agent keeps working: a restart with a new AK re-registers.
    genuine.tpm.new_ak();
    assert_eq!(genuine.enroll(&mut client).await??, 2);

    // Only an admin delete frees the id.
    let mut admin = registrar.admin().await?;
    admin.delete_agent(pb::DeleteAgentRequest { agent_id: genuine.id.clone() }).await?;
    assert_eq!(impostor.enroll(&mut client).await??, 1);
    assert_eq!(lookup(&registrar, &genuine.id).await??.contact.map(|c| c.port), Some(6666));
    Ok(())
}

#[tokio::test]
async fn stalled_tls_handshakes_block_neither_registrations_nor_admin_calls() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let port = registrar.addr.port();
    let mut stalled = Vec::new();
    for n in 0..32 {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        if n % 2 == 0 {
            // The first bytes of a TLS record carrying a ClientHello, then silence.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await?;
        }
        stalled.push(tcp);
    }
    let started = tokio::time::Instant::now();
    let agent = Agent::new(&new_id(103), SoftTpm::ecc())?;
    let enrolled = tokio::time::timeout(DEADLINE, async {
        let mut client = registrar.anonymous().await?;
        agent.enroll(&mut client).await
    })
    .await??;
    assert_eq!(enrolled?, 1);
    let listed = tokio::time::timeout(DEADLINE, async {
        let mut admin = registrar.admin().await?;
        Ok::<_, Box<dyn std::error::Error>>(
            admin.list_agents(pb::ListAgentsRequest::default()).await?,
        )
    })
    .await??;
    assert_eq!(listed.into_inner().agents.len(), 1);
    // Served while every stalled connection was still open, well before the handshake
    // deadline would have released them.
    assert!(started.elapsed() < kl_registrar::HANDSHAKE_TIMEOUT, "{:?}", started.elapsed());
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
