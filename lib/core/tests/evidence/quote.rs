//! Golden tests on a real tpm2-tools quote, synthetic quotes from software keys, and
//! property tests that no input panics or passes by accident.

use kl_core::alg::{Digest, HashAlg};
use kl_core::policy::PcrPolicy;
use kl_core::quote::*;
use kl_core::tpm2::{
    Attest, AttestBody, ClockInfo, EccCurve, EccPublic, ObjectAttributes, PcrDump, PcrSet,
    PcrValues, Public, RsaPublic, Scheme, SigAlg, Signature, SignatureBody, SymmetricDef, TpmKey,
};
use kl_core::verdict::rule;
use kl_testkit::synthetic::{SyntheticAk, pcr_values, quote_attest};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/keylime/quote/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Golden {
    ak: PreparedAk,
    attest: Vec<u8>,
    signature: Vec<u8>,
    dump: Vec<u8>,
    nonce: Vec<u8>,
    algorithms: AcceptedAlgorithms,
}

impl Golden {
    fn load() -> Golden {
        Golden {
            ak: PreparedAk::from_tpm2b_public(&fixture("ak.pub")).expect("fixture AK"),
            attest: fixture("quote.out"),
            signature: fixture("quotesig.out"),
            dump: fixture("quotepcr.out"),
            nonce: fixture("rand.out"),
            algorithms: AcceptedAlgorithms::default(),
        }
    }

    fn verify(&self, attest: &[u8], signature: &[u8], dump: &[u8]) -> QuoteOutcome {
        let dump = PcrDump::parse(dump).expect("fixture PCR dump");
        let request = QuoteRequest {
            qualifying_data: &self.nonce,
            bank: HashAlg::Sha256,
            pcrs: PcrSet::from_indices([15, 16, 22]).expect("in range"),
            algorithms: &self.algorithms,
        };
        let evidence = QuoteEvidence { attest, signature, pcrs: &dump.banks[0] };
        verify_quote(&self.ak, &request, &evidence, None)
    }
}

fn rules(outcome: &QuoteOutcome) -> Vec<&str> {
    outcome.verdict.findings.iter().map(|f| f.rule.as_str()).collect()
}

#[test]
fn golden_quote_verifies() {
    let g = Golden::load();
    let outcome = g.verify(&g.attest, &g.signature, &g.dump);
    assert!(outcome.verdict.passed(), "{:#?}", outcome.verdict);
    let facts = outcome.facts.expect("parsed");
    assert_eq!(facts.signature_alg, SigAlg::RsaSsa);
    assert_eq!(facts.attest.clock_info.clock, 0x176a);
    assert_eq!(outcome.next_clock, Some(facts.attest.clock_info));
    assert!(!outcome.rebooted);
}

#[test]
fn golden_ak_name_and_spki() {
    let g = Golden::load();
    assert_eq!(g.ak.name(), fixture("ak.name").as_slice());
    let pem = String::from_utf8(fixture("akpub.pem")).expect("ascii");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).expect("base64");
    assert_eq!(g.ak.public().spki_der().expect("RSA"), der);
    // The public area marshals back to exactly the registrar's bytes.
    assert_eq!(g.ak.public().to_tpm2b_bytes(), fixture("ak.pub"));
}

#[test]
fn golden_ek_public_area() {
    // An RSA EK: policy-authorised storage key with an AES-128-CFB symmetric definition.
    let ek = Public::parse_tpm2b(&fixture("ek.pub")).expect("EK parses");
    assert_eq!(ek.to_tpm2b_bytes(), fixture("ek.pub"));
    let TpmKey::Rsa(k) = &ek.key else { panic!("RSA EK") };
    assert_eq!(
        k.symmetric,
        SymmetricDef::Cipher {
            algorithm: kl_core::tpm2::alg_id::AES,
            key_bits: 128,
            mode: kl_core::tpm2::alg_id::CFB
        }
    );
    assert_eq!(ek.auth_policy.len(), 32);
    let pem = String::from_utf8(fixture("ekpub.pem")).expect("ascii");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).expect("base64");
    assert_eq!(ek.spki_der().expect("RSA"), der);
    // An EK decrypts and does not sign: it is no AK.
    let err = PreparedAk::new(ek).expect_err("an EK is not an AK");
    assert!(err.to_string().contains("sign not set"), "{err}");
}

