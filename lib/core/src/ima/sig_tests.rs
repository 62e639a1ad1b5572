//! Signed (`ima-sig`) and keyring (`ima-buf`) entries, built and signed in the tests with the
//! fixture keys or freshly generated ones.

use k256::ecdsa::signature::hazmat::PrehashSigner;
use ring::rand::SystemRandom;
use ring::signature::{self as rs, KeyPair};

use super::sig::{SignatureError, SignatureHeader};
use super::tests::{MapRules, make_line};
use super::*;
use crate::alg::HashAlg;
use crate::key::KeyError;
use crate::oid::{
    EC_PUBLIC_KEY as OID_EC_PUBLIC_KEY, P256 as OID_P256, P384 as OID_P384,
    SECP256K1 as OID_SECP256K1,
};
use crate::pem;
use crate::verdict::rule;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keylime");

pub(super) fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub(super) fn pem_der(name: &str, label: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(name)).expect("PEM text");
    let blocks = pem::blocks(&text).expect("PEM");
    blocks.iter().find(|b| b.label == label).expect("PEM block").decode().expect("base64")
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

fn ec_spki(curve: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = tlv(0x30, &[tlv(0x06, OID_EC_PUBLIC_KEY), tlv(0x06, curve)].concat());
    let bits = tlv(0x03, &[&[0u8][..], point].concat());
    tlv(0x30, &[alg, bits].concat())
}

/// A `signature_v2_hdr` field.
pub(super) fn sig_field(hash_algo: u8, keyid: u32, sig: &[u8]) -> Vec<u8> {
    let mut out = vec![EVM_IMA_XATTR_DIGSIG_TYPE, 2, hash_algo];
    out.extend_from_slice(&keyid.to_be_bytes());
    out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    out.extend_from_slice(sig);
    out
}

const EVM_IMA_XATTR_DIGSIG_TYPE: u8 = sig::EVM_IMA_XATTR_DIGSIG;
pub(super) const HASH_ALGO_SHA256: u8 = 4;
const HASH_ALGO_SHA384: u8 = 5;
const HASH_ALGO_SHA512: u8 = 6;

/// Signs `content` with the fixture RSA key (PKCS#1 v1.5); the signature is over its digest.
pub(super) fn rsa_sign(
    key_pem: &str,
    alg: &'static dyn rs::RsaEncoding,
    content: &[u8],
) -> Vec<u8> {
    let key = rs::RsaKeyPair::from_der(&pem_der(key_pem, "RSA PRIVATE KEY")).expect("RSA key");
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(alg, &SystemRandom::new(), content, &mut sig).expect("signs");
    sig
}

fn secp256k1_key() -> k256::ecdsa::SigningKey {
    let der = pem_der("ima/keys/secp256k1.pem", "EC PRIVATE KEY");
    // ECPrivateKey: SEQUENCE { INTEGER 1, OCTET STRING (32) privateKey, ... }
    k256::ecdsa::SigningKey::from_slice(&der[7..39]).expect("scalar")
}

fn generated_ec(alg: &'static rs::EcdsaSigningAlgorithm) -> rs::EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = rs::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generates");
    rs::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("loads")
}

#[test]
fn key_ids_match_openssl() {
    // Expected values from `openssl rsa -RSAPublicKey_out -outform DER | sha1sum`, the
    // certificate's SubjectKeyIdentifier, and the SHA-1 of the uncompressed secp256k1 point.
    let mut keys = VerificationKeys::new();
    assert_eq!(keys.add(&fixture("ima/keys/rsa2048pub.pem")), Ok(0xf345_2d23));
    assert_eq!(keys.add(&fixture("revocation/test-cert.pem")), Ok(0xc623_217a));
    assert_eq!(keys.add(&pem_der("revocation/test-cert.pem", "CERTIFICATE")), Ok(0xc623_217a));
    let point = secp256k1_key().verifying_key().to_sec1_point(false);
    assert_eq!(keys.add(&ec_spki(OID_SECP256K1, point.as_bytes())), Ok(0x531f_4025));
    assert_eq!(keys.len(), 4);
    assert_eq!(keys.get(0xc623_217a).len(), 2);
    assert!(keys.get(1).is_empty());
    assert_eq!(keys.add_pem_bundle(&fixture("ima/keys/rsa2048pub.pem")), Ok(vec![0xf345_2d23]));
    assert_eq!(keys.add(b"not a key"), Err(KeyError::Unrecognised));
    let ed25519_spki =
        tlv(0x30, &[tlv(0x30, &tlv(0x06, &[0x2b, 0x65, 0x70])), tlv(0x03, &[0; 33])].concat());
    assert_eq!(
        keys.add(&ed25519_spki),
        Err(KeyError::Algorithm { offset: 2, oid: "1.3.101.112".into() })
    );
}

