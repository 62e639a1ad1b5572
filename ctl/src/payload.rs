//! Bootstrap key delivery for `kctl agents enroll --payload ... / --cert default` (DESIGN §4):
//! check a fresh identity quote against the registrar's AK and the agent identity key, then
//! send the agent U (sealed to its identity key) with the auth tag and the payload encrypted
//! under K; V goes to the verifier with the enrolment.

use std::path::Path;

use anyhow::{Context, anyhow};
use kl_core::alg::HashAlg;
use kl_core::payload::{self, Limits, PayloadFile, SplitKey};
use kl_core::quote::{self, AcceptedAlgorithms, PreparedAk, QuoteEvidence, QuoteRequest};
use kl_core::tpm2::{PcrSet, PcrValues, Public};
use kl_proto::agent::v1::agent_client::AgentClient;
use kl_proto::agent::v1::{
    DeliverKeyRequest, GetQuoteRequest, HashAlgorithm, KeyHalf, SealedKeyHalf,
};
use kl_proto::registrar::v1::AgentRecord;
use kl_svc::config::TenantConfig;
use kl_svc::tls::{CertificateAuthority, Role};
use ring::rand::{SecureRandom, SystemRandom};

use crate::connect;
use crate::exit::{Failure, input};
use crate::input::read;

/// What goes into the payload.
#[derive(Debug, Default)]
pub struct PayloadSpec<'a> {
    /// A zip file or a directory whose files are packed.
    pub source: Option<&'a Path>,
    /// Add a certificate and key for the agent issued by the deployment CA, and the CA
    /// certificate (`--cert default`).
    pub agent_cert: bool,
}

/// The files of the given zip or directory.
fn source_files(source: Option<&Path>) -> Result<Vec<PayloadFile>, Failure> {
    match source {
        None => Ok(Vec::new()),
        Some(path) if path.is_dir() => collect_dir(path),
        Some(path) => payload::unpack(&read(path)?, &Limits::default())
            .with_context(|| path.display().to_string())
            .map_err(input),
    }
}

/// What a payload holds, as `sha256:<hex>`: its files (path, executable bit, contents, in path
/// order) and whether an agent certificate is added. The certificate itself is left out, as it
/// is issued afresh on every delivery. A directory and a zip of the same files have the same
/// digest. The verifier records it with the enrolment (`payload_digest`), so that a client can
/// tell whether a payload was delivered already.
pub fn digest(spec: &PayloadSpec<'_>) -> Result<String, Failure> {
    let mut files = source_files(spec.source)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"keylime-rs payload 1\n");
    for f in &files {
        ctx.update(&(f.path.len() as u64).to_be_bytes());
        ctx.update(f.path.as_bytes());
        ctx.update(&[u8::from(f.executable)]);
        ctx.update(&(f.contents.len() as u64).to_be_bytes());
        ctx.update(&f.contents);
    }
    ctx.update(if spec.agent_cert { b"cert: default" } else { b"cert: none" });
    Ok(format!("sha256:{}", hex::encode(ctx.finish())))
}

/// Builds the payload archive: the given zip or directory, plus the agent's certificate.
pub fn build(
    config: &TenantConfig,
    uuid: &str,
    spec: &PayloadSpec<'_>,
) -> Result<Vec<u8>, Failure> {
    let mut files = source_files(spec.source)?;
    if spec.agent_cert {
        let tls = connect::tls_files(config);
        let ca = CertificateAuthority::read(&tls).context("the deployment CA").map_err(input)?;
        // Role `agent`: a client certificate (no serverAuth, no local names), so a machine
        // cannot use its payload certificate to pose as the registrar or the verifier.
        let issued = ca
            .issue(Role::Agent, uuid, &[])
            .context("issuing the agent certificate")
            .map_err(input)?;
        let ca_pem = std::fs::read(tls.ca_cert())
            .with_context(|| tls.ca_cert().display().to_string())
            .map_err(input)?;
        for (name, contents) in [
            (format!("{uuid}-cert.crt"), issued.cert_pem.into_bytes()),
            (format!("{uuid}-private.pem"), issued.key_pem.into_bytes()),
            ("cacert.crt".to_owned(), ca_pem),
        ] {
            files.retain(|f| f.path != name);
            files.push(PayloadFile { path: name, contents, executable: false });
        }
    }
    payload::pack(&files).map_err(input)
}

fn collect_dir(dir: &Path) -> Result<Vec<PayloadFile>, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| dir.display().to_string()).map_err(input)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let contents = std::fs::read(entry.path())
            .with_context(|| entry.path().display().to_string())
            .map_err(input)?;
        let executable =
            entry.metadata().map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false);
        files.push(PayloadFile { path: rel.to_string_lossy().into_owned(), contents, executable });
    }
    Ok(files)
}