#[test]
fn ecc_spki_has_the_standard_p256_prefix() {
    let ak = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let spki = ak.public.spki_der().expect("P-256");
    let prefix = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
    assert_eq!(&spki[..prefix.len()], prefix.as_slice());
    let TpmKey::Ecc(k) = &ak.public.key else { panic!("ecc") };
    assert_eq!(&spki[prefix.len()..], k.uncompressed_point().expect("point").as_slice());
}

#[test]
fn truncated_attest_is_malformed_naming_the_offset() {
    let g = Golden::load();
    let outcome = g.verify(&g.attest[..70], &g.signature, &g.dump);
    assert_eq!(rules(&outcome), [rule::QUOTE_MALFORMED]);
    assert!(outcome.facts.is_none());
    assert_eq!(
        outcome.verdict.findings[0].message,
        "TPMS_ATTEST.clockInfo.clock at byte 64: truncated, needs 8 bytes but 6 remain"
    );
}

#[test]
fn golden_pcr_dump_values() {
    let dump = PcrDump::parse(&fixture("quotepcr.out")).expect("parses");
    let bank = dump.bank(HashAlg::Sha256).expect("sha256 bank");
    assert_eq!(bank.pcrs().to_string(), "15,16,22");
    assert_eq!(bank.get(15), Some(&HashAlg::Sha256.zero()));
    assert_eq!(
        bank.get(16).map(|d| d.to_hex()).as_deref(),
        Some("9dbb22387e019c04da95477333546082ce313152c4a7f8a6e1d5f0c77f4fb6f0")
    );
    assert_eq!(bank.get(22), Some(&Digest::filled(HashAlg::Sha256, 0xff)));
    assert_eq!(dump.to_bytes(), fixture("quotepcr.out"));
}

#[test]
fn every_flipped_attest_byte_fails() {
    let g = Golden::load();
    for i in 0..g.attest.len() {
        let mut attest = g.attest.clone();
        attest[i] ^= 0x01;
        let outcome = g.verify(&attest, &g.signature, &g.dump);
        let r = rules(&outcome);
        assert!(
            r.contains(&rule::QUOTE_SIGNATURE) || r == [rule::QUOTE_MALFORMED],
            "byte {i}: {r:?}"
        );
    }
    // The bytes of extraData (offset 44..64) also break the nonce; of pcrDigest, the digest.
    let mut attest = g.attest.clone();
    attest[50] ^= 0x80;
    assert_eq!(
        rules(&g.verify(&attest, &g.signature, &g.dump)),
        [rule::QUOTE_SIGNATURE, rule::QUOTE_NONCE]
    );
    let last = g.attest.len() - 1;
    let mut attest = g.attest.clone();
    attest[last] ^= 0x80;
    assert_eq!(
        rules(&g.verify(&attest, &g.signature, &g.dump)),
        [rule::QUOTE_SIGNATURE, rule::QUOTE_PCR_DIGEST]
    );
}

#[test]
fn every_flipped_signature_byte_fails() {
    let g = Golden::load();
    for i in 0..g.signature.len() {
        let mut sig = g.signature.clone();
        sig[i] ^= 0x01;
        let outcome = g.verify(&g.attest, &sig, &g.dump);
        assert!(!outcome.verdict.passed(), "byte {i}");
        let r = rules(&outcome);
        // Flipping an algorithm id gives an unknown or wrong algorithm; anything else a bad
        // signature or a structure of the wrong size.
        assert!(
            r.contains(&rule::QUOTE_SIGNATURE) || r == [rule::QUOTE_MALFORMED],
            "byte {i}: {r:?}"
        );
        assert_eq!(outcome.next_clock, None);
    }
    let mut sig = g.signature.clone();
    sig[100] ^= 0x01;
    assert_eq!(rules(&g.verify(&g.attest, &sig, &g.dump)), [rule::QUOTE_SIGNATURE]);
}