#[test]
fn signature_header_errors() {
    assert_eq!(SignatureHeader::parse(&[3, 2, 4]), Err(SignatureError::Short(3)));
    assert_eq!(SignatureHeader::parse(&[1, 2, 4, 0, 0, 0, 1, 0, 0]), Err(SignatureError::Type(1)));
    assert_eq!(
        SignatureHeader::parse(&[3, 1, 4, 0, 0, 0, 1, 0, 0]),
        Err(SignatureError::Version(1))
    );
    assert_eq!(
        SignatureHeader::parse(&[3, 2, 4, 0, 0, 0, 1, 0, 2, 0xaa]),
        Err(SignatureError::Size { declared: 2, actual: 1 })
    );
    let h = SignatureHeader::parse(&[5, 2, 4, 0xde, 0xad, 0xbe, 0xef, 0, 1, 0xaa]).expect("valid");
    assert_eq!(
        (h.sig_type, h.keyid, h.signature, h.hash_algo_name()),
        (5, 0xdead_beef, &[0xaa][..], Some("sha256"))
    );
}

#[test]
fn rsa_and_ecdsa_signatures_verify_over_the_digest() {
    let content = b"#!/bin/sh\necho hello\n";
    let mut keys = VerificationKeys::new();

    // RSA-2048 (fixture), SHA-256 and SHA-512.
    let rsa_id = keys.add(&fixture("ima/keys/rsa2048pub.pem")).expect("key");
    let sha256 = HashAlg::Sha256.digest(content);
    let sha512 = HashAlg::Sha512.digest(content);
    let d256 = FileDigest::new("sha256", sha256.as_bytes()).expect("fits");
    let d512 = FileDigest::new("sha512", sha512.as_bytes()).expect("fits");
    let sig = rsa_sign("ima/keys/rsa2048.pem", &rs::RSA_PKCS1_SHA256, content);
    assert_eq!(keys.verify(&sig_field(HASH_ALGO_SHA256, rsa_id, &sig), &d256), Ok(rsa_id));
    let sig512 = rsa_sign("ima/keys/rsa2048.pem", &rs::RSA_PKCS1_SHA512, content);
    assert_eq!(keys.verify(&sig_field(HASH_ALGO_SHA512, rsa_id, &sig512), &d512), Ok(rsa_id));
    // Wrong digest, algorithm mismatch, unknown key, unknown algorithm id.
    let other =
        FileDigest::new("sha256", HashAlg::Sha256.digest(b"other").as_bytes()).expect("fits");
    assert_eq!(
        keys.verify(&sig_field(HASH_ALGO_SHA256, rsa_id, &sig), &other),
        Err(SignatureError::Invalid(rsa_id))
    );
    assert!(matches!(
        keys.verify(&sig_field(HASH_ALGO_SHA512, rsa_id, &sig), &d256),
        Err(SignatureError::AlgMismatch { sig: "sha512", .. })
    ));
    assert_eq!(
        keys.verify(&sig_field(HASH_ALGO_SHA256, 7, &sig), &d256),
        Err(SignatureError::UnknownKey(7))
    );
    assert_eq!(keys.verify(&sig_field(99, rsa_id, &sig), &d256), Err(SignatureError::HashAlgo(99)));

    // P-256 and P-384, generated.
    for (alg, curve, hash, algo_id) in [
        (&rs::ECDSA_P256_SHA256_ASN1_SIGNING, OID_P256, HashAlg::Sha256, HASH_ALGO_SHA256),
        (&rs::ECDSA_P384_SHA384_ASN1_SIGNING, OID_P384, HashAlg::Sha384, HASH_ALGO_SHA384),
    ] {
        let pair = generated_ec(alg);
        let id = keys.add(&ec_spki(curve, pair.public_key().as_ref())).expect("key");
        let sig = pair.sign(&SystemRandom::new(), content).expect("signs");
        let digest = hash.digest(content);
        let d = FileDigest::new(hash.name(), digest.as_bytes()).expect("fits");
        assert_eq!(keys.verify(&sig_field(algo_id, id, sig.as_ref()), &d), Ok(id), "{hash}");
        let wrong = FileDigest::new(hash.name(), hash.digest(b"other").as_bytes()).expect("fits");
        assert_eq!(
            keys.verify(&sig_field(algo_id, id, sig.as_ref()), &wrong),
            Err(SignatureError::Invalid(id))
        );
    }

    // secp256k1 (fixture key), including a high-S signature as OpenSSL may produce.
    let sk = secp256k1_key();
    let id = keys
        .add(&ec_spki(OID_SECP256K1, sk.verifying_key().to_sec1_point(false).as_bytes()))
        .expect("key");
    let sig: k256::ecdsa::Signature = sk.sign_prehash(sha256.as_bytes()).expect("signs");
    let der = sig.to_der();
    assert_eq!(keys.verify(&sig_field(HASH_ALGO_SHA256, id, der.as_bytes()), &d256), Ok(id));
    let (r, s) = sig.split_scalars();
    let high =
        k256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).expect("high-S");
    assert_eq!(
        keys.verify(&sig_field(HASH_ALGO_SHA256, id, high.to_der().as_bytes()), &d256),
        Ok(id)
    );
    assert_eq!(
        keys.verify(&sig_field(HASH_ALGO_SHA256, id, der.as_bytes()), &other),
        Err(SignatureError::Invalid(id))
    );
}

