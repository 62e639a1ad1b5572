//! EK certificate appraisal at registration: the certificate must chain to the CA store and
//! certify the very EK the agent presented. The outcome is a [`Verdict`], so the registrar can
//! report a rejected EK the same way as a failed attestation and apply its `require_ek_cert`
//! policy to whether a failing verdict refuses the registration.

use super::cert::{EcCurve, PublicKey};
use super::{CaStore, EkCertError, ValidatedChain, ValidationOptions, validate};
use crate::verdict::{Finding, Verdict, rule};

impl PublicKey {
    /// An RSA key from TPMT_PUBLIC fields; an exponent of 0 means 65537, as in the TPM.
    pub fn rsa(modulus: &[u8], exponent: u32) -> PublicKey {
        let exponent = if exponent == 0 { 65_537 } else { exponent };
        let e = exponent.to_be_bytes();
        PublicKey::Rsa { modulus: strip_zeros(modulus), exponent: strip_zeros(&e) }
    }

    /// An ECC key from TPMS_ECC_POINT coordinates (left-padded to the curve size). Coordinates
    /// longer than the curve size are kept as they are, so they never match a real key.
    pub fn ecc(curve: EcCurve, x: &[u8], y: &[u8]) -> PublicKey {
        let size = match curve {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        };
        let mut point = vec![0x04];
        for coordinate in [x, y] {
            point.extend(std::iter::repeat_n(0, size - coordinate.len().min(size)));
            point.extend_from_slice(coordinate);
        }
        PublicKey::Ec { curve, point }
    }

    fn describe(&self) -> String {
        match self {
            PublicKey::Rsa { modulus, exponent } => {
                format!("RSA n={} e={}", hex::encode(modulus), hex::encode(exponent))
            }
            PublicKey::Ec { curve, point } => format!("{curve:?} {}", hex::encode(point)),
        }
    }
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

impl EkCertError {
    /// The verdict rule id this rejection is reported under.
    pub fn rule(&self) -> &'static str {
        match self {
            EkCertError::Malformed { .. } | EkCertError::Pem { .. } => rule::EKCERT_MALFORMED,
            EkCertError::Expired { .. } | EkCertError::NotYetValid { .. } => rule::EKCERT_VALIDITY,
            _ => rule::EKCERT_UNTRUSTED,
        }
    }

    pub fn to_finding(&self) -> Finding {
        Finding::new(self.rule(), self.to_string())
    }
}

/// Appraises the EK certificate an agent presented (`None` if it sent none) against `store`,
/// and checks that it certifies `ek`, the EK public key from the agent's TPMT_PUBLIC. Returns
/// the verdict (checked: `ek_cert`) and the validated chain when the chain itself is valid.
pub fn appraise_ek_certificate(
    ek_cert: Option<&[u8]>,
    intermediates: &[&[u8]],
    store: &CaStore,
    options: &ValidationOptions,
    ek: &PublicKey,
) -> (Verdict, Option<ValidatedChain>) {
    let mut verdict = Verdict::default();
    verdict.checked("ek_cert");
    let Some(der) = ek_cert else {
        verdict.push(Finding::new(rule::EKCERT_MISSING, "the agent presented no EK certificate"));
        return (verdict, None);
    };
    match validate(der, intermediates, store, options) {
        Ok(chain) => {
            if chain.ek_public.key != *ek {
                verdict.push(
                    Finding::new(
                        rule::EKCERT_KEY_MISMATCH,
                        "the EK certificate certifies a different key than the agent's EK",
                    )
                    .expected(chain.ek_public.key.describe())
                    .actual(ek.describe()),
                );
            }
            (verdict, Some(chain))
        }
        Err(e) => {
            verdict.push(e.to_finding());
            (verdict, None)
        }
    }
}