#[test]
fn every_flipped_pcr_value_byte_fails() {
    let g = Golden::load();
    let dump = PcrDump::parse(&g.dump).expect("parses");
    let request_pcrs = PcrSet::from_indices([15, 16, 22]).expect("in range");
    for pcr in request_pcrs.iter() {
        for i in 0..32 {
            let mut values = PcrValues::new(HashAlg::Sha256);
            for (p, d) in dump.banks[0].iter() {
                let mut raw = d.as_bytes().to_vec();
                if p == pcr {
                    raw[i] ^= 0x01;
                }
                values
                    .insert(p, Digest::from_bytes(HashAlg::Sha256, &raw).expect("len"))
                    .expect("new");
            }
            let bytes = PcrDump::from_banks(vec![values]).to_bytes();
            let outcome = g.verify(&g.attest, &g.signature, &bytes);
            assert_eq!(rules(&outcome), [rule::QUOTE_PCR_DIGEST], "PCR {pcr} byte {i}");
        }
    }
}

#[test]
fn golden_wrong_nonce_selection_and_replay() {
    let g = Golden::load();
    let dump = PcrDump::parse(&g.dump).expect("parses");
    let pcrs = &dump.banks[0];
    let algorithms = AcceptedAlgorithms::default();
    let evidence = QuoteEvidence { attest: &g.attest, signature: &g.signature, pcrs };
    let request = QuoteRequest {
        qualifying_data: b"another nonce",
        bank: HashAlg::Sha256,
        pcrs: PcrSet::from_indices([15, 16]).expect("in range"),
        algorithms: &algorithms,
    };
    let outcome = verify_quote(&g.ak, &request, &evidence, None);
    assert_eq!(rules(&outcome), [rule::QUOTE_NONCE, rule::QUOTE_SELECTION]);
    assert!(outcome.verdict.findings[1].message.contains("extra [22]"));

    let request = QuoteRequest {
        qualifying_data: &g.nonce,
        pcrs: PcrSet::from_indices([15, 16, 22]).expect("ok"),
        ..request
    };
    let first = verify_quote(&g.ak, &request, &evidence, None);
    let again = verify_quote(&g.ak, &request, &evidence, first.next_clock.as_ref());
    assert_eq!(rules(&again), [rule::QUOTE_REPLAYED]);
    assert_eq!(again.next_clock, first.next_clock);
}

#[test]
fn golden_sha256_refused_is_an_algorithm_finding() {
    let mut g = Golden::load();
    g.algorithms =
        AcceptedAlgorithms { hash: vec![HashAlg::Sha384], signing: vec![SigAlg::RsaPss] };
    let outcome = g.verify(&g.attest, &g.signature, &g.dump);
    // signing algorithm, signature hash and PCR bank: three refusals, signature still fine.
    assert_eq!(rules(&outcome), [rule::QUOTE_ALGORITHM; 3]);
}

fn synthetic_round(
    ak: &SyntheticAk,
    alg: SigAlg,
    hash: HashAlg,
    prior: Option<&ClockInfo>,
    clock: ClockInfo,
) -> QuoteOutcome {
    let prepared = PreparedAk::new(ak.public.clone()).expect("valid AK");
    let nonce = qualifying_data(b"nonce-1234", b"identity key SPKI");
    let values = pcr_values(HashAlg::Sha256, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15]);
    let attest = quote_attest(nonce.as_bytes(), &values, hash, clock).to_bytes();
    let signature = ak.sign(alg, hash, &attest).to_bytes();
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: nonce.as_bytes(),
        bank: HashAlg::Sha256,
        pcrs: values.pcrs(),
        algorithms: &algorithms,
    };
    let evidence = QuoteEvidence { attest: &attest, signature: &signature, pcrs: &values };
    verify_quote(&prepared, &request, &evidence, prior)
}

fn clock(clock: u64, reset_count: u32, restart_count: u32) -> ClockInfo {
    ClockInfo { clock, reset_count, restart_count, safe: true }
}

#[test]
fn synthetic_quotes_of_every_supported_scheme_verify() {
    let rsa = SyntheticAk::rsa();
    for (alg, hash) in [
        (SigAlg::RsaSsa, HashAlg::Sha256),
        (SigAlg::RsaSsa, HashAlg::Sha512),
        (SigAlg::RsaPss, HashAlg::Sha256),
        (SigAlg::RsaPss, HashAlg::Sha384),
    ] {
        let outcome = synthetic_round(&rsa, alg, hash, None, clock(10, 0, 0));
        assert!(outcome.verdict.passed(), "{alg} {hash}: {:#?}", outcome.verdict);
    }
    for (curve, hash) in
        [(EccCurve::NIST_P256, HashAlg::Sha256), (EccCurve::NIST_P384, HashAlg::Sha384)]
    {
        let ak = SyntheticAk::ecdsa(curve);
        let outcome = synthetic_round(&ak, SigAlg::Ecdsa, hash, None, clock(10, 0, 0));
        assert!(outcome.verdict.passed(), "{curve}: {:#?}", outcome.verdict);
    }
}

