//! Golden tests on real logs, malformed-input tests and property tests.

use proptest::prelude::*;

use super::*;

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/keylime/eventlog/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub(crate) fn log(name: &str) -> EventLog {
    EventLog::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const GOLDEN_SHA256: [(u32, &str); 10] = [
    (0, "0ee9a7feba8f4172f1a7451594aa5731665a4d353ac61814042ce107a00742f2"),
    (1, "d268196b8d9585b41e6de98d7b2af9cc2fcc5b8ae5923b354105bf7c4d73b9cc"),
    (2, "4aa7ce1fed66fdadf81a0cf06a47f14625f72fb4ff5fb5d6aa5d0632c9407878"),
    (3, "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969"),
    (4, "a77ff9ab296e10186dd7e7082eab94e795b1ba9d84e920b09cf6272f68c2711c"),
    (5, "569e53aee038897b12b1a0842c1edb67435d53c831bdce67f6440dd2a903925f"),
    (7, "741fd028c51b4d2fbdcc7f28014cc758d17ccc1fe2ea7ca17b0e8009480a557c"),
    (8, "f5dc3feeda9a15dbcc11c6d99572bd063e8b0a435c222b4352c466726b0f5daf"),
    (9, "e0bde30667767849f70f6f1f5b561bc3d25d8aff186b8db0ac405d652f80e3c4"),
    (14, "17cdefd9548f4383b67a37a901673bf3c8ded6f619d36c8007562de1d93c81cc"),
];

#[test]
fn golden_replay_matches_known_values() {
    let log = log("binary_bios_measurements");
    assert_eq!(log.events.len(), 121, "Spec ID event plus 120 events");
    assert_eq!(log.startup_locality, Some(3));
    assert_eq!(log.banks(), vec![HashAlg::Sha1, HashAlg::Sha256]);
    for (pcr, want) in GOLDEN_SHA256 {
        let got = log.pcr(HashAlg::Sha256, pcr).map(|d| d.to_hex());
        assert_eq!(got.as_deref(), Some(want), "PCR {pcr}");
    }
    assert!(log.pcr(HashAlg::Sha1, 0).is_some());
    assert!(log.pcr(HashAlg::Sha256, 10).is_none());
}

#[test]
fn startup_locality_and_no_action_are_spec_correct() {
    // Extending the EV_NO_ACTION digests and starting PCR 0 at zero (old tpm2-tools) gives a
    // different PCR 0: this test fails if either rule is dropped.
    let log = log("binary_bios_measurements");
    let mut naive = HashAlg::Sha256.zero();
    for e in log.measurements().filter(|e| e.pcr == 0) {
        naive.extend(e.digest(HashAlg::Sha256).expect("sha256 bank").as_bytes());
    }
    assert!(naive.to_hex().starts_with("1877eacb"), "{naive}");
    assert_ne!(log.pcr(HashAlg::Sha256, 0), Some(&naive));
}

#[test]
fn other_real_logs_parse_and_replay() {
    for (name, events, banks) in [
        ("binary_bios_measurements-secureboot", 99, vec![HashAlg::Sha256]),
        ("uefi_log.bin", 124, vec![HashAlg::Sha256]),
        ("mb_log.b64", 102, vec![HashAlg::Sha256]),
    ] {
        let log = log(name);
        assert_eq!(log.events.len(), events, "{name}");
        assert_eq!(log.banks(), banks, "{name}");
        assert_eq!(log.from_base64, name.ends_with(".b64"));
        for bank in &banks {
            let pcrs = &log.pcrs()[bank];
            for pcr in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14] {
                assert!(pcrs.contains_key(&pcr), "{name}: {bank} PCR {pcr}");
            }
        }
        // Replay is deterministic and independent of the other banks.
        let again = EventLog::parse(&fixture(name)).expect("parses twice");
        assert_eq!(again.pcrs(), log.pcrs());
        // Every event whose data should hash to its digest does, on an untampered log.
        for e in log.measurements() {
            assert_ne!(
                e.digest_verified,
                Some(false),
                "{name}: event {} {}",
                e.number,
                e.event_type
            );
        }
    }
}

#[test]
fn base64_and_binary_inputs_agree() {
    use base64::Engine as _;
    let raw = fixture("binary_bios_measurements");
    let mut b64 = base64::engine::general_purpose::STANDARD.encode(&raw).into_bytes();
    b64.insert(40, b'\n');
    let a = EventLog::parse(&raw).expect("binary");
    let b = EventLog::parse(&b64).expect("base64");
    assert!(!a.from_base64 && b.from_base64);
    assert_eq!(a.events, b.events);
    assert_eq!(a.pcrs(), b.pcrs());
}

