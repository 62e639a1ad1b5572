//! Golden tests on Keylime's fixtures, format round trips, detection, and property tests.

use proptest::prelude::*;

use super::*;
use crate::alg::HashAlg;
use crate::key::Curve;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keylime/policy/", $name))
    };
}

const RUNTIME_POLICY: &[u8] = fixture!("runtime-policy-test.json");
const SIGNED: &[u8] = fixture!("runtime-policy-test-signed.json");
const SIGNED_BAD: &[u8] = fixture!("runtime-policy-test-signed-bad.json");
const PUBKEY: &[u8] = fixture!("runtime-policy-pubkey.pub");
const SHORT_ALLOWLIST: &[u8] = fixture!("ima-allowlist-short.txt");

fn key() -> VerificationKey {
    VerificationKey::from_pem(PUBKEY).expect("fixture key")
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

#[test]
fn keylime_runtime_policy_fixture() {
    let p = keylime::parse(RUNTIME_POLICY).expect("parses");
    assert_eq!(p.file_count(), 21);
    assert_eq!(p.log_hash_alg(), HashAlg::Sha1);
    let boot = unhex("4309217e9709def327c3409407f4d52907aeba46ef1b4f46529fd095f2ef9fb2");
    assert_eq!(p.lookup_file("boot_aggregate", &boot), Lookup::Allowed);
    let tr = unhex("e295d64734757d946dbbf294d72edf62a36ab157");
    assert_eq!(p.lookup_file("/boot/grub2/i386-pc/tr.mod", &tr), Lookup::Allowed);
    let Lookup::DigestNotAllowed { allowed } =
        p.lookup_file("/boot/grub2/i386-pc/tr.mod", &[0; 20])
    else {
        panic!("expected a digest mismatch");
    };
    assert_eq!(allowed.to_prefixed_hex(), vec![format!("sha1:{}", hex::encode(&tr))]);
    assert_eq!(p.lookup_file("/usr/bin/bash", &tr), Lookup::UnknownPath);
    let ima_key = unhex("a7d52aaa18c23d2d9bb2abb4308c0eeee67387a42259f4a6b1a42257065f3d5a");
    assert_eq!(p.lookup_keyring(".ima", &ima_key), Lookup::Allowed);
    assert!(p.excludes().is_empty() && p.signing_keys().is_empty());

    let (detected, format) = load(RUNTIME_POLICY, &LoadOptions::default()).expect("loads");
    assert_eq!(format, Format::Keylime);
    assert_eq!(detected, p);
}

#[test]
fn flat_allowlist_fixture_converts_to_the_keylime_policy() {
    // ima-allowlist-short.txt is the allowlist Keylime converted into runtime-policy-test.json.
    let from_list = allowlist::parse_allowlist(SHORT_ALLOWLIST).expect("parses");
    let from_json = keylime::parse(RUNTIME_POLICY).expect("parses");
    assert_eq!(from_list, from_json);
    assert_eq!(from_list.content_digest(), from_json.content_digest());
    let (loaded, format) = load(SHORT_ALLOWLIST, &LoadOptions::default()).expect("loads");
    assert_eq!(format, Format::FlatAllowlist);
    assert_eq!(loaded, from_json);
}

#[test]
fn signed_fixture_verifies() {
    let key = key();
    let opts = LoadOptions { signing_key: Some(&key), require_signature: true };
    let (p, format) = load(SIGNED, &opts).expect("verifies");
    assert_eq!(format, Format::Signed);
    assert_eq!(p, keylime::parse(RUNTIME_POLICY).expect("parses"));
    let envelope = Envelope::parse(SIGNED).expect("parses");
    assert_eq!(envelope.payload_type, "application/vnd.keylime+json");
    assert_eq!(envelope.verify(&key).expect("verifies"), RUNTIME_POLICY);
}

#[test]
fn bad_signature_fixture_fails_clearly() {
    let key = key();
    let opts = LoadOptions { signing_key: Some(&key), require_signature: false };
    let err = load(SIGNED_BAD, &opts).expect_err("must not verify");
    assert!(matches!(err, PolicyError::Dsse(DsseError::BadSignature { .. })), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("no signature of the DSSE envelope verifies"), "{text}");
    assert!(text.contains("ECDSA P-256") && text.contains("8114198d"), "{text}");
}

#[test]
fn signatures_are_required_when_asked_and_need_a_key() {
    let err = load(SIGNED, &LoadOptions::default()).expect_err("no key");
    assert_eq!(err, PolicyError::Dsse(DsseError::NoKey));
    let opts = LoadOptions { signing_key: None, require_signature: true };
    let err = load(RUNTIME_POLICY, &opts).expect_err("unsigned");
    assert_eq!(err, PolicyError::Dsse(DsseError::Unsigned));
}

#[test]
fn openssl_signed_envelope_verifies_with_the_certificate() {
    let cert = include_bytes!("testdata/signer-p384-cert.pem");
    let envelope = include_bytes!("testdata/runtime-policy-test-signed-p384-x509.json");
    let key = VerificationKey::from_pem(cert).expect("certificate key");
    assert_eq!(key.curve(), Curve::P384);
    let opts = LoadOptions { signing_key: Some(&key), require_signature: true };
    let (p, format) = load(envelope, &opts).expect("verifies");
    assert_eq!(format, Format::Signed);
    assert_eq!(p, keylime::parse(RUNTIME_POLICY).expect("parses"));
    // The Keylime fixture key did not sign it.
    let other = self::key();
    let opts = LoadOptions { signing_key: Some(&other), require_signature: true };
    assert!(matches!(
        load(envelope, &opts),
        Err(PolicyError::Dsse(DsseError::BadSignature { .. }))
    ));
}

#[test]
fn certificate_keys_match_openssl() {
    // SHA-256 of the DER SubjectPublicKeyInfo, as `openssl x509 -pubkey | openssl pkey -pubin
    // -outform DER | sha256sum` prints it.
    let cases: [(&[u8], Curve, &str); 3] = [
        (
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/keylime/ek-ca/IFX_ECC_034.pem"
            )),
            Curve::P256,
            "61e3740e9bdc788db0135746f29f0fd54586463f35d2a35131d1603235d6bd82",
        ),
        (
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/keylime/ek-ca/INF_ECC_010RT.pem"
            )),
            Curve::P384,
            "ce5183a19d6fe79a6c1b058cfa700379f67d587a8afd0f51621e82d9f00c5a28",
        ),
        (
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/keylime/ek-ca/STM_ECC_01RT.pem"
            )),
            Curve::P384,
            "b9e2d0d69753c717df3f14464a6cda088f5d1fda07ffce506baa3288419366df",
        ),
    ];
    for (pem, curve, spki_sha256) in cases {
        let key = VerificationKey::from_pem(pem).expect("EC certificate");
        assert_eq!(key.curve(), curve);
        assert_eq!(hex::encode(HashAlg::Sha256.digest(key.spki_der()).as_bytes()), spki_sha256);
    }
    let rsa = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keylime/ek-ca/IFX_RSA_034.pem"
    ));
    let err = VerificationKey::from_pem(rsa).expect_err("RSA is not a policy signing key");
    assert!(err.to_string().contains("unsupported key type"), "{err}");
}

