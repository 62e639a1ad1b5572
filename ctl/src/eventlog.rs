//! `kctl eventlog show`: decode and replay a UEFI event log offline.

use kl_core::eventlog::EventLog;
use serde_json::Value;

use crate::cli::EventlogCommand;
use crate::exit::{CmdResult, Outcome, input};
use crate::input::{malformed, read};
use crate::output::{self, Format};

pub fn run(cmd: &EventlogCommand, format: Format) -> CmdResult {
    match cmd {
        EventlogCommand::Show { log } => {
            let bytes = read(log)?;
            let parsed = EventLog::parse(&bytes).map_err(malformed(log))?;
            match format {
                Format::Json => output::json(&parsed).map_err(input)?,
                Format::Table => output::text(&render(&parsed)).map_err(input)?,
            }
            Ok(Outcome::Ok)
        }
    }
}

/// The table form: one line per event, then the replayed PCRs per bank.
fn render(log: &EventLog) -> String {
    let json = serde_json::to_value(log).unwrap_or(Value::Null);
    let mut rows = Vec::new();
    for event in json["events"].as_array().into_iter().flatten() {
        let digest = event["digests"]["sha256"]
            .as_str()
            .or_else(|| event["digests"].as_object().and_then(|d| d.values().next()?.as_str()))
            .unwrap_or("");
        let verified = match event["digest_verified"].as_bool() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        rows.push(vec![
            event["event"].to_string(),
            event["pcr"].to_string(),
            event["type"].as_str().unwrap_or("?").to_owned(),
            digest.chars().take(16).collect(),
            verified.to_owned(),
            summary(&event["decoded"]),
        ]);
    }
    let mut s = output::table(&["#", "PCR", "TYPE", "DIGEST", "DATA OK", "DETAILS"], &rows);
    for (bank, pcrs) in json["pcrs"].as_object().into_iter().flatten() {
        s.push_str(&format!("\nreplayed PCRs ({bank}):\n"));
        let mut rows: Vec<(u32, Vec<String>)> = pcrs
            .as_object()
            .into_iter()
            .flatten()
            .map(|(pcr, v)| {
                (
                    pcr.parse().unwrap_or(u32::MAX),
                    vec![pcr.clone(), v.as_str().unwrap_or("").to_owned()],
                )
            })
            .collect();
        rows.sort_by_key(|(n, _)| *n);
        let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
        s.push_str(&output::table(&["PCR", "VALUE"], &rows));
    }
    s
}

/// A one-line description of a decoded event, from the fields an operator looks for first.
fn summary(decoded: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["name", "kernel_cmdline", "grub_cmd", "file", "text", "description", "path"] {
        if let Some(s) = decoded[key].as_str().filter(|s| !s.is_empty()) {
            parts.push(s.to_owned());
            break;
        }
    }
    if let Some(enabled) = decoded["value"]["enabled"].as_bool() {
        parts.push(if enabled { "enabled".into() } else { "disabled".into() });
    }
    if let Some(sigs) = decoded["value"]["signatures"].as_array() {
        parts.push(format!("{} signatures", sigs.len()));
    }
    if let Some(dp) = decoded["device_path"].as_str() {
        parts.push(dp.to_owned());
    }
    if let (Some(base), Some(len)) = (decoded["base"].as_u64(), decoded["length"].as_u64()) {
        parts.push(format!("0x{base:x} +{len}"));
    }
    if let Some(locality) = decoded["locality"].as_u64() {
        parts.push(format!("locality {locality}"));
    }
    let s = parts.join(" ");
    if s.chars().count() > 100 { s.chars().take(97).collect::<String>() + "..." } else { s }
}
