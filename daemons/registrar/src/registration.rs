//! The checks of a Register request and the credential challenge it is answered with.
//!
//! A registration is accepted when: the agent id is well formed; the EK and AK are parseable
//! TPMT_PUBLIC areas; the AK is a restricted signing key bound to its TPM (fixedTPM,
//! fixedParent, sensitiveDataOrigin); an EK certificate, when present, certifies exactly the
//! EK presented and, when `require_ek_cert` is on, chains to `tpm_cert_store`; the agent's
//! identity certificate names the agent id. The answer is TPM2_MakeCredential of a fresh
//! 32-byte secret to the EK, bound to the AK name: only the TPM holding both can recover it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kl_core::alg::HashAlg;
use kl_core::credential::{self, EkKey, EkSymmetric, MadeCredential};
use kl_core::ekcert::{self, CaStore, ValidationOptions};
use kl_core::key::Curve;
use kl_core::tpm2::{EccCurve, Public, SymmetricDef, TpmKey, alg_id};
use kl_proto::registrar::v1::RegisterRequest;
use kl_store::registrar::{AgentRecord, Timestamp};
use ring::rand::SecureRandom;

use crate::Error;

/// Size of the credential secret.
pub const SECRET_LEN: usize = 32;
/// Most intermediate certificates sent with an EK certificate (vendor chains have one or two).
pub const MAX_EK_INTERMEDIATES: usize = 8;
/// Largest total size of the intermediate certificates.
pub const MAX_EK_INTERMEDIATES_BYTES: usize = 32 * 1024;
/// Largest EK, intermediate or identity certificate accepted (real ones are 1 to 2 KiB).
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;

/// Checks an agent id (see [`kl_core::agent_id`]).
pub fn check_agent_id(agent_id: &str) -> Result<(), Error> {
    kl_core::agent_id::check_shown(agent_id).map_err(|reason| Error::invalid("agent_id", reason))
}

/// The TPM vendor CAs and the `require_ek_cert` policy.
#[derive(Debug)]
pub struct EkTrust {
    store: CaStore,
    require_ek_cert: bool,
}

impl EkTrust {
    pub fn new(store: CaStore, require_ek_cert: bool) -> EkTrust {
        EkTrust { store, require_ek_cert }
    }

    /// Reads every file of `dir` (PEM bundles or DER). A file that cannot be read as a
    /// certificate is skipped with a warning; a missing directory gives an empty store, which
    /// trusts no EK certificate.
    pub fn load(dir: &Path, require_ek_cert: bool) -> Result<EkTrust, Error> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    tpm_cert_store = %dir.display(),
                    "directory missing: no EK certificate will be trusted"
                );
                return Ok(EkTrust::new(CaStore::new(), require_ek_cert));
            }
            Err(source) => return Err(Error::Io { path: dir.to_owned(), source }),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|source| Error::Io { path: dir.to_owned(), source })?.path();
            if path.is_file() {
                let contents = std::fs::read(&path)
                    .map_err(|source| Error::Io { path: path.clone(), source })?;
                files.push((path.display().to_string(), contents));
            }
        }
        files.sort();
        let (store, skipped) = CaStore::from_files(
            files.iter().map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
        );
        for problem in skipped {
            tracing::warn!(error = %problem, "tpm_cert_store: certificate skipped");
        }
        tracing::info!(
            tpm_cert_store = %dir.display(),
            certificates = store.len(),
            require_ek_cert,
            "EK CA store loaded"
        );
        Ok(EkTrust::new(store, require_ek_cert))
    }
}

/// The EK trust in force: read from `tpm_cert_store` at start and again on SIGHUP, replaced
/// whole, so each registration is checked against one consistent store.
#[derive(Debug)]
pub struct EkTrustSource {
    dir: PathBuf,
    require_ek_cert: bool,
    current: RwLock<Arc<EkTrust>>,
}

impl EkTrustSource {
    pub fn load(dir: &Path, require_ek_cert: bool) -> Result<EkTrustSource, Error> {
        let trust = EkTrust::load(dir, require_ek_cert)?;
        Ok(EkTrustSource {
            dir: dir.to_owned(),
            require_ek_cert,
            current: RwLock::new(Arc::new(trust)),
        })
    }

    pub fn current(&self) -> Arc<EkTrust> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads `tpm_cert_store` again. When it cannot be read, the store in force stays.
    pub fn reload(&self) {
        match EkTrust::load(&self.dir, self.require_ek_cert) {
            Ok(trust) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(trust);
            }
            Err(e) => tracing::error!(
                error = %e,
                "tpm_cert_store not reloaded; the certificates loaded before stay in force"
            ),
        }
    }
}

/// A registration that passed the checks: the record it becomes once activated, and the EK
/// as MakeCredential needs it.
#[derive(Debug)]
pub struct Checked {
    pub record: AgentRecord,
    pub ek: EkKey,
}

