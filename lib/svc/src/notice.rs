//! Revocation notices: a JSON document signed by the verifier's server key (ECDSA P-256 with
//! SHA-256, DER signature) and sent with the server certificate; an agent accepts one only when
//! that certificate chains to the deployment CA, is a server certificate
//! (`urn:keylime:role:server`) and the signature over the exact notice bytes verifies.

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::{Role, role_of};

/// Why a notice could not be signed or was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoticeError {
    #[error("signing key: {0}")]
    Key(String),
    #[error("signing the notice failed")]
    Sign,
    #[error("signer certificate: {0}")]
    Certificate(String),
    #[error("signer certificate is not issued by the deployment CA")]
    Untrusted,
    #[error("signer certificate is not a server certificate of the deployment")]
    NotServer,
    #[error("the notice signature does not verify with the signer certificate")]
    Signature,
}

/// A notice with its signature and the signer's certificate, as the agent receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNotice {
    pub notice: Vec<u8>,
    pub signature: Vec<u8>,
    pub signer_certificate: Vec<u8>,
}

/// Signs notices with a P-256 key (the verifier's `server-private.pem`).
#[derive(Debug)]
pub struct NoticeSigner {
    key: EcdsaKeyPair,
    certificate: Vec<u8>,
    rng: SystemRandom,
}

impl NoticeSigner {
    /// `key_pem` is a PKCS#8 P-256 private key; `certificate` the DER certificate of its public
    /// key.
    pub fn from_pem(key_pem: &str, certificate: Vec<u8>) -> Result<NoticeSigner, NoticeError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(key_pem.as_bytes())
            .map_err(|e| NoticeError::Key(format!("not PEM: {e}")))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &pem.contents,
            &rng,
        )
        .map_err(|e| NoticeError::Key(format!("not a PKCS#8 P-256 key: {e}")))?;
        Ok(NoticeSigner { key, certificate, rng })
    }

    pub fn sign(&self, notice: Vec<u8>) -> Result<SignedNotice, NoticeError> {
        let signature = self.key.sign(&self.rng, &notice).map_err(|_| NoticeError::Sign)?;
        Ok(SignedNotice {
            notice,
            signature: signature.as_ref().to_vec(),
            signer_certificate: self.certificate.clone(),
        })
    }
}

/// Checks a notice: the certificate chains directly to one of `ca_certificates`, is valid now,
/// carries the server role, and its key signed `notice`.
pub fn verify_notice(
    notice: &SignedNotice,
    ca_certificates: &[CertificateDer<'_>],
) -> Result<(), NoticeError> {
    let (_, cert) = X509Certificate::from_der(&notice.signer_certificate)
        .map_err(|e| NoticeError::Certificate(format!("not DER X.509: {e}")))?;
    if !cert.validity().is_valid() {
        return Err(NoticeError::Certificate("outside its validity period".to_owned()));
    }
    let issued = ca_certificates.iter().any(|ca| {
        X509Certificate::from_der(ca.as_ref())
            .map(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
            .unwrap_or(false)
    });
    if !issued {
        return Err(NoticeError::Untrusted);
    }
    if !matches!(role_of(&notice.signer_certificate), Ok(Some(Role::Server))) {
        return Err(NoticeError::NotServer);
    }
    let spki = cert.public_key();
    let key = spki.subject_public_key.data.as_ref();
    let algorithm: &dyn signature::VerificationAlgorithm =
        match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.10045.2.1" => &signature::ECDSA_P256_SHA256_ASN1,
            "1.2.840.113549.1.1.1" => &signature::RSA_PKCS1_2048_8192_SHA256,
            other => {
                return Err(NoticeError::Certificate(format!("unsupported key algorithm {other}")));
            }
        };
    UnparsedPublicKey::new(algorithm, key)
        .verify(&notice.notice, &notice.signature)
        .map_err(|_| NoticeError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertificateAuthority;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn notices_verify_only_unchanged_and_from_a_server_of_the_ca() -> TestResult {
        let ca = CertificateAuthority::generate("test CA")?;
        let server = ca.issue(Role::Server, "verifier", &[])?;
        let signer = NoticeSigner::from_pem(&server.key_pem, server.cert_der.to_vec())?;
        let signed = signer.sign(br#"{"agent_id":"a","state":"failed"}"#.to_vec())?;
        let cas = [ca.cert_der().clone()];
        verify_notice(&signed, &cas)?;

        let mut tampered = signed.clone();
        tampered.notice[2] ^= 1;
        assert!(matches!(verify_notice(&tampered, &cas), Err(NoticeError::Signature)));

        let other = CertificateAuthority::generate("other CA")?;
        let stranger = other.issue(Role::Server, "verifier", &[])?;
        let foreign = NoticeSigner::from_pem(&stranger.key_pem, stranger.cert_der.to_vec())?;
        let forged = foreign.sign(signed.notice.clone())?;
        assert!(matches!(verify_notice(&forged, &cas), Err(NoticeError::Untrusted)));

        let admin = ca.issue(Role::Admin, "admin", &[])?;
        let client = NoticeSigner::from_pem(&admin.key_pem, admin.cert_der.to_vec())?;
        let by_client = client.sign(signed.notice.clone())?;
        assert!(matches!(verify_notice(&by_client, &cas), Err(NoticeError::NotServer)));
        Ok(())
    }
}