#[test]
fn dsse_with_generated_p384_key_and_native_payload() {
    use ring::rand::SystemRandom;
    use ring::signature::{self as sig, EcdsaKeyPair, KeyPair};
    let rng = SystemRandom::new();
    let policy = from_file_digests([("/usr/bin/true", &[7u8; 48][..])]).expect("builds");
    let payload = policy.to_json().into_bytes();
    let message = dsse::pae("application/json", &payload);
    for (alg, fixed) in [
        (&sig::ECDSA_P384_SHA384_ASN1_SIGNING, false),
        (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, true),
    ] {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
        // SubjectPublicKeyInfo for id-ecPublicKey + secp384r1 around the 97-byte point.
        let mut spki = hex::decode("3076301006072a8648ce3d020106052b81040022036200").expect("hex");
        spki.extend_from_slice(pair.public_key().as_ref());
        let key = VerificationKey::from_spki_der(&spki).expect("P-384");
        assert_eq!(key.curve(), Curve::P384);
        let signature = pair.sign(&rng, &message).expect("signs");
        assert_eq!(signature.as_ref().len() == 96, fixed);
        let envelope = Envelope {
            payload_type: "application/json".into(),
            payload: payload.clone(),
            signatures: vec![dsse::Signature { keyid: None, sig: signature.as_ref().to_vec() }],
        };
        let json = envelope.to_json();
        let opts = LoadOptions { signing_key: Some(&key), require_signature: true };
        let (p, _) = load(json.as_bytes(), &opts).expect("verifies");
        assert_eq!(p, policy);
        // Tampering with the payload breaks the signature.
        let tampered = Envelope { payload: b"{}".to_vec(), ..envelope };
        assert!(tampered.verify(&key).is_err());
    }
}

