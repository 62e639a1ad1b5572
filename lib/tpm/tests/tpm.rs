//! kl-tpm against a private swtpm per test, each manufactured on its own (kl-testkit's
//! `swtpm`) with swtpm_setup's dictionary-attack settings kept, so a recovery path that costs
//! failed authorisations shows up here as it would on a real TPM.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use kl_core::alg::HashAlg;
use kl_testkit::swtpm::Swtpm;
use kl_tpm::{KeyAlg, Quote, Tpm, TpmError};
use ring::signature;
use tss_esapi::Context;
use tss_esapi::handles::TpmHandle;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{AttestInfo, Digest, Name, Public};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};

const QUOTED_PCRS: [u32; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16];

/// A second, plain context on the same swtpm, for what the test plays itself (the registrar's
/// MakeCredential, reading the persistent EK).
fn side_context(tpm: &Swtpm) -> Context {
    let conf: TctiNameConf = tpm.tcti().parse().expect("tcti");
    Context::new(conf).expect("side context on swtpm")
}

fn rsa_modulus(public: &[u8]) -> Vec<u8> {
    match Public::unmarshall(public).expect("TPMT_PUBLIC") {
        Public::Rsa { unique, .. } => unique.value().to_vec(),
        other => panic!("not an RSA key: {other:?}"),
    }
}

/// Uncompressed SEC1 point of an ECC TPMT_PUBLIC.
fn ecc_point(public: &[u8]) -> Vec<u8> {
    match Public::unmarshall(public).expect("TPMT_PUBLIC") {
        Public::Ecc { unique, .. } => {
            let mut point = vec![0x04];
            point.extend(pad32(unique.x().value()));
            point.extend(pad32(unique.y().value()));
            point
        }
        other => panic!("not an ECC key: {other:?}"),
    }
}

fn pad32(v: &[u8]) -> Vec<u8> {
    let mut out = vec![0; 32usize.saturating_sub(v.len())];
    out.extend_from_slice(v);
    out
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

/// Checks the quote as a verifier would: signature over the attest bytes with the AK, the
/// nonce, and the pcrDigest recomputed from the returned values.
fn verify_quote(quote: &Quote, ak_public: &[u8], nonce: &[u8]) {
    let sig = &quote.signature;
    match u16_at(sig, 0) {
        0x0014 => {
            assert_eq!(u16_at(sig, 2), 0x000b, "RSASSA with SHA-256");
            let len = u16_at(sig, 4);
            let key =
                signature::RsaPublicKeyComponents { n: rsa_modulus(ak_public), e: vec![1, 0, 1] };
            key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, &quote.attest, &sig[6..6 + len])
                .expect("RSA quote signature verifies");
        }
        0x0018 => {
            let r_len = u16_at(sig, 4);
            let r = &sig[6..6 + r_len];
            let s_len = u16_at(sig, 6 + r_len);
            let s = &sig[8 + r_len..8 + r_len + s_len];
            let fixed = [pad32(r), pad32(s)].concat();
            signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                ecc_point(ak_public),
            )
            .verify(&quote.attest, &fixed)
            .expect("ECDSA quote signature verifies");
        }
        other => panic!("unexpected signature algorithm {other:#x}"),
    }

    let attest = tss_esapi::structures::Attest::unmarshall(&quote.attest).expect("TPMS_ATTEST");
    assert_eq!(attest.extra_data().value(), nonce);
    let AttestInfo::Quote { info } = attest.attested() else {
        panic!("not a quote");
    };
    let concatenated: Vec<u8> =
        quote.pcr_values.iter().flat_map(|v| v.value.as_bytes().to_vec()).collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, &concatenated);
    assert_eq!(info.pcr_digest().value(), digest.as_ref(), "pcrDigest");
    assert_eq!(attest.clock_info().reset_count(), quote.clock_info.reset_count);
}

fn open_with_ak(tpm: &Swtpm, alg: KeyAlg, dir: &std::path::Path) -> (Tpm, kl_tpm::AkInfo) {
    let t = Tpm::open(&tpm.tcti(), alg).expect("open TPM");
    let ak = t.load_or_create_ak(dir, alg).expect("AK");
    (t, ak)
}

