//! Evaluating an event log against a measured-boot policy.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::facts::{self, BootFacts, Measured, VarFact};
use super::{CmdlineRule, MbPolicy, anchored_regex, parse_digest};
use crate::alg::{Digest, HashAlg};
use crate::eventlog::efi::{Guid, SignatureKind};
use crate::eventlog::{Event, EventLog, EventType, covered_bytes};
use crate::verdict::{Finding, Verdict, rule};

/// What `Verdict::checked` records for a measured-boot evaluation.
pub const CHECKED: &str = "measured_boot";
/// Recorded when the replay was compared with quoted PCR values.
pub const CHECKED_REPLAY: &str = "measured_boot.replay";

fn at(e: &Event) -> String {
    format!("event {} ({}, PCR {})", e.number, e.event_type, e.pcr)
}

fn finding(rule: &str, e: &Event, message: String) -> Finding {
    Finding::new(rule, message).event(u64::from(e.number)).pcr(e.pcr)
}

/// Evaluates `log` against `policy`. `quoted_pcrs` are PCR values from a verified quote (all in
/// one bank); when given, the replay of every covered PCR must equal them. A log that does
/// not satisfy the policy gives findings, never an error.
pub fn evaluate(
    log: &EventLog,
    policy: &MbPolicy,
    quoted_pcrs: Option<&BTreeMap<u32, Digest>>,
) -> Verdict {
    let mut v = Verdict::default();
    v.checked(CHECKED);
    // Event data counts only when checked against the digests of the banks that matter: the
    // quoted one (which ties digests to the TPM) and the policy's.
    let mut needed = vec![policy.hash_alg];
    needed.extend(quoted_pcrs.and_then(|q| q.values().next()).map(Digest::alg));
    let reverified;
    let log =
        if needed.iter().all(|b| !log.banks().contains(b) || log.processed_banks().contains(b)) {
            log
        } else {
            reverified = log.with_banks(&needed);
            &reverified
        };
    let covered = |e: &Event| policy.pcrs.contains(&e.pcr);

    for e in log.measurements().filter(|e| covered(e)) {
        check_digest(&mut v, e, log.processed_banks());
    }
    if let Some(quoted) = quoted_pcrs {
        check_quote(&mut v, log, policy, quoted);
    }
    let bank = policy.hash_alg;
    if !log.banks().contains(&bank) {
        v.push(
            Finding::new(
                rule::MB_BANK_MISSING,
                format!("the event log has no {bank} digests, the policy's bank"),
            )
            .expected(bank.name())
            .actual(log.banks().iter().map(|b| b.name()).collect::<Vec<_>>()),
        );
        return v;
    }
    if let Some(expected) = &policy.pcr_values {
        for (pcr, want) in expected {
            if !policy.pcrs.contains(pcr) {
                continue;
            }
            let got = replayed(log, bank, *pcr);
            if parse_digest(bank, want) != Some(got) {
                v.push(
                    Finding::new(
                        rule::MB_PCR_MISMATCH,
                        format!("replayed {bank} PCR {pcr} differs from the policy"),
                    )
                    .pcr(*pcr)
                    .expected(want.as_str())
                    .actual(got.to_hex()),
                );
            }
        }
    }
    check_order(&mut v, log, policy);
    let f = facts::collect(log, bank, &policy.pcrs);
    check_secure_boot(&mut v, policy, &f);
    check_firmware(&mut v, policy, &f);
    check_bootloaders(&mut v, policy, &f);
    check_kernels(&mut v, policy, &f);
    check_cmdlines(&mut v, policy, &f);
    check_db(&mut v, policy, f.db.as_ref());
    check_dbx(&mut v, policy, f.dbx.as_ref());
    v
}

/// The replayed value of a PCR; a PCR without events holds its reset value.
fn replayed(log: &EventLog, bank: HashAlg, pcr: u32) -> Digest {
    log.pcr(bank, pcr).copied().unwrap_or_else(|| bank.zero())
}

fn check_digest(v: &mut Verdict, e: &Event, banks: &[HashAlg]) {
    if e.digest_verified != Some(false) {
        return;
    }
    let bytes = covered_bytes(e, e.coverage).unwrap_or(&[]);
    let mut expected = serde_json::Map::new();
    let mut actual = serde_json::Map::new();
    for d in e.digests.iter().filter(|d| banks.contains(&d.alg())) {
        let want = d.alg().digest(bytes);
        if want != *d {
            expected.insert(d.alg().name().into(), want.to_hex().into());
            actual.insert(d.alg().name().into(), d.to_hex().into());
        }
    }
    v.push(
        finding(
            rule::MB_DIGEST_MISMATCH,
            e,
            format!(
                "{}: the event data does not hash to the event's digest (tampered or forged data)",
                at(e)
            ),
        )
        .expected(Value::Object(expected))
        .actual(Value::Object(actual)),
    );
}

