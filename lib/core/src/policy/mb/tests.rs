//! Policy generation and evaluation on real logs, one test per finding rule, tampering.

use std::collections::BTreeMap;

use super::*;
use crate::eventlog::tests::{e_size, fixture, log};
use crate::eventlog::{Event, EventType};
use crate::verdict::{Verdict, rule};

const LOGS: [&str; 4] = [
    "binary_bios_measurements",
    "binary_bios_measurements-secureboot",
    "uefi_log.bin",
    "mb_log.b64",
];

fn raw_binary(name: &str) -> Vec<u8> {
    use base64::Engine as _;
    let raw = fixture(name);
    if name.ends_with(".b64") {
        let text: Vec<u8> = raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD.decode(text).expect("fixture is base64")
    } else {
        raw
    }
}

fn quoted(log: &EventLog, bank: HashAlg) -> BTreeMap<u32, Digest> {
    DEFAULT_PCRS
        .iter()
        .map(|p| (*p, log.pcr(bank, *p).copied().unwrap_or_else(|| bank.zero())))
        .collect()
}

fn rules(v: &Verdict) -> Vec<&str> {
    v.findings.iter().map(|f| f.rule.as_str()).collect()
}

fn with_rule<'a>(v: &'a Verdict, id: &str) -> Vec<&'a crate::verdict::Finding> {
    v.findings.iter().filter(|f| f.rule == id).collect()
}

/// The byte range of one event in the binary log.
fn span(e: &Event) -> std::ops::Range<usize> {
    e.offset..e.offset + e_size(e)
}

fn find(log: &EventLog, pred: impl Fn(&Event) -> bool) -> &Event {
    log.measurements().find(|e| pred(e)).expect("event present")
}

#[test]
fn generated_policy_passes_its_own_log() {
    for name in LOGS {
        let log = log(name);
        // These two machines booted with Secure Boot off.
        let allow_off = matches!(name, "binary_bios_measurements" | "uefi_log.bin");
        let policy = generate(&log, allow_off);
        policy.validate().expect("generated policy is valid");
        let v = evaluate(&log, &policy, Some(&quoted(&log, HashAlg::Sha256)));
        assert!(v.passed(), "{name}: {:#?}", v.findings);
        assert!(v.checked.iter().any(|c| c == "measured_boot.replay"));
        // The policy round-trips through its JSON form.
        let json = serde_json::to_vec(&policy).expect("serializes");
        assert_eq!(MbPolicy::from_json(&json).expect("parses"), policy);
    }
}

#[test]
fn generated_policy_contents() {
    let log = log("binary_bios_measurements");
    let p = generate(&log, true);
    let shim = find(&log, |e| e.pcr == 4 && e.number == 52);
    let grub = find(&log, |e| e.pcr == 4 && e.number == 57);
    let chain = &p.bootloaders.as_ref().expect("bootloaders")[0];
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1], shim.digest(HashAlg::Sha256).expect("sha256").to_hex());
    assert_eq!(chain[2], grub.digest(HashAlg::Sha256).expect("sha256").to_hex());
    // The kernel is the file grub read for its linux command (event 117, PCR 9).
    let kernel = find(&log, |e| e.number == 117);
    assert_eq!(p.kernels, Some(vec![kernel.digest(HashAlg::Sha256).expect("sha256").to_hex()]));
    let cmdlines = p.kernel_cmdlines.as_ref().expect("cmdlines");
    assert_eq!(cmdlines.len(), 1, "grub's linux command and kernel_cmdline agree: {cmdlines:?}");
    assert!(
        matches!(&cmdlines[0], CmdlineRule::Exact(c) if c.starts_with("(hd3,gpt2)/vmlinuz-6.11.5-300.fc41.x86_64 ro"))
    );
    assert!(p.db_must_contain.iter().all(|r| r.kind == SignatureRuleKind::X509));
    assert!(!p.db_must_contain.is_empty() && !p.dbx_must_include.is_empty());
    assert!(p.firmware.as_ref().is_some_and(|f| !f.is_empty()));
    // In mb_log the kernel is also loaded as a PCR 4 application after grub started.
    let mb = log_mb();
    let p = generate(&mb, false);
    let kernel_events: Vec<&Event> = mb
        .measurements()
        .filter(|e| {
            e.pcr == 4 && e.event_type == EventType::EFI_BOOT_SERVICES_APPLICATION && e.number > 90
        })
        .collect();
    assert_eq!(kernel_events.len(), 2);
    for e in kernel_events {
        let d = e.digest(HashAlg::Sha256).expect("sha256").to_hex();
        assert!(p.kernels.as_ref().expect("kernels").contains(&d));
        assert!(!p.bootloaders.as_ref().expect("chains")[0].contains(&d));
    }
}

