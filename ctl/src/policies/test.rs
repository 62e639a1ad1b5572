//! `kctl policies test`: appraise an IMA log and/or a UEFI event log against policies offline,
//! with the same code the verifier runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use kl_core::alg::{Digest, HashAlg};
use kl_core::eventlog::EventLog;
use kl_core::ima::{self, ImaOptions, ImaState, RecordedChecks, VerificationKeys};
use kl_core::policy::{
    self, LoadOptions, RuntimePolicy, RuntimePolicyBuilder, VerificationKey, mb,
};
use kl_core::verdict::Verdict;
use serde_json::{Value, json};

use crate::cli::TestArgs;
use crate::exit::{CmdResult, Failure, Outcome, input};
use crate::input::{display, malformed, read};
use crate::output::{self, Format};

pub fn run(args: &TestArgs, format: Format) -> CmdResult {
    let mut verdict = Verdict::default();
    let mut report = serde_json::Map::new();

    match (&args.runtime_policy, &args.ima_log) {
        (Some(policy), Some(log)) => {
            let (v, ima) = test_runtime(args, policy, log)?;
            verdict.merge(v);
            report.insert("ima".into(), ima);
        }
        (None, None) => {}
        (Some(_), None) => return Err(usage("--runtime-policy needs --ima-log")),
        (None, Some(_)) => return Err(usage("--ima-log needs --runtime-policy")),
    }
    match (&args.mb_policy, &args.event_log) {
        (Some(policy), Some(log)) => {
            let (v, mb) = test_measured_boot(args, policy, log)?;
            verdict.merge(v);
            report.insert("measured_boot".into(), mb);
        }
        (None, None) => {}
        (Some(_), None) => return Err(usage("--mb-policy needs --event-log")),
        (None, Some(_)) => return Err(usage("--event-log needs --mb-policy")),
    }
    if report.is_empty() {
        return Err(usage(
            "nothing to test: give --runtime-policy with --ima-log, and/or --mb-policy with --event-log",
        ));
    }

    let passed = verdict.passed();
    let mut doc = json!({
        "passed": passed,
        "findings": verdict.findings,
        "checked": verdict.checked,
    });
    if let Some(map) = doc.as_object_mut() {
        map.extend(report);
    }
    match format {
        Format::Json => output::json(&doc).map_err(input)?,
        Format::Table => output::text(&render(&doc)).map_err(input)?,
    }
    Ok(if passed { Outcome::Ok } else { Outcome::Negative })
}

fn usage(msg: &str) -> Failure {
    Failure::Input(anyhow!("{msg}"))
}

/// The policy is loaded on a second thread while this one appraises the log against
/// [`RecordedChecks`] (parsing, template hashes and the PCR 10 replay do not depend on the
/// policy); the second thread then computes the policy's digest, while this one finishes the
/// appraisal and confirms the recorded lookups against the policy. When the policy does not
/// confirm every lookup (something fails), or it names signing keys or another template-hash
/// algorithm than the one assumed, the log is appraised again against the policy itself: same
/// result, no overlap.
fn test_runtime(
    args: &TestArgs,
    policy_path: &Path,
    log_path: &Path,
) -> Result<(Verdict, Value), Failure> {
    let bank: HashAlg = args.hash_alg.into();
    let quoted_arg = match &args.pcr10 {
        Some(hex) => {
            Some(Digest::from_hex(bank, hex.trim().trim_start_matches("0x")).ok_or_else(|| {
                usage(&format!(
                    "--pcr10 {hex:?}: not a {}-byte {} digest in hex",
                    bank.len(),
                    bank.name()
                ))
            })?)
        }
        None => None,
    };
    // What the appraisal assumes until the policy says: Keylime's default template-hash
    // algorithm, and no signing keys.
    let assumed = ImaOptions { bank, log_hash_alg: HashAlg::Sha1, ..ImaOptions::default() };

    std::thread::scope(|scope| {
        // The loader hands the policy over as soon as it is loaded, then computes its digest
        // (kept in the policy) while this thread may still be appraising the log.
        let (loaded_tx, loaded_rx) = std::sync::mpsc::sync_channel::<Arc<RuntimePolicy>>(1);
        let loading = scope.spawn(move || {
            let policy = Arc::new(load_runtime_policy(
                policy_path,
                args.exclude.as_deref(),
                args.policy_key.as_deref(),
            )?);
            // Nobody listens only when this thread is gone already; the digest is then unused.
            let _ = loaded_tx.send(Arc::clone(&policy));
            Ok::<_, Failure>(policy.content_digest_hex())
        });
        let loader_panicked = || input(anyhow!("the policy loader panicked"));

        let log = read(log_path);
        let speculation = log.as_ref().ok().map(|log| {
            let quoted = quoted_value(log, log_path, bank, quoted_arg)?;
            let recorded = RecordedChecks::with_capacity(log.len() / 128);
            let keys = VerificationKeys::new();
            let appraisal =
                ima::appraise_log(log, &recorded, &keys, &ImaState::default(), &assumed, &quoted);
            Ok::<_, Failure>((quoted, recorded, appraisal))
        });

        // A broken policy is reported before a broken log.
        let Ok(policy) = loaded_rx.recv() else {
            // The loader ended without handing a policy over: it failed.
            return Err(match loading.join().map_err(|_| loader_panicked())? {
                Err(failure) => failure,
                Ok(_) => input(anyhow!("the policy loader ended without a policy")),
            });
        };
        let log = log?;
        // Present whenever the log was read.
        let (quoted, recorded, speculative) = speculation
            .ok_or_else(|| input(anyhow!("{}: the log was not appraised", display(log_path))))??;

        let usable = policy.signing_keys().is_empty()
            && policy.log_hash_alg() == assumed.log_hash_alg
            && speculative.is_ok()
            && recorded.confirm(policy.as_ref());
        let appraisal = if usable {
            speculative.map_err(malformed(log_path))?
        } else {
            let mut keys = VerificationKeys::new();
            for der in policy.signing_keys() {
                keys.add(der)
                    .map_err(|e| input(anyhow!("{}: signing key: {e}", display(policy_path))))?;
            }
            let options = ImaOptions { log_hash_alg: policy.log_hash_alg(), ..assumed };
            ima::appraise_log(&log, policy.as_ref(), &keys, &ImaState::default(), &options, &quoted)
                .map_err(malformed(log_path))?
        };
        let policy_digest = loading.join().map_err(|_| loader_panicked())??;

        let mut verdict = appraisal.verdict;
        verdict.checked("runtime_policy");
        let ima = json!({
            "entries": appraisal.entries,
            "hash_alg": bank.name(),
            "pcr10": appraisal.final_pcr.to_hex(),
            "pcr10_checked": args.pcr10.is_some(),
            "pcr10_matched_entries": appraisal.matched,
            "violations": appraisal.violations.len(),
            "policy_digest": policy_digest,
            "policy_files": policy.file_count(),
        });
        Ok((verdict, ima))
    })
}

