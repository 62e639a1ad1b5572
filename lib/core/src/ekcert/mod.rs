//! EK certificate validation against a store of TPM vendor CA certificates.
//!
//! This module owns deciding whether an endorsement key certificate chains to a trusted TPM
//! vendor CA, and extracting what the registrar needs from it: the EK public key (to compare with
//! the EK the agent presented) and the TCG TPM manufacturer, model and version attributes.
//!
//! Certificates are read with the crate's lenient DER reader (`crate::der`) because real EK certificates
//! break strict parsers (trailing bytes after the certificate, SETs out of canonical order).
//! Leniency stops at the signature: every signature is checked by ring over the TBS bytes exactly
//! as encoded, so a sloppy encoding can be accepted but a modified one cannot. The only unsigned
//! parts of a certificate are the outer signatureAlgorithm, which must equal the signed one byte
//! for byte, and the signature value, whose ECDSA integers are read leniently and re-encoded.
//!
//! Trust policy:
//! - Every certificate in the [`CaStore`] is a trust anchor (the same model as Keylime's
//!   `tpm_cert_store`, which mixes roots and intermediates). Chain building stops at the first
//!   store certificate whose key verifies the certificate below it.
//! - Intermediates supplied with the EK certificate (agents read them from TPM NV) are used to
//!   build the chain but are never anchors.
//! - Issuers are found by subject/issuer name (byte-equal, or equal after case and whitespace
//!   folding and attribute reordering) and, when both certificates carry them, the authority key
//!   identifier must equal the candidate's subject key identifier.
//! - Every issuer must be a CA: basicConstraints cA=TRUE (a version 1 store certificate, which
//!   cannot carry extensions, is accepted as an anchor), keyUsage keyCertSign when keyUsage is
//!   present, and a pathLenConstraint that admits the intermediates below it.
//! - Validity periods are checked for every certificate of the chain against the time the caller
//!   supplies ([`ValidationOptions::now`]); `None` skips the check, for deployments that accept
//!   expired EK certificates (a TPM outlives its certificate). UTCTime and GeneralizedTime are
//!   accepted for any year, so far-future `99991231235959Z` notAfter values work.
//! - Signature algorithms: RSA PKCS#1 v1.5 with SHA-256/384/512, RSASSA-PSS with
//!   SHA-256/384/512, ECDSA P-256/P-384 with SHA-256/384, and RSA PKCS#1 v1.5 with SHA-1 when
//!   [`ValidationOptions::allow_sha1`] is set (the default), because Infineon's intermediate CAs are
//!   signed with SHA-1 by their root. RSA keys must be 2048 to 8192 bits (ring's limits).

mod cert;
mod verify;

#[cfg(test)]
mod ecdsa_chain_tests;
#[cfg(test)]
mod tests;

use cert::Certificate;
pub use cert::TpmAttributes;

use crate::der::DerError;
use crate::key::SubjectPublicKey;
use crate::pem;

/// The longest chain (EK certificate plus issuers) that will be built.
pub(crate) const MAX_CHAIN_LEN: usize = 8;

/// Why an EK certificate or a CA certificate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EkCertError {
    #[error("{input}: malformed DER at byte {offset}: {reason}")]
    Malformed { input: String, offset: usize, reason: String },
    #[error("{input}: line {line}: {reason}")]
    Pem { input: String, line: usize, reason: String },
    #[error("the EK CA store is empty")]
    EmptyStore,
    #[error(
        "chain depth {depth}: issuer {issuer:?} of {subject:?} is not in the CA store or the supplied intermediates"
    )]
    UnknownIssuer { depth: usize, subject: String, issuer: String },
    #[error(
        "chain depth {depth}: signature of {subject:?} does not verify with the key of {issuer:?}"
    )]
    BadSignature { depth: usize, subject: String, issuer: String },
    #[error(
        "chain depth {depth}: {subject:?} is signed with {algorithm}, which is not supported with a {key} issuer key"
    )]
    UnsupportedAlgorithm { depth: usize, subject: String, algorithm: String, key: String },
    #[error("chain depth {depth}: {subject:?} expired at {not_after} (checked at {now})")]
    Expired { depth: usize, subject: String, not_after: String, now: String },
    #[error("chain depth {depth}: {subject:?} is not valid before {not_before} (checked at {now})")]
    NotYetValid { depth: usize, subject: String, not_before: String, now: String },
    #[error("chain depth {depth}: {subject:?} issues certificates but is not a CA: {reason}")]
    NotCa { depth: usize, subject: String, reason: String },
    #[error("the chain from {subject:?} is longer than {MAX_CHAIN_LEN} certificates")]
    ChainTooLong { subject: String },
}

impl EkCertError {
    fn malformed(input: &str, e: DerError) -> EkCertError {
        EkCertError::Malformed { input: input.to_owned(), offset: e.offset, reason: e.reason }
    }
}

/// How to validate: the time to check validity periods at, and whether SHA-1 signatures pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationOptions {
    /// Seconds since the Unix epoch; `None` skips validity-period checks.
    pub now: Option<i64>,
    pub allow_sha1: bool,
}

