use std::io::{Cursor, Write};

use proptest::prelude::*;
use zip::write::SimpleFileOptions;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keylime/payload");

fn file(path: &str, contents: &[u8], executable: bool) -> PayloadFile {
    PayloadFile { path: path.into(), contents: contents.to_vec(), executable }
}

#[test]
fn halves_combine_only_with_the_right_tag() {
    let key = SplitKey::generate().expect("rng");
    assert_ne!(key.u, key.k);
    assert_eq!(xor(&key.u, &key.v), key.k);
    let tag = key.auth_tag("agent-1");
    assert_eq!(combine(&key.u, &key.v, "agent-1", &tag), Ok(key.k));
    assert_eq!(combine(&key.u, &key.v, "agent-2", &tag), Err(PayloadError::AuthTag));
    let other = SplitKey::generate().expect("rng");
    assert_eq!(combine(&key.u, &other.v, "agent-1", &tag), Err(PayloadError::AuthTag));
    assert_eq!(format!("{key:?}"), "SplitKey { .. }", "key material is never printed");
}

#[test]
fn payloads_decrypt_only_with_k_and_unmodified() {
    let key = SplitKey::generate().expect("rng");
    let sealed = encrypt(&key.k, b"zip bytes").expect("encrypts");
    assert_eq!(sealed.len(), 12 + 9 + 16);
    assert_eq!(decrypt(&key.k, &sealed).expect("decrypts"), b"zip bytes");
    assert!(decrypt(&key.u, &sealed).is_err());
    for i in 0..sealed.len() {
        let mut flipped = sealed.clone();
        flipped[i] ^= 0x01;
        assert!(decrypt(&key.k, &flipped).is_err(), "byte {i}");
    }
    assert!(decrypt(&key.k, &sealed[..20]).is_err());
}

fn identity() -> (Vec<u8>, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
    let point = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(&point);
    (pkcs8.as_ref().to_vec(), spki)
}

#[test]
fn halves_are_sealed_only_to_uncompressed_p256_keys() {
    let (_, spki) = identity();
    assert!(seal_half(&[1; KEY_LEN], &spki).is_ok());
    let p384 = crate::key::ec_spki(crate::oid::P384, &[4; 97]);
    let rsa = crate::key::rsa_spki(&[0xc5; 256], &[1, 0, 1]);
    let compressed = crate::key::ec_spki(crate::oid::P256, &spki[spki.len() - 65..][..33]);
    for key in [&p384[..], &rsa, &compressed, &spki[..spki.len() - 1], b"not DER"] {
        let err = seal_half(&[1; KEY_LEN], key).expect_err("not a P-256 identity key");
        assert!(err.to_string().contains("not an uncompressed P-256 public key"), "{err}");
    }
}

#[test]
fn a_sealed_half_opens_only_with_the_identity_key() {
    let (private, public) = identity();
    let (other_private, _) = identity();
    let half = [7u8; KEY_LEN];
    let sealed = seal_half(&half, &public).expect("seals");
    assert_eq!(sealed.ephemeral_public_key.len(), 65);
    assert_eq!(open_half(&sealed, &private).expect("opens"), half);
    assert!(open_half(&sealed, &other_private).is_err());
    let mut tampered = sealed.clone();
    tampered.ciphertext[0] ^= 1;
    assert!(open_half(&tampered, &private).is_err());
    assert!(seal_half(&half, b"not a key").is_err());
}

#[test]
fn archives_round_trip_with_modes() {
    let files = vec![
        file("autorun.sh", b"#!/bin/sh\ntouch marker\n", true),
        file("conf/app.toml", b"x = 1\n", false),
    ];
    let zip = pack(&files).expect("packs");
    assert_eq!(unpack(&zip, &Limits::default()).expect("unpacks"), files);
}

#[test]
fn the_upstream_payload_zip_unpacks() {
    let zip = std::fs::read(format!("{FIXTURES}/payload.zip")).expect("fixture");
    let files = unpack(&zip, &Limits::default()).expect("unpacks");
    assert!(files.iter().any(|f| f.path == "autorun.sh"), "{files:?}");
}

fn raw_zip(entries: &[(&str, &[u8], Option<u32>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data, mode) in entries {
        let mut opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        if let Some(m) = mode {
            opts = opts.unix_permissions(*m);
        }
        w.start_file(*name, opts).expect("entry");
        w.write_all(data).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

#[test]
fn escapes_links_and_oversize_entries_are_refused_by_name() {
    let limits = Limits::default();
    for (name, problem) in [
        ("../evil", "`..`"),
        ("a/../../evil", "`..`"),
        ("/etc/cron.d/evil", "absolute"),
        ("a\\..\\evil", "backslash"),
    ] {
        let err = unpack(&raw_zip(&[(name, b"x", None)]), &limits).expect_err(name);
        let text = err.to_string();
        assert!(text.contains(&format!("{name:?}")) && text.contains(problem), "{name}: {text}");
    }

    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.add_symlink("link", "/etc/passwd", SimpleFileOptions::default()).expect("symlink");
    let zip = w.finish().expect("finish").into_inner();
    let err = unpack(&zip, &limits).expect_err("symlink");
    assert!(err.to_string().contains("link"), "{err}");

    // A small archive that inflates past the per-file limit (a zip bomb in miniature).
    let small = Limits { max_entries: 10, max_file_size: 1024, max_total_size: 4096 };
    let big = vec![0u8; 100_000];
    let zip = raw_zip(&[("big", &big, None)]);
    assert!(zip.len() < 2000, "deflated: {}", zip.len());
    let err = unpack(&zip, &small).expect_err("too big");
    assert!(err.to_string().contains("1024 bytes per file"), "{err}");
    // Many files each under the limit, together over the total.
    let chunk = vec![1u8; 1000];
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, &[u8], Option<u32>)> =
        names.iter().map(|n| (n.as_str(), chunk.as_slice(), None)).collect();
    let err = unpack(&raw_zip(&entries), &small).expect_err("total");
    assert!(err.to_string().contains("in all"), "{err}");
    let err = unpack(&raw_zip(&entries), &Limits { max_entries: 3, ..small }).expect_err("count");
    assert!(err.to_string().contains("entries"), "{err}");
    assert!(unpack(b"not a zip", &limits).is_err());
    let clash =
        raw_zip(&[("a", b"file", None), ("a-x", b"x", None), ("a/b", b"inside a file", None)]);
    let err = unpack(&clash, &limits).expect_err("file and directory");
    assert!(err.to_string().contains("which is a file"), "{err}");
}

proptest! {
    #[test]
    fn unpack_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = unpack(&bytes, &Limits::default());
    }

    #[test]
    fn accepted_paths_stay_inside(name in "[a-z./\\\\]{1,20}") {
        if let Ok(p) = checked_path_for_tests(&name) {
            prop_assert!(!p.starts_with('/'));
            prop_assert!(!p.split('/').any(|c| c == ".." || c.is_empty()));
        }
    }
}

fn checked_path_for_tests(name: &str) -> Result<String, PayloadError> {
    match unpack(&raw_zip(&[(name, b"x", None)]), &Limits::default()) {
        Ok(mut files) if files.len() == 1 => Ok(files.remove(0).path),
        Ok(_) => Err(PayloadError::Archive("no file".into())),
        Err(e) => Err(e),
    }
}
