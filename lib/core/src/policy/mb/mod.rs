//! Measured-boot policies: what a machine's UEFI event log must show.
//!
//! This module owns the policy format (documented in `docs/measured-boot-policy.md`), its
//! generation from a known-good log ([`generate`]) and the evaluation of a log against it
//! ([`evaluate`]), which yields a [`Verdict`] whose findings name the event number, event type,
//! expected and actual values. Keylime's measured-boot reference state can be imported
//! ([`MbPolicy::from_keylime_refstate`]).
//!
//! Trust model: the TPM quote vouches for PCR values; replay ties each event's digest to them;
//! a decoded field is only used when the event's digest is a hash of the data that holds it
//! ([`crate::eventlog::Event::digest_verified`]). Digests of images and files (shim, grub, the
//! kernel) are checked as digests; their descriptions (file names, device paths) never decide.

mod evaluate;
mod facts;
mod keylime;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alg::{Digest, HashAlg};
use crate::eventlog::EventLog;
use crate::eventlog::efi::SignatureKind;

pub use evaluate::evaluate;

/// The PCRs a policy covers when it does not say: the firmware and boot loader PCRs, and
/// shim's PCR 14. PCR 11 and others extended at runtime are not replayed from the event log.
pub const DEFAULT_PCRS: [u32; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14];

/// Current policy format version.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Why a policy document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MbPolicyError {
    #[error("measured-boot policy: JSON error at line {line}, column {column}: {message}")]
    Json { line: usize, column: usize, message: String },
    #[error("measured-boot policy: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl MbPolicyError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        MbPolicyError::Invalid { field: field.into(), problem: problem.into() }
    }

    fn json(e: &serde_json::Error) -> Self {
        MbPolicyError::Json { line: e.line(), column: e.column(), message: e.to_string() }
    }
}

/// An allowed kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmdlineRule {
    /// The command line must equal this text.
    Exact(String),
    /// The whole command line must match this regular expression (anchored at both ends).
    Regex(String),
}

/// An entry a signature database must contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRule {
    /// `x509` (DER certificate) or `sha256` (image hash).
    #[serde(rename = "type")]
    pub kind: SignatureRuleKind,
    /// Lowercase hex of the certificate DER or the hash.
    pub data: String,
    /// The signature owner GUID, when it must match too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureRuleKind {
    X509,
    Sha256,
}

impl SignatureRuleKind {
    fn matches(self, kind: SignatureKind) -> bool {
        matches!(
            (self, kind),
            (SignatureRuleKind::X509, SignatureKind::X509)
                | (SignatureRuleKind::Sha256, SignatureKind::Sha256)
        )
    }
}

/// A measured-boot policy. Absent checks (`None`) are not enforced; an empty list allows
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MbPolicy {
    #[serde(default = "default_version")]
    pub version: u32,
    /// The PCR bank every digest below is in.
    #[serde(default = "default_hash_alg")]
    pub hash_alg: HashAlg,
    /// The PCRs the policy covers: replay is compared to the quote for these, and only events
    /// in them are examined.
    #[serde(default = "default_pcrs")]
    pub pcrs: Vec<u32>,
    /// When false, Secure Boot must be measured as enabled.
    #[serde(default)]
    pub allow_secureboot_off: bool,
    /// Allowed PCR 0 S-CRTM and platform firmware digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Vec<String>>,
    /// Allowed sequences of PCR 4 boot-services application digests measured before the OS
    /// loader's first PCR 8/9 measurement (firmware apps, shim, grub), in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloaders: Option<Vec<Vec<String>>>,
    /// Allowed kernel digests: PCR 4 applications loaded by the OS loader (Authenticode) and
    /// the file grub measured in PCR 9 for its `linux` command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<Vec<String>>,
    /// Allowed kernel command lines (PCR 8 `kernel_cmdline:` and grub `linux` commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_cmdlines: Option<Vec<CmdlineRule>>,
    /// Entries db must contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_must_contain: Vec<SignatureRule>,
    /// SHA-256 hashes dbx must include (revoked images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dbx_must_include: Vec<String>,
    /// Expected replayed PCR values (in `hash_alg`), by PCR index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_values: Option<BTreeMap<u32, String>>,
}

fn default_version() -> u32 {
    FORMAT_VERSION
}

fn default_hash_alg() -> HashAlg {
    HashAlg::Sha256
}

fn default_pcrs() -> Vec<u32> {
    DEFAULT_PCRS.to_vec()
}

impl Default for MbPolicy {
    fn default() -> Self {
        MbPolicy {
            version: FORMAT_VERSION,
            hash_alg: HashAlg::Sha256,
            pcrs: default_pcrs(),
            allow_secureboot_off: false,
            firmware: None,
            bootloaders: None,
            kernels: None,
            kernel_cmdlines: None,
            db_must_contain: Vec::new(),
            dbx_must_include: Vec::new(),
            pcr_values: None,
        }
    }
}

