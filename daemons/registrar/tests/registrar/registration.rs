//! Registration as an agent sees it: the happy paths, persistence, key and EK certificate
//! checks, rate limiting, listing and deletion.

use kl_proto::registrar::v1 as pb;
use kl_svc::tls::Role;
use tonic::Code;

use crate::support::{
    Agent, EkCa, Registrar, SoftTpm, TestResult, fixture_rsa_key, lookup, new_id,
};
use kl_testkit::soft_tpm::{AK_ATTRIBUTES, ak_public};

#[tokio::test]
async fn ecc_and_rsa_agents_register_activate_and_are_visible() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let ecc = Agent::new(&new_id(1), SoftTpm::ecc())?;
    let rsa = Agent::new(&new_id(2), SoftTpm::rsa(fixture_rsa_key()?))?;
    for agent in [&ecc, &rsa] {
        assert_eq!(agent.enroll(&mut client).await?.map_err(|s| s.to_string())?, 1);
        let record = lookup(&registrar, &agent.id).await??;
        assert_eq!(record.agent_id, agent.id);
        assert_eq!(record.ek_public, agent.tpm.ek_public);
        assert_eq!(record.ak_public, agent.tpm.ak_public);
        assert_eq!(record.ak_name, agent.tpm.ak_name());
        assert_eq!(record.agent_certificate, agent.certificate.cert_der.to_vec());
        assert_eq!(record.contact, Some(pb::Contact { ip: "127.0.0.1".into(), port: 9002 }));
        assert_eq!(record.registration_count, 1);
        assert!(!record.ek_certificate_verified);
        assert!(record.activated_at.is_some() && record.registered_at.is_some());
    }
    Ok(())
}

#[tokio::test]
async fn restart_keeps_agents_and_same_ek_with_a_new_ak_registers_again() -> TestResult {
    let mut registrar = Registrar::start(|_| {}).await?;
    let mut agent = Agent::new(&new_id(3), SoftTpm::ecc())?;
    assert_eq!(agent.enroll(&mut registrar.anonymous().await?).await??, 1);
    registrar.restart().await?;
    let record = lookup(&registrar, &agent.id).await??;
    assert_eq!(record.ak_public, agent.tpm.ak_public);

    agent.tpm.new_ak();
    agent.contact_port = 9003;
    assert_eq!(agent.enroll(&mut registrar.anonymous().await?).await??, 2);
    let record = lookup(&registrar, &agent.id).await??;
    assert_eq!(record.ak_public, agent.tpm.ak_public);
    assert_eq!(record.contact.map(|c| c.port), Some(9003));
    assert_eq!(record.registration_count, 2);
    Ok(())
}

#[tokio::test]
async fn registration_is_invisible_until_activated() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let agent = Agent::new(&new_id(4), SoftTpm::ecc())?;
    agent.register(&mut registrar.anonymous().await?).await??;
    assert_eq!(lookup(&registrar, &agent.id).await?.err().map(|s| s.code()), Some(Code::NotFound));
    let listed = registrar.admin().await?.list_agents(pb::ListAgentsRequest::default()).await?;
    assert!(listed.into_inner().agents.is_empty());
    Ok(())
}

#[tokio::test]
async fn ak_without_restricted_is_refused_naming_field_and_attribute() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut agent = Agent::new(&new_id(5), SoftTpm::ecc())?;
    agent.tpm.ak_public = ak_public(AK_ATTRIBUTES & !kl_core::tpm2::ObjectAttributes::RESTRICTED);
    let status = agent.enroll(&mut registrar.anonymous().await?).await?.err().ok_or("accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("ak_public: "), "{}", status.message());
    assert!(status.message().contains("restricted not set"), "{}", status.message());

    agent.tpm.ak_public = ak_public(AK_ATTRIBUTES & !kl_core::tpm2::ObjectAttributes::FIXED_TPM);
    let status = agent.enroll(&mut registrar.anonymous().await?).await?.err().ok_or("accepted")?;
    assert!(status.message().contains("fixedTPM"), "{}", status.message());

    let mut request = agent.register_request();
    request.agent_id = "not/an/id".to_owned();
    let status = registrar.anonymous().await?.register(request).await.err().ok_or("accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("agent_id: "), "{}", status.message());
    Ok(())
}

#[tokio::test]
async fn required_ek_certificate_must_chain_to_the_store_and_certify_the_ek() -> TestResult {
    let trusted = EkCa::new("Test TPM Vendor CA")?;
    let untrusted = EkCa::new("Unknown TPM Vendor CA")?;
    let registrar = Registrar::start(|c| c.require_ek_cert = true).await?;
    // The vendor CAs Keylime ships, and the test vendor.
    let vendors = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lib/core/tests/data/keylime/ek-ca");
    for entry in std::fs::read_dir(vendors)? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, registrar.tpm_cert_store().join(name))?;
        }
    }
    std::fs::write(registrar.tpm_cert_store().join("vendor.pem"), &trusted.cert_pem)?;
    // The store is read at start.
    let mut registrar = registrar;
    registrar.restart().await?;
    let mut client = registrar.anonymous().await?;

    let mut agent = Agent::new(&new_id(6), SoftTpm::ecc())?;
    let status = agent.enroll(&mut client).await?.err().ok_or("accepted without a certificate")?;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().starts_with("ek_certificate: missing"), "{}", status.message());

    let ek_spki = agent.tpm.ek().spki_der()?;
    agent.ek_certificate = untrusted.issue(&ek_spki)?;
    let status =
        agent.enroll(&mut client).await?.err().ok_or("accepted an untrusted certificate")?;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().starts_with("ek_certificate: not trusted"), "{}", status.message());

    // A real vendor certificate, for another TPM's EK.
    agent.ek_certificate = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../lib/core/tests/data/keylime/ek-certs/st_ecdsa_sha256_der.der"
    ))?;
    let status =
        agent.enroll(&mut client).await?.err().ok_or("accepted another TPM's certificate")?;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("certifies a different key than ek_public"),
        "{}",
        status.message()
    );

    agent.ek_certificate = trusted.issue(&ek_spki)?;
    assert_eq!(agent.enroll(&mut client).await?.map_err(|s| s.to_string())?, 1);
    let record = lookup(&registrar, &agent.id).await??;
    assert!(record.ek_certificate_verified);
    assert_eq!(record.ek_certificate, agent.ek_certificate);

    let rsa = {
        let mut rsa = Agent::new(&new_id(7), SoftTpm::rsa(fixture_rsa_key()?))?;
        rsa.ek_certificate = trusted.issue(&rsa.tpm.ek().spki_der()?)?;
        rsa
    };
    assert_eq!(rsa.enroll(&mut client).await?.map_err(|s| s.to_string())?, 1);
    Ok(())
}