fn secure_boot_value(log: &EventLog) -> Option<bool> {
    log.measurements().find_map(|e| match e.decode() {
        DecodedEvent::EfiVariable {
            name, value: VariableValue::Boolean { enabled, .. }, ..
        } if name == "SecureBoot" => Some(enabled),
        _ => None,
    })
}

#[test]
fn secure_boot_state_is_decoded() {
    assert_eq!(secure_boot_value(&log("binary_bios_measurements")), Some(false));
    assert_eq!(secure_boot_value(&log("binary_bios_measurements-secureboot")), Some(true));
    assert_eq!(secure_boot_value(&log("mb_log.b64")), Some(true));
}

#[test]
fn decoded_events_are_readable() {
    let log = log("binary_bios_measurements");
    let json = serde_json::to_value(&log).expect("serializes");
    let events = json["events"].as_array().expect("events array");
    assert_eq!(events.len(), 121);
    assert_eq!(events[0]["decoded"]["kind"], "spec_id");
    assert_eq!(
        events[1]["decoded"],
        serde_json::json!({"kind": "startup_locality", "locality": 3})
    );
    assert_eq!(events[1]["digest_verified"], serde_json::Value::Null);
    assert_eq!(
        json["pcrs"]["sha256"]["0"],
        "0ee9a7feba8f4172f1a7451594aa5731665a4d353ac61814042ce107a00742f2"
    );
    // db is a signature list of X.509 certificates with owners.
    let db = &events[15]["decoded"];
    assert_eq!(db["name"], "db", "{db}");
    assert_eq!(db["variable_guid"], "d719b2cb-3d3a-4596-a3bc-dad00e67656f");
    assert_eq!(db["value"]["signatures"][0]["type"], "x509");
    assert_eq!(events[15]["digest_verified"], true);
    assert_eq!(events[15]["covered"], "event_data");
    // Boot options: description and device path; digest covers only the variable data.
    let boot = &events[28]["decoded"];
    assert_eq!(boot["value"]["type"], "load_option", "{boot}");
    assert_eq!(events[28]["covered"], "variable_data");
    // shim, loaded from the ESP: a file path, and image data not covered by the digest.
    let shim = &events[52];
    assert_eq!(shim["type"], "EV_EFI_BOOT_SERVICES_APPLICATION");
    assert_eq!(shim["digest_verified"], serde_json::Value::Null);
    assert_eq!(shim["covered"], "none");
    let path = shim["decoded"]["device_path"].as_str().expect("device path");
    assert!(path.starts_with("PciRoot(0x0)/Pci("), "{path}");
    assert!(path.to_ascii_lowercase().ends_with("shimx64.efi"), "{path}");
    // grub's kernel command line, covered by its digest.
    let cmdline = &events[118];
    assert_eq!(cmdline["covered"], "ipl_text");
    assert_eq!(cmdline["digest_verified"], true);
    assert!(
        cmdline["decoded"]["kernel_cmdline"]
            .as_str()
            .expect("cmdline")
            .starts_with("(hd3,gpt2)/vmlinuz-6.11.5")
    );
    // GPT partitions.
    let gpt = &events[51]["decoded"];
    assert_eq!(gpt["kind"], "gpt");
    assert!(!gpt["partitions"].as_array().expect("partitions").is_empty());
    assert_eq!(
        events[42]["decoded"],
        serde_json::json!({"kind": "separator", "value": 0, "error": false})
    );
}

#[test]
fn bogus_and_empty_logs_are_refused() {
    assert_eq!(
        EventLog::parse(&fixture("binary_bios_measurements-empty")),
        Err(EventLogError::Empty)
    );
    let err = EventLog::parse(&fixture("binary_bios_measurements-bogus")).expect_err("bogus");
    let msg = err.to_string();
    assert!(msg.contains("not a TCG crypto-agile event log"), "{msg}");
    assert!(msg.contains("event 0 at byte offset"), "{msg}");
}