fn log_mb() -> EventLog {
    log("mb_log.b64")
}

#[test]
fn generated_policy_fails_other_logs_naming_events() {
    for (i, from) in LOGS.iter().enumerate() {
        let policy = generate(&log(from), true);
        for (j, other) in LOGS.iter().enumerate() {
            if i == j {
                continue;
            }
            let other_log = log(other);
            let v = evaluate(&other_log, &policy, None);
            assert!(!v.passed(), "{from} policy passed {other}");
            let ids = rules(&v);
            assert!(ids.contains(&rule::MB_KERNEL_NOT_ALLOWED), "{from} vs {other}: {ids:?}");
            assert!(ids.contains(&rule::MB_CMDLINE_NOT_ALLOWED), "{from} vs {other}: {ids:?}");
            for f in with_rule(&v, rule::MB_KERNEL_NOT_ALLOWED) {
                let n = f.event.expect("kernel finding names the event");
                let e = &other_log.events[usize::try_from(n).expect("small")];
                assert!(
                    f.message.contains(&format!("event {n} ({}", e.event_type)),
                    "{}",
                    f.message
                );
                assert!(f.expected.is_some() && f.actual.is_some());
            }
        }
    }
}

#[test]
fn secure_boot_off_is_a_finding_unless_allowed() {
    let log = log("binary_bios_measurements");
    let v = evaluate(&log, &generate(&log, false), None);
    assert_eq!(rules(&v), vec![rule::MB_SECUREBOOT_DISABLED]);
    let f = &v.findings[0];
    assert_eq!(f.event, Some(12));
    assert_eq!(f.pcr, Some(7));
    assert!(f.message.contains("EV_EFI_VARIABLE_DRIVER_CONFIG"), "{}", f.message);
    assert_eq!(f.actual, Some("00".into()));
}

#[test]
fn tampered_digest_breaks_replay_against_the_quote() {
    let name = "binary_bios_measurements-secureboot";
    let good = log(name);
    let policy = generate(&good, false);
    let quote = quoted(&good, HashAlg::Sha256);
    let mut raw = raw_binary(name);
    let shim =
        find(&good, |e| e.pcr == 4 && e.event_type == EventType::EFI_BOOT_SERVICES_APPLICATION);
    // The digest bytes follow PCR, type, count and the algorithm id.
    raw[shim.offset + 14] ^= 0xff;
    let bad = EventLog::parse(&raw).expect("parses");
    let v = evaluate(&bad, &policy, Some(&quote));
    let mismatch = with_rule(&v, rule::MB_PCR_MISMATCH);
    assert_eq!(mismatch.len(), 1, "{:#?}", v.findings);
    assert_eq!(mismatch[0].pcr, Some(4));
    assert_eq!(mismatch[0].expected, Some(quote[&4].to_hex().into()));
    let chain = with_rule(&v, rule::MB_BOOTLOADER_NOT_ALLOWED);
    assert_eq!(chain[0].event, Some(u64::from(shim.number)));
}