fn check_quote(v: &mut Verdict, log: &EventLog, policy: &MbPolicy, quoted: &BTreeMap<u32, Digest>) {
    v.checked(CHECKED_REPLAY);
    let Some(bank) = quoted.values().next().map(Digest::alg) else {
        for pcr in &policy.pcrs {
            v.push(
                Finding::new(
                    rule::MB_PCR_MISSING,
                    format!("PCR {pcr} is covered by the policy but not quoted"),
                )
                .pcr(*pcr),
            );
        }
        return;
    };
    if !log.banks().contains(&bank) {
        v.push(
            Finding::new(
                rule::MB_BANK_MISSING,
                format!("the event log has no {bank} digests, the quoted bank"),
            )
            .expected(bank.name())
            .actual(log.banks().iter().map(|b| b.name()).collect::<Vec<_>>()),
        );
        return;
    }
    for pcr in &policy.pcrs {
        let Some(q) = quoted.get(pcr) else {
            v.push(
                Finding::new(
                    rule::MB_PCR_MISSING,
                    format!("PCR {pcr} is covered by the policy but not quoted"),
                )
                .pcr(*pcr),
            );
            continue;
        };
        let got = replayed(log, bank, *pcr);
        if *q != got {
            v.push(
                Finding::new(
                    rule::MB_PCR_MISMATCH,
                    format!(
                        "replaying the event log gives {bank} PCR {pcr} = {got}, the quote says {q}"
                    ),
                )
                .pcr(*pcr)
                .expected(q.to_hex())
                .actual(got.to_hex()),
            );
        }
    }
}

/// Log-consistency checks the PCR values cannot make: the order of events across PCRs.
fn check_order(v: &mut Verdict, log: &EventLog, policy: &MbPolicy) {
    let mut separators: BTreeMap<u32, &Event> = BTreeMap::new();
    for e in log.measurements().filter(|e| e.event_type == EventType::SEPARATOR && e.pcr <= 7) {
        if !policy.pcrs.contains(&e.pcr) {
            continue;
        }
        if let Some(first) = separators.get(&e.pcr) {
            v.push(
                finding(
                    rule::MB_EVENT_ORDER,
                    e,
                    format!(
                        "{}: second separator in PCR {} (first is event {})",
                        at(e),
                        e.pcr,
                        first.number
                    ),
                )
                .expected("one EV_SEPARATOR")
                .actual(format!("EV_SEPARATOR at events {} and {}", first.number, e.number)),
            );
            continue;
        }
        separators.insert(e.pcr, e);
    }
    for pcr in policy.pcrs.iter().filter(|p| **p <= 7) {
        if !separators.contains_key(pcr) {
            v.push(
                Finding::new(rule::MB_EVENT_ORDER, format!("PCR {pcr} has no EV_SEPARATOR: firmware did not mark the end of pre-boot measurements"))
                    .pcr(*pcr)
                    .expected("one EV_SEPARATOR")
                    .actual(Value::Null),
            );
        }
    }
    // The OS loader runs after firmware separated every pre-boot PCR.
    let last_separator = separators.values().map(|e| e.number).max();
    for e in log.measurements() {
        if let Some(sep) = separators.get(&e.pcr)
            && e.number > sep.number
            && e.event_type == EventType::EFI_VARIABLE_DRIVER_CONFIG
        {
            v.push(
                finding(
                    rule::MB_EVENT_ORDER,
                    e,
                    format!("{}: configuration measured after the PCR {} separator (event {}); it is not used", at(e), e.pcr, sep.number),
                )
                .expected(format!("before event {}", sep.number))
                .actual(e.number),
            );
        }
        if let Some(last) = last_separator
            && facts::is_os_loader_event(e)
            && policy.pcrs.contains(&e.pcr)
            && e.number < last
        {
            v.push(
                finding(
                    rule::MB_EVENT_ORDER,
                    e,
                    format!("{}: boot loader measurement precedes the firmware separators (last at event {last})", at(e)),
                )
                .expected(format!("after event {last}"))
                .actual(e.number),
            );
        }
    }
}