#[tokio::test]
async fn optional_ek_certificate_may_be_untrusted_but_not_for_another_key() -> TestResult {
    let registrar = Registrar::start(|c| c.require_ek_cert = false).await?;
    let mut client = registrar.anonymous().await?;
    let mut agent = Agent::new(&new_id(8), SoftTpm::ecc())?;
    agent.ek_certificate =
        EkCa::new("Unknown TPM Vendor CA")?.issue(&agent.tpm.ek().spki_der()?)?;
    assert_eq!(agent.enroll(&mut client).await??, 1);
    assert!(!lookup(&registrar, &agent.id).await??.ek_certificate_verified);

    let mut other = Agent::new(&new_id(9), SoftTpm::ecc())?;
    other.ek_certificate = agent.ek_certificate.clone();
    let status = other.enroll(&mut client).await?.err().ok_or("accepted")?;
    assert_eq!(status.code(), Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn register_and_activate_are_rate_limited_per_source() -> TestResult {
    let registrar = Registrar::start(|c| c.registration_rate_limit = 3).await?;
    let mut client = registrar.anonymous().await?;
    let agent = Agent::new(&new_id(10), SoftTpm::ecc())?;
    // Register + Activate use two of the three tokens.
    assert_eq!(agent.enroll(&mut client).await??, 1);
    agent.register(&mut client).await??;
    let status = agent.enroll(&mut client).await?.err().ok_or("not limited")?;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().starts_with("Register: too many"), "{}", status.message());
    // Reads are not limited.
    lookup(&registrar, &agent.id).await??;
    Ok(())
}

#[tokio::test]
async fn list_pages_by_agent_id() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let mut client = registrar.anonymous().await?;
    let mut ids = Vec::new();
    for n in [15, 11, 14, 12, 13] {
        let agent = Agent::new(&new_id(n), SoftTpm::ecc())?;
        agent.enroll(&mut client).await??;
        ids.push(agent.id);
    }
    ids.sort();
    let mut viewer = registrar.with_role(Role::Viewer).await?;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = viewer
            .list_agents(pb::ListAgentsRequest { page_size: 2, page_token: token })
            .await?
            .into_inner();
        pages += 1;
        assert!(page.agents.len() <= 2);
        seen.extend(page.agents.into_iter().map(|a| a.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);

    let all = viewer.list_agents(pb::ListAgentsRequest::default()).await?.into_inner();
    assert_eq!(all.agents.len(), 5);
    assert!(all.next_page_token.is_empty());

    let bad = pb::ListAgentsRequest { page_size: 2, page_token: "%%%".to_owned() };
    let status = viewer.list_agents(bad).await.err().ok_or("bad token accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("page_token: "), "{}", status.message());
    Ok(())
}

#[tokio::test]
async fn delete_is_idempotent() -> TestResult {
    let registrar = Registrar::start(|_| {}).await?;
    let agent = Agent::new(&new_id(16), SoftTpm::ecc())?;
    agent.enroll(&mut registrar.anonymous().await?).await??;
    let mut admin = registrar.admin().await?;
    let delete = || pb::DeleteAgentRequest { agent_id: agent.id.clone() };
    assert!(admin.delete_agent(delete()).await?.into_inner().deleted);
    assert!(!admin.delete_agent(delete()).await?.into_inner().deleted);
    assert_eq!(lookup(&registrar, &agent.id).await?.err().map(|s| s.code()), Some(Code::NotFound));
    Ok(())
}

/// With `metrics_port` set, `GET /metrics` counts calls per RPC and outcome.
#[tokio::test]
async fn metrics_count_calls_by_rpc_and_code() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let registrar = Registrar::start(|c| c.metrics_port = Some(0)).await?;
    let addr = registrar.metrics_addr.ok_or("no metrics endpoint")?;
    let mut client = registrar.anonymous().await?;
    let agent = Agent::new(&new_id(7), SoftTpm::ecc())?;
    assert_eq!(agent.enroll(&mut client).await?.map_err(|s| s.to_string())?, 1);
    let stray = pb::ActivateRequest { agent_id: new_id(8), auth_tag: vec![0; 32] };
    assert_eq!(client.activate(stray).await.err().map(|s| s.code()), Some(Code::NotFound));
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: registrar\r\n\r\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    for line in [
        "keylime_registrar_requests_total{rpc=\"Register\",code=\"OK\"} 1",
        "keylime_registrar_requests_total{rpc=\"Activate\",code=\"OK\"} 1",
        "keylime_registrar_requests_total{rpc=\"Activate\",code=\"NOT_FOUND\"} 1",
        "keylime_registrar_pending_registrations 0",
    ] {
        assert!(answer.lines().any(|l| l == line), "no {line:?} in {answer}");
    }
    Ok(())
}