/// The quoted PCR 10 value: the one given, or without one the log's own replay, so that the
/// log is checked against itself (content, template hashes and signatures, not the PCR).
fn quoted_value(
    log: &[u8],
    log_path: &Path,
    bank: HashAlg,
    given: Option<Digest>,
) -> Result<Digest, Failure> {
    match given {
        Some(d) => Ok(d),
        None => {
            let replayed = ima::replay_log(log, &[bank]).map_err(malformed(log_path))?;
            Ok(replayed.pcrs.first().copied().unwrap_or_else(|| bank.zero()))
        }
    }
}

/// Loads a runtime policy in any supported format, merging a Keylime exclude list.
fn load_runtime_policy(
    path: &Path,
    exclude: Option<&Path>,
    key: Option<&Path>,
) -> Result<RuntimePolicy, Failure> {
    let key = match key {
        Some(k) => Some(VerificationKey::from_pem(&read(k)?).map_err(malformed(k))?),
        None => None,
    };
    let options = LoadOptions { signing_key: key.as_ref(), require_signature: key.is_some() };
    let (policy, _format) = policy::load(&read(path)?, &options).map_err(malformed(path))?;
    let Some(exclude) = exclude else { return Ok(policy) };
    let mut builder = RuntimePolicyBuilder::new();
    builder.merge(&policy);
    policy::allowlist::add_exclude_list(&mut builder, &read(exclude)?)
        .map_err(malformed(exclude))?;
    builder.build().with_context(|| display(path)).map_err(input)
}

fn test_measured_boot(
    args: &TestArgs,
    policy_path: &Path,
    log_path: &Path,
) -> Result<(Verdict, Value), Failure> {
    let policy_bytes = read(policy_path)?;
    let policy = match mb::MbPolicy::from_json(&policy_bytes) {
        Ok(p) => p,
        // Keylime's reference state has none of this format's keys; try it second so that the
        // error for a broken native policy stays the native one.
        Err(native) => mb::MbPolicy::from_keylime_refstate(&policy_bytes)
            .map_err(|_| input(anyhow!("{}: {native}", display(policy_path))))?,
    };
    let log = EventLog::parse(&read(log_path)?).map_err(malformed(log_path))?;
    let quoted = match &args.pcrs {
        Some(path) => Some(read_pcr_values(path, policy.hash_alg)?),
        None => None,
    };
    let verdict = mb::evaluate(&log, &policy, quoted.as_ref());
    let replayed: BTreeMap<String, String> = policy
        .pcrs
        .iter()
        .filter_map(|&pcr| log.pcr(policy.hash_alg, pcr).map(|d| (pcr.to_string(), d.to_hex())))
        .collect();
    let mb = json!({
        "events": log.events.len(),
        "hash_alg": policy.hash_alg.name(),
        "pcrs_checked": quoted.is_some(),
        "replayed_pcrs": replayed,
    });
    Ok((verdict, mb))
}