fn check_secure_boot(v: &mut Verdict, policy: &MbPolicy, f: &BootFacts<'_>) {
    if policy.allow_secureboot_off {
        return;
    }
    match &f.secure_boot {
        Some(var) if var.data == [1] => {}
        Some(var) => v.push(
            finding(rule::MB_SECUREBOOT_DISABLED, var.event, format!("{}: SecureBoot is {}", at(var.event), hex::encode(var.data)))
                .expected("01")
                .actual(hex::encode(var.data)),
        ),
        None => v.push(
            Finding::new(
                rule::MB_SECUREBOOT_DISABLED,
                "no SecureBoot variable with verified data was measured in PCR 7 before its separator",
            )
            .pcr(7)
            .expected("01")
            .actual(Value::Null),
        ),
    }
}

fn contains(allowed: &[String], bank: HashAlg, d: &Digest) -> bool {
    allowed.iter().any(|a| parse_digest(bank, a).as_ref() == Some(d))
}

fn check_firmware(v: &mut Verdict, policy: &MbPolicy, f: &BootFacts<'_>) {
    let Some(allowed) = &policy.firmware else { return };
    for m in &f.firmware {
        if !contains(allowed, policy.hash_alg, &m.digest) {
            v.push(
                finding(
                    rule::MB_FIRMWARE_NOT_ALLOWED,
                    m.event,
                    format!("{}: firmware digest {} is not allowed", at(m.event), m.digest),
                )
                .expected(allowed.clone())
                .actual(m.digest.to_hex()),
            );
        }
    }
}

fn check_bootloaders(v: &mut Verdict, policy: &MbPolicy, f: &BootFacts<'_>) {
    let Some(allowed) = &policy.bootloaders else { return };
    let bank = policy.hash_alg;
    let actual: Vec<String> = f.bootloaders.iter().map(|m| m.digest.to_hex()).collect();
    let same = |seq: &[String]| {
        seq.len() == f.bootloaders.len()
            && seq
                .iter()
                .zip(&f.bootloaders)
                .all(|(s, m)| parse_digest(bank, s).as_ref() == Some(&m.digest))
    };
    if allowed.iter().any(|seq| same(seq)) {
        return;
    }
    // Report against the allowed chain sharing the longest prefix with the log.
    let common = |seq: &[String]| {
        seq.iter()
            .zip(&f.bootloaders)
            .take_while(|(s, m)| parse_digest(bank, s).as_ref() == Some(&m.digest))
            .count()
    };
    let best = allowed.iter().max_by_key(|seq| common(seq));
    let n = best.map_or(0, |seq| common(seq));
    let expected = best.map_or(Value::Null, |seq| json!(seq));
    match f.bootloaders.get(n) {
        Some(m) => v.push(
            finding(
                rule::MB_BOOTLOADER_NOT_ALLOWED,
                m.event,
                format!("{}: boot application {} (position {} in PCR 4) is not in an allowed boot chain", at(m.event), m.digest, n + 1),
            )
            .expected(expected)
            .actual(actual),
        ),
        None => v.push(
            Finding::new(
                rule::MB_BOOTLOADER_NOT_ALLOWED,
                format!("the PCR 4 boot chain ends after {n} applications, shorter than every allowed chain"),
            )
            .pcr(4)
            .expected(expected)
            .actual(actual),
        ),
    }
}

fn check_kernels(v: &mut Verdict, policy: &MbPolicy, f: &BootFacts<'_>) {
    let Some(allowed) = &policy.kernels else { return };
    if f.kernels.is_empty() && !allowed.is_empty() {
        v.push(
            Finding::new(rule::MB_KERNEL_NOT_ALLOWED, "no kernel measurement found (PCR 4 application loaded by the boot loader, or PCR 9 file of grub's linux command)")
                .pcr(4)
                .expected(allowed.clone())
                .actual(Value::Null),
        );
    }
    for m in &f.kernels {
        report_kernel(v, policy, allowed, m);
    }
}

fn report_kernel(v: &mut Verdict, policy: &MbPolicy, allowed: &[String], m: &Measured<'_>) {
    if !contains(allowed, policy.hash_alg, &m.digest) {
        v.push(
            finding(
                rule::MB_KERNEL_NOT_ALLOWED,
                m.event,
                format!("{}: kernel digest {} is not allowed", at(m.event), m.digest),
            )
            .expected(allowed.to_vec())
            .actual(m.digest.to_hex()),
        );
    }
}