/// Checks a fresh identity quote from the agent and delivers U; returns V for the verifier.
pub async fn deliver_u(
    config: &TenantConfig,
    record: &AgentRecord,
    agent_addr: Option<(&str, u16)>,
    archive: &[u8],
) -> Result<[u8; payload::KEY_LEN], Failure> {
    let uuid = &record.agent_id;
    let (host, port) = match (agent_addr, record.contact.as_ref()) {
        (Some((h, p)), _) => (h.to_owned(), p),
        (None, Some(c)) => (c.ip.clone(), u16::try_from(c.port).unwrap_or(0)),
        (None, None) => {
            return Err(input(anyhow!(
                "agent {uuid}: the registrar has no contact address; give one"
            )));
        }
    };
    let spki = kl_core::ekcert::certificate_public_key(&record.agent_certificate)
        .map_err(|e| {
            Failure::Negative(anyhow!("agent {uuid}: identity certificate from the registrar: {e}"))
        })?
        .spki_der;

    // TLS to the agent: pin the identity certificate the registrar recorded.
    let channel = connect::agent_channel(config, &host, port, &record.agent_certificate)
        .await
        .map_err(|e| match e {
            Failure::Server(e) => Failure::Server(e.context(format!("agent {uuid}"))),
            other => other,
        })?;
    let mut agent = AgentClient::new(channel);

    // A fresh identity quote, bound to our nonce and the identity key we are talking to.
    let mut nonce = [0u8; 20];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| Failure::Server(anyhow!("random number generator failed")))?;
    let reply = agent
        .get_quote(GetQuoteRequest {
            nonce: nonce.to_vec(),
            hash_algorithm: HashAlgorithm::Sha256 as i32,
            pcrs: vec![0],
            ima_offset: 0,
            max_ima_entries: 1,
            include_event_log: false,
        })
        .await
        .map_err(|s| connect::status(&format!("identity quote from agent {uuid}"), s))?
        .into_inner();
    let ak =
        Public::parse(&record.ak_public).ok().and_then(|p| PreparedAk::new(p).ok()).ok_or_else(
            || Failure::Negative(anyhow!("agent {uuid}: the registrar's AK cannot be used")),
        )?;
    let mut pcrs = PcrValues::new(HashAlg::Sha256);
    for v in &reply.pcr_values {
        let digest =
            kl_core::alg::Digest::from_bytes(HashAlg::Sha256, &v.value).ok_or_else(|| {
                Failure::Negative(anyhow!("agent {uuid}: PCR {} is not a sha256 value", v.index))
            })?;
        pcrs.insert(v.index, digest)
            .map_err(|e| Failure::Negative(anyhow!("agent {uuid}: {e}")))?;
    }
    let qualifying = quote::qualifying_data(&nonce, &spki);
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: qualifying.as_bytes(),
        bank: HashAlg::Sha256,
        pcrs: PcrSet::from_indices([0]).unwrap_or_default(),
        algorithms: &algorithms,
    };
    let outcome = quote::verify_quote(
        &ak,
        &request,
        &QuoteEvidence { attest: &reply.attest, signature: &reply.signature, pcrs: &pcrs },
        None,
    );
    if !outcome.verdict.passed() {
        let why: Vec<String> =
            outcome.verdict.findings.iter().map(|f| format!("{}: {}", f.rule, f.message)).collect();
        return Err(Failure::Negative(anyhow!(
            "agent {uuid}: the identity quote does not verify against the registrar's AK; no key sent ({})",
            why.join("; ")
        )));
    }

    let key = SplitKey::generate().map_err(|e| Failure::Server(e.into()))?;
    let sealed = payload::seal_half(&key.u, &spki)
        .map_err(|e| Failure::Negative(anyhow!("agent {uuid}: {e}")))?;
    let encrypted_payload = if archive.is_empty() {
        Vec::new()
    } else {
        payload::encrypt(&key.k, archive).map_err(|e| Failure::Server(e.into()))?
    };
    agent
        .deliver_key(DeliverKeyRequest {
            half: KeyHalf::U as i32,
            sealed: Some(SealedKeyHalf {
                ephemeral_public_key: sealed.ephemeral_public_key,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
            }),
            auth_tag: key.auth_tag(uuid).to_vec(),
            encrypted_payload,
        })
        .await
        .map_err(|s| connect::status(&format!("deliver the U key half to agent {uuid}"), s))?;
    Ok(key.v)
}