#[test]
fn tampered_event_data_is_caught_by_its_digest() {
    let name = "binary_bios_measurements-secureboot";
    let good = log(name);
    let policy = generate(&good, false);
    let quote = quoted(&good, HashAlg::Sha256);
    // Rewrite the kernel command line text: replay is unchanged, the digest no longer matches.
    let cmd = find(&good, |e| e.pcr == 8 && e.data.starts_with(b"kernel_cmdline: "));
    let mut raw = raw_binary(name);
    let at = span(cmd).end - 3;
    raw[at] = b'X';
    let bad = EventLog::parse(&raw).expect("parses");
    let v = evaluate(&bad, &policy, Some(&quote));
    let ids = rules(&v);
    assert!(!ids.contains(&rule::MB_PCR_MISMATCH), "{ids:?}");
    let f = with_rule(&v, rule::MB_DIGEST_MISMATCH);
    assert_eq!(f.len(), 1, "{ids:?}");
    assert_eq!(f[0].event, Some(u64::from(cmd.number)));
    assert!(f[0].message.contains("EV_IPL"));
    // Forging SecureBoot = 1 on a machine that booted without it.
    let off = log("binary_bios_measurements");
    let sb = &off.events[12];
    let mut raw = raw_binary("binary_bios_measurements");
    raw[span(sb).end - 1] = 1;
    let forged = EventLog::parse(&raw).expect("parses");
    let v = evaluate(&forged, &generate(&off, false), Some(&quoted(&off, HashAlg::Sha256)));
    let ids = rules(&v);
    assert!(ids.contains(&rule::MB_DIGEST_MISMATCH), "{ids:?}");
    let sbf = with_rule(&v, rule::MB_SECUREBOOT_DISABLED);
    assert_eq!(sbf.len(), 1, "forged data must not pass: {ids:?}");
    assert_eq!(sbf[0].actual, Some(serde_json::Value::Null));
}

#[test]
fn reordered_events_are_caught() {
    let name = "binary_bios_measurements-secureboot";
    let good = log(name);
    let policy = generate(&good, false);
    let quote = quoted(&good, HashAlg::Sha256);
    let raw = raw_binary(name);
    // Move the first PCR 8 event to right after the Spec ID event: every PCR replays the same.
    let moved = find(&good, |e| e.pcr == 8);
    let first = &good.events[1];
    let mut bad = raw[..first.offset].to_vec();
    bad.extend_from_slice(&raw[span(moved)]);
    bad.extend_from_slice(&raw[first.offset..moved.offset]);
    bad.extend_from_slice(&raw[span(moved).end..]);
    let bad = EventLog::parse(&bad).expect("parses");
    assert_eq!(bad.pcrs(), good.pcrs());
    let v = evaluate(&bad, &policy, Some(&quote));
    let f = with_rule(&v, rule::MB_EVENT_ORDER);
    assert!(!f.is_empty(), "{:#?}", v.findings);
    assert_eq!(f[0].event, Some(1));
    assert_eq!(f[0].pcr, Some(8));
    // Swapping two PCR 4 applications changes PCR 4 and the chain.
    let apps: Vec<&Event> = good
        .measurements()
        .filter(|e| e.pcr == 4 && e.event_type == EventType::EFI_BOOT_SERVICES_APPLICATION)
        .collect();
    let (a, b) = (apps[0], apps[1]);
    let mut swapped = raw[..a.offset].to_vec();
    swapped.extend_from_slice(&raw[span(b)]);
    swapped.extend_from_slice(&raw[span(a).end..b.offset]);
    swapped.extend_from_slice(&raw[span(a)]);
    swapped.extend_from_slice(&raw[span(b).end..]);
    let swapped = EventLog::parse(&swapped).expect("parses");
    let v = evaluate(&swapped, &policy, Some(&quote));
    let ids = rules(&v);
    assert!(
        ids.contains(&rule::MB_PCR_MISMATCH) && ids.contains(&rule::MB_BOOTLOADER_NOT_ALLOWED),
        "{ids:?}"
    );
}

#[test]
fn duplicate_or_missing_separator_is_an_order_finding() {
    let name = "binary_bios_measurements-secureboot";
    let good = log(name);
    let policy = generate(&good, false);
    let raw = raw_binary(name);
    let sep = find(&good, |e| e.pcr == 3 && e.event_type == EventType::SEPARATOR);
    let mut without = raw[..sep.offset].to_vec();
    without.extend_from_slice(&raw[span(sep).end..]);
    let v = evaluate(&EventLog::parse(&without).expect("parses"), &policy, None);
    let f = with_rule(&v, rule::MB_EVENT_ORDER);
    assert_eq!(f.len(), 1, "{:#?}", v.findings);
    assert_eq!(f[0].pcr, Some(3));
    let mut twice = raw[..span(sep).end].to_vec();
    twice.extend_from_slice(&raw[span(sep)]);
    twice.extend_from_slice(&raw[span(sep).end..]);
    let v = evaluate(&EventLog::parse(&twice).expect("parses"), &policy, None);
    let f = with_rule(&v, rule::MB_EVENT_ORDER);
    assert_eq!(f.len(), 1, "{:#?}", v.findings);
    assert_eq!(f[0].event, Some(u64::from(sep.number) + 1));
}