fn appraise_text(log: &str, rules: &MapRules, keys: &VerificationKeys) -> ImaAppraisal {
    let quoted = replay_log(log.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0];
    appraise_log(log.as_bytes(), rules, keys, &ImaState::default(), &ImaOptions::default(), &quoted)
        .expect("appraises")
}

fn rule_ids(a: &ImaAppraisal) -> Vec<&str> {
    a.verdict.findings.iter().map(|f| f.rule.as_str()).collect()
}

#[test]
fn signed_entries_pass_on_signature_and_fall_back_to_rules() {
    let content = b"signed binary";
    let digest = HashAlg::Sha256.digest(content);
    let mut keys = VerificationKeys::new();
    let id = keys.add(&fixture("ima/keys/rsa2048pub.pem")).expect("key");
    let good = sig_field(
        HASH_ALGO_SHA256,
        id,
        &rsa_sign("ima/keys/rsa2048.pem", &rs::RSA_PKCS1_SHA256, content),
    );
    let bad = sig_field(
        HASH_ALGO_SHA256,
        id,
        &rsa_sign("ima/keys/rsa2048.pem", &rs::RSA_PKCS1_SHA256, b"x"),
    );
    let unknown = sig_field(HASH_ALGO_SHA256, 0x1234_5678, &[1, 2, 3]);
    let line = |sig: &[u8], path: &str| {
        make_line(
            10,
            Template::ImaSig { signature: Blob::Raw(sig) },
            "sha256",
            digest.as_bytes(),
            path,
        )
    };
    let log = [
        line(&good, "/usr/bin/signed tool"),
        line(&bad, "/usr/bin/bad"),
        line(&unknown, "/usr/bin/unknown-key"),
        line(&[], "/usr/bin/unsigned"),
        line(&bad, "/usr/bin/bad-but-allowed"),
        line(&[3, 2], "/usr/bin/short"),
    ]
    .concat();
    let mut rules = MapRules::default();
    rules
        .files
        .entry("/usr/bin/bad-but-allowed".into())
        .or_default()
        .insert(digest.as_bytes().to_vec());
    let a = appraise_text(&log, &rules, &keys);
    let summary: Vec<_> = a
        .verdict
        .findings
        .iter()
        .map(|f| (f.rule.as_str(), f.line.unwrap_or(0), f.path.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        summary,
        [
            (rule::IMA_SIGNATURE, 2, "/usr/bin/bad".to_owned()),
            (rule::IMA_NOT_IN_POLICY, 3, "/usr/bin/unknown-key".to_owned()),
            (rule::IMA_NOT_IN_POLICY, 4, "/usr/bin/unsigned".to_owned()),
            (rule::IMA_SIGNATURE, 6, "/usr/bin/short".to_owned()),
        ]
    );
    assert!(
        a.verdict.findings[0].message.contains("does not verify with key id f3452d23"),
        "{}",
        a.verdict.findings[0].message
    );
    assert!(
        a.verdict.findings[1].message.contains("unknown key id 12345678"),
        "{}",
        a.verdict.findings[1].message
    );
    assert!(
        a.verdict.findings[3].message.contains("shorter than the 9-byte"),
        "{}",
        a.verdict.findings[3].message
    );
    // Without the key, the good signature no longer helps.
    let a = appraise_text(&log, &rules, &VerificationKeys::new());
    assert_eq!(a.verdict.findings[0].line, Some(1));
    assert_eq!(a.verdict.findings[0].rule, rule::IMA_NOT_IN_POLICY);
}

#[test]
fn keys_measured_into_keyrings_are_checked_learned_and_kept() {
    let cert = pem_der("revocation/test-cert.pem", "CERTIFICATE");
    let cert_digest = HashAlg::Sha256.digest(&cert);
    let content = b"tool signed by the keyring key";
    let digest = HashAlg::Sha256.digest(content);
    let sig = sig_field(
        HASH_ALGO_SHA256,
        0xc623_217a,
        &rsa_sign("revocation/test-rsa.pem", &rs::RSA_PKCS1_SHA256, content),
    );
    let key_line = make_line(
        10,
        Template::ImaBuf { buf: Blob::Raw(&cert) },
        "sha256",
        cert_digest.as_bytes(),
        ".ima",
    );
    let sig_line = make_line(
        10,
        Template::ImaSig { signature: Blob::Raw(&sig) },
        "sha256",
        digest.as_bytes(),
        "/opt/tool",
    );
    let log = format!("{key_line}{sig_line}");

    // The measurement exposes the key.
    let entry = AsciiLog::new(key_line.as_bytes()).next().expect("entry").expect("valid");
    let m = entry.keyring_measurement().expect("a key");
    assert_eq!(
        (m.keyring, m.keyid, m.digest.as_bytes()),
        (".ima", 0xc623_217a, cert_digest.as_bytes())
    );
    assert!(matches!(m.key, SignatureKey::Rsa(_)));

    // Allowed keyring: the key verifies the later entry; both pass.
    let mut rules = MapRules::default();
    rules.keyrings.entry(".ima".into()).or_default().insert(cert_digest.as_bytes().to_vec());
    let keys = VerificationKeys::new();
    let a = appraise_text(&log, &rules, &keys);
    assert!(a.verdict.passed(), "{:?}", a.verdict.findings);
    assert_eq!(a.state.learned_keys, [LearnedKey { keyring: ".ima".into(), der: cert.clone() }]);

    // Across rounds: round one is quoted after the key entry only.
    let options = ImaOptions::default();
    let q1 = replay_log(key_line.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let r1 = appraise_log(key_line.as_bytes(), &rules, &keys, &ImaState::default(), &options, &q1)
        .expect("appraises");
    assert_eq!(r1.state.learned_keys.len(), 1);
    let json = serde_json::to_string(&r1.state).expect("serializes");
    let state: ImaState = serde_json::from_str(&json).expect("deserializes");
    let q2 = replay_log(log.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let r2 =
        appraise_log(sig_line.as_bytes(), &rules, &keys, &state, &options, &q2).expect("appraises");
    assert!(r2.verdict.passed(), "{:?}", r2.verdict.findings);
    assert_eq!(r2.state.learned_keys.len(), 1);
    // A key entry the quote does not cover is not kept.
    let r0 = appraise_log(
        log.as_bytes(),
        &rules,
        &keys,
        &ImaState::default(),
        &options,
        &HashAlg::Sha256.zero(),
    )
    .expect("appraises");
    assert_eq!(r0.matched, Some(0));
    assert!(r0.state.learned_keys.is_empty());

    // Keyring digest not allowed: ima.keyring, and the key is not learned.
    let mut denied = MapRules::default();
    denied.keyrings.entry(".ima".into()).or_default().insert(vec![0; 32]);
    let a = appraise_text(&log, &denied, &keys);
    assert_eq!(rule_ids(&a), [rule::IMA_KEYRING, rule::IMA_NOT_IN_POLICY]);
    assert_eq!(
        (a.verdict.findings[0].line, a.verdict.findings[0].path.as_deref()),
        (Some(1), Some(".ima"))
    );
    assert!(a.state.learned_keys.is_empty());

    // Ignored keyring: no finding, nothing learned.
    let ignored = MapRules { ignored_keyrings: vec![".ima".into()], ..MapRules::default() };
    let a = appraise_text(&key_line, &ignored, &keys);
    assert!(a.verdict.passed());
    assert!(a.state.learned_keys.is_empty());
}

#[test]
fn buffers_that_are_not_keys_go_to_check_buf() {
    let cmdline = b"root=/dev/vda1 ro";
    let digest = HashAlg::Sha256.digest(cmdline);
    let log = make_line(
        10,
        Template::ImaBuf { buf: Blob::Raw(cmdline) },
        "sha256",
        digest.as_bytes(),
        "kexec-cmdline",
    );
    let entry = AsciiLog::new(log.as_bytes()).next().expect("entry").expect("valid");
    assert!(entry.keyring_measurement().is_none());
    let a = appraise_text(&log, &MapRules::default(), &VerificationKeys::new());
    assert_eq!(rule_ids(&a), [rule::IMA_BUF]);
    assert_eq!(a.verdict.findings[0].path.as_deref(), Some("kexec-cmdline"));
    let mut rules = MapRules::default();
    rules.bufs.entry("kexec-cmdline".into()).or_default().insert(vec![0; 32]);
    let a = appraise_text(&log, &rules, &VerificationKeys::new());
    assert_eq!(rule_ids(&a), [rule::IMA_BUF]);
    assert!(
        a.verdict.findings[0].message.contains("not allowed for this name"),
        "{}",
        a.verdict.findings[0].message
    );
    rules.bufs.entry("kexec-cmdline".into()).or_default().insert(digest.as_bytes().to_vec());
    assert!(appraise_text(&log, &rules, &VerificationKeys::new()).verdict.passed());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_signatures_never_verify_or_panic(
        sig in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        algo in 0u8..30,
    ) {
        let mut keys = VerificationKeys::new();
        let rsa_id = keys.add(&fixture("ima/keys/rsa2048pub.pem")).expect("key");
        let sk = secp256k1_key();
        let k1_id = keys.add(&ec_spki(OID_SECP256K1, sk.verifying_key().to_sec1_point(false).as_bytes())).expect("key");
        let digest = HashAlg::Sha256.digest(b"content");
        let d = FileDigest::new("sha256", digest.as_bytes()).expect("fits");
        for id in [rsa_id, k1_id] {
            proptest::prop_assert!(keys.verify(&sig_field(algo, id, &sig), &d).is_err());
        }
        proptest::prop_assert!(keys.verify(&sig, &d).is_err());
    }
}

const MULTIKEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ima-multikey");

fn multikey(name: &str) -> Vec<u8> {
    let path = format!("{MULTIKEY}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture log signed by RSA-2048, P-256 and P-384 keys (made with OpenSSL through
/// python-cryptography, see tests/data/ima-multikey/README.md), appraised the way the verifier
/// does: policy loaded from a file, its keys parsed by `RuntimeRules`.
#[test]
fn files_signed_by_several_policy_keys_each_verify_with_their_own() {
    use crate::appraisal::RuntimeRules;
    use crate::policy::{self, LoadOptions};

    for policy_file in ["policy-keylime.json", "policy-native.json"] {
        let (policy, _) = policy::load(&multikey(policy_file), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{policy_file}: {e}"));
        let rules = RuntimeRules::new(policy).expect("keys parse");
        assert_eq!(rules.keys.len(), 3, "{policy_file}");
        // The key ids evmctl would write: SHA-1 of the PKCS#1 key or of the uncompressed point.
        for (id, kind) in [(0x3bcb_125b, "Rsa"), (0x5ffe_aae5, "P256"), (0xd246_458e, "P384")] {
            let got: Vec<_> = rules.keys.get(id).iter().map(|k| format!("{k:?}")).collect();
            assert_eq!(got, [format!("SignatureKey::{kind}")], "{policy_file}: key id {id:08x}");
        }
        let appraise = |log: &[u8]| {
            let quoted = replay_log(log, &[HashAlg::Sha256]).expect("replays").pcrs[0];
            appraise_log(
                log,
                &rules.policy,
                &rules.keys,
                &ImaState::default(),
                &ImaOptions::default(),
                &quoted,
            )
            .expect("appraises")
        };

        // Only boot_aggregate is listed by digest: every other file passes on its signature.
        let good = appraise(&multikey("signed-good"));
        assert_eq!(good.entries, 5);
        assert!(good.verdict.passed(), "{policy_file}: {:?}", good.verdict.findings);

        let bad = appraise(&multikey("signed-bad"));
        let summary: Vec<_> = bad
            .verdict
            .findings
            .iter()
            .map(|f| (f.rule.as_str(), f.line.unwrap_or(0), f.path.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            summary,
            [
                (rule::IMA_SIGNATURE, 6, "/usr/bin/modified"),
                (rule::IMA_NOT_IN_POLICY, 7, "/usr/bin/outsider"),
                (rule::IMA_SIGNATURE, 8, "/usr/bin/wrong-keyid"),
                (rule::IMA_SIGNATURE, 9, "/usr/bin/claims-rsa"),
            ],
            "{policy_file}"
        );
        let messages: Vec<_> = bad.verdict.findings.iter().map(|f| f.message.as_str()).collect();
        for (message, expected) in messages.iter().zip([
            "/usr/bin/modified: signature does not verify with key id 5ffeaae5",
            "(signed by unknown key id 2940f65a)",
            "/usr/bin/wrong-keyid: signature does not verify with key id 5ffeaae5",
            "/usr/bin/claims-rsa: signature does not verify with key id 3bcb125b",
        ]) {
            assert!(message.contains(expected), "{policy_file}: {message}");
        }
    }

    // The key the outsider signature needs is the only thing missing: with it, the outsider
    // file passes and nothing else changes.
    let (policy, _) =
        policy::load(&multikey("policy-native.json"), &LoadOptions::default()).expect("loads");
    let mut rules = RuntimeRules::new(policy).expect("keys parse");
    assert_eq!(rules.keys.add(&multikey("keys/outsider-p256.pub.pem")), Ok(0x2940_f65a));
    let log = multikey("signed-bad");
    let quoted = replay_log(&log, &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let a = appraise_log(
        &log,
        &rules.policy,
        &rules.keys,
        &ImaState::default(),
        &ImaOptions::default(),
        &quoted,
    )
    .expect("appraises");
    let paths: Vec<_> = a.verdict.findings.iter().filter_map(|f| f.path.as_deref()).collect();
    assert_eq!(paths, ["/usr/bin/modified", "/usr/bin/wrong-keyid", "/usr/bin/claims-rsa"]);
}

/// Two keys that share a key id (a 32-bit id collides by chance, or a policy lists a key twice
/// in different encodings): a signature passes when any of them verifies it, in either order,
/// and fails as `Invalid` (not `UnknownKey`) when none does.
#[test]
fn keys_sharing_a_key_id_are_all_tried() {
    let content = b"signed by one of two keys with the same id";
    let sha256 = HashAlg::Sha256.digest(content);
    let d = FileDigest::new("sha256", sha256.as_bytes()).expect("fits");
    let (rsa_key, rsa_id) =
        SignatureKey::parse(&fixture("ima/keys/rsa2048pub.pem")).expect("RSA key");
    let p256 = generated_ec(&rs::ECDSA_P256_SHA256_ASN1_SIGNING);
    let (ec_key, _) = SignatureKey::from_spki_der(&ec_spki(OID_P256, p256.public_key().as_ref()))
        .expect("EC key");
    let shared = rsa_id;
    let rsa_sig = sig_field(
        HASH_ALGO_SHA256,
        shared,
        &rsa_sign("ima/keys/rsa2048.pem", &rs::RSA_PKCS1_SHA256, content),
    );
    let ec_sig = sig_field(
        HASH_ALGO_SHA256,
        shared,
        p256.sign(&SystemRandom::new(), content).expect("signs").as_ref(),
    );
    let stranger = generated_ec(&rs::ECDSA_P256_SHA256_ASN1_SIGNING);
    let stranger_sig = sig_field(
        HASH_ALGO_SHA256,
        shared,
        stranger.sign(&SystemRandom::new(), content).expect("signs").as_ref(),
    );
    for order in [[&rsa_key, &ec_key], [&ec_key, &rsa_key]] {
        let mut keys = VerificationKeys::new();
        for key in order {
            keys.insert(shared, key.clone());
        }
        assert_eq!(keys.get(shared).len(), 2);
        assert_eq!(keys.verify(&rsa_sig, &d), Ok(shared));
        assert_eq!(keys.verify(&ec_sig, &d), Ok(shared));
        assert_eq!(keys.verify(&stranger_sig, &d), Err(SignatureError::Invalid(shared)));
    }
    // Policy keys and keys learned from a keyring are one pool: a collision across the two
    // sets behaves the same.
    let mut policy_keys = VerificationKeys::new();
    policy_keys.insert(shared, rsa_key);
    let mut learned = VerificationKeys::new();
    learned.insert(shared, ec_key);
    assert_eq!(sig::verify_with(&[&policy_keys, &learned], &ec_sig, &d), Ok(shared));
    assert_eq!(sig::verify_with(&[&policy_keys, &learned], &rsa_sig, &d), Ok(shared));
    assert_eq!(
        sig::verify_with(&[&policy_keys, &learned], &stranger_sig, &d),
        Err(SignatureError::Invalid(shared))
    );
}