#[test]
fn ek_is_the_manufactured_one_and_its_certificate_matches() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let tpm = Tpm::open(&sw.tcti(), KeyAlg::Rsa2048).expect("open");
    assert_eq!(tpm.ek().alg, KeyAlg::Rsa2048);

    let mut side = side_context(&sw);
    let persistent = TpmHandle::try_from(0x8101_0001u32).expect("handle");
    let object =
        side.execute_without_session(|c| c.tr_from_tpm_public(persistent)).expect("persistent EK");
    let (public, name, _) = side.read_public(object.into()).expect("read persistent EK");
    assert_eq!(tpm.ek().public, public.marshall().expect("marshal"));
    assert_eq!(tpm.ek().name, name.value());

    let cert = tpm.ek_certificate().expect("read cert").expect("a cert");
    assert_eq!(cert, sw.ek_certificate().expect("cert file"));
    let modulus = rsa_modulus(&tpm.ek().public);
    assert_eq!(modulus.len(), 256);
    assert!(
        cert.windows(modulus.len()).any(|w| w == modulus.as_slice()),
        "the certificate carries the EK's modulus"
    );
    assert!(tpm.ek_intermediate_certificates().expect("chain").is_empty());
}

/// Stores `data` in a new NV index with tpm2-tools, as a vendor would at manufacture.
fn define_nv(sw: &Swtpm, index: u32, attributes: &str, data: &[u8]) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(file.path(), data).expect("write NV data");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", sw.tcti())
            .output()
            .expect("run tpm2-tools");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let index = format!("{index:#x}");
    let size = data.len().to_string();
    run(&["tpm2_nvdefine", &index, "-C", "o", "-s", &size, "-a", attributes]);
    let path = file.path().to_str().expect("utf-8 path");
    run(&["tpm2_nvwrite", &index, "-C", "o", "-i", path]);
}

#[test]
fn intermediate_certificates_are_read_from_every_index_in_the_range() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let cert = sw.ek_certificate().expect("cert");
    let small = vec![0x30, 0x03, 0x02, 0x01, 0x07];
    // Owner-readable only, with padding after the certificate.
    let padded = [cert.clone(), vec![0xff; 8]].concat();
    define_nv(&sw, 0x01c0_0100, "ownerread|ownerwrite|ppwrite", &padded);
    // Readable with its own (empty) auth, holding two certificates back to back.
    let two = [small.clone(), small.clone()].concat();
    define_nv(&sw, 0x01c0_01ff, "authread|ownerwrite|ownerread", &two);
    // Outside the range: ignored.
    define_nv(&sw, 0x01c0_0200, "authread|ownerwrite|ownerread", &small);

    let tpm = Tpm::open(&sw.tcti(), KeyAlg::Rsa2048).expect("open");
    let chain = tpm.ek_intermediate_certificates().expect("chain");
    assert_eq!(chain, vec![cert, small.clone(), small]);
}

#[test]
fn ak_is_persisted_and_reloads_with_the_same_name() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ak_dir = dir.path().join("agent");
    let (tpm, first) = open_with_ak(&sw, KeyAlg::Rsa2048, &ak_dir);
    assert!(first.created);
    for file in ["ak.pub", "ak.priv"] {
        let mode = fs::metadata(ak_dir.join(file)).expect(file).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let expected_name = [
        &[0x00, 0x0b][..],
        ring::digest::digest(&ring::digest::SHA256, &first.key.public).as_ref(),
    ]
    .concat();
    assert_eq!(first.key.name, expected_name);
    assert_eq!(tpm.ak().expect("ak"), first.key);
    drop(tpm);

    let (_tpm, again) = open_with_ak(&sw, KeyAlg::Rsa2048, &ak_dir);
    assert!(!again.created);
    assert_eq!(again.key, first.key);

    let other = Tpm::open(&sw.tcti(), KeyAlg::Rsa2048).expect("open");
    let err = other.load_or_create_ak(&ak_dir, KeyAlg::EccP256).expect_err("wrong alg");
    assert!(matches!(err, TpmError::AkAlgorithm { .. }), "{err}");
}