#[test]
fn firmware_db_dbx_and_cmdline_rules() {
    let log = log("binary_bios_measurements-secureboot");
    let mut policy = generate(&log, false);
    let crtm = find(&log, |e| e.pcr == 0 && e.event_type == EventType::EFI_PLATFORM_FIRMWARE_BLOB);
    policy
        .firmware
        .as_mut()
        .expect("firmware")
        .retain(|d| *d != crtm.digest(HashAlg::Sha256).expect("sha256").to_hex());
    policy.db_must_contain.push(SignatureRule {
        kind: SignatureRuleKind::Sha256,
        data: "ab".repeat(32),
        owner: None,
    });
    policy.dbx_must_include.push("cd".repeat(32));
    policy.kernel_cmdlines =
        Some(vec![CmdlineRule::Regex(r"\(hd0,gpt2\)/vmlinuz-\S+ .*quiet.*".into())]);
    policy.validate().expect("valid");
    let v = evaluate(&log, &policy, None);
    let fw = with_rule(&v, rule::MB_FIRMWARE_NOT_ALLOWED);
    assert_eq!(fw.len(), 1, "{:#?}", v.findings);
    assert_eq!(fw[0].event, Some(u64::from(crtm.number)));
    let db = with_rule(&v, rule::MB_DB_MISSING);
    assert_eq!(db.len(), 1);
    assert!(db[0].message.contains("EV_EFI_VARIABLE_DRIVER_CONFIG"));
    let dbx = with_rule(&v, rule::MB_DBX_MISSING);
    assert_eq!(dbx.len(), 1);
    assert_eq!(dbx[0].expected, Some(serde_json::json!(["cd".repeat(32)])));
    // Whether the regex matches depends on the real command line: check both ways.
    let cmdline = find(&log, |e| e.pcr == 8 && e.data.starts_with(b"kernel_cmdline: "));
    let text = String::from_utf8_lossy(&cmdline.data);
    assert_eq!(with_rule(&v, rule::MB_CMDLINE_NOT_ALLOWED).is_empty(), text.contains("quiet"));
    policy.kernel_cmdlines = Some(vec![CmdlineRule::Regex(r".* single".into())]);
    let v = evaluate(&log, &policy, None);
    assert!(!with_rule(&v, rule::MB_CMDLINE_NOT_ALLOWED).is_empty());
}

#[test]
fn pcr_values_missing_pcrs_and_banks() {
    let log = log("mb_log.b64");
    let mut policy = generate(&log, false);
    policy.pin_pcr_values(&log);
    assert!(evaluate(&log, &policy, None).passed());
    policy.pcr_values.as_mut().expect("pinned").insert(5, "00".repeat(32));
    let v = evaluate(&log, &policy, None);
    let f = with_rule(&v, rule::MB_PCR_MISMATCH);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].pcr, Some(5));
    // A quote lacking a covered PCR.
    let mut q = quoted(&log, HashAlg::Sha256);
    q.remove(&14);
    let v = evaluate(&log, &generate(&log, false), Some(&q));
    assert_eq!(rules(&v), vec![rule::MB_PCR_MISSING]);
    assert_eq!(v.findings[0].pcr, Some(14));
    // A policy (or quote) in a bank the log does not carry.
    let sha1 = MbPolicy { hash_alg: HashAlg::Sha1, ..generate(&log, false) };
    assert_eq!(rules(&evaluate(&log, &sha1, None)), vec![rule::MB_BANK_MISSING]);
    let q1: BTreeMap<u32, Digest> =
        DEFAULT_PCRS.iter().map(|p| (*p, HashAlg::Sha1.zero())).collect();
    let v = evaluate(&log, &generate(&log, false), Some(&q1));
    assert_eq!(rules(&v), vec![rule::MB_BANK_MISSING]);
}

