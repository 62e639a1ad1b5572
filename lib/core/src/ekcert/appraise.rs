//! EK certificate appraisal at registration: the certificate must chain to the CA store and
//! certify the very EK the agent presented. The outcome is a [`Verdict`], so the registrar can
//! report a rejected EK the same way as a failed attestation and apply its `require_ek_cert`
//! policy to whether a failing verdict refuses the registration.

use super::{CaStore, EkCertError, ValidatedChain, ValidationOptions, validate};
use crate::key::PublicKey;
use crate::verdict::{Finding, Verdict, rule};

fn describe(key: &PublicKey) -> String {
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            format!("RSA n={} e={}", hex::encode(modulus), hex::encode(exponent))
        }
        PublicKey::Ec { curve, point } => format!("{curve:?} {}", hex::encode(point)),
    }
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
                    .expected(describe(&chain.ek_public.key))
                    .actual(describe(ek)),
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