fn check_cmdlines(v: &mut Verdict, policy: &MbPolicy, f: &BootFacts<'_>) {
    let Some(rules) = &policy.kernel_cmdlines else { return };
    let expected = serde_json::to_value(rules).unwrap_or(Value::Null);
    if f.cmdlines.is_empty() && !rules.is_empty() {
        v.push(
            Finding::new(
                rule::MB_CMDLINE_NOT_ALLOWED,
                "no kernel command line was measured in PCR 8",
            )
            .pcr(8)
            .expected(expected.clone())
            .actual(Value::Null),
        );
    }
    for c in &f.cmdlines {
        let exact = rules.iter().any(|r| matches!(r, CmdlineRule::Exact(s) if *s == c.cmdline));
        let ok = exact
            || rules.iter().any(|r| match r {
                CmdlineRule::Regex(re) => {
                    anchored_regex(re).is_ok_and(|re| re.is_match(&c.cmdline))
                }
                CmdlineRule::Exact(_) => false,
            });
        if !ok {
            v.push(
                finding(
                    rule::MB_CMDLINE_NOT_ALLOWED,
                    c.event,
                    format!("{}: kernel command line {:?} is not allowed", at(c.event), c.cmdline),
                )
                .expected(expected.clone())
                .actual(c.cmdline.clone()),
            );
        }
    }
}

fn check_db(v: &mut Verdict, policy: &MbPolicy, db: Option<&VarFact<'_>>) {
    if policy.db_must_contain.is_empty() {
        return;
    }
    let sigs = db.map(facts::signatures).unwrap_or_default();
    for want in &policy.db_must_contain {
        let owner = want.owner.as_deref().and_then(Guid::parse);
        let data =
            hex::decode(want.data.strip_prefix("0x").unwrap_or(&want.data)).unwrap_or_default();
        let found = sigs.iter().any(|s| {
            want.kind.matches(s.kind)
                && s.data == data.as_slice()
                && owner.is_none_or(|o| o == s.owner)
        });
        if found {
            continue;
        }
        let expected = serde_json::to_value(want).unwrap_or(Value::Null);
        let f = match db {
            Some(var) => finding(
                rule::MB_DB_MISSING,
                var.event,
                format!("{}: db lacks a required {} entry", at(var.event), kind_name(want.kind)),
            ),
            None => Finding::new(
                rule::MB_DB_MISSING,
                "db was not measured (with verified data) in PCR 7",
            )
            .pcr(7),
        };
        v.push(f.expected(expected).actual(sigs.len()));
    }
}

/// A 32-byte hash as an ordered integer pair.
fn hash_key(raw: &[u8; 32]) -> Option<(u128, u128)> {
    let (hi, lo) = raw.split_at(16);
    Some((u128::from_be_bytes(hi.try_into().ok()?), u128::from_be_bytes(lo.try_into().ok()?)))
}

/// Decodes 64 hex digits (either case).
fn decode_hex_32(text: &[u8]) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let text: &[u8; 64] = text.try_into().ok()?;
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn kind_name(kind: super::SignatureRuleKind) -> &'static str {
    match kind {
        super::SignatureRuleKind::X509 => "x509",
        super::SignatureRuleKind::Sha256 => "sha256",
    }
}

fn check_dbx(v: &mut Verdict, policy: &MbPolicy, dbx: Option<&VarFact<'_>>) {
    if policy.dbx_must_include.is_empty() {
        return;
    }
    let sigs = dbx.map(facts::signatures).unwrap_or_default();
    // dbx holds hundreds of hashes and so does a policy generated from it: look them up as
    // integer pairs in a sorted table.
    let mut present: Vec<(u128, u128)> = sigs
        .iter()
        .filter(|s| s.kind == SignatureKind::Sha256)
        .filter_map(|s| hash_key(s.data.try_into().ok()?))
        .collect();
    present.sort_unstable();
    let mut missing = Vec::new();
    for want in &policy.dbx_must_include {
        let want = want.strip_prefix("0x").unwrap_or(want);
        let key = decode_hex_32(want.as_bytes()).and_then(|raw| hash_key(&raw));
        if key.is_none_or(|k| present.binary_search(&k).is_err()) {
            missing.push(want.to_ascii_lowercase());
        }
    }
    if missing.is_empty() {
        return;
    }
    let message = format!("dbx lacks {} required revoked hash(es)", missing.len());
    let f = match dbx {
        Some(var) => {
            finding(rule::MB_DBX_MISSING, var.event, format!("{}: {message}", at(var.event)))
        }
        None => Finding::new(
            rule::MB_DBX_MISSING,
            format!("dbx was not measured (with verified data) in PCR 7: {message}"),
        )
        .pcr(7),
    };
    v.push(f.expected(missing).actual(sigs.len()));
}
