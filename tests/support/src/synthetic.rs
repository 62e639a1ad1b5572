//! Synthetic quotes signed by software keys the way a TPM signs them, for tests and benchmarks.

use kl_core::alg::HashAlg;
use kl_core::tpm2::{
    Attest, AttestBody, ClockInfo, EccCurve, EccPublic, ObjectAttributes, PcrSelection, PcrValues,
    Public, RsaPublic, Scheme, SigAlg, Signature, SignatureBody, SymmetricDef, TpmKey,
};

/// An RSA key (PKCS#8) standing in for a TPM's RSA AK.
pub const RSA_AK_PKCS8: &[u8] = include_bytes!("../data/rsa2048-test-ak.pk8");

/// The attributes a TPM gives an AK created by Keylime's agent.
pub const AK_ATTRIBUTES: u32 = 0x0005_0072;

/// The private half of a [`SyntheticAk`].
#[derive(Debug)]
pub enum SoftwareKey {
    Rsa(ring::signature::RsaKeyPair),
    Ecdsa(ring::signature::EcdsaKeyPair),
}

/// A software key and the TPM public area that describes it.
#[derive(Debug)]
pub struct SyntheticAk {
    pub key: SoftwareKey,
    pub public: Public,
}

impl SyntheticAk {
    pub fn rsa() -> SyntheticAk {
        let pair = ring::signature::RsaKeyPair::from_pkcs8(RSA_AK_PKCS8).expect("test RSA key");
        let components: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        let public = Public {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(AK_ATTRIBUTES),
            auth_policy: vec![],
            key: TpmKey::Rsa(RsaPublic {
                symmetric: SymmetricDef::Null,
                scheme: None,
                key_bits: (components.n.len() * 8) as u16,
                raw_exponent: if components.e == [1, 0, 1] { 0 } else { be_u32(&components.e) },
                modulus: components.n,
            }),
        };
        SyntheticAk { key: SoftwareKey::Rsa(pair), public }
    }

    pub fn ecdsa(curve: EccCurve) -> SyntheticAk {
        let (alg, hash, size) = match curve {
            EccCurve::NIST_P256 => {
                (&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, HashAlg::Sha256, 32)
            }
            EccCurve::NIST_P384 => {
                (&ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING, HashAlg::Sha384, 48)
            }
            other => panic!("no software signer for {other}"),
        };
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key generation");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .expect("generated key");
        let point = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
        let public = Public {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(AK_ATTRIBUTES),
            auth_policy: vec![],
            key: TpmKey::Ecc(EccPublic {
                symmetric: SymmetricDef::Null,
                scheme: Some(Scheme {
                    scheme: SigAlg::Ecdsa.tpm_alg_id(),
                    hash_alg: hash.tpm_alg_id(),
                    count: 0,
                }),
                curve,
                kdf: None,
                x: point[1..1 + size].to_vec(),
                y: point[1 + size..].to_vec(),
            }),
        };
        SyntheticAk { key: SoftwareKey::Ecdsa(pair), public }
    }

    /// Signs `message` as a TPM would with `alg` and `hash`.
    pub fn sign(&self, alg: SigAlg, hash: HashAlg, message: &[u8]) -> Signature {
        let rng = ring::rand::SystemRandom::new();
        let body = match &self.key {
            SoftwareKey::Rsa(pair) => {
                let padding: &'static dyn ring::signature::RsaEncoding = match (alg, hash) {
                    (SigAlg::RsaSsa, HashAlg::Sha256) => &ring::signature::RSA_PKCS1_SHA256,
                    (SigAlg::RsaSsa, HashAlg::Sha384) => &ring::signature::RSA_PKCS1_SHA384,
                    (SigAlg::RsaSsa, HashAlg::Sha512) => &ring::signature::RSA_PKCS1_SHA512,
                    (SigAlg::RsaPss, HashAlg::Sha256) => &ring::signature::RSA_PSS_SHA256,
                    (SigAlg::RsaPss, HashAlg::Sha384) => &ring::signature::RSA_PSS_SHA384,
                    (SigAlg::RsaPss, HashAlg::Sha512) => &ring::signature::RSA_PSS_SHA512,
                    other => panic!("no software RSA signer for {other:?}"),
                };
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &rng, message, &mut sig).expect("RSA signing");
                SignatureBody::Rsa(sig)
            }
            SoftwareKey::Ecdsa(pair) => {
                let sig = pair.sign(&rng, message).expect("ECDSA signing");
                let (r, s) = sig.as_ref().split_at(sig.as_ref().len() / 2);
                SignatureBody::Ecc { r: r.to_vec(), s: s.to_vec() }
            }
        };
        Signature { alg, hash_alg: hash.tpm_alg_id(), body }
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u32::from(b))
}

/// Deterministic, distinct values for `pcrs` of `bank`.
pub fn pcr_values(bank: HashAlg, pcrs: &[u32]) -> PcrValues {
    let mut values = PcrValues::new(bank);
    for &pcr in pcrs {
        values.insert(pcr, bank.digest(&pcr.to_be_bytes())).expect("distinct PCRs");
    }
    values
}

/// A `TPMS_ATTEST` quoting `values`, its digest made with `hash` as a TPM does.
pub fn quote_attest(
    extra_data: &[u8],
    values: &PcrValues,
    hash: HashAlg,
    clock_info: ClockInfo,
) -> Attest {
    let mut h = hash.hasher();
    for (_, v) in values.iter() {
        h.update(v.as_bytes());
    }
    Attest {
        qualified_signer: vec![0x00, 0x0b, 0xaa, 0xbb],
        extra_data: extra_data.to_vec(),
        clock_info,
        firmware_version: 0x2016_0511_0016_2800,
        body: AttestBody::Quote {
            selection: PcrSelection::single(values.bank(), values.pcrs()),
            pcr_digest: h.finish().as_bytes().to_vec(),
        },
    }
}
