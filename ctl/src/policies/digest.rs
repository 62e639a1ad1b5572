//! `kctl policies runtime|mb digest`: the canonical form a policy takes at the verifier,
//! computed offline, so that automation can tell whether `apply` would change anything without
//! changing anything (check mode) and show what would change.
//!
//! The verifier canonicalises with the same code (`kl_core::policy::canonical`); the
//! end-to-end tests compare this digest with the one `apply` reports.

use std::path::Path;

use anyhow::anyhow;
use kl_core::policy::canonical::{self, Canonical, CanonicalError};
use serde_json::{Value, json};

use crate::exit::{CmdResult, Failure, Outcome, input};
use crate::input::{display, read};
use crate::output::{self, Format};

pub fn runtime(
    file: &Path,
    exclude: Option<&Path>,
    signing_key: Option<&Path>,
    format: Format,
) -> CmdResult {
    let document = read(file)?;
    let exclude_list = exclude.map(read).transpose()?.unwrap_or_default();
    let key = signing_key.map(read).transpose()?.unwrap_or_default();
    let canonical = canonical::runtime(&document, &exclude_list, &key).map_err(|e| {
        let blamed = match &e {
            CanonicalError::ExcludeList(_) => exclude.unwrap_or(file),
            CanonicalError::SigningKey(_) => signing_key.unwrap_or(file),
            _ => file,
        };
        named(blamed, &e)
    })?;
    print(file, &canonical, format)
}

pub fn measured_boot(file: &Path, format: Format) -> CmdResult {
    let canonical = canonical::measured_boot(&read(file)?).map_err(|e| named(file, &e))?;
    print(file, &canonical, format)
}

/// The one-line input error: the file, then what is wrong with it.
fn named(file: &Path, e: &CanonicalError) -> Failure {
    input(anyhow!("{}: {e}", display(file)))
}

fn print(file: &Path, canonical: &Canonical, format: Format) -> CmdResult {
    let Canonical { digest, entries, format: format_name, .. } = canonical;
    match format {
        Format::Json => {
            let document: Value = serde_json::from_slice(&canonical.document).map_err(input)?;
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