#[test]
fn quote_verifies_and_covers_extended_pcrs() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (tpm, ak) = open_with_ak(&sw, KeyAlg::Rsa2048, dir.path());

    let measurement = HashAlg::Sha256.digest(b"boot_aggregate");
    tpm.pcr_extend(HashAlg::Sha256, 10, measurement.as_bytes()).expect("extend");
    let mut expected = HashAlg::Sha256.zero();
    expected.extend(measurement.as_bytes());

    let nonce = b"0123456789abcdef0123";
    let quote = tpm.quote(nonce, HashAlg::Sha256, &QUOTED_PCRS).expect("quote");
    verify_quote(&quote, &ak.key.public, nonce);
    let indices: Vec<u32> = quote.pcr_values.iter().map(|v| v.index).collect();
    assert_eq!(indices, QUOTED_PCRS);
    let pcr10 = quote.pcr_values.iter().find(|v| v.index == 10).expect("PCR 10");
    assert_eq!(pcr10.value, expected);
    assert_eq!(tpm.pcr_read(HashAlg::Sha256, &[16, 10]).expect("read")[0].value, expected);

    // The SHA-1 bank works the same way; its pcrDigest is still SHA-256 (the AK's hash).
    let sha1 = tpm.quote(&[7; 64], HashAlg::Sha1, &[0, 10]).expect("sha1 quote");
    verify_quote(&sha1, &ak.key.public, &[7; 64]);

    let err = tpm.quote(&[0; 65], HashAlg::Sha256, &[0]).expect_err("long nonce");
    assert!(matches!(err, TpmError::NonceTooLong { len: 65 }), "{err}");
    let err = tpm.pcr_extend(HashAlg::Sha256, 10, &[0; 20]).expect_err("short digest");
    assert!(err.to_string().contains("20 bytes"), "{err}");
}

/// MakeCredential as the registrar would, done on the TPM itself.
fn make_credential(
    sw: &Swtpm,
    ek_public: &[u8],
    ak_name: &[u8],
    secret: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let mut side = side_context(sw);
    let ek = Public::unmarshall(ek_public).expect("EK public");
    let handle = side.load_external_public(ek, Hierarchy::Owner).expect("load EK public");
    let made = side.execute_without_session(|c| {
        c.make_credential(
            handle,
            Digest::try_from(secret.to_vec()).expect("secret"),
            Name::try_from(ak_name.to_vec()).expect("name"),
        )
    });
    side.flush_context(handle.into()).expect("flush external EK");
    let (blob, encrypted) = made.expect("make credential");
    (blob.value().to_vec(), encrypted.value().to_vec())
}

#[test]
fn activate_credential_recovers_the_secret_and_frees_its_session() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (tpm, ak) = open_with_ak(&sw, KeyAlg::Rsa2048, dir.path());
    // More activations than the TPM has session slots: each must flush its policy session.
    for round in 0..4u8 {
        let secret = [round; 32];
        let (blob, encrypted) = make_credential(&sw, &tpm.ek().public, &ak.key.name, &secret);
        assert_eq!(tpm.activate_credential(&blob, &encrypted).expect("activate"), secret);
    }
    // A credential made for another key name fails the TPM's integrity check.
    let mut wrong_name = ak.key.name.clone();
    wrong_name[5] ^= 1;
    let (blob, encrypted) = make_credential(&sw, &tpm.ek().public, &wrong_name, &[1; 32]);
    let err = tpm.activate_credential(&blob, &encrypted).expect_err("wrong name");
    assert!(err.to_string().contains("0x1df"), "{err}");
    let (blob, encrypted) = make_credential(&sw, &tpm.ek().public, &ak.key.name, &[2; 32]);
    assert_eq!(tpm.activate_credential(&blob, &encrypted).expect("activate"), [2; 32]);
}