/// Checks a Register request.
pub fn check(request: &RegisterRequest, trust: &EkTrust) -> Result<Checked, Error> {
    check_agent_id(&request.agent_id)?;
    check_certificate_sizes(request)?;
    let ek_public = Public::parse(&request.ek_public)
        .map_err(|e| Error::invalid("ek_public", format!("not a TPMT_PUBLIC: {e}")))?;
    let ek = ek_key(&ek_public)?;
    check_hash_ek(&request.agent_id, &ek_public)?;
    let ak_public = Public::parse(&request.ak_public)
        .map_err(|e| Error::invalid("ak_public", format!("not a TPMT_PUBLIC: {e}")))?;
    ak_public.check_ak_attributes().map_err(|e| Error::invalid("ak_public", e.to_string()))?;
    let ek_certificate_verified = check_ek_certificate(request, &ek, trust)?;
    check_agent_certificate(&request.agent_certificate, &request.agent_id)?;
    let contact = request.contact.as_ref().ok_or_else(|| Error::invalid("contact", "missing"))?;
    if contact.ip.trim().is_empty() {
        return Err(Error::invalid("contact.ip", "empty"));
    }
    let contact_port = u16::try_from(contact.port).ok().filter(|p| *p != 0).ok_or_else(|| {
        Error::invalid("contact.port", format!("{} is not a port (1-65535)", contact.port))
    })?;
    let now = Timestamp::now();
    let record = AgentRecord {
        agent_id: request.agent_id.clone(),
        ek_public: request.ek_public.clone(),
        ek_certificate: request.ek_certificate.clone(),
        // Intermediates only mean something with the certificate they lead from.
        ek_intermediate_certificates: if request.ek_certificate.is_empty() {
            Vec::new()
        } else {
            request.ek_intermediate_certificates.clone()
        },
        ek_certificate_verified,
        ak_public: request.ak_public.clone(),
        ak_name: ak_public.name(),
        agent_certificate: request.agent_certificate.clone(),
        contact_ip: contact.ip.clone(),
        contact_port,
        registration_count: 0,
        registered_at: now,
        activated_at: now,
    };
    Ok(Checked { record, ek })
}

/// Whether `agent_id` has the form of a `hash_ek` id: 64 hex digits.
pub fn looks_like_hash_ek(agent_id: &str) -> bool {
    agent_id.len() == 64 && agent_id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `hash_ek` id of an EK: the lowercase hex SHA-256 of its public key as a DER
/// SubjectPublicKeyInfo (what the agent computes for `uuid = "hash_ek"`).
pub fn hash_ek(ek_public: &Public) -> Result<String, Error> {
    let spki = ek_public
        .spki_der()
        .map_err(|e| Error::invalid("ek_public", format!("no public key to hash: {e}")))?;
    Ok(HashAlg::Sha256.digest(&spki).to_hex())
}

/// An id of the `hash_ek` form must be the hash of the EK presented, so that nobody can claim
/// another TPM's id before it registers.
fn check_hash_ek(agent_id: &str, ek_public: &Public) -> Result<(), Error> {
    if looks_like_hash_ek(agent_id) && hash_ek(ek_public)? != agent_id {
        return Err(Error::invalid(
            "agent_id",
            "64 hex digits is the hash_ek form, and this id is not the lowercase hex SHA-256 of \
             ek_public's SubjectPublicKeyInfo",
        ));
    }
    Ok(())
}

/// Certificates are kept in memory until activation: bound their number and size.
fn check_certificate_sizes(request: &RegisterRequest) -> Result<(), Error> {
    let too_big = |field: &'static str, len: usize| {
        Error::invalid(field, format!("{len} bytes, at most {MAX_CERTIFICATE_BYTES} accepted"))
    };
    if request.ek_certificate.len() > MAX_CERTIFICATE_BYTES {
        return Err(too_big("ek_certificate", request.ek_certificate.len()));
    }
    if request.agent_certificate.len() > MAX_CERTIFICATE_BYTES {
        return Err(too_big("agent_certificate", request.agent_certificate.len()));
    }
    let intermediates = &request.ek_intermediate_certificates;
    if intermediates.len() > MAX_EK_INTERMEDIATES {
        return Err(Error::invalid(
            "ek_intermediate_certificates",
            format!("{} certificates, at most {MAX_EK_INTERMEDIATES}", intermediates.len()),
        ));
    }
    if let Some(big) = intermediates.iter().find(|c| c.len() > MAX_CERTIFICATE_BYTES) {
        return Err(too_big("ek_intermediate_certificates", big.len()));
    }
    let total: usize = intermediates.iter().map(Vec::len).sum();
    if total > MAX_EK_INTERMEDIATES_BYTES {
        return Err(Error::invalid(
            "ek_intermediate_certificates",
            format!("{total} bytes in all, at most {MAX_EK_INTERMEDIATES_BYTES} accepted"),
        ));
    }
    Ok(())
}

