//! Who the agent is: its id (from `uuid`) and its TLS identity (a P-256 key and a self-signed
//! certificate with CN = agent id), both kept in `agent_data_path` so a restart keeps them.
//!
//! Files in `agent_data_path`: `agent_uuid` (the id drawn for `uuid = "generate"`),
//! `identity-cert.pem` and `identity-key.pem` (mode 0600), next to the AK blobs `ak.pub` and
//! `ak.priv` that kl-tpm keeps.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kl_core::alg::HashAlg;
use kl_core::tpm2::Public;
use kl_svc::config::{AgentUuid, is_uuid};
use kl_svc::tls::{AgentIdentity, TlsError};
use ring::rand::{SecureRandom, SystemRandom};

/// File holding the id drawn for `uuid = "generate"`.
pub const GENERATED_UUID_FILE: &str = "agent_uuid";
/// The identity certificate (PEM).
pub const IDENTITY_CERT_FILE: &str = "identity-cert.pem";
/// The identity private key (PEM, PKCS#8, mode 0600).
pub const IDENTITY_KEY_FILE: &str = "identity-key.pem";

/// Errors while establishing the agent's id and TLS identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{}: \"{value}\" is not a UUID (remove the file to draw a new id)", path.display())]
    BadStoredUuid { path: PathBuf, value: String },
    #[error("uuid = \"hash_ek\": the EK public area cannot be read as a key: {0}")]
    EkPublic(String),
    #[error("cannot draw random bytes for a new agent id")]
    Random,
    #[error("agent identity: {0}")]
    Tls(#[from] TlsError),
}

/// The agent id for the `uuid` setting. `ek_public` is the EK's marshalled TPMT_PUBLIC.
///
/// - a UUID: used as it is (lowercase);
/// - `generate`: a random version-4 UUID, drawn once and kept in `dir/agent_uuid`;
/// - `hash_ek`: the lowercase hex SHA-256 of the EK public key as a DER SubjectPublicKeyInfo,
///   the same bytes as the public key in the EK certificate, so anyone holding the certificate
///   can compute the id (`openssl x509 -in ek.pem -pubkey -noout | openssl pkey -pubin
///   -outform DER | sha256sum`).
pub fn agent_id(
    setting: &AgentUuid,
    dir: &Path,
    ek_public: &[u8],
) -> Result<String, IdentityError> {
    match setting {
        AgentUuid::Fixed(id) => Ok(id.to_ascii_lowercase()),
        AgentUuid::HashEk => hash_ek(ek_public),
        AgentUuid::Generate => stored_or_generated_uuid(dir),
    }
}

/// The `hash_ek` id of an EK (see [`agent_id`]).
pub fn hash_ek(ek_public: &[u8]) -> Result<String, IdentityError> {
    let public = Public::parse(ek_public).map_err(|e| IdentityError::EkPublic(e.to_string()))?;
    let spki = public.spki_der().map_err(|e| IdentityError::EkPublic(e.to_string()))?;
    Ok(HashAlg::Sha256.digest(&spki).to_hex())
}

fn stored_or_generated_uuid(dir: &Path) -> Result<String, IdentityError> {
    let path = dir.join(GENERATED_UUID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let value = text.trim().to_ascii_lowercase();
            if is_uuid(&value) {
                Ok(value)
            } else {
                Err(IdentityError::BadStoredUuid { path, value })
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = random_uuid()?;
            write_atomically(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// A random (version 4, RFC 9562) UUID in its lowercase text form.
pub fn random_uuid() -> Result<String, IdentityError> {
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).map_err(|_| IdentityError::Random)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// Reads the identity from `dir`, or creates and writes a new one when there is none or when
/// the stored certificate names another agent id (the `uuid` setting changed).
pub fn load_or_create_identity(
    dir: &Path,
    agent_id: &str,
    names: &[String],
) -> Result<AgentIdentity, IdentityError> {
    let (cert, key) = (dir.join(IDENTITY_CERT_FILE), dir.join(IDENTITY_KEY_FILE));
    let exists = |path: &Path| {
        kl_svc::fs::exists(path)
            .map_err(|source| IdentityError::Read { path: path.to_owned(), source })
    };
    if exists(&cert)? || exists(&key)? {
        let identity = AgentIdentity::read(&cert, &key)?;
        if common_name(&identity).as_deref() == Some(agent_id) {
            return Ok(identity);
        }
        tracing::warn!(
            path = %cert.display(),
            agent_id,
            "the identity certificate names another agent id; creating a new identity"
        );
    }
    let identity = AgentIdentity::generate(agent_id, names)?;
    identity.write(&cert, &key)?;
    Ok(identity)
}

fn common_name(identity: &AgentIdentity) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(&identity.cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn generated_uuid_is_v4_and_kept_across_starts() -> TestResult {
        let dir = tempfile::tempdir()?;
        let first = agent_id(&AgentUuid::Generate, dir.path(), &[])?;
        assert!(is_uuid(&first), "{first}");
        assert_eq!(&first[14..15], "4", "{first}");
        assert!(matches!(&first[19..20], "8" | "9" | "a" | "b"), "{first}");
        let again = agent_id(&AgentUuid::Generate, dir.path(), &[])?;
        assert_eq!(first, again);
        let other = tempfile::tempdir()?;
        assert_ne!(agent_id(&AgentUuid::Generate, other.path(), &[])?, first);
        Ok(())
    }

    #[test]
    fn a_damaged_uuid_file_is_an_error_naming_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join(GENERATED_UUID_FILE), "not-a-uuid\n")?;
        let err = agent_id(&AgentUuid::Generate, dir.path(), &[]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("agent_uuid") && e.contains("not-a-uuid")));
        Ok(())
    }

    #[test]
    fn fixed_uuid_is_lowercased() -> TestResult {
        let id = agent_id(
            &AgentUuid::Fixed("D432FBB3-D2F1-4A97-9EF7-75BD81C00000".to_owned()),
            Path::new("/nonexistent"),
            &[],
        )?;
        assert_eq!(id, "d432fbb3-d2f1-4a97-9ef7-75bd81c00000");
        Ok(())
    }

    #[test]
    fn hash_ek_of_garbage_is_an_error() {
        let err = hash_ek(&[0, 1, 2]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("hash_ek")));
    }

    #[test]
    fn identity_is_reused_and_replaced_when_the_id_changes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let first = load_or_create_identity(dir.path(), "agent-a", &[])?;
        let again = load_or_create_identity(dir.path(), "agent-a", &[])?;
        assert_eq!(first.cert_der, again.cert_der);
        let other = load_or_create_identity(dir.path(), "agent-b", &[])?;
        assert_ne!(other.cert_der, first.cert_der);
        assert_eq!(common_name(&other).as_deref(), Some("agent-b"));
        Ok(())
    }
}
