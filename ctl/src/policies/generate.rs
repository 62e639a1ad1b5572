//! `kctl policies runtime generate` and `kctl policies mb generate`.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use kl_core::eventlog::EventLog;
use kl_core::ima::{self, Template};
use kl_core::policy::{RuntimePolicy, RuntimePolicyBuilder, allowlist, mb};
use serde_json::json;

use super::tree;
use crate::cli::{GenerateArgs, MbGenerateArgs, PolicyFormat};
use crate::exit::{CmdResult, Failure, Outcome, input};
use crate::input::{display, malformed, read};
use crate::output::{self, Format};

pub fn runtime(args: &GenerateArgs, format: Format) -> CmdResult {
    let mut builder = RuntimePolicyBuilder::new();
    let mut sources = serde_json::Map::new();

    if let Some(log) = &args.ima_log {
        let n = add_ima_log(&mut builder, log)?;
        sources.insert("ima_log_entries".into(), json!(n));
    }
    if let Some(dir) = &args.dir {
        let root = args.root.clone().unwrap_or_else(|| absolute(dir));
        let (measured, skipped) =
            tree::hash_tree(dir, &root, &args.skip_paths, args.hash_alg.into()).map_err(input)?;
        for m in &measured {
            builder
                .add_file(&m.path, m.digest.as_bytes())
                .with_context(|| m.path.clone())
                .map_err(input)?;
        }
        for s in &skipped {
            eprintln!("kctl: skipped {}: {}", s.path.display(), s.reason);
        }
        sources.insert("files_hashed".into(), json!(measured.len()));
        sources.insert("files_skipped".into(), json!(skipped.len()));
    }
    if let Some(list) = &args.allowlist {
        allowlist::add_allowlist(&mut builder, &read(list)?).map_err(malformed(list))?;
    }
    if let Some(list) = &args.exclude {
        allowlist::add_exclude_list(&mut builder, &read(list)?).map_err(malformed(list))?;
    }
    let policy = builder.build().context("building the runtime policy").map_err(input)?;
    let document = match args.format {
        PolicyFormat::Native => policy.to_json(),
        PolicyFormat::Keylime => policy.to_keylime_json(),
    };
    let summary = summary(&policy, sources);
    write_document(&document, args.out.as_deref(), &summary, format)
}

/// Adds every measured file (and buffer and keyring key) of an IMA log. Violations carry no
/// usable digest and are skipped.
fn add_ima_log(builder: &mut RuntimePolicyBuilder, log: &Path) -> Result<u64, Failure> {
    let bytes = read(log)?;
    let mut count = 0;
    for entry in ima::Entries::parse(&bytes, 0) {
        let entry = entry.map_err(malformed(log))?;
        count += 1;
        if entry.is_violation() {
            continue;
        }
        let digest = entry.digest.as_bytes();
        let added = match entry.template {
            Template::ImaBuf { .. } => match entry.keyring_measurement() {
                Some(k) => builder.add_keyring_digest(k.keyring, digest),
                None => builder.add_buffer(entry.name, digest),
            },
            _ => builder.add_file(entry.name, digest),
        };
        added
            .map_err(|e| anyhow!("{}: line {}: {e}", display(log), entry.line()))
            .map_err(input)?;
    }
    Ok(count)
}

pub fn measured_boot(args: &MbGenerateArgs, format: Format) -> CmdResult {
    let bytes = read(&args.event_log)?;
    let log = EventLog::parse(&bytes).map_err(malformed(&args.event_log))?;
    let mut policy = mb::generate(&log, args.allow_secureboot_off);
    if args.pin_pcrs {
        policy.pin_pcr_values(&log);
    }
    let mut document = serde_json::to_string_pretty(&policy).map_err(input)?;
    document.push('\n');
    let summary = json!({
        "events": log.events.len(),
        "hash_alg": policy.hash_alg.name(),
        "pcrs": policy.pcrs,
        "allow_secureboot_off": policy.allow_secureboot_off,
    });
    write_document(&document, args.out.as_deref(), &summary, format)
}

fn summary(
    policy: &RuntimePolicy,
    sources: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    json!({
        "files": policy.file_count(),
        "excludes": policy.excludes().len(),
        "digest": policy.content_digest_hex(),
        "sources": sources,
    })
}

/// Without `--out` the policy document itself goes to stdout (it is the one JSON document) and
/// the summary to stderr; with `--out` the file is written atomically and the summary printed.
fn write_document(
    document: &str,
    out: Option<&Path>,
    summary: &serde_json::Value,
    format: Format,
) -> CmdResult {
    let Some(out) = out else {
        output::text(document).map_err(input)?;
        eprintln!("kctl: {summary}");
        return Ok(Outcome::Ok);
    };
    let tmp = out.with_extension("tmp~");
    std::fs::write(&tmp, document)
        .and_then(|()| std::fs::rename(&tmp, out))
        .with_context(|| out.display().to_string())
        .map_err(input)?;
    let mut summary = summary.clone();
    summary["path"] = json!(out.display().to_string());
    match format {
        Format::Json => output::json(&summary).map_err(input)?,
        Format::Table => {
            output::text(&format!("wrote {}: {summary}\n", out.display())).map_err(input)?
        }
    }
    Ok(Outcome::Ok)
}

fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}
