//! Certificate signature checks with ring: maps (signature algorithm, issuer key) to a ring
//! verification algorithm and verifies over the raw TBS bytes.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

use super::cert::Certificate;
use super::{EkCertError, ValidationOptions};
use crate::der::{Reader, TAG_INTEGER, TAG_OID, TAG_SEQUENCE, oid_to_string};
use crate::key::{Curve, PublicKey};
use crate::oid;

/// Verifies that `issuer`'s key signed `cert`, which sits at chain depth `depth`.
pub(crate) fn check_signature(
    cert: &Certificate,
    issuer: &Certificate,
    depth: usize,
    options: &ValidationOptions,
) -> Result<(), EkCertError> {
    let algorithm = algorithm_for(cert, &issuer.public_key.key, options).ok_or_else(|| {
        EkCertError::UnsupportedAlgorithm {
            depth,
            subject: cert.subject.display.clone(),
            algorithm: algorithm_name(cert),
            key: key_name(&issuer.public_key.key),
        }
    })?;
    let bad = || EkCertError::BadSignature {
        depth,
        subject: cert.subject.display.clone(),
        issuer: issuer.subject.display.clone(),
    };
    let signature = match &issuer.public_key.key {
        PublicKey::Ec { curve, .. } => ecdsa_canonical(&cert.signature, *curve).ok_or_else(bad)?,
        PublicKey::Rsa { .. } => cert.signature.clone(),
    };
    UnparsedPublicKey::new(algorithm, &issuer.public_key.key_bytes)
        .verify(&cert.tbs, &signature)
        .map_err(|_| bad())
}

/// Re-encodes an ECDSA-Sig-Value in canonical DER. Reading it leniently tolerates signers that
/// encode r or s with superfluous or missing leading zero bytes; the signature value is not
/// itself signed, and r and s are checked the same way either way.
fn ecdsa_canonical(der: &[u8], curve: Curve) -> Option<Vec<u8>> {
    let size = curve.coordinate_len();
    let seq = Reader::new(der).read(TAG_SEQUENCE, "ECDSA-Sig-Value").ok()?;
    let mut r = seq.contents();
    let mut body = Vec::with_capacity(2 * size + 6);
    for _ in 0..2 {
        let int = r.read(TAG_INTEGER, "ECDSA r or s").ok()?;
        let start = int.value.iter().position(|b| *b != 0).unwrap_or(int.value.len());
        let magnitude = &int.value[start..];
        if magnitude.len() > size {
            return None;
        }
        let pad = magnitude.first().is_none_or(|b| b & 0x80 != 0);
        body.push(TAG_INTEGER);
        body.push((magnitude.len() + usize::from(pad)) as u8);
        if pad {
            body.push(0);
        }
        body.extend_from_slice(magnitude);
    }
    r.finish("ECDSA-Sig-Value").ok()?;
    let mut out = vec![TAG_SEQUENCE];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Some(out)
}

fn algorithm_for(
    cert: &Certificate,
    key: &PublicKey,
    options: &ValidationOptions,
) -> Option<&'static dyn VerificationAlgorithm> {
    let alg: &'static dyn VerificationAlgorithm = match (key, cert.signature_algorithm.as_slice()) {
        (PublicKey::Rsa { .. }, oid::SHA1_WITH_RSA) if options.allow_sha1 => {
            &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        (PublicKey::Rsa { .. }, oid::SHA256_WITH_RSA) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (PublicKey::Rsa { .. }, oid::SHA384_WITH_RSA) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (PublicKey::Rsa { .. }, oid::SHA512_WITH_RSA) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (PublicKey::Rsa { .. }, oid::RSASSA_PSS) => match pss_hash(&cert.signature_params)? {
            oid::SHA256 => &signature::RSA_PSS_2048_8192_SHA256,
            oid::SHA384 => &signature::RSA_PSS_2048_8192_SHA384,
            oid::SHA512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        },
        (PublicKey::Ec { curve: Curve::P256, .. }, oid::ECDSA_SHA256) => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        (PublicKey::Ec { curve: Curve::P256, .. }, oid::ECDSA_SHA384) => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        (PublicKey::Ec { curve: Curve::P384, .. }, oid::ECDSA_SHA256) => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        (PublicKey::Ec { curve: Curve::P384, .. }, oid::ECDSA_SHA384) => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        _ => return None,
    };
    Some(alg)
}

/// The hash OID of RSASSA-PSS parameters. ring checks MGF1 with the same hash and a salt as
/// long as the hash when it verifies; parameters saying otherwise make verification fail.
/// Absent parameters mean SHA-1, which is not supported.
fn pss_hash(params: &[u8]) -> Option<&[u8]> {
    let seq = Reader::new(params).read(TAG_SEQUENCE, "RSASSA-PSS-params").ok()?;
    let hash = seq.contents().read(0xa0, "hashAlgorithm").ok()?;
    let alg = hash.contents().read(TAG_SEQUENCE, "hashAlgorithm").ok()?;
    Some(alg.contents().read(TAG_OID, "hash").ok()?.value)
}

fn algorithm_name(cert: &Certificate) -> String {
    match cert.signature_algorithm.as_slice() {
        oid::SHA1_WITH_RSA => "sha1WithRSAEncryption".to_owned(),
        oid::SHA256_WITH_RSA => "sha256WithRSAEncryption".to_owned(),
        oid::SHA384_WITH_RSA => "sha384WithRSAEncryption".to_owned(),
        oid::SHA512_WITH_RSA => "sha512WithRSAEncryption".to_owned(),
        oid::RSASSA_PSS => "RSASSA-PSS".to_owned(),
        oid::ECDSA_SHA256 => "ecdsa-with-SHA256".to_owned(),
        oid::ECDSA_SHA384 => "ecdsa-with-SHA384".to_owned(),
        other => oid_to_string(other),
    }
}

fn key_name(key: &PublicKey) -> String {
    match key {
        PublicKey::Rsa { modulus, .. } => format!("RSA-{}", modulus.len() * 8),
        PublicKey::Ec { curve: Curve::P256, .. } => "ECC P-256".to_owned(),
        PublicKey::Ec { curve: Curve::P384, .. } => "ECC P-384".to_owned(),
        PublicKey::Ec { curve: Curve::Secp256k1, .. } => "ECC secp256k1".to_owned(),
    }
}
