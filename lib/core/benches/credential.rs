//! Throughput of software MakeCredential (RSA-2048 and P-256 EKs) and of EK certificate chain
//! validation against the fixture vendor CA store. Run with
//! `cargo bench -p kl-core --bench credential`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine;
use kl_core::alg::HashAlg;
use kl_core::credential::{EkKey, EkSymmetric, make_credential};
use kl_core::ekcert::{CaStore, ValidationOptions, validate};
use kl_core::key::Curve;
use p256::elliptic_curve::Generate;
use rand::SeedableRng;
use rand::rngs::StdRng;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keylime");

fn read(rel: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{rel}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `f` repeatedly for about a second and prints operations per second.
fn bench(name: &str, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        f();
        n += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{name:<48} {:>10.0} ops/s  {:>9.1} us/op",
        n as f64 / elapsed,
        elapsed * 1e6 / n as f64
    );
}

fn main() {
    let ek_pem = String::from_utf8(read("quote/ekpub.pem")).expect("utf8");
    let body: String = ek_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let ek_spki = base64::engine::general_purpose::STANDARD.decode(body).expect("base64");
    let rsa_ek = EkKey::from_spki_der(&ek_spki).expect("RSA EK");
    let ak_name = read("quote/ak.name");
    let secret = [0x42u8; 32];
    let mut rng = StdRng::seed_from_u64(1);

    bench("make_credential RSA-2048 EK", || {
        black_box(make_credential(&rsa_ek, &ak_name, &secret, &mut rng).expect("made"));
    });

    let ecc_private = p256::SecretKey::generate_from_rng(&mut rng);
    let point = ecc_private.public_key().to_sec1_bytes();
    let ecc_ek = EkKey::ecc(
        Curve::P256,
        &point[1..33],
        &point[33..65],
        HashAlg::Sha256,
        EkSymmetric::Aes128,
    );
    bench("make_credential P-256 EK", || {
        black_box(make_credential(&ecc_ek, &ak_name, &secret, &mut rng).expect("made"));
    });

    let p384_private = p384::SecretKey::generate_from_rng(&mut rng);
    let point = p384_private.public_key().to_sec1_bytes();
    let p384_ek = EkKey::ecc(
        Curve::P384,
        &point[1..49],
        &point[49..97],
        HashAlg::Sha384,
        EkSymmetric::Aes256,
    );
    bench("make_credential P-384 EK", || {
        black_box(make_credential(&p384_ek, &ak_name, &secret, &mut rng).expect("made"));
    });

    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(format!("{FIXTURES}/ek-ca"))
        .expect("ek-ca")
        .map(|e| {
            let path = e.expect("entry").path();
            (path.display().to_string(), std::fs::read(&path).expect("read"))
        })
        .collect();
    files.sort();
    let load = || {
        let (store, skipped) =
            CaStore::from_files(files.iter().map(|(n, c)| (n.as_str(), c.as_slice())));
        assert!(skipped.is_empty(), "{skipped:?}");
        store
    };
    bench("CaStore::from_files (51 vendor CA PEM files)", || {
        black_box(load());
    });
    let store = load();
    let options = ValidationOptions::at(1_704_067_200);
    for (name, file) in [
        ("validate ST RSA EK cert (RSA-2048 SHA-256)", "ek-certs/st_sha256_with_rsa_der.der"),
        ("validate ST ECC EK cert (P-256 ECDSA)", "ek-certs/st_ecdsa_sha256_der.der"),
    ] {
        let der = read(file);
        bench(name, || {
            black_box(validate(&der, &[], &store, &options).expect("valid"));
        });
    }
}