impl MbPolicy {
    /// Parses and validates a policy in this project's JSON format.
    pub fn from_json(text: &[u8]) -> Result<MbPolicy, MbPolicyError> {
        let policy: MbPolicy = serde_json::from_slice(text).map_err(|e| MbPolicyError::json(&e))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks versions, PCR indexes, digest lengths, GUIDs and regular expressions.
    pub fn validate(&self) -> Result<(), MbPolicyError> {
        if self.version != FORMAT_VERSION {
            return Err(MbPolicyError::invalid(
                "version",
                format!("{} is not supported (expected {FORMAT_VERSION})", self.version),
            ));
        }
        for (i, pcr) in self.pcrs.iter().enumerate() {
            if *pcr >= crate::eventlog::PCR_COUNT {
                return Err(MbPolicyError::invalid(
                    format!("pcrs[{i}]"),
                    format!("{pcr} is not a PCR index (0-23)"),
                ));
            }
        }
        let alg = self.hash_alg;
        let check = |field: String, hex: &str| -> Result<(), MbPolicyError> {
            parse_digest(alg, hex).map(|_| ()).ok_or_else(|| {
                MbPolicyError::invalid(
                    field,
                    format!("{hex:?} is not a {alg} digest ({} hex digits)", 2 * alg.len()),
                )
            })
        };
        for (i, d) in self.firmware.iter().flatten().enumerate() {
            check(format!("firmware[{i}]"), d)?;
        }
        for (i, seq) in self.bootloaders.iter().flatten().enumerate() {
            for (j, d) in seq.iter().enumerate() {
                check(format!("bootloaders[{i}][{j}]"), d)?;
            }
        }
        for (i, d) in self.kernels.iter().flatten().enumerate() {
            check(format!("kernels[{i}]"), d)?;
        }
        for (i, rule) in self.kernel_cmdlines.iter().flatten().enumerate() {
            if let CmdlineRule::Regex(re) = rule {
                anchored_regex(re).map_err(|e| {
                    MbPolicyError::invalid(format!("kernel_cmdlines[{i}].regex"), e.to_string())
                })?;
            }
        }
        for (i, rule) in self.db_must_contain.iter().enumerate() {
            if hex::decode(&rule.data).map_or(true, |d| d.is_empty()) {
                return Err(MbPolicyError::invalid(
                    format!("db_must_contain[{i}].data"),
                    "not hex",
                ));
            }
            if rule.kind == SignatureRuleKind::Sha256 && rule.data.len() != 64 {
                return Err(MbPolicyError::invalid(
                    format!("db_must_contain[{i}].data"),
                    "not a sha256 hash",
                ));
            }
            if let Some(owner) = &rule.owner
                && crate::eventlog::efi::Guid::parse(owner).is_none()
            {
                return Err(MbPolicyError::invalid(
                    format!("db_must_contain[{i}].owner"),
                    format!("{owner:?} is not a GUID"),
                ));
            }
        }
        for (i, d) in self.dbx_must_include.iter().enumerate() {
            parse_digest(HashAlg::Sha256, d).ok_or_else(|| {
                MbPolicyError::invalid(
                    format!("dbx_must_include[{i}]"),
                    format!("{d:?} is not a sha256 hash"),
                )
            })?;
        }
        for (pcr, d) in self.pcr_values.iter().flatten() {
            check(format!("pcr_values.{pcr}"), d)?;
        }
        Ok(())
    }

    /// Adds the log's replayed PCR values (for the covered PCRs) as expected values: the
    /// strictest policy, which any firmware or configuration change breaks.
    pub fn pin_pcr_values(&mut self, log: &EventLog) {
        let values = self
            .pcrs
            .iter()
            .filter_map(|pcr| log.pcr(self.hash_alg, *pcr).map(|d| (*pcr, d.to_hex())))
            .collect();
        self.pcr_values = Some(values);
    }
}

pub(crate) fn parse_digest(alg: HashAlg, text: &str) -> Option<Digest> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    Digest::from_hex(alg, &text.to_ascii_lowercase())
}

pub(crate) fn anchored_regex(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{re})$"))
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Builds a policy from a known-good log: its firmware, boot loader chain, kernels, kernel
/// command lines, db entries and dbx hashes become what is allowed or required. Only data
/// proven by its digest is used. PCR values are not pinned (see [`MbPolicy::pin_pcr_values`]).
pub fn generate(log: &EventLog, allow_secureboot_off: bool) -> MbPolicy {
    let banks = log.banks();
    let hash_alg = if banks.contains(&HashAlg::Sha256) {
        HashAlg::Sha256
    } else {
        banks.first().copied().unwrap_or(HashAlg::Sha256)
    };
    let mut policy = MbPolicy { hash_alg, allow_secureboot_off, ..MbPolicy::default() };
    let f = facts::collect(log, hash_alg, &policy.pcrs);
    let mut firmware = Vec::new();
    for m in &f.firmware {
        push_unique(&mut firmware, m.digest.to_hex());
    }
    policy.firmware = Some(firmware);
    policy.bootloaders = Some(vec![f.bootloaders.iter().map(|m| m.digest.to_hex()).collect()]);
    let mut kernels = Vec::new();
    for m in &f.kernels {
        push_unique(&mut kernels, m.digest.to_hex());
    }
    policy.kernels = Some(kernels);
    let mut cmdlines = Vec::new();
    for c in &f.cmdlines {
        push_unique(&mut cmdlines, CmdlineRule::Exact(c.cmdline.clone()));
    }
    policy.kernel_cmdlines = Some(cmdlines);
    if let Some(db) = &f.db {
        for sig in facts::signatures(db) {
            let kind = match sig.kind {
                SignatureKind::X509 => SignatureRuleKind::X509,
                SignatureKind::Sha256 => SignatureRuleKind::Sha256,
                SignatureKind::Other(_) => continue,
            };
            push_unique(
                &mut policy.db_must_contain,
                SignatureRule {
                    kind,
                    data: hex::encode(sig.data),
                    owner: Some(sig.owner.to_string()),
                },
            );
        }
    }
    if let Some(dbx) = &f.dbx {
        for sig in facts::signatures(dbx) {
            if sig.kind == SignatureKind::Sha256 {
                push_unique(&mut policy.dbx_must_include, hex::encode(sig.data));
            }
        }
    }
    policy
}