#[test]
fn a_tpm_restart_is_recovered_transparently() {
    let Some(mut sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (tpm, ak) = open_with_ak(&sw, KeyAlg::Rsa2048, dir.path());
    let first = tpm.quote(b"first", HashAlg::Sha256, &QUOTED_PCRS).expect("quote");

    sw.restart_orderly().expect("orderly restart");
    let orderly = tpm.quote(b"orderly", HashAlg::Sha256, &[0]).expect("quote after shutdown");
    assert!(orderly.clock_info.reset_count > first.clock_info.reset_count);
    assert!(orderly.clock_info.safe, "an orderly shutdown keeps the clock safe");

    sw.restart_unclean().expect("unclean restart");
    let after = tpm.quote(b"after", HashAlg::Sha256, &QUOTED_PCRS).expect("quote after crash");
    verify_quote(&after, &ak.key.public, b"after");
    assert!(after.clock_info.reset_count > orderly.clock_info.reset_count);
    assert!(!after.clock_info.safe, "an unclean stop may have lost clock time");
    assert_eq!(tpm.reconnect_count(), 2);
    assert_eq!(tpm.ak().expect("ak").name, ak.key.name);
}

#[test]
fn bad_tcti_strings_and_absent_tpms_are_named() {
    let err = Tpm::open("swtpm:host=127.0.0.1,port=23x1", KeyAlg::Rsa2048).expect_err("bad");
    assert!(matches!(err, TpmError::InvalidTcti { .. }), "{err}");
    assert!(err.to_string().contains("port=23x1"), "{err}");

    let err = Tpm::open("device:/dev/no-such-tpm", KeyAlg::Rsa2048).expect_err("no device");
    assert!(matches!(err, TpmError::NoDevice { .. }), "{err}");
    assert!(err.to_string().contains("/dev/no-such-tpm"), "{err}");

    // A port nothing listens on: bind it, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let err = Tpm::open(&tcti, KeyAlg::Rsa2048).expect_err("closed port");
    assert!(matches!(err, TpmError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&tcti), "{err}");
}

#[test]
fn ecc_ek_and_ecc_ak_work_without_a_certificate() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (tpm, ak) = open_with_ak(&sw, KeyAlg::EccP256, dir.path());
    assert_eq!(tpm.ek().alg, KeyAlg::EccP256);
    assert_eq!(ecc_point(&tpm.ek().public).len(), 65);
    assert_eq!(tpm.ek_certificate().expect("read cert"), None);

    let quote = tpm.quote(b"ecc nonce", HashAlg::Sha256, &QUOTED_PCRS).expect("quote");
    verify_quote(&quote, &ak.key.public, b"ecc nonce");

    let (blob, encrypted) = make_credential(&sw, &tpm.ek().public, &ak.key.name, &[9; 16]);
    assert_eq!(tpm.activate_credential(&blob, &encrypted).expect("activate"), [9; 16]);
}

#[test]
fn operations_before_an_ak_exists_say_so() {
    let Some(sw) = Swtpm::start_blank().expect("swtpm") else { return };
    let tpm = Tpm::open(&sw.tcti(), KeyAlg::Rsa2048).expect("open");
    // A self-manufactured swtpm has no EK certificate.
    assert_eq!(tpm.ek_certificate().expect("read"), None);
    let err = tpm.quote(b"n", HashAlg::Sha256, &[0]).expect_err("no AK");
    assert!(matches!(err, TpmError::NoAk), "{err}");
    // All four banks are active on a self-manufactured swtpm.
    let values = tpm.pcr_read(HashAlg::Sha384, &[0, 23]).expect("sha384 bank");
    assert_eq!(values[0].value, HashAlg::Sha384.zero());
}

#[test]
fn objects_and_sessions_left_by_a_crashed_client_are_flushed_at_open() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // A client that fills every object and session slot and goes away without cleaning up
    // (its context is kept alive here, as a crashed process's handles stay in the TPM).
    let mut crashed = side_context(&sw);
    let ek = {
        let probe = Tpm::open(&sw.tcti(), KeyAlg::Rsa2048).expect("open");
        Public::unmarshall(&probe.ek().public).expect("EK public")
    };
    for _ in 0..3 {
        crashed.load_external_public(ek.clone(), Hierarchy::Owner).expect("fill object slot");
        crashed
            .start_auth_session(
                None,
                None,
                None,
                tss_esapi::constants::SessionType::Hmac,
                tss_esapi::structures::SymmetricDefinition::AES_128_CFB,
                tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256,
            )
            .expect("fill session slot");
    }
    let (tpm, ak) = open_with_ak(&sw, KeyAlg::Rsa2048, dir.path());
    let (blob, encrypted) = make_credential(&sw, &tpm.ek().public, &ak.key.name, &[5; 32]);
    assert_eq!(tpm.activate_credential(&blob, &encrypted).expect("activate"), [5; 32]);
}