#[test]
fn flat_allowlists_per_algorithm_match_keylime_policies() {
    // Keylime's fixtures pair each allowlist with a policy of the same digest algorithm.
    let cases: [(&[u8], &[u8], HashAlg); 4] = [
        (fixture!("allowlist-sha1"), fixture!("policy-sha1.json"), HashAlg::Sha1),
        (fixture!("allowlist-sha256"), fixture!("policy-sha256.json"), HashAlg::Sha256),
        (fixture!("allowlist-sha384"), fixture!("policy-sha384.json"), HashAlg::Sha384),
        (fixture!("allowlist-sha512"), fixture!("policy-sha512.json"), HashAlg::Sha512),
    ];
    for (list, json, alg) in cases {
        let from_list = allowlist::parse_allowlist(list).expect("allowlist parses");
        let from_json = keylime::parse(json).expect("policy parses");
        let (path, digests) = from_list.files().next().expect("one entry");
        assert_eq!(path, "data");
        let digest = digests.iter().next().expect("one digest");
        assert_eq!(digest.len(), alg.len());
        let text = std::str::from_utf8(list).expect("utf8");
        assert_eq!(hex::encode(digest), text.split_whitespace().next().expect("digest"));
        let (_, json_digests) = from_json.files().next().expect("one entry");
        assert!(json_digests.iter().all(|d| d.len() == alg.len()), "{alg}");
        // Converting the allowlist gives a Keylime policy that reads back the same.
        let exported = from_list.to_keylime_json();
        assert_eq!(keylime::parse(exported.as_bytes()).expect("re-parses"), from_list);
    }
}

#[test]
fn unknown_digest_algorithms_are_errors_with_positions() {
    let err = allowlist::parse_allowlist(fixture!("allowlist-unknown")).expect_err("16 bytes");
    let text = err.to_string();
    assert!(text.starts_with("allowlist: line 1: digest"), "{text}");
    assert!(text.contains("32 hex digits match no supported hash algorithm"), "{text}");
    let err = keylime::parse(fixture!("policy-unknown.json")).expect_err("31 bytes");
    let PolicyError::Json { line, column, message, .. } = &err else { panic!("{err:?}") };
    assert_eq!((*line, *column), (1, 192), "{err}");
    assert!(message.contains("62 hex digits"), "{err}");
}

#[test]
fn native_round_trip_is_byte_stable() {
    let p = keylime::parse(RUNTIME_POLICY).expect("parses");
    let json = p.to_json();
    let again = native::parse(json.as_bytes()).expect("re-parses");
    assert_eq!(again, p);
    assert_eq!(again.to_json(), json);
    assert_eq!(again.content_digest(), p.content_digest());
    assert_eq!(
        p.content_digest_hex(),
        hex::encode(HashAlg::Sha256.digest(json.as_bytes()).as_bytes())
    );
    let (detected, format) = load(json.as_bytes(), &LoadOptions::default()).expect("loads");
    assert_eq!((detected, format), (p, Format::Native));
}