#[test]
fn ecdsa_scalars_are_padded_and_checked() {
    let ak = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let prepared = PreparedAk::new(ak.public.clone()).expect("valid AK");
    let message = b"attest bytes";
    let sig = ak.sign(SigAlg::Ecdsa, HashAlg::Sha256, message);
    assert_eq!(prepared.verify(&sig, message), Ok(()));
    let SignatureBody::Ecc { r, s } = &sig.body else { panic!("ecc") };
    // A TPM may add a leading zero; a shorter encoding is left-padded.
    let mut padded = sig.clone();
    padded.body = SignatureBody::Ecc { r: [&[0u8][..], r].concat(), s: s.clone() };
    assert_eq!(prepared.verify(&padded, message), Ok(()));
    let mut long = sig.clone();
    long.body = SignatureBody::Ecc { r: [&[1u8][..], r].concat(), s: s.clone() };
    assert!(matches!(
        prepared.verify(&long, message),
        Err(SignatureError::ScalarTooLong { part: "r", .. })
    ));
    let mut empty = sig.clone();
    empty.body = SignatureBody::Ecc { r: vec![], s: s.clone() };
    assert_eq!(prepared.verify(&empty, message), Err(SignatureError::Invalid));
    assert_eq!(prepared.verify(&sig, b"other bytes"), Err(SignatureError::Invalid));
}

#[test]
fn wrong_key_type_and_unsupported_combinations_fail() {
    let rsa = SyntheticAk::rsa();
    let ecc = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let prepared_rsa = PreparedAk::new(rsa.public.clone()).expect("valid");
    let prepared_ecc = PreparedAk::new(ecc.public.clone()).expect("valid");
    let ecc_sig = ecc.sign(SigAlg::Ecdsa, HashAlg::Sha256, b"m");
    let rsa_sig = rsa.sign(SigAlg::RsaSsa, HashAlg::Sha256, b"m");
    assert!(matches!(
        prepared_rsa.verify(&ecc_sig, b"m"),
        Err(SignatureError::WrongKeyType { .. })
    ));
    assert!(matches!(
        prepared_ecc.verify(&rsa_sig, b"m"),
        Err(SignatureError::WrongKeyType { .. })
    ));
    let mut sha384 = ecc_sig.clone();
    sha384.hash_alg = HashAlg::Sha384.tpm_alg_id();
    assert!(matches!(prepared_ecc.verify(&sha384, b"m"), Err(SignatureError::Unsupported { .. })));
    let mut sm3 = rsa_sig;
    sm3.hash_alg = kl_core::tpm2::alg_id::SM3_256;
    assert_eq!(prepared_rsa.verify(&sm3, b"m"), Err(SignatureError::UnsupportedHash(0x0012)));

    // Through verify_quote the same mistakes are findings, not passes.
    let values = pcr_values(HashAlg::Sha256, &[15]);
    let attest = quote_attest(b"n", &values, HashAlg::Sha256, clock(1, 0, 0)).to_bytes();
    let sig = ecc.sign(SigAlg::Ecdsa, HashAlg::Sha256, &attest).to_bytes();
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: b"n",
        bank: HashAlg::Sha256,
        pcrs: values.pcrs(),
        algorithms: &algorithms,
    };
    let evidence = QuoteEvidence { attest: &attest, signature: &sig, pcrs: &values };
    assert!(verify_quote(&prepared_ecc, &request, &evidence, None).verdict.passed());
    let outcome = verify_quote(&prepared_rsa, &request, &evidence, None);
    assert_eq!(rules(&outcome), [rule::QUOTE_SIGNATURE]);
    assert!(outcome.verdict.findings[0].message.contains("cannot come from the RSA AK"));
}