/// A fresh secret and the MakeCredential blobs that carry it to the TPM holding `ek` and the
/// AK named `ak_name`.
pub fn challenge(ek: &EkKey, ak_name: &[u8]) -> Result<([u8; SECRET_LEN], MadeCredential), Error> {
    let mut secret = [0u8; SECRET_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| Error::Internal("the system random generator failed".to_owned()))?;
    let made = credential::make_credential(ek, ak_name, &secret, &mut rand::rng())
        .map_err(|e| Error::invalid("ek_public", format!("cannot make a credential: {e}")))?;
    Ok((secret, made))
}

/// The EK as MakeCredential needs it, from its public area.
fn ek_key(public: &Public) -> Result<EkKey, Error> {
    let invalid = |reason: String| Error::invalid("ek_public", reason);
    let symmetric = |def: SymmetricDef| match def {
        SymmetricDef::Cipher { algorithm: alg_id::AES, key_bits: 128, .. } => {
            Ok(EkSymmetric::Aes128)
        }
        SymmetricDef::Cipher { algorithm: alg_id::AES, key_bits: 256, .. } => {
            Ok(EkSymmetric::Aes256)
        }
        other => Err(invalid(format!(
            "symmetric algorithm {other:?}: an EK is a storage key with AES-128 or AES-256"
        ))),
    };
    match &public.key {
        TpmKey::Rsa(rsa) => {
            let bits = rsa.modulus_bits().map_err(|e| invalid(e.to_string()))?;
            if !(2048..=4096).contains(&bits) {
                return Err(invalid(format!("RSA modulus of {bits} bits (2048 to 4096 accepted)")));
            }
            Ok(EkKey::rsa(&rsa.modulus, rsa.exponent(), public.name_alg, symmetric(rsa.symmetric)?))
        }
        TpmKey::Ecc(ecc) => {
            let curve = match ecc.curve {
                EccCurve::NIST_P256 => Curve::P256,
                EccCurve::NIST_P384 => Curve::P384,
                other => {
                    return Err(invalid(format!("ECC curve {other} (P-256 or P-384 accepted)")));
                }
            };
            Ok(EkKey::ecc(curve, &ecc.x, &ecc.y, public.name_alg, symmetric(ecc.symmetric)?))
        }
    }
}

/// Returns whether the EK certificate chains to the store; refuses a certificate for another
/// key always, and a missing or untrusted one when `require_ek_cert` is on.
fn check_ek_certificate(
    request: &RegisterRequest,
    ek: &EkKey,
    trust: &EkTrust,
) -> Result<bool, Error> {
    if request.ek_certificate.is_empty() {
        if trust.require_ek_cert {
            return Err(Error::EkCertificate(
                "missing; this registrar requires an EK certificate (require_ek_cert)".to_owned(),
            ));
        }
        return Ok(false);
    }
    let (certified, _) = ekcert::parse_ek_certificate(&request.ek_certificate)
        .map_err(|e| Error::invalid("ek_certificate", e.to_string()))?;
    if certified.key != ek.public_key() {
        return Err(Error::EkCertificate("certifies a different key than ek_public".to_owned()));
    }
    let intermediates: Vec<&[u8]> =
        request.ek_intermediate_certificates.iter().map(Vec::as_slice).collect();
    let now = Timestamp::now().seconds;
    match ekcert::validate(
        &request.ek_certificate,
        &intermediates,
        &trust.store,
        &ValidationOptions::at(now),
    ) {
        Ok(_) => Ok(true),
        Err(e) if trust.require_ek_cert => {
            Err(Error::EkCertificate(format!("not trusted by tpm_cert_store: {e}")))
        }
        Err(e) => {
            tracing::info!(agent_id = %request.agent_id, error = %e, "EK certificate not trusted; accepted since require_ek_cert is off");
            Ok(false)
        }
    }
}

/// The agent's identity certificate must be DER X.509 with CN = the agent id.
fn check_agent_certificate(der: &[u8], agent_id: &str) -> Result<(), Error> {
    if der.is_empty() {
        return Err(Error::invalid("agent_certificate", "missing"));
    }
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
        Error::invalid("agent_certificate", format!("not a DER X.509 certificate: {e}"))
    })?;
    if !rest.is_empty() {
        return Err(Error::invalid(
            "agent_certificate",
            format!("{} bytes after the certificate", rest.len()),
        ));
    }
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
    if common_name != Some(agent_id) {
        return Err(Error::invalid(
            "agent_certificate",
            format!("subject CN is {common_name:?}, expected the agent id"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_uuids_or_hash_ek_like_strings() {
        for good in ["d432fbb3-d2f1-4a97-9ef7-75bd81c00000", &"ab".repeat(32), "agent_1.example"] {
            assert!(check_agent_id(good).is_ok(), "{good}");
        }
        let reason = |id: &str| check_agent_id(id).err().map(|e| e.to_string());
        assert_eq!(reason(""), Some("agent_id: \"\": empty".to_owned()));
        assert!(
            reason(&"a".repeat(81))
                .is_some_and(|r| r.ends_with(": 81 characters, at most 80 allowed"))
        );
        assert!(reason("../etc").is_some_and(|r| r.contains("'/'")));
        assert!(reason("a b").is_some_and(|r| r.contains("' '")));
    }
}