impl ValidationOptions {
    /// Checks validity periods at `now` (Unix seconds) and accepts SHA-1 RSA signatures.
    pub fn at(now: i64) -> ValidationOptions {
        ValidationOptions { now: Some(now), allow_sha1: true }
    }

    /// Skips validity-period checks.
    pub fn ignoring_time() -> ValidationOptions {
        ValidationOptions { now: None, allow_sha1: true }
    }
}

/// One certificate of a validated chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCert {
    pub subject: String,
    pub issuer: String,
    /// True for the trust anchor (the last element).
    pub from_store: bool,
    /// Validity period, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// A successfully validated EK certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedChain {
    /// The EK certificate first, the store anchor last.
    pub chain: Vec<ChainCert>,
    /// The EK certificate's public key.
    pub ek_public: SubjectPublicKey,
    /// TCG attributes from the EK certificate's subjectAltName (empty if absent).
    pub tpm: TpmAttributes,
}

/// Trusted TPM vendor CA certificates, as read by the caller from `tpm_cert_store`.
#[derive(Debug, Clone, Default)]
pub struct CaStore {
    certs: Vec<Certificate>,
}

impl CaStore {
    pub fn new() -> CaStore {
        CaStore::default()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Adds one DER certificate; `source` names it in errors (e.g. a file name).
    pub fn add_der(&mut self, source: &str, der: &[u8]) -> Result<(), EkCertError> {
        let cert = Certificate::parse(der).map_err(|e| EkCertError::malformed(source, e))?;
        self.certs.push(cert);
        Ok(())
    }

    /// Adds every certificate of a PEM file or bundle and returns how many. Other PEM blocks
    /// (keys, CRLs) are skipped. A file that holds no PEM block at all is read as one DER
    /// certificate, since stores sometimes hold `.der`/`.cer` files too. Nothing is added if
    /// any certificate of the file is unreadable.
    pub fn add_file(&mut self, source: &str, contents: &[u8]) -> Result<usize, EkCertError> {
        let certs = file_certificates(source, contents)?
            .into_iter()
            .map(|(name, der)| {
                Certificate::parse(&der).map_err(|e| EkCertError::malformed(&name, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n = certs.len();
        self.certs.extend(certs);
        Ok(n)
    }

    /// Builds a store from `(file name, contents)` pairs, e.g. a directory's files. Unlike
    /// [`CaStore::add_file`], a certificate that cannot be read (a malformed file, or a CA key
    /// type this module does not support) is skipped and reported in the returned list, so one
    /// odd vendor file does not disable EK validation for every other vendor.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (CaStore, Vec<EkCertError>) {
        let mut store = CaStore::new();
        let mut skipped = Vec::new();
        for (source, contents) in files {
            match file_certificates(source, contents) {
                Ok(certs) => {
                    for (name, der) in certs {
                        match Certificate::parse(&der) {
                            Ok(cert) => store.certs.push(cert),
                            Err(e) => skipped.push(EkCertError::malformed(&name, e)),
                        }
                    }
                }
                Err(e) => skipped.push(e),
            }
        }
        (store, skipped)
    }
}

/// The DER certificates of one store file, each with the name errors should use.
fn file_certificates(source: &str, contents: &[u8]) -> Result<Vec<(String, Vec<u8>)>, EkCertError> {
    let ders = match std::str::from_utf8(contents) {
        Ok(text) if text.contains("-----BEGIN") => pem_certificates(source, text)?,
        _ => vec![contents.to_vec()],
    };
    let many = ders.len() > 1;
    Ok(ders
        .into_iter()
        .enumerate()
        .map(|(i, der)| {
            let name =
                if many { format!("{source} (certificate {})", i + 1) } else { source.to_owned() };
            (name, der)
        })
        .collect())
}

/// Decodes the `CERTIFICATE` blocks of a PEM text.
fn pem_certificates(source: &str, text: &str) -> Result<Vec<Vec<u8>>, EkCertError> {
    let pem_err = |e: pem::PemError| EkCertError::Pem {
        input: source.to_owned(),
        line: e.line,
        reason: e.reason,
    };
    pem::blocks(text)
        .map_err(pem_err)?
        .iter()
        .filter(|b| b.label == "CERTIFICATE" || b.label == "TRUSTED CERTIFICATE")
        .map(|b| b.decode().map_err(pem_err))
        .collect()
}

/// Parses an EK certificate without validating it, to read its public key and TPM attributes.
pub fn parse_ek_certificate(der: &[u8]) -> Result<(SubjectPublicKey, TpmAttributes), EkCertError> {
    let cert = Certificate::parse(der).map_err(|e| EkCertError::malformed("EK certificate", e))?;
    Ok((cert.public_key, cert.tpm))
}

/// The subject public key of any X.509 certificate (DER), e.g. an agent's identity
/// certificate, read with the same lenient parser.
pub fn certificate_public_key(der: &[u8]) -> Result<SubjectPublicKey, EkCertError> {
    let cert = Certificate::parse(der).map_err(|e| EkCertError::malformed("certificate", e))?;
    Ok(cert.public_key)
}

/// Validates an EK certificate (DER) against `store`, using `intermediates` (DER, any order)
/// to bridge to a store certificate.
pub fn validate(
    ek_cert: &[u8],
    intermediates: &[&[u8]],
    store: &CaStore,
    options: &ValidationOptions,
) -> Result<ValidatedChain, EkCertError> {
    let leaf =
        Certificate::parse(ek_cert).map_err(|e| EkCertError::malformed("EK certificate", e))?;
    let extra = intermediates
        .iter()
        .enumerate()
        .map(|(i, der)| {
            Certificate::parse(der).map_err(|e| {
                EkCertError::malformed(&format!("intermediate certificate {}", i + 1), e)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if store.is_empty() {
        return Err(EkCertError::EmptyStore);
    }
    check_time(&leaf, 0, options)?;

    let mut path: Vec<(&Certificate, bool)> = vec![(&leaf, false)];
    let mut used = vec![false; extra.len()];
    loop {
        let depth = path.len() - 1;
        let (current, _) = path[depth];
        if path.len() >= MAX_CHAIN_LEN {
            return Err(EkCertError::ChainTooLong { subject: leaf.subject.display.clone() });
        }
        let candidates = store
            .certs
            .iter()
            .map(|c| (c, true, None))
            .chain(
                extra
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !used[*i])
                    .map(|(i, c)| (c, false, Some(i))),
            )
            .filter(|(c, _, _)| is_issuer_candidate(current, c));
        let mut first_failure = None;
        let mut found = None;
        for (issuer, from_store, index) in candidates {
            match verify::check_signature(current, issuer, depth, options) {
                Ok(()) => {
                    found = Some((issuer, from_store, index));
                    break;
                }
                Err(e) => {
                    first_failure.get_or_insert(e);
                }
            }
        }
        let Some((issuer, from_store, index)) = found else {
            return Err(first_failure.unwrap_or_else(|| EkCertError::UnknownIssuer {
                depth,
                subject: current.subject.display.clone(),
                issuer: current.issuer.display.clone(),
            }));
        };
        check_ca(issuer, depth + 1, depth, from_store)?;
        check_time(issuer, depth + 1, options)?;
        if let Some(i) = index {
            used[i] = true;
        }
        path.push((issuer, from_store));
        if from_store {
            break;
        }
    }
    Ok(ValidatedChain {
        chain: path
            .iter()
            .map(|(c, from_store)| ChainCert {
                subject: c.subject.display.clone(),
                issuer: c.issuer.display.clone(),
                from_store: *from_store,
                not_before: c.not_before,
                not_after: c.not_after,
            })
            .collect(),
        ek_public: leaf.public_key.clone(),
        tpm: leaf.tpm.clone(),
    })
}

fn is_issuer_candidate(cert: &Certificate, issuer: &Certificate) -> bool {
    if !cert.issuer.matches(&issuer.subject) {
        return false;
    }
    match (&cert.authority_key_id, &issuer.subject_key_id) {
        (Some(aki), Some(ski)) => aki == ski,
        _ => true,
    }
}

/// `below` is the number of intermediates between the issuer and the EK certificate.
fn check_ca(
    issuer: &Certificate,
    depth: usize,
    below: usize,
    from_store: bool,
) -> Result<(), EkCertError> {
    let not_ca = |reason: String| EkCertError::NotCa {
        depth,
        subject: issuer.subject.display.clone(),
        reason,
    };
    match issuer.basic_constraints {
        Some((true, path_len)) => {
            if let Some(max) = path_len
                && below as u64 > max
            {
                return Err(not_ca(format!(
                    "pathLenConstraint {max} but {below} intermediate(s) below it"
                )));
            }
        }
        Some((false, _)) => return Err(not_ca("basicConstraints cA is FALSE".to_owned())),
        None if from_store && issuer.version == 1 => {}
        None => return Err(not_ca("no basicConstraints extension".to_owned())),
    }
    if issuer.key_cert_sign == Some(false) {
        return Err(not_ca("keyUsage lacks keyCertSign".to_owned()));
    }
    Ok(())
}

fn check_time(
    cert: &Certificate,
    depth: usize,
    options: &ValidationOptions,
) -> Result<(), EkCertError> {
    let Some(now) = options.now else { return Ok(()) };
    if now < cert.not_before {
        return Err(EkCertError::NotYetValid {
            depth,
            subject: cert.subject.display.clone(),
            not_before: crate::date::rfc3339(cert.not_before, None),
            now: crate::date::rfc3339(now, None),
        });
    }
    if now > cert.not_after {
        return Err(EkCertError::Expired {
            depth,
            subject: cert.subject.display.clone(),
            not_after: crate::date::rfc3339(cert.not_after, None),
            now: crate::date::rfc3339(now, None),
        });
    }
    Ok(())
}