#[test]
fn canonical_form_golden() {
    let mut b = RuntimePolicyBuilder::new();
    b.add_file("/usr/bin/b", &[0xbb; 20]).expect("len");
    b.add_file("/usr/bin/a b", &[0x11; 32]).expect("len");
    b.add_file("/usr/bin/a b", &[0x22; 20]).expect("len");
    b.add_exclude("^/var/log/").add_exclude("^/tmp/");
    b.add_buffer("kernel_version", &[0x33; 32]).expect("len");
    b.ignore_keyring(".builtin_trusted_keys");
    b.log_hash_alg(HashAlg::Sha256);
    let p = b.build().expect("builds");
    let expected = format!(
        r#"{{
  "version": 1,
  "kind": "runtime",
  "log_hash_alg": "sha256",
  "files": {{
    "/usr/bin/a b": ["sha1:{}", "sha256:{}"],
    "/usr/bin/b": ["sha1:{}"]
  }},
  "excludes": [
    "^/tmp/",
    "^/var/log/"
  ],
  "keyrings": {{}},
  "ignored_keyrings": [
    ".builtin_trusted_keys"
  ],
  "buffers": {{
    "kernel_version": ["sha256:{}"]
  }},
  "signing_keys": []
}}
"#,
        "22".repeat(20),
        "11".repeat(32),
        "bb".repeat(20),
        "33".repeat(32)
    );
    assert_eq!(p.to_json(), expected);
}

#[test]
fn keylime_round_trip_with_everything() {
    let spki = key().spki_der().to_vec();
    let mut b = RuntimePolicyBuilder::new();
    b.add_file("/bin/x", &[1; 32]).expect("len");
    b.add_keyring_digest(".ima", &[2; 32]).expect("len");
    b.add_buffer("dm_table_load", &[3; 20]).expect("len");
    b.add_exclude("^/tmp/").ignore_keyring("*").log_hash_alg(HashAlg::Sha256);
    b.add_signing_key(&spki).expect("key");
    let p = b.build().expect("builds");
    let k = keylime::parse(p.to_keylime_json().as_bytes()).expect("re-parses");
    assert_eq!(k, p);
    let n = native::parse(p.to_json().as_bytes()).expect("re-parses");
    assert_eq!(n, p);
    assert_eq!(n.signing_keys(), &[spki]);
}