/// Quoted PCR values: JSON `{"0": "hex", ...}`, JSON per bank `{"sha256": {"0": "hex"}}` (what
/// `kctl eventlog show -o json | jq .pcrs` prints), or `tpm2_pcrread` output.
fn read_pcr_values(path: &Path, bank: HashAlg) -> Result<BTreeMap<u32, Digest>, Failure> {
    let text = String::from_utf8(read(path)?)
        .map_err(|_| input(anyhow!("{}: not UTF-8 text", display(path))))?;
    parse_pcr_values(&text, bank).map_err(|e| input(e.context(display(path))))
}

fn parse_pcr_values(text: &str, bank: HashAlg) -> anyhow::Result<BTreeMap<u32, Digest>> {
    let mut out = BTreeMap::new();
    let mut insert = |pcr: &str, value: &str| -> anyhow::Result<()> {
        let index: u32 = pcr.trim().parse().map_err(|_| anyhow!("PCR {pcr:?}: not a PCR index"))?;
        let hex = value.trim().trim_start_matches("0x").to_ascii_lowercase();
        let digest = Digest::from_hex(bank, &hex)
            .ok_or_else(|| anyhow!("PCR {index}: {value:?} is not a {} digest", bank.name()))?;
        out.insert(index, digest);
        Ok(())
    };
    if text.trim_start().starts_with('{') {
        let json: Value = serde_json::from_str(text)?;
        let map = json.get(bank.name()).unwrap_or(&json);
        let Some(map) = map.as_object() else { bail!("expected a JSON object of PCR values") };
        for (pcr, value) in map {
            let Some(value) = value.as_str() else { bail!("PCR {pcr}: value is not a string") };
            insert(pcr, value)?;
        }
    } else {
        // tpm2_pcrread: "sha256:" then lines "  0 : 0xABC...".
        let mut in_bank = false;
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if !line.starts_with(' ') && trimmed.ends_with(':') {
                in_bank = trimmed.trim_end_matches(':').eq_ignore_ascii_case(bank.name());
                continue;
            }
            if in_bank {
                let (pcr, value) = trimmed
                    .split_once(':')
                    .ok_or_else(|| anyhow!("line {}: expected `PCR : value`", n + 1))?;
                insert(pcr, value).with_context(|| format!("line {}", n + 1))?;
            }
        }
    }
    if out.is_empty() {
        bail!("no {} PCR values found", bank.name());
    }
    Ok(out)
}

fn render(doc: &Value) -> String {
    let mut s = String::new();
    let passed = doc["passed"].as_bool().unwrap_or(false);
    s.push_str(if passed { "PASSED" } else { "FAILED" });
    if let Some(checked) = doc["checked"].as_array() {
        let names: Vec<&str> = checked.iter().filter_map(Value::as_str).collect();
        s.push_str(&format!(" (checked: {})\n", names.join(", ")));
    }
    let findings = doc["findings"].as_array().cloned().unwrap_or_default();
    if !findings.is_empty() {
        let rows: Vec<Vec<String>> = findings
            .iter()
            .map(|f| {
                let mut at = Vec::new();
                if let Some(l) = f["line"].as_u64() {
                    at.push(format!("line {l}"));
                }
                if let Some(e) = f["event"].as_u64() {
                    at.push(format!("event {e}"));
                }
                if let Some(p) = f["pcr"].as_u64() {
                    at.push(format!("PCR {p}"));
                }
                vec![
                    f["rule"].as_str().unwrap_or("").to_owned(),
                    at.join(", "),
                    f["message"].as_str().unwrap_or("").to_owned(),
                ]
            })
            .collect();
        s.push('\n');
        s.push_str(&output::table(&["RULE", "WHERE", "MESSAGE"], &rows));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_values_in_every_accepted_shape() {
        let v = "ab".repeat(32);
        let flat = format!(r#"{{"0": "{v}", "7": "0x{v}"}}"#);
        let banked = format!(r#"{{"sha256": {{"0": "{v}"}}, "sha1": {{"0": "00"}}}}"#);
        let pcrread =
            format!("sha1:\n  0 : 0x00\nsha256:\n  0 : 0x{}\n  7 : 0x{}\n", v.to_uppercase(), v);
        assert_eq!(parse_pcr_values(&flat, HashAlg::Sha256).expect("flat").len(), 2);
        assert_eq!(parse_pcr_values(&banked, HashAlg::Sha256).expect("banked").len(), 1);
        let read = parse_pcr_values(&pcrread, HashAlg::Sha256).expect("pcrread");
        assert_eq!(read.len(), 2);
        assert_eq!(read[&0].to_hex(), v);
    }

    #[test]
    fn bad_pcr_values_name_the_problem() {
        let e = parse_pcr_values(r#"{"x": "00"}"#, HashAlg::Sha256).expect_err("bad index");
        assert!(format!("{e:#}").contains("not a PCR index"));
        let e = parse_pcr_values(r#"{"1": "00"}"#, HashAlg::Sha256).expect_err("short");
        assert!(format!("{e:#}").contains("PCR 1"));
        let e = parse_pcr_values("sha256:\n  1 0x00\n", HashAlg::Sha256).expect_err("syntax");
        assert!(format!("{e:#}").contains("line 2"));
    }
}
