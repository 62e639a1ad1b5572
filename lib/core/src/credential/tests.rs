use base64::Engine;
use cfb_mode::Decryptor;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rsa::pkcs1::DecodeRsaPrivateKey;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keylime");

fn read(rel: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{rel}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The DER inside a one-block PEM file.
fn pem_body(rel: &str) -> Vec<u8> {
    let text = String::from_utf8(read(rel)).expect("utf8");
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("base64")
}

fn ak_name() -> Vec<u8> {
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&[0x11; 32]);
    name
}

/// The EK's private half, for the software ActivateCredential below.
enum EkPrivate {
    Rsa(Box<rsa::PrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
}

/// The shared x coordinate of ECDH between `private` and the ephemeral point, and the EK's own
/// x coordinate.
fn ecdh(private: &EkPrivate, ephemeral: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    match private {
        EkPrivate::P256(k) => {
            let e =
                p256::PublicKey::from_sec1_bytes(ephemeral).map_err(|_| "point not on curve")?;
            let z =
                p256::elliptic_curve::ecdh::diffie_hellman(k.to_nonzero_scalar(), e.as_affine());
            Ok((z.raw_secret_bytes().to_vec(), k.public_key().to_sec1_bytes()[1..33].to_vec()))
        }
        EkPrivate::P384(k) => {
            let e =
                p384::PublicKey::from_sec1_bytes(ephemeral).map_err(|_| "point not on curve")?;
            let z =
                p384::elliptic_curve::ecdh::diffie_hellman(k.to_nonzero_scalar(), e.as_affine());
            Ok((z.raw_secret_bytes().to_vec(), k.public_key().to_sec1_bytes()[1..49].to_vec()))
        }
        EkPrivate::Rsa(_) => Err("not an ECC key".to_owned()),
    }
}

/// Software TPM2_ActivateCredential (TPM 2.0 Part 1 §24), the inverse of `make_credential`,
/// used to check round trips. Returns why it failed, like the TPM's TPM_RC_INTEGRITY.
fn activate(
    ek: &EkPrivate,
    key: &EkKey,
    ak_name: &[u8],
    made: &MadeCredential,
) -> Result<Vec<u8>, String> {
    let alg = key.name_alg;
    let seed = match ek {
        EkPrivate::Rsa(private) => private
            .decrypt(
                Oaep::<Sha256>::new_with_label(IDENTITY_LABEL.to_vec()),
                &made.encrypted_secret,
            )
            .map_err(|e| format!("OAEP: {e}"))?,
        ecc => {
            let s = &made.encrypted_secret;
            let size = usize::from(u16::from_be_bytes([s[0], s[1]]));
            let ex = &s[2..2 + size];
            let ey = &s[4 + size..];
            if s.len() != 4 + 2 * size
                || usize::from(u16::from_be_bytes([s[2 + size], s[3 + size]])) != size
            {
                return Err("bad TPMS_ECC_POINT".to_owned());
            }
            let sec1 = [&[0x04], ex, ey].concat();
            let (z, own_x) = ecdh(ecc, &sec1)?;
            kdfe(alg, &z, b"IDENTITY", ex, &own_x, alg.len() as u32 * 8)
        }
    };
    let id = &made.id_object;
    let hmac_len = usize::from(u16::from_be_bytes([id[0], id[1]]));
    let (outer_hmac, enc_identity) = id[2..].split_at(hmac_len);
    let hmac_key = kdfa(alg, &seed, b"INTEGRITY", &[], &[], alg.len() as u32 * 8);
    if hmac(alg, &hmac_key, &[enc_identity, ak_name]) != outer_hmac {
        return Err("integrity check failed".to_owned());
    }
    let sym_key = kdfa(alg, &seed, b"STORAGE", ak_name, &[], key.symmetric.key_bits());
    let mut plain = enc_identity.to_vec();
    let iv = [0u8; 16];
    match sym_key.len() {
        16 => Decryptor::<Aes128>::new_from_slices(&sym_key, &iv).expect("key").decrypt(&mut plain),
        _ => Decryptor::<Aes256>::new_from_slices(&sym_key, &iv).expect("key").decrypt(&mut plain),
    }
    let len = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
    Ok(plain[2..2 + len].to_vec())
}

fn rsa_ek() -> (EkPrivate, EkKey) {
    let private =
        rsa::PrivateKey::from_pkcs1_der(&pem_body("ima/keys/rsa2048.pem")).expect("PKCS#1 key");
    let key = EkKey::from_spki_der(&pem_body("ima/keys/rsa2048pub.pem")).expect("SPKI");
    (EkPrivate::Rsa(Box::new(private)), key)
}

fn ecc_ek(seed: u64, symmetric: EkSymmetric) -> (EkPrivate, EkKey) {
    let private = p256::SecretKey::generate_from_rng(&mut StdRng::seed_from_u64(seed));
    let point = private.public_key().to_sec1_bytes();
    let key = EkKey::ecc(Curve::P256, &point[1..33], &point[33..65], HashAlg::Sha256, symmetric);
    (EkPrivate::P256(private), key)
}

/// A P-384 EK with the high-range template's algorithms, built through its SPKI.
fn p384_ek(seed: u64) -> (EkPrivate, EkKey) {
    let private = p384::SecretKey::generate_from_rng(&mut StdRng::seed_from_u64(seed));
    let point = private.public_key().to_sec1_bytes();
    // SubjectPublicKeyInfo: id-ecPublicKey, secp384r1, the uncompressed point.
    let mut spki = hex::decode("3076301006072a8648ce3d020106052b81040022036200").expect("hex");
    spki.extend_from_slice(&point);
    let key = EkKey::from_spki_der(&spki).expect("P-384 SPKI");
    (EkPrivate::P384(private), key)
}

#[test]
fn kdfa_and_kdfe_match_independent_values() {
    let key: Vec<u8> = (0..32).collect();
    assert_eq!(
        hex::encode(kdfa(HashAlg::Sha256, &key, b"STORAGE", &ak_name(), &[], 128)),
        "4b6977df7782a6d0312cc5f537456667"
    );
    assert_eq!(
        hex::encode(kdfa(HashAlg::Sha384, &key, b"INTEGRITY", &[], &[], 520)),
        "6485285999770771af3eb7ff426876fcc70d0bd23495a49e9cfbdd70f0b79a505cb1cc5a0c6605782cd820eb30ffd4f0\
         832c30fe36f993b6dcd93949acd8ffb0c1"
    );
    let z = kdfe(HashAlg::Sha256, &[0x22; 32], b"IDENTITY", &[0x33; 32], &[0x44; 32], 512);
    assert_eq!(
        hex::encode(z),
        "f59da144d928b82a7aceb16c1dbc3c5b0588ef575d1baefaade7131ba5f2c6a5\
         92a4a0f5ff27d8fc55f1fdd45b549a27e0d251eb8810985bd72494630652e378"
    );
}

#[test]
fn id_object_matches_independent_computation() {
    let seed: Vec<u8> = (0..32).collect();
    let aes128 =
        seal(HashAlg::Sha256, EkSymmetric::Aes128, &seed, &ak_name(), b"12345678\n").expect("seal");
    assert_eq!(
        hex::encode(aes128),
        "00204fbe9a2c3f8f612389073fff30e5f32c3bad75366dccb7454ec711082dca98762d14bf04614425e1711acc"
    );
    let aes256 =
        seal(HashAlg::Sha256, EkSymmetric::Aes256, &seed, &ak_name(), b"12345678\n").expect("seal");
    assert_eq!(
        hex::encode(aes256),
        "00207b0a3336975ae07a091a86f08959dc42d0f1b964df7e50c45608323bb22772b8ceb6e341510a12497f7726"
    );
}

#[test]
fn rsa_round_trip_and_wrong_ak_name() {
    let (private, key) = rsa_ek();
    assert_eq!((key.name_alg, key.symmetric), (HashAlg::Sha256, EkSymmetric::Aes128));
    let secret = [0x5a; 32];
    let made =
        make_credential(&key, &ak_name(), &secret, &mut StdRng::seed_from_u64(1)).expect("made");
    assert_eq!(made.encrypted_secret.len(), 256);
    assert_eq!(made.id_object.len(), 2 + 32 + 2 + 32);
    assert_eq!(activate(&private, &key, &ak_name(), &made).expect("activates"), secret);
    let mut other = ak_name();
    other[5] ^= 1;
    assert_eq!(activate(&private, &key, &other, &made), Err("integrity check failed".to_owned()));
}

#[test]
fn ecc_round_trip_and_wrong_ak_name() {
    for symmetric in [EkSymmetric::Aes128, EkSymmetric::Aes256] {
        let (private, key) = ecc_ek(7, symmetric);
        let made = make_credential(&key, &ak_name(), b"12345678\n", &mut StdRng::seed_from_u64(2))
            .expect("made");
        assert_eq!(made.encrypted_secret.len(), 68);
        assert_eq!(activate(&private, &key, &ak_name(), &made).expect("activates"), b"12345678\n");
        let mut other = ak_name();
        other[33] ^= 1;
        assert!(activate(&private, &key, &other, &made).is_err());
        // A different EK cannot activate it.
        let (stranger, _) = ecc_ek(8, symmetric);
        assert!(activate(&stranger, &key, &ak_name(), &made).is_err());
    }
}

#[test]
fn p384_round_trip_uses_the_high_range_template() {
    let (private, key) = p384_ek(9);
    assert_eq!((key.name_alg, key.symmetric), (HashAlg::Sha384, EkSymmetric::Aes256));
    let secret = [0x77; 48];
    let made =
        make_credential(&key, &ak_name(), &secret, &mut StdRng::seed_from_u64(2)).expect("made");
    assert_eq!(made.encrypted_secret.len(), 2 + 48 + 2 + 48);
    assert_eq!(made.id_object[..2], [0, 48]);
    assert_eq!(activate(&private, &key, &ak_name(), &made).expect("activates"), secret);
    let mut other = ak_name();
    other[2] ^= 1;
    assert!(activate(&private, &key, &other, &made).is_err());
}

#[test]
fn output_depends_only_on_the_rng() {
    let (_, key) = ecc_ek(7, EkSymmetric::Aes128);
    let run = |seed| {
        make_credential(&key, &ak_name(), b"secret", &mut StdRng::seed_from_u64(seed))
            .expect("made")
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

/// The tpm2-tools makecredential output for the fixture EK and AK: a `badcc0de` magic and
/// version 1, then TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET. Its seed is random, so the
/// blobs cannot be reproduced, but their shape must match.
#[test]
fn shape_matches_tpm2_tools_for_the_fixture_ek() {
    let key = EkKey::from_spki_der(&pem_body("quote/ekpub.pem")).expect("EK SPKI");
    let EkPublicKey::Rsa { modulus, exponent } = &key.public else { panic!("RSA EK expected") };
    assert_eq!(*exponent, 65_537);
    assert_eq!(
        key.public_key(),
        SubjectPublicKey::from_spki_der(&pem_body("quote/ekpub.pem")).expect("spki").key
    );
    let ek_pub = read("quote/ek.pub");
    assert!(
        ek_pub.windows(256).any(|w| w == modulus.as_slice()),
        "SPKI modulus is the TPM2B_PUBLIC's"
    );

    let ak_name = read("quote/ak.name");
    let secret = read("quote/secret.data");
    let made =
        make_credential(&key, &ak_name, &secret, &mut StdRng::seed_from_u64(5)).expect("made");

    let out = read("quote/mkcred.out");
    assert_eq!(&out[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
    let id_len = usize::from(u16::from_be_bytes([out[8], out[9]]));
    let id_object = &out[10..10 + id_len];
    let secret_len = usize::from(u16::from_be_bytes([out[10 + id_len], out[11 + id_len]]));
    assert_eq!(made.id_object.len(), id_object.len());
    assert_eq!(made.id_object[..2], id_object[..2]);
    assert_eq!(made.encrypted_secret.len(), secret_len);
    assert_eq!(out.len(), 12 + id_len + secret_len);
}

#[test]
fn rejects_bad_inputs_with_reasons() {
    let (_, key) = ecc_ek(7, EkSymmetric::Aes128);
    let rng = &mut StdRng::seed_from_u64(1);
    let err = make_credential(&key, &[0x11; 32], b"s", rng).expect_err("raw digest is not a name");
    assert!(err.to_string().contains("unknown name algorithm 0x1111"), "{err}");
    let err = make_credential(&key, &ak_name()[..20], b"s", rng).expect_err("short name");
    assert!(matches!(err, CredentialError::AkName { len: 20, .. }), "{err}");
    let err = make_credential(&key, &ak_name(), &[0; 33], rng).expect_err("too long");
    assert_eq!(err, CredentialError::CredentialSize { len: 33, max: 32 });
    assert!(make_credential(&key, &ak_name(), &[], rng).is_err());
    let sha1 = EkKey { name_alg: HashAlg::Sha1, ..key.clone() };
    assert_eq!(
        make_credential(&sha1, &ak_name(), b"s", rng),
        Err(CredentialError::NameAlg(HashAlg::Sha1))
    );
    let off_curve =
        EkKey::ecc(Curve::P256, &[1; 32], &[2; 32], HashAlg::Sha256, EkSymmetric::Aes128);
    assert!(matches!(
        make_credential(&off_curve, &ak_name(), b"s", rng),
        Err(CredentialError::EkKey(_))
    ));
    let tiny_rsa = EkKey::rsa(&[0xc3; 16], 0, HashAlg::Sha256, EkSymmetric::Aes128);
    assert!(make_credential(&tiny_rsa, &ak_name(), b"s", rng).is_err());

    let p384_root = pem_body("ek-ca/STM_ECC_01RT.pem");
    let (p384, _) = crate::ekcert::parse_ek_certificate(&p384_root).expect("cert");
    let key = EkKey::from_subject_public_key(&p384).expect("P-384");
    assert!(
        matches!(key.public, EkPublicKey::Ecc { curve: Curve::P384, ref x, .. } if x.len() == 48)
    );
    make_credential(&key, &ak_name(), b"s", rng).expect("a P-384 CA key is a valid EK key");
    let wrong_curve = EkKey {
        public: EkPublicKey::Ecc { curve: Curve::P256, x: vec![1; 48], y: vec![2; 48] },
        ..key
    };
    let err = make_credential(&wrong_curve, &ak_name(), b"s", rng).expect_err("48-byte P-256");
    assert!(err.to_string().contains("p256 coordinates of 48 and 48 bytes"), "{err}");
    let err = EkKey::from_spki_der(&[0x30, 0x03, 0x02]).expect_err("truncated SPKI");
    assert!(err.to_string().contains("at byte"), "{err}");
}

#[test]
fn activation_proof_is_hmac_sha256_of_the_agent_id() {
    let agent = "D432FBB3-D2F1-4A97-9EF7-75BD81C00000";
    let proof = activation_proof(b"secret-key", agent);
    assert_eq!(
        hex::encode(proof),
        "93e9629b27d4f2fd96d31aab1306ed07aaf1289c86feac0b406ed68de87a3d3a"
    );
    assert!(verify_activation(b"secret-key", agent, &proof));
    assert!(!verify_activation(b"secret-kez", agent, &proof));
    assert!(!verify_activation(b"secret-key", "other", &proof));
    assert!(!verify_activation(b"secret-key", agent, &proof[..31]));
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_inputs(
        spki in proptest::collection::vec(any::<u8>(), 0..200),
        name in proptest::collection::vec(any::<u8>(), 0..80),
        credential in proptest::collection::vec(any::<u8>(), 0..80),
        x in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let _ = EkKey::from_spki_der(&spki);
        for curve in [Curve::P256, Curve::P384] {
            let key = EkKey::ecc(curve, &x, &x, HashAlg::Sha256, EkSymmetric::Aes128);
            let _ = make_credential(&key, &name, &credential, &mut StdRng::seed_from_u64(0));
        }
    }

    #[test]
    fn ecc_round_trips_any_credential(credential in proptest::collection::vec(any::<u8>(), 1..=32), seed in any::<u64>()) {
        let (private, key) = ecc_ek(seed, EkSymmetric::Aes128);
        let made = make_credential(&key, &ak_name(), &credential, &mut StdRng::seed_from_u64(seed)).expect("made");
        prop_assert_eq!(activate(&private, &key, &ak_name(), &made).expect("activates"), credential);
    }
}