#[test]
fn unknown_fields_are_named() {
    let err = native::parse(b"{\"version\": 1, \"kind\": \"runtime\",\n \"filez\": {}}")
        .expect_err("unknown field");
    let text = err.to_string();
    assert!(text.starts_with("policy: line 2, column"), "{text}");
    assert!(text.contains("unknown field `filez`"), "{text}");
    let err = keylime::parse(br#"{"meta": {"version": 1}, "digest": {}}"#).expect_err("typo");
    assert!(err.to_string().contains("unknown field `digest`"), "{err}");
    let err = keylime::parse(br#"{"meta": {"version": 1}, "ima": {"log_hash": "sha1"}}"#)
        .expect_err("typo");
    assert!(err.to_string().contains("unknown field `log_hash`"), "{err}");
}

#[test]
fn malformed_native_inputs_name_the_position() {
    let cases: [(&[u8], &str); 8] = [
        (
            b"{\"version\": 1,\n \"kind\": \"runtime\",\n \"files\": {\"/a\": [\"sha256:00\"]}}",
            "line 3",
        ),
        (
            b"{\"version\": 1, \"kind\": \"runtime\", \"files\": {\"/a\": [\"abab\"]}}",
            "expected <algorithm>:<hex>",
        ),
        (b"{\"kind\": \"runtime\"}", "missing field `version`"),
        (b"{\"version\": 2, \"kind\": \"runtime\"}", "version 2 is not supported"),
        (b"{\"version\": 1, \"kind\": \"mb\"}", "kind \"mb\""),
        (
            b"{\"version\": 1, \"kind\": \"runtime\", \"files\": {\"/a\": [], \"/a\": []}}",
            "\"/a\" appears more than once",
        ),
        (b"{\"version\": 1, \"kind\": \"runtime\", \"version\": 1}", "duplicate field `version`"),
        (b"{\"version\": 1, \"kind\": \"runtime\"", "line 1, column 32"),
    ];
    for (input, needle) in cases {
        let err = native::parse(input).expect_err("malformed");
        assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
    }
    let sha1 = "ab".repeat(20);
    let err = native::parse(
        format!(
            "{{\"version\": 1, \"kind\": \"runtime\", \"files\": {{\"/a\": [\"sha256:{sha1}\"]}}}}"
        )
        .as_bytes(),
    )
    .expect_err("length does not match the algorithm");
    assert!(err.to_string().contains("sha256 digests have 64 hex digits, not 40"), "{err}");
}

#[test]
fn detection_errors_are_clear() {
    let err = load(b"  \n", &LoadOptions::default()).expect_err("empty");
    assert!(err.to_string().contains("empty"), "{err}");
    let err = load(b"# list\nhello world\n", &LoadOptions::default()).expect_err("prose");
    let text = err.to_string();
    assert!(text.contains("not JSON") && text.contains("line 2"), "{text}");
    let err = load(br#"{"name": "x"}"#, &LoadOptions::default()).expect_err("other JSON");
    assert!(err.to_string().contains("[\"name\"]"), "{err}");
    let err = load(b"{\"meta\": {\"version\": 1},\n \"digests\": [", &LoadOptions::default())
        .expect_err("truncated");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn regex_errors_name_the_exclude() {
    let input = br#"{"version": 1, "kind": "runtime", "excludes": ["^/ok/", "(?<=x)y"]}"#;
    let err = native::parse(input).expect_err("look-behind");
    assert!(err.to_string().starts_with("exclude #1 \"(?<=x)y\": "), "{err}");
}

fn arbitrary_policy() -> impl Strategy<Value = RuntimePolicy> {
    let digest = prop_oneof![
        proptest::collection::vec(any::<u8>(), 20),
        proptest::collection::vec(any::<u8>(), 32),
        proptest::collection::vec(any::<u8>(), 48),
        proptest::collection::vec(any::<u8>(), 64),
    ];
    let files = proptest::collection::vec(("\\PC{0,24}", digest), 0..20);
    let excludes = proptest::collection::vec("[a-z/]{1,8}", 0..4);
    let ignored = proptest::collection::vec("\\PC{1,8}", 0..3);
    (files, excludes, ignored).prop_map(|(files, excludes, ignored)| {
        let mut b = RuntimePolicyBuilder::new();
        for (path, d) in &files {
            b.add_file(path, d).expect("valid length");
            b.add_buffer(path, d).expect("valid length");
        }
        for e in &excludes {
            b.add_exclude(e);
        }
        for k in &ignored {
            b.ignore_keyring(k);
        }
        b.build().expect("builds")
    })
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let key = key();
        let _ = load(&bytes, &LoadOptions::default());
        let _ = load(&bytes, &LoadOptions { signing_key: Some(&key), require_signature: true });
        let _ = native::parse(&bytes);
        let _ = keylime::parse(&bytes);
        let _ = Envelope::parse(&bytes);
        let _ = allowlist::parse_allowlist(&bytes);
        let _ = allowlist::parse_exclude_list(&bytes);
        let _ = VerificationKey::from_pem(&bytes);
        let _ = VerificationKey::from_spki_der(&bytes);
        let _ = VerificationKey::from_certificate_der(&bytes);
    }

    #[test]
    fn truncated_inputs_never_panic(cut in 0usize..3100, which in 0usize..4) {
        let input = [RUNTIME_POLICY, SIGNED, SHORT_ALLOWLIST, PUBKEY][which];
        let input = &input[..cut.min(input.len())];
        let key = key();
        let _ = load(input, &LoadOptions { signing_key: Some(&key), require_signature: false });
        let _ = VerificationKey::from_pem(input);
    }

    #[test]
    fn json_like_inputs_never_panic(text in "[{}\\[\\]\":, a-z0-9]{0,80}") {
        let _ = load(text.as_bytes(), &LoadOptions::default());
        let _ = native::parse(text.as_bytes());
        let _ = keylime::parse(text.as_bytes());
    }

    #[test]
    fn formats_round_trip(p in arbitrary_policy()) {
        let native_json = p.to_json();
        let n = native::parse(native_json.as_bytes()).expect("native re-parses");
        prop_assert_eq!(&n, &p);
        prop_assert_eq!(n.to_json(), native_json);
        let k = keylime::parse(p.to_keylime_json().as_bytes()).expect("Keylime re-parses");
        prop_assert_eq!(k.content_digest(), p.content_digest());
        for (path, digests) in p.files() {
            for d in digests.iter() {
                prop_assert_eq!(n.lookup_file(path, d), Lookup::Allowed);
            }
        }
    }
}