#[test]
fn policy_json_errors_name_the_field() {
    let err = MbPolicy::from_json(br#"{"kernels": ["abcd"]}"#).expect_err("short digest");
    assert!(err.to_string().contains("kernels[0]"), "{err}");
    let err =
        MbPolicy::from_json(br#"{"kernel_cmdlines": [{"regex": "("}]}"#).expect_err("bad regex");
    assert!(err.to_string().contains("kernel_cmdlines[0].regex"), "{err}");
    let err = MbPolicy::from_json(br#"{"pcrs": [0, 30]}"#).expect_err("bad pcr");
    assert!(err.to_string().contains("pcrs[1]"), "{err}");
    let err = MbPolicy::from_json(b"{\n  \"bogus\": 1}").expect_err("unknown field");
    assert!(err.to_string().contains("line 2"), "{err}");
    let p = MbPolicy::from_json(b"{}").expect("empty policy");
    assert_eq!(p.pcrs, DEFAULT_PCRS.to_vec());
    assert!(!p.allow_secureboot_off);
}

#[test]
fn data_is_checked_in_the_quoted_bank_even_if_the_parse_skipped_it() {
    // A forger rewrites SecureBoot = 1 and fixes the sha256 digest, leaving sha1 (the quoted
    // bank here) as the TPM recorded it.
    let name = "binary_bios_measurements";
    let good = log(name);
    let sb = &good.events[12];
    let mut raw = raw_binary(name);
    let end = span(sb).end;
    raw[end - 1] = 1;
    let forged_data = raw[end - sb.data.len()..end].to_vec();
    let sha256_at = sb.offset + 12 + 2 + 20 + 2;
    raw[sha256_at..sha256_at + 32].copy_from_slice(HashAlg::Sha256.digest(&forged_data).as_bytes());
    let forged = EventLog::parse_for_banks(&raw, &[HashAlg::Sha256]).expect("parses");
    assert_eq!(forged.processed_banks(), &[HashAlg::Sha256]);
    assert_eq!(
        forged.events[12].digest_verified,
        Some(true),
        "sha256 alone was forged consistently"
    );
    let policy = generate(&good, false);
    let v = evaluate(&forged, &policy, Some(&quoted(&good, HashAlg::Sha1)));
    let ids = rules(&v);
    assert!(ids.contains(&rule::MB_DIGEST_MISMATCH), "{ids:?}");
    assert!(ids.contains(&rule::MB_SECUREBOOT_DISABLED), "{ids:?}");
    let f = with_rule(&v, rule::MB_DIGEST_MISMATCH);
    assert_eq!(f[0].event, Some(12));
    assert!(f[0].actual.as_ref().is_some_and(|a| a.get("sha1").is_some()));
}

#[test]
fn documents_that_are_no_reference_state_are_refused() {
    for doc in ["[]", "[true]", "{}", r#"{"version": 99}"#, r#"{"meta": {"version": 1}}"#, "7"] {
        let err = MbPolicy::from_keylime_refstate(doc.as_bytes()).expect_err(doc);
        assert!(err.to_string().contains("(document)"), "{doc}: {err}");
    }
    let minimal = MbPolicy::from_keylime_refstate(br#"{"has_secureboot": false}"#).expect("key");
    assert!(minimal.allow_secureboot_off);
}

#[test]
fn imported_keylime_refstate_is_enforced() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keylime/policy/mb_example_reference_state.json"
    );
    let json = std::fs::read(path).expect("refstate fixture");
    let policy = MbPolicy::from_keylime_refstate(&json).expect("imports");
    // The sample refstate describes an Ubuntu VM, not this CentOS one.
    let log = log_mb();
    let v = evaluate(&log, &policy, None);
    let ids = rules(&v);
    for id in
        [rule::MB_BOOTLOADER_NOT_ALLOWED, rule::MB_KERNEL_NOT_ALLOWED, rule::MB_CMDLINE_NOT_ALLOWED]
    {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(!ids.contains(&rule::MB_SECUREBOOT_DISABLED));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn evaluating_mutated_logs_never_panics(
            which in 0usize..4, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let name = LOGS[which];
            let good = log(name);
            let policy = generate(&good, false);
            let quote = quoted(&good, HashAlg::Sha256);
            let mut raw = raw_binary(name);
            for (at, byte) in flips {
                let i = at.index(raw.len());
                raw[i] = byte;
            }
            if let Ok(bad) = EventLog::parse(&raw) {
                let v = evaluate(&bad, &policy, Some(&quote));
                let _ = serde_json::to_string(&v);
                let _ = generate(&bad, true);
            }
        }

        #[test]
        fn policy_readers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = MbPolicy::from_json(&data);
            let _ = MbPolicy::from_keylime_refstate(&data);
        }
    }
}