#[test]
fn tpm_memory_exhaustion_is_reported_as_such() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let tpm = Tpm::open(&sw.tcti(), KeyAlg::Rsa2048).expect("open");
    // Another client fills the two object slots the EK leaves free.
    let mut side = side_context(&sw);
    let ek = Public::unmarshall(&tpm.ek().public).expect("EK public");
    for _ in 0..2 {
        side.load_external_public(ek.clone(), Hierarchy::Owner).expect("load external");
    }
    let err = tpm.load_or_create_ak(dir.path(), KeyAlg::EccP256).expect_err("no slot");
    assert!(matches!(err, TpmError::OutOfMemory { .. }), "{err}");
    assert!(err.to_string().contains("transient object"), "{err}");
    drop(side);
    tpm.load_or_create_ak(dir.path(), KeyAlg::EccP256).expect("AK once slots are free");
}

#[test]
fn dictionary_attack_lockout_is_reported_with_the_remedy() {
    let Some(mut sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    // One unclean stop after using the DA-protected EK and AK is enough to lock out.
    let status = std::process::Command::new("tpm2_dictionarylockout")
        .args(["-s", "-n", "1", "-t", "1000", "-l", "1000"])
        .env("TPM2TOOLS_TCTI", sw.tcti())
        .status()
        .expect("run tpm2_dictionarylockout");
    assert!(status.success(), "tpm2_dictionarylockout: {status}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (tpm, _) = open_with_ak(&sw, KeyAlg::EccP256, dir.path());
    tpm.quote(b"n", HashAlg::Sha256, &[0]).expect("quote");
    sw.restart_unclean().expect("unclean restart");
    let err = tpm.quote(b"n", HashAlg::Sha256, &[0]).expect_err("locked out");
    assert!(matches!(err, TpmError::Lockout { .. }), "{err}");
    assert!(err.to_string().contains("tpm2_dictionarylockout --clear-lockout"), "{err}");
}

#[test]
fn one_tpm_serves_many_threads() {
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (tpm, ak) = open_with_ak(&sw, KeyAlg::EccP256, dir.path());
    let tpm = std::sync::Arc::new(tpm);
    let workers: Vec<_> = (0..4u8)
        .map(|i| {
            let tpm = tpm.clone();
            std::thread::spawn(move || {
                (0..3u8)
                    .map(|j| {
                        let digest = HashAlg::Sha256.digest(&[i, j]);
                        tpm.pcr_extend(HashAlg::Sha256, 16, digest.as_bytes()).expect("extend");
                        let nonce = [i, j];
                        (nonce, tpm.quote(&nonce, HashAlg::Sha256, &[10, 16]).expect("quote"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for worker in workers {
        for (nonce, quote) in worker.join().expect("worker") {
            verify_quote(&quote, &ak.key.public, &nonce);
        }
    }
}

#[test]
fn a_bank_the_tpm_has_not_allocated_is_an_error_not_a_hang() {
    // The manufactured swtpm allocates sha1 and sha256 only.
    let Some(sw) = Swtpm::manufacture_with_lockout().expect("swtpm") else { return };
    let tpm = Tpm::open(&sw.tcti(), KeyAlg::Rsa2048).expect("open");
    // On a thread, so that a regression (a read that never ends) fails instead of hanging.
    let tpm = std::sync::Arc::new(tpm);
    let (done, result) = std::sync::mpsc::channel();
    let reader = tpm.clone();
    std::thread::spawn(move || {
        let _ = done.send(reader.pcr_read(HashAlg::Sha384, &[0, 10]));
    });
    let read = result.recv_timeout(std::time::Duration::from_secs(30)).expect("the read ends");
    let err = read.expect_err("sha384 is not allocated");
    assert!(matches!(err, TpmError::PcrMissing { index: 0, bank: HashAlg::Sha384 }), "{err}");
    assert!(err.to_string().contains("is the bank active?"), "{err}");
    let values = tpm.pcr_read(HashAlg::Sha256, &[0]).expect("the allocated bank still reads");
    assert_eq!(values.len(), 1);
}
