//! A chain whose issuers are ECDSA P-256: root -> intermediate -> RSA-2048 and ECC P-256 EK
//! certificates in the TCG profile, made with OpenSSL (tests/data/ek-ecdsa-chain/README.md).

use super::*;
use crate::der;
use crate::key::{Curve, PublicKey};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ek-ecdsa-chain");
/// 2024-06-01T00:00:00Z, inside every certificate's validity period.
const NOW: i64 = 1_717_200_000;
const ROOT: &str = "C=XX, O=Test TPM Vendor, CN=Test TPM ECC Root CA";
const INTERMEDIATE: &str = "C=XX, O=Test TPM Vendor, CN=Test TPM ECC Intermediate CA 01";
const EKS: [&str; 2] = ["ek-rsa2048.der", "ek-eccp256.der"];

fn read(name: &str) -> Vec<u8> {
    let path = format!("{DIR}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pem(name: &str) -> Vec<u8> {
    let text = String::from_utf8(read(name)).expect("utf8");
    pem_certificates(name, &text).expect("pem").remove(0)
}

fn store(names: &[&str]) -> CaStore {
    let mut store = CaStore::new();
    for name in names {
        assert_eq!(store.add_file(name, &read(name)), Ok(1), "{name}");
    }
    store
}

fn flip_last_signature_byte(mut der: Vec<u8>) -> Vec<u8> {
    let end = der::Reader::new(&der).read_any().expect("outer").raw.len();
    der[end - 1] ^= 0x01;
    der
}

#[test]
fn p256_intermediate_issues_rsa_and_ecc_ek_certificates() {
    let intermediate = pem("intermediate.pem");
    let options = ValidationOptions::at(NOW);
    for name in EKS {
        let chain = validate(&read(name), &[&intermediate], &store(&["root.pem"]), &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let names: Vec<_> =
            chain.chain.iter().map(|c| (c.subject.as_str(), c.from_store)).collect();
        assert_eq!(names, [("(empty name)", false), (INTERMEDIATE, false), (ROOT, true)], "{name}");
        assert_eq!(
            chain.tpm,
            TpmAttributes {
                manufacturer: Some("id:54455354".to_owned()),
                model: Some("TEST-TPM-P256".to_owned()),
                version: Some("id:00010002".to_owned()),
            },
            "{name}"
        );
        match (&chain.ek_public.key, name) {
            (PublicKey::Rsa { modulus, exponent }, "ek-rsa2048.der") => {
                assert_eq!((modulus.len(), exponent.as_slice()), (256, &[1, 0, 1][..]));
            }
            (PublicKey::Ec { curve: Curve::P256, point }, "ek-eccp256.der") => {
                assert_eq!((point.len(), point[0]), (65, 0x04));
            }
            (key, _) => panic!("{name}: unexpected key {key:?}"),
        }
        // The intermediate in the store is an anchor by itself.
        let short = validate(&read(name), &[], &store(&["intermediate.pem"]), &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(short.chain.len(), 2);
        assert!(short.chain[1].from_store);
        // The full store with both roots: the one whose key signed the intermediate is chosen.
        let both = store(&["other-root.pem", "root.pem"]);
        validate(&read(name), &[&intermediate], &both, &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn missing_intermediate_or_root_names_the_absent_issuer() {
    let intermediate = pem("intermediate.pem");
    let options = ValidationOptions::at(NOW);
    for name in EKS {
        let ek = read(name);
        // No intermediate: the EK's issuer is nowhere.
        let err = validate(&ek, &[], &store(&["root.pem"]), &options).expect_err(name);
        assert!(
            matches!(&err, EkCertError::UnknownIssuer { depth: 0, issuer, .. } if issuer == INTERMEDIATE),
            "{name}: {err}"
        );
        // The root absent: a store of other vendors' CAs.
        let others = CaStore::from_files([(
            "NUVO_2110.pem",
            &include_bytes!("../../tests/data/keylime/ek-ca/NUVO_2110.pem")[..],
        )])
        .0;
        let err = validate(&ek, &[&intermediate], &others, &options).expect_err(name);
        assert!(
            matches!(&err, EkCertError::UnknownIssuer { depth: 1, subject, issuer } if subject == INTERMEDIATE && issuer == ROOT),
            "{name}: {err}"
        );
        // A root with the right name but another key: its subject key identifier differs from
        // the intermediate's authority key identifier, so it is not even a candidate.
        let err =
            validate(&ek, &[&intermediate], &store(&["other-root.pem"]), &options).expect_err(name);
        assert!(matches!(&err, EkCertError::UnknownIssuer { depth: 1, .. }), "{name}: {err}");
        // The EK certificate alone in the store cannot vouch for itself: it is not a CA.
        let mut own = CaStore::new();
        own.add_der(name, &ek).expect("parses");
        let err = validate(&ek, &[], &own, &options).expect_err(name);
        assert!(matches!(&err, EkCertError::UnknownIssuer { depth: 0, .. }), "{name}: {err}");
        assert_eq!(
            validate(&ek, &[&intermediate], &CaStore::new(), &options),
            Err(EkCertError::EmptyStore)
        );
    }
}

#[test]
fn tampered_ecdsa_signatures_fail_at_their_depth() {
    let intermediate = pem("intermediate.pem");
    let roots = store(&["root.pem"]);
    let options = ValidationOptions::at(NOW);
    for name in EKS {
        let bad_ek = flip_last_signature_byte(read(name));
        let err = validate(&bad_ek, &[&intermediate], &roots, &options).expect_err(name);
        assert!(
            matches!(&err, EkCertError::BadSignature { depth: 0, issuer, .. } if issuer == INTERMEDIATE),
            "{name}: {err}"
        );
        // A changed TBS byte (in the serial number) under an intact signature.
        let mut changed = read(name);
        changed[15] ^= 0x01;
        let err = validate(&changed, &[&intermediate], &roots, &options).expect_err(name);
        assert!(matches!(&err, EkCertError::BadSignature { depth: 0, .. }), "{name}: {err}");
        let bad_intermediate = flip_last_signature_byte(intermediate.clone());
        let err = validate(&read(name), &[&bad_intermediate], &roots, &options).expect_err(name);
        assert!(
            matches!(&err, EkCertError::BadSignature { depth: 1, subject, issuer } if subject == INTERMEDIATE && issuer == ROOT),
            "{name}: {err}"
        );
    }
    // The EK certificate's signature moved onto the other EK certificate: a valid signature
    // by the right key over other bytes.
    let [rsa, ecc] = EKS.map(read);
    let signature_of = |der: &[u8]| {
        let outer = der::Reader::new(der).read_any().expect("outer");
        let mut parts = outer.contents();
        let tbs = parts.read_any().expect("tbs").raw.len();
        let alg = parts.read_any().expect("alg").raw.len();
        (tbs, alg, parts.read_any().expect("sig").raw.to_vec())
    };
    let (tbs, alg, _) = signature_of(&rsa);
    let (_, _, ecc_signature) = signature_of(&ecc);
    let outer = der::Reader::new(&rsa).read_any().expect("outer");
    let start = outer.raw.len() - outer.value.len();
    let body = [&rsa[start..start + tbs + alg], &ecc_signature[..]].concat();
    let mut swapped = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
    swapped.extend_from_slice(&body);
    let err = validate(&swapped, &[&intermediate], &roots, &options).expect_err("swapped");
    assert!(matches!(&err, EkCertError::BadSignature { depth: 0, .. }), "{err}");
}

#[test]
fn an_ek_under_an_ecdsa_issuer_validates_only_through_its_intermediate() {
    let intermediate = pem("intermediate.pem");
    let roots = store(&["root.pem"]);
    let options = ValidationOptions::at(NOW);
    for name in EKS {
        let ek = read(name);
        let (key, _) = parse_ek_certificate(&ek).expect("parses");
        let chain = validate(&ek, &[&intermediate], &roots, &options);
        assert_eq!(chain.as_ref().map(|c| c.chain.len()), Ok(3), "{name}");
        assert_eq!(chain.map(|c| c.ek_public.key), Ok(key.key), "{name}");
        let untrusted = validate(&ek, &[], &roots, &options);
        assert!(
            matches!(&untrusted, Err(e @ EkCertError::UnknownIssuer { .. }) if e.to_string().contains(INTERMEDIATE)),
            "{name}: {untrusted:?}"
        );
        let late = ValidationOptions::at(2_524_608_000); // 2050-01-01
        let expired = validate(&ek, &[&intermediate], &roots, &late);
        assert!(matches!(expired, Err(EkCertError::Expired { .. })), "{name}: {expired:?}");
    }
}