#[test]
fn sha1_is_refused_by_default() {
    let ak = SyntheticAk::rsa();
    let prepared = PreparedAk::new(ak.public.clone()).expect("valid");
    let values = pcr_values(HashAlg::Sha1, &[15]);
    let attest = quote_attest(b"n", &values, HashAlg::Sha1, clock(1, 0, 0)).to_bytes();
    // ring cannot sign with SHA-1, so the signature is invalid as well: both are reported.
    let mut sig = ak.sign(SigAlg::RsaSsa, HashAlg::Sha256, &attest);
    sig.hash_alg = HashAlg::Sha1.tpm_alg_id();
    let sig = sig.to_bytes();
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: b"n",
        bank: HashAlg::Sha1,
        pcrs: values.pcrs(),
        algorithms: &algorithms,
    };
    let evidence = QuoteEvidence { attest: &attest, signature: &sig, pcrs: &values };
    let outcome = verify_quote(&prepared, &request, &evidence, None);
    assert_eq!(
        rules(&outcome),
        [rule::QUOTE_ALGORITHM, rule::QUOTE_ALGORITHM, rule::QUOTE_SIGNATURE]
    );
}

#[test]
fn clock_rules_through_verify_quote() {
    let ak = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let prior = clock(1000, 3, 1);
    let later =
        synthetic_round(&ak, SigAlg::Ecdsa, HashAlg::Sha256, Some(&prior), clock(2000, 3, 1));
    assert!(later.verdict.passed());
    assert_eq!(later.next_clock, Some(clock(2000, 3, 1)));

    let rebooted = synthetic_round(
        &ak,
        SigAlg::Ecdsa,
        HashAlg::Sha256,
        Some(&prior),
        ClockInfo { safe: false, ..clock(5, 4, 0) },
    );
    assert!(rebooted.verdict.passed() && rebooted.rebooted);

    let replayed = synthetic_round(&ak, SigAlg::Ecdsa, HashAlg::Sha256, Some(&prior), prior);
    assert_eq!(rules(&replayed), [rule::QUOTE_REPLAYED]);
    assert_eq!(replayed.next_clock, Some(prior));

    let backwards =
        synthetic_round(&ak, SigAlg::Ecdsa, HashAlg::Sha256, Some(&prior), clock(10, 3, 2));
    assert_eq!(rules(&backwards), [rule::QUOTE_CLOCK]);
}

#[test]
fn a_forged_quote_announces_no_reboot() {
    let ak = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let forger = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let prepared = PreparedAk::new(ak.public.clone()).expect("valid");
    let values = pcr_values(HashAlg::Sha256, &[15]);
    let attest = quote_attest(b"n", &values, HashAlg::Sha256, clock(1, 9, 0)).to_bytes();
    let sig = forger.sign(SigAlg::Ecdsa, HashAlg::Sha256, &attest).to_bytes();
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: b"n",
        bank: HashAlg::Sha256,
        pcrs: values.pcrs(),
        algorithms: &algorithms,
    };
    let evidence = QuoteEvidence { attest: &attest, signature: &sig, pcrs: &values };
    let prior = clock(1000, 3, 0);
    let outcome = verify_quote(&prepared, &request, &evidence, Some(&prior));
    assert_eq!(rules(&outcome), [rule::QUOTE_SIGNATURE]);
    assert!(!outcome.rebooted);
    assert_eq!(outcome.next_clock, Some(prior));
}

#[test]
fn certify_structure_is_not_a_quote() {
    let ak = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let prepared = PreparedAk::new(ak.public.clone()).expect("valid");
    let mut attest =
        quote_attest(b"n", &pcr_values(HashAlg::Sha256, &[15]), HashAlg::Sha256, clock(1, 0, 0));
    attest.body =
        AttestBody::Certify { name: prepared.name().to_vec(), qualified_name: vec![0, 0x0b] };
    let attest = attest.to_bytes();
    let sig = ak.sign(SigAlg::Ecdsa, HashAlg::Sha256, &attest).to_bytes();
    let values = pcr_values(HashAlg::Sha256, &[15]);
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: b"n",
        bank: HashAlg::Sha256,
        pcrs: values.pcrs(),
        algorithms: &algorithms,
    };
    let outcome = verify_quote(
        &prepared,
        &request,
        &QuoteEvidence { attest: &attest, signature: &sig, pcrs: &values },
        None,
    );
    assert_eq!(rules(&outcome), [rule::QUOTE_MALFORMED]);
    assert!(outcome.verdict.findings[0].message.contains("certification"));
}

