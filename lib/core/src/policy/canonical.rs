//! The canonical form of a policy: what the verifier stores and names by its SHA-256, and what
//! `kctl policies ... digest` computes offline, so that automation can tell whether an apply
//! would change anything. One implementation for both, so the two digests cannot drift.

use crate::alg::HashAlg;
use crate::appraisal::RuntimeRules;
use crate::policy::mb::MbPolicy;
use crate::policy::{self, Format, LoadOptions, RuntimePolicyBuilder, VerificationKey, allowlist};

/// A policy in canonical form: this project's JSON, its digest and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub document: Vec<u8>,
    /// Lowercase hex SHA-256 of `document`.
    pub digest: String,
    /// Files (runtime) or allowed values (measured boot) it lists.
    pub entries: u64,
    /// The format the input was read as: `native`, `keylime`, `signed` or `allowlist`.
    pub format: &'static str,
}

/// Which input of a canonicalisation was unusable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    #[error("{0}")]
    Document(String),
    #[error("{0}")]
    ExcludeList(String),
    #[error("{0}")]
    SigningKey(String),
}

/// A runtime policy in any format [`policy::load`] accepts (checked against `signing_key`, PEM,
/// when one is given), with Keylime's exclude list merged.
pub fn runtime(
    document: &[u8],
    exclude_list: &[u8],
    signing_key: &[u8],
) -> Result<Canonical, CanonicalError> {
    let key = if signing_key.is_empty() {
        None
    } else {
        Some(
            VerificationKey::from_pem(signing_key)
                .map_err(|e| CanonicalError::SigningKey(e.to_string()))?,
        )
    };
    let options = LoadOptions { signing_key: key.as_ref(), require_signature: key.is_some() };
    let (mut parsed, format) =
        policy::load(document, &options).map_err(|e| CanonicalError::Document(e.to_string()))?;
    if !exclude_list.is_empty() {
        let mut builder = RuntimePolicyBuilder::new();
        builder.merge(&parsed);
        allowlist::add_exclude_list(&mut builder, exclude_list)
            .map_err(|e| CanonicalError::ExcludeList(e.to_string()))?;
        parsed = builder.build().map_err(|e| CanonicalError::ExcludeList(e.to_string()))?;
    }
    let document = parsed.to_json().into_bytes();
    let entries = parsed.file_count() as u64;
    // The signing keys the policy names must parse too.
    RuntimeRules::new(parsed).map_err(|e| CanonicalError::Document(e.to_string()))?;
    let format = match format {
        Format::Native => "native",
        Format::Keylime => "keylime",
        Format::Signed => "signed",
        Format::FlatAllowlist => "allowlist",
    };
    Ok(Canonical { digest: sha256_hex(&document), entries, document, format })
}

/// A measured-boot policy: this project's format or Keylime's reference state.
pub fn measured_boot(document: &[u8]) -> Result<Canonical, CanonicalError> {
    let (parsed, format) = match MbPolicy::from_json(document) {
        Ok(p) => (p, "native"),
        Err(native) => match MbPolicy::from_keylime_refstate(document) {
            Ok(p) => (p, "keylime"),
            Err(keylime) => {
                return Err(CanonicalError::Document(format!(
                    "as this project's format: {native}; as a Keylime refstate: {keylime}"
                )));
            }
        },
    };
    let document = serde_json::to_vec(&parsed)
        .map_err(|e| CanonicalError::Document(format!("cannot serialise it: {e}")))?;
    let entries = parsed.firmware.as_ref().map_or(0, Vec::len)
        + parsed.bootloaders.as_ref().map_or(0, Vec::len)
        + parsed.kernels.as_ref().map_or(0, Vec::len)
        + parsed.kernel_cmdlines.as_ref().map_or(0, Vec::len)
        + parsed.db_must_contain.len()
        + parsed.dbx_must_include.len()
        + parsed.pcr_values.as_ref().map_or(0, |v| v.len());
    Ok(Canonical { digest: sha256_hex(&document), entries: entries as u64, document, format })
}

fn sha256_hex(bytes: &[u8]) -> String {
    HashAlg::Sha256.digest(bytes).to_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_policy_in_any_spelling_has_one_digest() {
        let digest = HashAlg::Sha256.digest(b"bash").to_hex();
        let flat = format!("{digest}  /usr/bin/bash\n");
        let a = runtime(flat.as_bytes(), b"", b"").expect("flat allowlist");
        assert_eq!(a.format, "allowlist");
        assert_eq!(a.entries, 1);
        let again = runtime(&a.document, b"", b"").expect("canonical form");
        assert_eq!((again.digest.as_str(), again.format), (a.digest.as_str(), "native"));
        let excluded = runtime(flat.as_bytes(), b"^/tmp/.*\n", b"").expect("exclude list");
        assert_ne!(excluded.digest, a.digest);
        assert!(matches!(runtime(b"{not json", b"", b""), Err(CanonicalError::Document(_))));
        assert!(matches!(
            runtime(flat.as_bytes(), b"", b"not a key"),
            Err(CanonicalError::SigningKey(_))
        ));
        let mb = measured_boot(br#"{"version": 1, "allow_secureboot_off": true}"#).expect("mb");
        assert_eq!(measured_boot(&mb.document).expect("canonical").digest, mb.digest);
        assert!(matches!(measured_boot(b"{not json"), Err(CanonicalError::Document(_))));
    }
}
