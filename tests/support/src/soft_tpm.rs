//! A software stand-in for an agent's TPM: an EK (RSA-2048 or ECC P-256) and an AK whose
//! public areas are marshalled as a TPM marshals them, and TPM2_ActivateCredential (TPM 2.0
//! Part 1 §24) computed in software with the EK's private key. Only SHA-256 name algorithms
//! and AES-128 EK templates, as the TCG default EK templates use.

use aes::Aes128;
use cfb_mode::Decryptor;
use cfb_mode::cipher::KeyIvInit;
use kl_core::alg::HashAlg;
use kl_core::tpm2::{
    EccCurve, EccPublic, ObjectAttributes, Public, RsaPublic, Scheme, SymmetricDef, TpmKey, alg_id,
};
use p256::elliptic_curve::Generate;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;

/// TPMA_OBJECT of the default EK templates.
pub const EK_ATTRIBUTES: u32 = ObjectAttributes::FIXED_TPM
    | ObjectAttributes::FIXED_PARENT
    | ObjectAttributes::SENSITIVE_DATA_ORIGIN
    | ObjectAttributes::ADMIN_WITH_POLICY
    | ObjectAttributes::RESTRICTED
    | ObjectAttributes::DECRYPT;
/// TPMA_OBJECT of an attestation key.
pub const AK_ATTRIBUTES: u32 = ObjectAttributes::FIXED_TPM
    | ObjectAttributes::FIXED_PARENT
    | ObjectAttributes::SENSITIVE_DATA_ORIGIN
    | ObjectAttributes::USER_WITH_AUTH
    | ObjectAttributes::RESTRICTED
    | ObjectAttributes::SIGN;

/// The EK's private half.
#[derive(Debug)]
pub enum EkPrivate {
    Rsa(Box<rsa::PrivateKey>),
    P256(p256::SecretKey),
}

/// An EK and an AK.
#[derive(Debug)]
pub struct SoftTpm {
    pub ek: EkPrivate,
    /// Marshalled TPMT_PUBLIC of the EK.
    pub ek_public: Vec<u8>,
    /// Marshalled TPMT_PUBLIC of the AK.
    pub ak_public: Vec<u8>,
}

fn aes128_cfb() -> SymmetricDef {
    SymmetricDef::Cipher { algorithm: alg_id::AES, key_bits: 128, mode: alg_id::CFB }
}

/// A P-256 AK public area with `attributes`.
pub fn ak_public(attributes: u32) -> Vec<u8> {
    let key = p256::SecretKey::generate_from_rng(&mut rand::rng());
    let point = key.public_key().to_sec1_bytes();
    Public {
        name_alg: HashAlg::Sha256,
        attributes: ObjectAttributes(attributes),
        auth_policy: Vec::new(),
        key: TpmKey::Ecc(EccPublic {
            symmetric: SymmetricDef::Null,
            scheme: Some(Scheme { scheme: alg_id::ECDSA, hash_alg: alg_id::SHA256, count: 0 }),
            curve: EccCurve::NIST_P256,
            kdf: None,
            x: point[1..33].to_vec(),
            y: point[33..65].to_vec(),
        }),
    }
    .to_bytes()
}

impl SoftTpm {
    /// A fresh P-256 EK and AK.
    pub fn ecc() -> SoftTpm {
        let key = p256::SecretKey::generate_from_rng(&mut rand::rng());
        let point = key.public_key().to_sec1_bytes();
        let ek_public = Public {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(EK_ATTRIBUTES),
            auth_policy: vec![0x83; 32],
            key: TpmKey::Ecc(EccPublic {
                symmetric: aes128_cfb(),
                scheme: None,
                curve: EccCurve::NIST_P256,
                kdf: None,
                x: point[1..33].to_vec(),
                y: point[33..65].to_vec(),
            }),
        }
        .to_bytes();
        SoftTpm { ek: EkPrivate::P256(key), ek_public, ak_public: ak_public(AK_ATTRIBUTES) }
    }

