//! `kctl ca init|issue`: the deployment CA (DESIGN §4-§5) and certificates carrying roles.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use kl_svc::tls::{self, CertificateAuthority, Role, TlsFiles};
use serde_json::json;

use crate::cli::{CaCommand, Cli};
use crate::connect;
use crate::exit::{CmdResult, Failure, Outcome, input};
use crate::output::{self, Format};

pub fn run(cli: &Cli, cmd: &CaCommand) -> CmdResult {
    let config = connect::tenant_config(cli)?;
    let files = connect::tls_files(&config);
    let dir = files.ca_cert().parent().map(Path::to_path_buf).unwrap_or_default();
    let doc = match cmd {
        CaCommand::Init { server_names } => {
            let changed = tls::ensure_generated(&files, server_names)
                .with_context(|| dir.display().to_string())
                .map_err(input)?;
            json!({
                "changed": changed,
                "dir": dir.display().to_string(),
                "ca_certificate": files.ca_cert().display().to_string(),
                "server_certificate": files.server_cert().display().to_string(),
                "client_certificate": files.client_cert().display().to_string(),
            })
        }
        CaCommand::Issue { role, name, names, out_dir, force } => {
            issue(&files, role, name, names, out_dir.as_deref().unwrap_or(&dir), *force)?
        }
    };
    match cli.output {
        Format::Json => output::json(&doc).map_err(input)?,
        Format::Table => {
            output::text(&format!("{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default()))
                .map_err(input)?
        }
    }
    Ok(Outcome::Ok)
}

/// Issues `<name>-cert.crt` and `<name>-private.pem` for `role`. Existing files are kept
/// (`changed: false`) unless `force`.
fn issue(
    files: &TlsFiles,
    role: &str,
    name: &str,
    names: &[String],
    out_dir: &Path,
    force: bool,
) -> Result<serde_json::Value, Failure> {
    let role: Role = role.parse().map_err(|_| {
        input(anyhow!("--role {role:?}: expected admin, viewer, verifier, server or agent"))
    })?;
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(input(anyhow!("certificate name {name:?}: must be a plain file name")));
    }
    let cert: PathBuf = out_dir.join(format!("{name}-cert.crt"));
    let key: PathBuf = out_dir.join(format!("{name}-private.pem"));
    let exists = cert.exists() && key.exists();
    if !exists || force {
        let ca = CertificateAuthority::read(files)
            .with_context(|| "the deployment CA (run `kctl ca init` first)".to_owned())
            .map_err(input)?;
        std::fs::create_dir_all(out_dir)
            .with_context(|| out_dir.display().to_string())
            .map_err(input)?;
        ca.issue(role, name, names)
            .and_then(|issued| issued.write(&cert, &key))
            .with_context(|| cert.display().to_string())
            .map_err(input)?;
    }
    Ok(json!({
        "changed": !exists || force,
        "role": role.as_str(),
        "certificate": cert.display().to_string(),
        "private_key": key.display().to_string(),
    }))
}