#[test]
fn missing_and_unattested_pcr_values_fail() {
    let ak = SyntheticAk::ecdsa(EccCurve::NIST_P256);
    let prepared = PreparedAk::new(ak.public.clone()).expect("valid");
    let quoted = pcr_values(HashAlg::Sha256, &[14, 15]);
    let attest = quote_attest(b"n", &quoted, HashAlg::Sha256, clock(1, 0, 0)).to_bytes();
    let sig = ak.sign(SigAlg::Ecdsa, HashAlg::Sha256, &attest).to_bytes();
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: b"n",
        bank: HashAlg::Sha256,
        pcrs: quoted.pcrs(),
        algorithms: &algorithms,
    };

    let fewer = pcr_values(HashAlg::Sha256, &[14]);
    let outcome = verify_quote(
        &prepared,
        &request,
        &QuoteEvidence { attest: &attest, signature: &sig, pcrs: &fewer },
        None,
    );
    assert_eq!(rules(&outcome), [rule::QUOTE_PCR_DIGEST]);
    assert_eq!(outcome.verdict.findings[0].pcr, Some(15));

    let more = pcr_values(HashAlg::Sha256, &[14, 15, 16]);
    let outcome = verify_quote(
        &prepared,
        &request,
        &QuoteEvidence { attest: &attest, signature: &sig, pcrs: &more },
        None,
    );
    assert_eq!(rules(&outcome), [rule::QUOTE_SELECTION]);
}

#[test]
fn ak_preparation_refuses_unfit_keys() {
    let mut public = SyntheticAk::ecdsa(EccCurve::NIST_P256).public;
    public.attributes = ObjectAttributes(0x0005_0072 & !ObjectAttributes::SIGN);
    let err = PreparedAk::new(public.clone()).expect_err("must fail");
    assert!(err.to_string().contains("sign not set"), "{err}");
    public.attributes = ObjectAttributes(0x0005_0072);
    if let TpmKey::Ecc(k) = &mut public.key {
        k.curve = EccCurve::NIST_P521;
    }
    assert!(matches!(
        PreparedAk::new(public),
        Err(AkError::Key(kl_core::key::KeyError::UnsupportedCurve(_)))
    ));
    let small = Public {
        name_alg: HashAlg::Sha256,
        attributes: ObjectAttributes(0x0005_0072),
        auth_policy: vec![],
        key: TpmKey::Rsa(RsaPublic {
            symmetric: SymmetricDef::Null,
            scheme: Some(Scheme {
                scheme: SigAlg::RsaSsa.tpm_alg_id(),
                hash_alg: 0x000b,
                count: 0,
            }),
            key_bits: 1024,
            raw_exponent: 0,
            modulus: vec![0xc5; 128],
        }),
    };
    let err = PreparedAk::new(small).expect_err("must fail");
    assert!(err.to_string().contains("1024 bits"), "{err}");
    let err = PreparedAk::from_tpm2b_public(&[0, 4, 0, 1, 0, 0x99]).expect_err("must fail");
    assert!(err.to_string().starts_with("AK public area: TPMT_PUBLIC.nameAlg at byte 4"), "{err}");
}

#[test]
fn qualifying_data_binds_nonce_and_identity() {
    let a = qualifying_data(b"nonce", b"spki");
    assert_eq!(a.alg(), HashAlg::Sha256);
    let mut concat = b"nonce".to_vec();
    concat.extend_from_slice(HashAlg::Sha256.digest(b"spki").as_bytes());
    assert_eq!(a, HashAlg::Sha256.digest(&concat));
    assert_ne!(a, qualifying_data(b"nonce", b"other spki"));
}

#[test]
fn golden_structures_fail_on_every_truncation() {
    for (name, parse) in [
        (
            "quote.out",
            (|b: &[u8]| Attest::parse(b).map(drop))
                as fn(&[u8]) -> Result<(), kl_core::tpm2::Error>,
        ),
        ("quotesig.out", |b| Signature::parse(b).map(drop)),
        ("ak.pub", |b| Public::parse_tpm2b(b).map(drop)),
        ("quotepcr.out", |b| PcrDump::parse(b).map(drop)),
    ] {
        let bytes = fixture(name);
        parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        for len in 0..bytes.len() {
            let err = parse(&bytes[..len]).expect_err(name);
            assert!(err.offset() <= len, "{name}[..{len}]: {err}");
        }
    }
}