    /// An RSA-2048 EK with this private key, and a fresh AK.
    pub fn rsa(private: rsa::PrivateKey) -> SoftTpm {
        let modulus = private.n_bytes().to_vec();
        let ek_public = Public {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(EK_ATTRIBUTES),
            auth_policy: vec![0x83; 32],
            key: TpmKey::Rsa(RsaPublic {
                symmetric: aes128_cfb(),
                scheme: None,
                key_bits: 2048,
                raw_exponent: 0,
                modulus,
            }),
        }
        .to_bytes();
        SoftTpm {
            ek: EkPrivate::Rsa(Box::new(private)),
            ek_public,
            ak_public: ak_public(AK_ATTRIBUTES),
        }
    }

    /// A new AK in the same TPM (an agent restart that recreated its AK).
    pub fn new_ak(&mut self) {
        self.ak_public = ak_public(AK_ATTRIBUTES);
    }

    pub fn ek(&self) -> Public {
        Public::parse(&self.ek_public).expect("the EK public area this module marshalled")
    }

    pub fn ak_name(&self) -> Vec<u8> {
        Public::parse(&self.ak_public).map(|ak| ak.name()).unwrap_or_default()
    }

    /// TPM2_ActivateCredential: the credential inside `id_object`, or why the TPM would
    /// refuse it.
    pub fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, String> {
        let seed = match &self.ek {
            EkPrivate::Rsa(private) => private
                .decrypt(
                    rsa::Oaep::<Sha256>::new_with_label(b"IDENTITY\0".to_vec()),
                    encrypted_secret,
                )
                .map_err(|e| format!("OAEP: {e}"))?,
            EkPrivate::P256(private) => {
                let (ex, ey) = ecc_point(encrypted_secret)?;
                let sec1 = [&[0x04], ex, ey].concat();
                let ephemeral = p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| "point not on the curve")?;
                let z = p256::elliptic_curve::ecdh::diffie_hellman(
                    private.to_nonzero_scalar(),
                    ephemeral.as_affine(),
                );
                let own = private.public_key().to_sec1_bytes();
                kdfe(z.raw_secret_bytes(), b"IDENTITY", ex, &own[1..33], 256)
            }
        };
        let ak_name = self.ak_name();
        let hmac_len = usize::from(u16::from_be_bytes(
            id_object.get(..2).and_then(|b| b.try_into().ok()).ok_or("short ID object")?,
        ));
        let rest = id_object.get(2..).ok_or("short ID object")?;
        if rest.len() < hmac_len {
            return Err("short ID object".to_owned());
        }
        let (outer_hmac, enc_identity) = rest.split_at(hmac_len);
        let hmac_key = kdfa(&seed, b"INTEGRITY", &[], 256);
        if hmac(&hmac_key, &[enc_identity, &ak_name]) != outer_hmac {
            return Err(
                "TPM_RC_INTEGRITY: the credential is not bound to this EK and AK".to_owned()
            );
        }
        let sym_key = kdfa(&seed, b"STORAGE", &ak_name, 128);
        let mut plain = enc_identity.to_vec();
        Decryptor::<Aes128>::new_from_slices(&sym_key, &[0u8; 16])
            .map_err(|_| "AES key")?
            .decrypt(&mut plain);
        let len = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
        plain.get(2..2 + len).map(<[u8]>::to_vec).ok_or_else(|| "credential size".to_owned())
    }
}

fn ecc_point(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let read = |at: usize| -> Result<(&[u8], usize), String> {
        let size = bytes.get(at..at + 2).ok_or("short TPMS_ECC_POINT")?;
        let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
        let value = bytes.get(at + 2..at + 2 + size).ok_or("short TPMS_ECC_POINT")?;
        Ok((value, at + 2 + size))
    };
    let (x, next) = read(0)?;
    let (y, _) = read(next)?;
    Ok((x, y))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx =
        ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key));
    for part in parts {
        ctx.update(part);
    }
    ctx.sign().as_ref().to_vec()
}

/// KDFa with HMAC-SHA256 and an empty contextV.
fn kdfa(key: &[u8], label: &[u8], context_u: &[u8], bits: u32) -> Vec<u8> {
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::new();
    let mut counter: u32 = 1;
    while out.len() < want {
        out.extend(hmac(
            key,
            &[&counter.to_be_bytes(), label, &[0], context_u, &bits.to_be_bytes()],
        ));
        counter += 1;
    }
    out.truncate(want);
    out
}

/// KDFe with SHA-256.
fn kdfe(z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::new();
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [&counter.to_be_bytes()[..], z, label, &[0], party_u, party_v] {
            ctx.update(part);
        }
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(want);
    out
}
