use proptest::prelude::*;

use super::cert::Certificate;
use super::*;
use crate::der;
use crate::key::{Curve, PublicKey};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keylime");

fn read(rel: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{rel}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn store_of(names: &[&str]) -> CaStore {
    let mut store = CaStore::new();
    for name in names {
        store.add_file(name, &read(&format!("ek-ca/{name}"))).expect("CA parses");
    }
    store
}

fn full_store() -> CaStore {
    let mut entries: Vec<_> = std::fs::read_dir(format!("{FIXTURES}/ek-ca"))
        .expect("ek-ca dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let names: Vec<&str> = entries.iter().map(String::as_str).collect();
    store_of(&names)
}

fn pem_der(rel: &str) -> Vec<u8> {
    let text = String::from_utf8(read(rel)).expect("utf8");
    pem_certificates(rel, &text).expect("pem").remove(0)
}

const ST_RSA: &str = "ek-certs/st_sha256_with_rsa_der.der";
const ST_ECC: &str = "ek-certs/st_ecdsa_sha256_der.der";
const NUVOTON: &str = "ek-certs/nuvoton_ecdsa_sha256_der.der";
/// 2024-01-01T00:00:00Z: inside every fixture certificate's validity period.
const NOW: i64 = 1_704_067_200;

#[test]
fn every_store_certificate_parses() {
    let store = full_store();
    assert_eq!(store.len(), 51);
    for cert in &store.certs {
        assert!(
            cert.basic_constraints.is_some_and(|(ca, _)| ca),
            "{} is a CA",
            cert.subject.display
        );
    }
}

#[test]
fn st_rsa_ek_certificate_validates_despite_trailing_bytes() {
    let der = read(ST_RSA);
    let mut top = der::Reader::new(&der);
    top.read_any().expect("outer SEQUENCE");
    assert_eq!(top.remaining(), 431, "the fixture has trailing bytes");
    let chain = validate(&der, &[], &full_store(), &ValidationOptions::at(NOW)).expect("valid");
    assert_eq!(chain.chain.len(), 2);
    assert_eq!(chain.chain[0].subject, "(empty name)");
    assert_eq!(
        chain.chain[1].subject,
        "C=CH, O=STMicroelectronics NV, CN=STM TPM EK Intermediate CA 05"
    );
    assert!(chain.chain[1].from_store && !chain.chain[0].from_store);
    match &chain.ek_public.key {
        PublicKey::Rsa { modulus, exponent } => {
            assert_eq!(modulus.len(), 256);
            assert_eq!(&modulus[..4], &[0xd2, 0x82, 0xc0, 0xb1]);
            assert_eq!(exponent, &[0x01, 0x00, 0x01]);
        }
        other => panic!("expected RSA, got {other:?}"),
    }
    assert_eq!(
        chain.tpm,
        TpmAttributes {
            manufacturer: Some("id:53544D20".to_owned()),
            model: Some("ST33HTPHAHB4".to_owned()),
            version: Some("id:00490004".to_owned()),
        }
    );
}

#[test]
fn st_ecc_ek_certificate_validates() {
    let chain =
        validate(&read(ST_ECC), &[], &store_of(&["STM_ECC_01I.pem"]), &ValidationOptions::at(NOW))
            .expect("valid");
    assert_eq!(
        chain.chain[1].subject,
        "C=CH, O=STMicroelectronics NV, CN=STM TPM ECC Intermediate CA 01"
    );
    assert!(
        matches!(chain.ek_public.key, PublicKey::Ec { curve: Curve::P256, ref point } if point[1..3] == [0x1b, 0x13])
    );
    assert_eq!(chain.tpm.model.as_deref(), Some("ST33HTPHAHB4"));
}

#[test]
fn nuvoton_certificate_with_unordered_set_validates() {
    let chain =
        validate(&read(NUVOTON), &[], &store_of(&["NUVO_2110.pem"]), &ValidationOptions::at(NOW))
            .expect("valid");
    assert_eq!(chain.chain.len(), 2);
    assert!(chain.chain[0].subject.contains("Nuvoton TPM Root CA 2110"));
    assert_eq!(chain.tpm, TpmAttributes::default());
    validate(&read(NUVOTON), &[], &full_store(), &ValidationOptions::at(NOW))
        .expect("valid in full store");
}

#[test]
fn intermediates_supplied_with_the_ek_bridge_to_a_root() {
    let root_only = store_of(&["STM_RSA_RT.pem"]);
    let intermediate = pem_der("ek-ca/STM_RSA_05I.pem");
    let chain = validate(&read(ST_RSA), &[&intermediate], &root_only, &ValidationOptions::at(NOW))
        .expect("valid");
    assert_eq!(chain.chain.len(), 3);
    assert!(!chain.chain[1].from_store && chain.chain[2].from_store);
    let err = validate(&read(ST_RSA), &[], &root_only, &ValidationOptions::at(NOW))
        .expect_err("no bridge");
    assert!(matches!(err, EkCertError::UnknownIssuer { depth: 0, .. }), "{err}");
}

#[test]
fn p384_root_verifies_p256_intermediate_with_sha384() {
    let der = pem_der("ek-ca/STM_ECC_01I.pem");
    let chain = validate(&der, &[], &store_of(&["STM_ECC_01RT.pem"]), &ValidationOptions::at(NOW))
        .expect("valid");
    assert_eq!(chain.chain.len(), 2);
}

#[test]
fn sha1_signatures_pass_only_when_allowed() {
    let der = pem_der("ek-ca/IFX_RSA_05I.pem");
    let store = store_of(&["IFX_RSA_RT.pem"]);
    validate(&der, &[], &store, &ValidationOptions::at(NOW)).expect("sha1 allowed");
    let strict = ValidationOptions { allow_sha1: false, ..ValidationOptions::at(NOW) };
    let err = validate(&der, &[], &store, &strict).expect_err("sha1 refused");
    assert!(
        matches!(err, EkCertError::UnsupportedAlgorithm { depth: 0, ref algorithm, .. } if algorithm == "sha1WithRSAEncryption"),
        "{err}"
    );
}

fn flipped(mut der: Vec<u8>, at: usize) -> Vec<u8> {
    der[at] ^= 0x01;
    der
}

/// The offset of the last signature byte: the end of the outer SEQUENCE, minus one.
fn last_signature_byte(der: &[u8]) -> usize {
    der::Reader::new(der).read_any().expect("outer").raw.len() - 1
}

#[test]
fn flipped_signature_byte_fails_at_depth_zero() {
    for name in [ST_RSA, ST_ECC, NUVOTON] {
        let der = read(name);
        let bad = flipped(der.clone(), last_signature_byte(&der));
        let err = validate(&bad, &[], &full_store(), &ValidationOptions::at(NOW)).expect_err(name);
        assert!(matches!(err, EkCertError::BadSignature { depth: 0, .. }), "{name}: {err}");
    }
}

#[test]
fn flipped_tbs_byte_fails_at_depth_zero() {
    // Offset 15 is inside the serial number of all three certificates.
    for name in [ST_RSA, ST_ECC, NUVOTON] {
        let bad = flipped(read(name), 15);
        let err = validate(&bad, &[], &full_store(), &ValidationOptions::at(NOW)).expect_err(name);
        assert!(matches!(err, EkCertError::BadSignature { depth: 0, .. }), "{name}: {err}");
    }
}

#[test]
fn tampered_intermediate_fails_at_depth_one() {
    let intermediate = pem_der("ek-ca/STM_RSA_05I.pem");
    let bad = flipped(intermediate.clone(), last_signature_byte(&intermediate));
    let err = validate(
        &read(ST_RSA),
        &[&bad],
        &store_of(&["STM_RSA_RT.pem"]),
        &ValidationOptions::at(NOW),
    )
    .expect_err("bad intermediate");
    assert!(matches!(err, EkCertError::BadSignature { depth: 1, .. }), "{err}");
}

#[test]
fn empty_store_and_wrong_vendor_fail() {
    let err = validate(&read(ST_RSA), &[], &CaStore::new(), &ValidationOptions::at(NOW))
        .expect_err("empty");
    assert_eq!(err, EkCertError::EmptyStore);
    let others = store_of(&["NUVO_2110.pem", "IFX_RSA_RT.pem", "INTEL_I.pem", "STM_ECC_01I.pem"]);
    let err = validate(&read(ST_RSA), &[], &others, &ValidationOptions::at(NOW))
        .expect_err("wrong vendor");
    match err {
        EkCertError::UnknownIssuer { depth: 0, issuer, .. } => {
            assert!(issuer.contains("STM TPM EK Intermediate CA 05"))
        }
        other => panic!("expected UnknownIssuer, got {other}"),
    }
}

#[test]
fn validity_period_is_enforced_when_a_time_is_given() {
    let store = full_store();
    let after = ValidationOptions::at(1_893_456_000); // 2030-01-01
    let err = validate(&read(ST_RSA), &[], &store, &after).expect_err("expired");
    assert!(
        matches!(err, EkCertError::Expired { depth: 0, ref not_after, .. } if not_after == "2028-07-11T00:00:00Z"),
        "{err}"
    );
    let before = ValidationOptions::at(1_483_228_800); // 2017-01-01
    let err = validate(&read(ST_RSA), &[], &store, &before).expect_err("not yet valid");
    assert!(matches!(err, EkCertError::NotYetValid { depth: 0, .. }), "{err}");
    validate(&read(ST_RSA), &[], &store, &ValidationOptions::ignoring_time())
        .expect("time ignored");
}

#[test]
fn issuers_must_be_cas() {
    let leaf = Certificate::parse(&read(ST_RSA)).expect("parses");
    let err = check_ca(&leaf, 1, 0, true).expect_err("EK cert is not a CA");
    assert!(
        matches!(err, EkCertError::NotCa { depth: 1, ref reason, .. } if reason.contains("cA is FALSE")),
        "{err}"
    );
    let intermediate = Certificate::parse(&pem_der("ek-ca/STM_RSA_05I.pem")).expect("parses");
    check_ca(&intermediate, 1, 0, true).expect("CA with pathlen 0 over the EK");
    let err = check_ca(&intermediate, 2, 1, true).expect_err("pathlen 0 exceeded");
    assert!(err.to_string().contains("pathLenConstraint 0"), "{err}");
}

#[test]
fn malformed_certificates_name_the_offset() {
    let der = read(ST_ECC);
    let err = validate(&der[..300], &[], &full_store(), &ValidationOptions::at(NOW))
        .expect_err("truncated");
    match &err {
        EkCertError::Malformed { input, offset, .. } => {
            assert_eq!(input, "EK certificate");
            assert_eq!(*offset, 0);
        }
        other => panic!("expected Malformed, got {other}"),
    }
    // Break the tag of the serial number (offset 13) inside an intact outer structure.
    let mut bad = der.clone();
    bad[13] = 0x04;
    let err = validate(&bad, &[], &full_store(), &ValidationOptions::at(NOW)).expect_err("bad tag");
    assert!(matches!(err, EkCertError::Malformed { offset: 13, .. }), "{err}");
    assert!(err.to_string().contains("malformed DER at byte 13: serialNumber"), "{err}");
    let err = CaStore::new().add_der("x.der", &[0x30, 0x80]).expect_err("indefinite");
    assert!(err.to_string().starts_with("x.der: malformed DER at byte 1"), "{err}");
}

#[test]
fn pem_errors_name_the_line() {
    let err = pem_certificates(
        "ca.pem",
        "junk\n-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .expect_err("bad base64");
    assert!(matches!(err, EkCertError::Pem { line: 2, .. }), "{err}");
    let err =
        pem_certificates("ca.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n").expect_err("unclosed");
    assert!(err.to_string().starts_with("ca.pem: line 1: block is never closed"), "{err}");
    let two = format!(
        "{}\n-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n{}",
        String::from_utf8(read("ek-ca/NUVO_2110.pem")).expect("utf8"),
        String::from_utf8(read("ek-ca/NUVO_2111.pem")).expect("utf8")
    );
    let mut store = CaStore::new();
    assert_eq!(store.add_file("bundle.pem", two.as_bytes()).expect("bundle"), 2);
    assert_eq!(store.add_file("raw.der", &read(NUVOTON)).expect("der file"), 1);
}

#[test]
fn store_loading_skips_and_reports_unreadable_certificates() {
    let good = read("ek-ca/NUVO_2110.pem");
    let bundle = [
        read("ek-ca/STM_RSA_05I.pem"),
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".to_vec(),
    ]
    .concat();
    let files: Vec<(&str, &[u8])> = vec![
        ("NUVO_2110.pem", &good),
        ("bundle.pem", &bundle),
        ("broken.pem", b"-----BEGIN CERTIFICATE-----\n"),
    ];
    let (store, skipped) = CaStore::from_files(files);
    assert_eq!(store.len(), 2);
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped[0].to_string().starts_with("bundle.pem (certificate 2): malformed DER at byte"),
        "{}",
        skipped[0]
    );
    assert!(
        matches!(&skipped[1], EkCertError::Pem { input, line: 1, .. } if input == "broken.pem")
    );
    let mut strict = CaStore::new();
    strict.add_file("bundle.pem", &bundle).expect_err("one bad certificate");
    assert!(strict.is_empty(), "nothing added from a file with a bad certificate");
}

#[test]
fn parse_ek_certificate_reads_key_and_attributes() {
    let (key, tpm) = parse_ek_certificate(&read(ST_ECC)).expect("parses");
    assert!(matches!(key.key, PublicKey::Ec { curve: Curve::P256, .. }));
    assert_eq!(SubjectPublicKey::from_spki_der(&key.spki_der).expect("spki"), key);
    assert_eq!(tpm.manufacturer.as_deref(), Some("id:53544D20"));
}

#[test]
fn validation_names_each_reason_for_a_rejection() {
    let store = full_store();
    let options = ValidationOptions::at(NOW);
    let chain = validate(&read(ST_ECC), &[], &store, &options).expect("valid");
    assert_eq!(chain.chain.len(), 2);
    let (ek, _) = parse_ek_certificate(&read(ST_ECC)).expect("parses");
    assert_eq!(chain.ek_public.key, ek.key);

    let malformed = validate(&[0x30, 0x01], &[], &store, &options);
    assert!(matches!(&malformed, Err(EkCertError::Malformed { offset: 0, .. })), "{malformed:?}");
    let untrusted = validate(&read(ST_ECC), &[], &store_of(&["NUVO_2110.pem"]), &options);
    assert!(matches!(untrusted, Err(EkCertError::UnknownIssuer { depth: 0, .. })), "{untrusted:?}");
    let late = validate(&read(ST_ECC), &[], &store, &ValidationOptions::at(1_893_456_000));
    assert!(matches!(late, Err(EkCertError::Expired { .. })), "{late:?}");
}

#[test]
fn tpm_public_fields_compare_equal_to_certificate_keys() {
    let (ek, _) = parse_ek_certificate(&read(ST_RSA)).expect("parses");
    let PublicKey::Rsa { modulus, .. } = &ek.key else { panic!("RSA expected") };
    let mut padded = vec![0];
    padded.extend_from_slice(modulus);
    assert_eq!(PublicKey::rsa(&padded, 0), ek.key);
    assert_eq!(PublicKey::rsa(modulus, 65_537), ek.key);
    assert_ne!(PublicKey::rsa(modulus, 3), ek.key);
    let short = PublicKey::ecc(Curve::P256, &[1], &[2; 32]);
    assert!(
        matches!(short, PublicKey::Ec { ref point, .. } if point.len() == 65 && point[32] == 1)
    );
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

/// Rebuilds the ST ECC certificate with `r` and `s` re-encoded by `encode`.
fn with_ecdsa_integers(encode: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let der = read(ST_ECC);
    let outer = der::Reader::new(&der).read_any().expect("outer");
    let mut parts = outer.contents();
    let tbs = parts.read_any().expect("tbs");
    let alg = parts.read_any().expect("alg");
    let bits = parts.read_any().expect("sig");
    let sig = der::Reader::new(&bits.value[1..]).read_any().expect("ECDSA-Sig-Value");
    let mut ints = sig.contents();
    let mut body = Vec::new();
    for _ in 0..2 {
        let int = ints.read_any().expect("integer");
        body.extend(tlv(0x02, &encode(int.value)));
    }
    let mut bit_string = vec![0];
    bit_string.extend(tlv(0x30, &body));
    tlv(0x30, &[tbs.raw, alg.raw, &tlv(0x03, &bit_string)].concat())
}

#[test]
fn ecdsa_integers_with_extra_zero_bytes_still_verify_but_changed_values_do_not() {
    let store = store_of(&["STM_ECC_01I.pem"]);
    let options = ValidationOptions::at(NOW);
    let padded = with_ecdsa_integers(|v| [&[0, 0][..], v].concat());
    validate(&padded, &[], &store, &options).expect("same r and s, sloppier encoding");
    let same = with_ecdsa_integers(<[u8]>::to_vec);
    assert_eq!(same, read(ST_ECC)[..same.len()], "the rebuild is faithful");
    let changed = with_ecdsa_integers(|v| [&[1][..], v].concat());
    let err = validate(&changed, &[], &store, &options).expect_err("different r and s");
    assert!(matches!(err, EkCertError::BadSignature { depth: 0, .. }), "{err}");
}

fn fixture_certs() -> Vec<Vec<u8>> {
    vec![read(ST_RSA), read(ST_ECC), read(NUVOTON), pem_der("ek-ca/INF_RSA_010RT.pem")]
}

proptest! {
    #[test]
    fn pem_reader_never_panics(text in "(-----(BEGIN|END) [A-Z ]{0,12}-----|[A-Za-z0-9+/=]{0,70}|\\PC{0,8})(\n(-----(BEGIN|END) [A-Z ]{0,12}-----|[A-Za-z0-9+/=]{0,70}|\\PC{0,8})){0,12}") {
        if let Ok(certs) = pem_certificates("fuzz.pem", &text) {
            for der in certs {
                let _ = Certificate::parse(&der);
            }
        }
        let _ = CaStore::from_files([("fuzz.pem", text.as_bytes())]);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Certificate::parse(&data);
        let _ = SubjectPublicKey::from_spki_der(&data);
    }

    #[test]
    fn parser_never_panics_on_truncated_certificates(which in 0usize..4, cut in 0usize..2048) {
        let der = &fixture_certs()[which];
        let cut = cut.min(der.len());
        let _ = Certificate::parse(&der[..cut]);
    }

    #[test]
    fn mutated_certificates_never_panic_or_validate(which in 0usize..3, at in 0usize..1169, byte in any::<u8>()) {
        let mut der = fixture_certs()[which].clone();
        let outer = last_signature_byte(&der) + 1;
        let at = at % outer;
        prop_assume!(der[at] != byte);
        der[at] = byte;
        let store = store_of(&["STM_RSA_05I.pem", "STM_ECC_01I.pem", "NUVO_2110.pem"]);
        // A changed byte may leave the certificate parseable (e.g. a time digit or a string
        // type), but then the signature must fail: every byte is either signed, part of the
        // signature, or structure that must stay exact (the outer signatureAlgorithm must equal
        // the signed one).
        prop_assert!(validate(&der, &[], &store, &ValidationOptions::ignoring_time()).is_err());
    }
}