fn ecc_public_strategy() -> impl Strategy<Value = Public> {
    (
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(attributes, x, y)| Public {
            name_alg: HashAlg::Sha384,
            attributes: ObjectAttributes(attributes),
            auth_policy: vec![1; 32],
            key: TpmKey::Ecc(EccPublic {
                symmetric: SymmetricDef::Cipher { algorithm: 0x0006, key_bits: 128, mode: 0x0043 },
                scheme: None,
                curve: EccCurve::NIST_P256,
                kdf: Some(Scheme {
                    scheme: kl_core::tpm2::alg_id::KDF1_SP800_56A,
                    hash_alg: 0x000b,
                    count: 0,
                }),
                x,
                y,
            }),
        })
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = Attest::parse(&bytes);
        let _ = Signature::parse(&bytes);
        let _ = Public::parse(&bytes);
        let _ = Public::parse_tpm2b(&bytes);
        let _ = PcrDump::parse(&bytes);
        let _ = PcrPolicy::from_json(&bytes);
    }

    #[test]
    fn mutated_golden_inputs_never_panic_and_never_pass(
        which in 0usize..3,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let g = Golden::load();
        let mut inputs = [g.attest.clone(), g.signature.clone(), g.dump.clone()];
        let target = &mut inputs[which];
        let i = at.index(target.len());
        prop_assume!(target[i] != byte);
        target[i] = byte;
        let keep = cut.index(target.len() + 1);
        let truncated = keep < target.len() / 2;
        if truncated {
            target.truncate(keep);
        }
        let [attest, signature, dump] = inputs;
        let Ok(parsed) = PcrDump::parse(&dump) else { return Ok(()) };
        let Some(pcrs) = parsed.banks.first() else { return Ok(()) };
        let request = QuoteRequest {
            qualifying_data: &g.nonce,
            bank: HashAlg::Sha256,
            pcrs: PcrSet::from_indices([15, 16, 22]).expect("in range"),
            algorithms: &g.algorithms,
        };
        let evidence = QuoteEvidence { attest: &attest, signature: &signature, pcrs };
        let outcome = verify_quote(&g.ak, &request, &evidence, None);
        // A change to the dump may fall in its padding or unused slots, which carry nothing.
        let changed_meaning = which != 2 || parsed.banks[0] != PcrDump::parse(&g.dump).expect("ok").banks[0];
        if changed_meaning {
            prop_assert!(!outcome.verdict.passed());
        }
    }

    /// Whatever parses marshals back to the same bytes, so a Name computed from a parsed
    /// public area is the hash of exactly the bytes the TPM produced.
    #[test]
    fn parsing_is_canonical(
        which in 0usize..4,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let name = ["ak.pub", "ek.pub", "quote.out", "quotesig.out"][which];
        let mut bytes = fixture(name);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        match which {
            0 | 1 => if let Ok(p) = Public::parse_tpm2b(&bytes) {
                prop_assert_eq!(p.to_tpm2b_bytes(), bytes);
            },
            2 => if let Ok(a) = Attest::parse(&bytes) {
                prop_assert_eq!(a.to_bytes(), bytes);
            },
            _ => if let Ok(s) = Signature::parse(&bytes) {
                prop_assert_eq!(s.to_bytes(), bytes);
            },
        }
    }

    #[test]
    fn pcr_dumps_round_trip(bank in 0usize..4, pcrs in any::<u32>()) {
        let bank = HashAlg::ALL[bank];
        let indices: Vec<u32> = PcrSet(pcrs).iter().collect();
        let dump = PcrDump::from_banks(vec![pcr_values(bank, &indices)]);
        prop_assert_eq!(PcrDump::parse(&dump.to_bytes()).expect("round trip"), dump);
    }

    #[test]
    fn public_areas_round_trip(public in ecc_public_strategy()) {
        let bytes = public.to_tpm2b_bytes();
        prop_assert_eq!(Public::parse_tpm2b(&bytes).expect("round trip"), public);
    }
}