#[test]
fn truncation_names_event_and_offset() {
    let raw = fixture("binary_bios_measurements");
    let log = EventLog::parse(&raw).expect("parses");
    let e = &log.events[10];
    let cut = e.offset + 20;
    let err = EventLog::parse(&raw[..cut]).expect_err("truncated");
    match &err {
        EventLogError::Malformed { event, offset, .. } => {
            assert_eq!(*event, 10);
            assert!(*offset >= e.offset && *offset <= cut, "{err}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("event 10 at byte offset"), "{err}");
}

#[test]
fn absurd_sizes_are_refused_without_allocating() {
    let raw = fixture("binary_bios_measurements");
    let log = EventLog::parse(&raw).expect("parses");
    let e = &log.events[2];
    // The event size field sits after PCR, type, count and the two digests.
    let size_at = e.offset + 12 + (2 + 20) + (2 + 32);
    let mut bad = raw.clone();
    bad[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = EventLog::parse(&bad).expect_err("oversized event");
    assert!(err.to_string().contains(&format!("event 2 at byte offset {size_at}")), "{err}");
    assert!(err.to_string().contains("exceeds"), "{err}");
    // A digest count beyond the Spec ID algorithms.
    let mut bad = raw.clone();
    bad[e.offset + 8..e.offset + 12].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
    let err = EventLog::parse(&bad).expect_err("digest count");
    assert!(err.to_string().contains("digest count"), "{err}");
    // A PCR index out of range.
    let mut bad = raw;
    bad[e.offset..e.offset + 4].copy_from_slice(&77u32.to_le_bytes());
    let err = EventLog::parse(&bad).expect_err("pcr");
    assert!(err.to_string().contains("PCR index 77"), "{err}");
}

#[test]
fn tampered_data_is_not_verified() {
    let raw = fixture("binary_bios_measurements");
    let log = EventLog::parse(&raw).expect("parses");
    // Event 12 is SecureBoot = 0; flip its value byte to 1.
    let e = &log.events[12];
    let last = e.offset + (e_size(e) - 1);
    let mut bad = raw.clone();
    bad[last] ^= 1;
    let tampered = EventLog::parse(&bad).expect("still parses");
    assert_eq!(tampered.events[12].digest_verified, Some(false));
    assert_eq!(tampered.pcrs(), log.pcrs(), "data is not what replay extends");
}

/// Total size in bytes of an event in the binary log.
pub(crate) fn e_size(e: &Event) -> usize {
    12 + e.digests.iter().map(|d| 2 + d.as_bytes().len()).sum::<usize>() + 4 + e.data.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = EventLog::parse(&data);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes_after_a_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let raw = fixture("binary_bios_measurements");
        let log = EventLog::parse(&raw).expect("parses");
        let mut data = raw[..log.events[1].offset].to_vec();
        data.extend_from_slice(&tail);
        if let Ok(log) = EventLog::parse(&data) {
            let _ = serde_json::to_string(&log);
        }
    }

    #[test]
    fn truncations_and_bit_flips_of_real_logs_never_panic(
        which in 0usize..4, cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let name = ["binary_bios_measurements", "binary_bios_measurements-secureboot", "uefi_log.bin", "mb_log.b64"][which];
        let mut raw = fixture(name);
        if name.ends_with(".b64") {
            use base64::Engine as _;
            let text: Vec<u8> = raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            raw = base64::engine::general_purpose::STANDARD.decode(text).expect("fixture is base64");
        }
        let i = flip.index(raw.len());
        raw[i] ^= 1 << bit;
        let truncated = &raw[..cut.index(raw.len() + 1)];
        if let Ok(log) = EventLog::parse(truncated) {
            let _ = serde_json::to_string(&log);
        }
    }
}

#[test]
fn late_startup_locality_is_refused() {
    // Moving the StartupLocality event after the first PCR 0 extend makes the log ambiguous.
    let raw = fixture("binary_bios_measurements");
    let log = EventLog::parse(&raw).expect("parses");
    let (loc, next) = (&log.events[1], &log.events[2]);
    let mut bad = raw[..loc.offset].to_vec();
    bad.extend_from_slice(&raw[next.offset..next.offset + e_size(next)]);
    bad.extend_from_slice(&raw[loc.offset..loc.offset + e_size(loc)]);
    bad.extend_from_slice(&raw[next.offset + e_size(next)..]);
    let err = EventLog::parse(&bad).expect_err("late locality");
    assert!(err.to_string().contains("event 2 at byte offset"), "{err}");
    assert!(err.to_string().contains("after PCR 0 was already extended"), "{err}");
}
