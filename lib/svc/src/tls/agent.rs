//! The agent's identity: a P-256 key and a self-signed certificate whose CN is the agent id.
//! The registrar records the certificate; the verifier and kctl pin it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, PublicKeyData,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use super::TlsError;
use super::files::{self, TlsIdentity};

const VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const BACKDATE: Duration = Duration::from_secs(3600);

/// The agent's identity key (PEM, PKCS#8) and self-signed certificate.
#[derive(Clone)]
pub struct AgentIdentity {
    pub key_pem: String,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// DER SubjectPublicKeyInfo of the key, which quotes bind to.
    pub spki_der: Vec<u8>,
}

impl fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIdentity").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl AgentIdentity {
    /// A fresh P-256 key and a certificate with CN = `agent_id` and SANs `names` (the contact
    /// address, for instance).
    pub fn generate(agent_id: &str, names: &[String]) -> Result<Self, TlsError> {
        let gen_err = |source| TlsError::Generate { name: agent_id.to_owned(), source };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id);
        params.distinguished_name = dn;
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + VALIDITY;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(AgentIdentity {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            spki_der: key.subject_public_key_info(),
        })
    }

    /// Writes the certificate (0644) and the key (0600).
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        files::write_file(key_path, self.key_pem.as_bytes(), 0o600)?;
        files::write_file(cert_path, self.cert_pem.as_bytes(), 0o644)
    }

    /// Reads an identity written by [`AgentIdentity::write`], checking that key and
    /// certificate belong together.
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let text = |path: &Path| {
            String::from_utf8(files::read(path)?).map_err(|_| TlsError::Malformed {
                path: path.to_owned(),
                what: "not PEM text".to_owned(),
            })
        };
        let (cert_pem, key_pem) = (text(cert_path)?, text(key_path)?);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Malformed {
            path: key_path.to_owned(),
            what: format!("not a usable private key: {e}"),
        })?;
        let cert_der = files::read_certificates(cert_path)?.swap_remove(0);
        let spki_der = key.subject_public_key_info();
        let (_, cert) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::Malformed {
                path: cert_path.to_owned(),
                what: format!("bad certificate: {e}"),
            })?;
        if cert.tbs_certificate.subject_pki.raw != spki_der.as_slice() {
            return Err(TlsError::Malformed {
                path: key_path.to_owned(),
                what: format!("does not hold the key of {}", cert_path.display()),
            });
        }
        Ok(AgentIdentity { key_pem, cert_pem, cert_der, spki_der })
    }

    /// The identity as a rustls certificate and key.
    pub fn tls_identity(&self) -> Result<TlsIdentity, TlsError> {
        TlsIdentity::from_pem(&self.cert_pem, &self.key_pem, "agent identity")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn identity_has_agent_id_as_cn_and_round_trips_through_files() -> TestResult {
        let id = AgentIdentity::generate(
            "d432fbb3-d2f1-4a97-9ef7-75bd81c00000",
            &["10.0.0.5".to_owned()],
        )?;
        let (_, cert) = x509_parser::parse_x509_certificate(&id.cert_der)?;
        let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
        assert_eq!(cn, Some("d432fbb3-d2f1-4a97-9ef7-75bd81c00000"));
        assert_eq!(cert.tbs_certificate.subject_pki.raw, id.spki_der.as_slice());

        let dir = tempfile::tempdir()?;
        let (cert_path, key_path) = (dir.path().join("agent.crt"), dir.path().join("agent.pem"));
        id.write(&cert_path, &key_path)?;
        let back = AgentIdentity::read(&cert_path, &key_path)?;
        assert_eq!(back.cert_der, id.cert_der);
        assert_eq!(back.spki_der, id.spki_der);

        let other = AgentIdentity::generate("other", &[])?;
        other.write(&dir.path().join("other.crt"), &key_path)?;
        let err = AgentIdentity::read(&cert_path, &key_path).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("does not hold the key of")));
        Ok(())
    }
}
