//! The properties Keylime's registrar needed security fixes for: failed activations leak and
//! keep nothing, an activated id cannot be taken by another TPM, and stalled TLS clients block
//! nobody.

use std::time::Duration;

use kl_core::credential::activation_proof;
use kl_proto::registrar::v1 as pb;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::Code;

use crate::support::{
    Agent, BoxError, DEADLINE, EkCa, Registrar, SoftTpm, TestResult, fixture_rsa_key, lookup,
    new_id,
};

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
    // The same answer as for an id with nothing pending: a caller cannot tell the two apart.
    assert_eq!(status.code(), Code::NotFound);
    let nobody = pb::ActivateRequest { agent_id: new_id(199), auth_tag: wrong_tag.to_vec() };
    let none_pending = client.activate(nobody).await.err().ok_or("nothing to activate")?;
    assert_eq!(
        status.message().replace(&agent.id, "ID"),
        none_pending.message().replace(&new_id(199), "ID")
    );
    let text = status_text(&status).to_lowercase();
    for derived in [hex::encode(secret), hex::encode(good_tag)] {
        assert!(!text.contains(&derived), "status reveals {derived}: {text}");
    }
    assert!(status.details().is_empty());
    assert_eq!(lookup(&registrar, &agent.id).await?.err().map(|s| s.code()), Some(Code::NotFound));
    // A wrong proof, from anybody, does not cancel the genuine registration.
    for _ in 0..5 {
        let status = client.activate(request(&[0; 32])).await.err().ok_or("garbage accepted")?;
        assert_eq!(status.code(), Code::NotFound);
    }
    assert_eq!(client.activate(request(&good_tag)).await?.into_inner().registration_count, 1);
    // Activated once: the proof does not activate again.
    let status = client.activate(request(&good_tag)).await.err().ok_or("activated twice")?;
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(lookup(&registrar, &agent.id).await??.registration_count, 1);
    Ok(())
}

#[tokio::test]
async fn registrations_under_a_victims_id_do_not_displace_its_pending_registration() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let victim = Agent::new(&new_id(104), SoftTpm::ecc())?;
    let secret = victim.register(&mut client).await??;

    // Other TPMs register under the victim's id, and so does somebody replaying the victim's
    // public EK with an AK of their own; a garbage proof follows each.
    for n in 0..3 {
        let mut attacker = Agent::new(&victim.id, SoftTpm::ecc())?;
        if n == 0 {
            attacker.tpm.ek_public = victim.tpm.ek_public.clone();
        }
        client.register(attacker.register_request()).await?;
        let garbage = pb::ActivateRequest { agent_id: victim.id.clone(), auth_tag: vec![n; 32] };
        let status = client.activate(garbage).await.err().ok_or("garbage accepted")?;
        assert_eq!(status.code(), Code::NotFound);
    }
    let proof = pb::ActivateRequest {
        agent_id: victim.id.clone(),
        auth_tag: activation_proof(&secret, &victim.id).to_vec(),
    };
    assert_eq!(client.activate(proof).await?.into_inner().registration_count, 1);
    let record = lookup(&registrar, &victim.id).await??;
    assert_eq!(record.ek_public, victim.tpm.ek_public);
    assert_eq!(record.ak_public, victim.tpm.ak_public);
    Ok(())
}

#[tokio::test]
async fn a_hash_ek_id_must_be_the_hash_of_the_ek_presented() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let hash_ek = |tpm: &SoftTpm| -> Result<String, BoxError> {
        Ok(hex::encode(ring::digest::digest(&ring::digest::SHA256, &tpm.ek().spki_der()?)))
    };
    let victim_tpm = SoftTpm::ecc();
    let victim_id = hash_ek(&victim_tpm)?;

    // Another TPM claims the victim's id, in either case.
    for claimed in [victim_id.clone(), victim_id.to_uppercase()] {
        let squatter = Agent::new(&claimed, SoftTpm::ecc())?;
        let status = squatter.enroll(&mut client).await?.err().ok_or("id squatted")?;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("agent_id: "), "{}", status.message());
    }
    // The uppercase form of one's own hash is not the hash_ek form either.
    let mut shouting = Agent::new(&victim_id.to_uppercase(), SoftTpm::ecc())?;
    shouting.tpm.ek_public = victim_tpm.ek_public.clone();
    let status = client.register(shouting.register_request()).await.err().ok_or("accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);

    let victim = Agent::new(&victim_id, victim_tpm)?;
    assert_eq!(victim.enroll(&mut client).await?.map_err(|s| s.to_string())?, 1);
    let rsa =
        Agent::new(&hash_ek(&SoftTpm::rsa(fixture_rsa_key()?))?, SoftTpm::rsa(fixture_rsa_key()?))?;
    assert_eq!(rsa.enroll(&mut client).await?.map_err(|s| s.to_string())?, 1);
    Ok(())
}

#[tokio::test]
async fn oversized_certificates_are_refused_before_they_are_kept() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let mut agent = Agent::new(&new_id(105), SoftTpm::ecc())?;
    agent.ek_certificate =
        EkCa::new("Unknown TPM Vendor CA")?.issue(&agent.tpm.ek().spki_der()?)?;
    let cases: [(&str, Vec<Vec<u8>>); 3] = [
        ("ek_intermediate_certificates: 9 certificates", vec![vec![0x30; 100]; 9]),
        ("ek_intermediate_certificates: 17000 bytes", vec![vec![0x30; 17_000]]),
        ("ek_intermediate_certificates: 40000 bytes in all", vec![vec![0x30; 10_000]; 4]),
    ];
    for (expected, intermediates) in cases {
        let mut request = agent.register_request();
        request.ek_intermediate_certificates = intermediates;
        let status = client.register(request).await.err().ok_or("accepted")?;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(expected), "{}", status.message());
    }
    let mut request = agent.register_request();
    request.ek_certificate = vec![0x30; 17_000];
    let status = client.register(request).await.err().ok_or("accepted")?;
    assert!(status.message().starts_with("ek_certificate: 17000 bytes"), "{}", status.message());
    assert_eq!(agent.enroll(&mut client).await?.map_err(|s| s.to_string())?, 1);
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
    assert_eq!(client.activate(wrong).await.err().map(|s| s.code()), Some(Code::NotFound));
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
    // A clear refusal that tells an unauthenticated caller nothing of the record, not even
    // the id it sent.
    assert!(status.message().contains("an admin must delete the agent"), "{}", status.message());
    assert!(!status_text(&status).contains(&genuine.id), "{status:?}");
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
