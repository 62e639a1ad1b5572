//! `kctl policies runtime|mb digest`: the canonical form a policy takes at the verifier,
//! computed offline, so that automation can tell whether `apply` would change anything without
//! changing anything (check mode) and show what would change.
//!
//! The verifier canonicalises the same way (parse in any accepted format, merge the exclude
//! list, serialise this project's format, SHA-256 of the bytes); the end-to-end tests compare
//! this digest with the one `apply` reports.

use std::path::Path;

use anyhow::anyhow;
use kl_core::appraisal::RuntimeRules;
use kl_core::policy::mb::MbPolicy;
use kl_core::policy::{self, Format as PolicyFormat, LoadOptions, RuntimePolicyBuilder};
use kl_core::policy::{VerificationKey, allowlist};
use serde_json::{Value, json};

use crate::exit::{CmdResult, Outcome, input};
use crate::input::{display, malformed, read};
use crate::output::{self, Format};

pub fn runtime(
    file: &Path,
    exclude: Option<&Path>,
    signing_key: Option<&Path>,
    format: Format,
) -> CmdResult {
    let key = match signing_key {
        Some(path) => Some(VerificationKey::from_pem(&read(path)?).map_err(malformed(path))?),
        None => None,
    };
    let options = LoadOptions { signing_key: key.as_ref(), require_signature: key.is_some() };
    let (mut parsed, detected) = policy::load(&read(file)?, &options).map_err(malformed(file))?;
    if let Some(path) = exclude {
        let mut builder = RuntimePolicyBuilder::new();
        builder.merge(&parsed);
        allowlist::add_exclude_list(&mut builder, &read(path)?).map_err(malformed(path))?;
        parsed = builder.build().map_err(malformed(path))?;
    }
    let document = parsed.to_json();
    let entries = parsed.file_count();
    // The verifier refuses a policy whose signing keys do not parse; say so here as well.
    RuntimeRules::new(parsed).map_err(malformed(file))?;
    let format_name = match detected {
        PolicyFormat::Native => "native",
        PolicyFormat::Keylime => "keylime",
        PolicyFormat::Signed => "signed",
        PolicyFormat::FlatAllowlist => "allowlist",
    };
    print(file, document.as_bytes(), entries, format_name, format)
}

pub fn measured_boot(file: &Path, format: Format) -> CmdResult {
    let bytes = read(file)?;
    let (parsed, format_name) = match MbPolicy::from_json(&bytes) {
        Ok(p) => (p, "native"),
        Err(native) => match MbPolicy::from_keylime_refstate(&bytes) {
            Ok(p) => (p, "keylime"),
            Err(keylime) => {
                return Err(input(anyhow!(
                    "{}: as this project's format: {native}; as a Keylime refstate: {keylime}",
                    display(file)
                )));
            }
        },
    };
    let document = serde_json::to_vec(&parsed).map_err(input)?;
    let entries = parsed.firmware.as_ref().map_or(0, Vec::len)
        + parsed.bootloaders.as_ref().map_or(0, Vec::len)
        + parsed.kernels.as_ref().map_or(0, Vec::len)
        + parsed.kernel_cmdlines.as_ref().map_or(0, Vec::len)
        + parsed.db_must_contain.len()
        + parsed.dbx_must_include.len()
        + parsed.pcr_values.as_ref().map_or(0, |v| v.len());
    print(file, &document, entries, format_name, format)
}

fn print(
    file: &Path,
    document: &[u8],
    entries: usize,
    format_name: &str,
    format: Format,
) -> CmdResult {
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, document));
    match format {
        Format::Json => {
            let document: Value = serde_json::from_slice(document).map_err(input)?;
            let doc = json!({
                "path": display(file),
                "digest": digest,
                "entries": entries,
                "format": format_name,
                "document": document,
            });
            output::json(&doc).map_err(input)?;
        }
        Format::Table => output::text(&format!(
            "{digest}  {}  ({entries} entries, {format_name})\n",
            display(file)
        ))
        .map_err(input)?,
    }
    Ok(Outcome::Ok)
}
