//! `TPMT_SIGNATURE`: the signature a TPM makes over a `TPMS_ATTEST`.

use std::fmt;
use std::str::FromStr;

use super::wire::{Reader, Writer};
use super::{Error, MAX_ECC_BYTES, MAX_RSA_BYTES, alg_id};
use crate::alg::HashAlg;

/// A TPM signature scheme, named as Keylime's `accept_tpm_signing_algs` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SigAlg {
    RsaSsa,
    RsaPss,
    Ecdsa,
    EcDaa,
    Sm2,
    EcSchnorr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown signing algorithm {0:?} (expected rsassa, rsapss, ecdsa, ecdaa, sm2 or ecschnorr)"
)]
pub struct UnknownSigAlg(pub String);

impl SigAlg {
    pub const ALL: [SigAlg; 6] = [
        SigAlg::RsaSsa,
        SigAlg::RsaPss,
        SigAlg::Ecdsa,
        SigAlg::EcDaa,
        SigAlg::Sm2,
        SigAlg::EcSchnorr,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            SigAlg::RsaSsa => "rsassa",
            SigAlg::RsaPss => "rsapss",
            SigAlg::Ecdsa => "ecdsa",
            SigAlg::EcDaa => "ecdaa",
            SigAlg::Sm2 => "sm2",
            SigAlg::EcSchnorr => "ecschnorr",
        }
    }

    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            SigAlg::RsaSsa => alg_id::RSASSA,
            SigAlg::RsaPss => alg_id::RSAPSS,
            SigAlg::Ecdsa => alg_id::ECDSA,
            SigAlg::EcDaa => alg_id::ECDAA,
            SigAlg::Sm2 => alg_id::SM2,
            SigAlg::EcSchnorr => alg_id::ECSCHNORR,
        }
    }

    pub const fn from_tpm_alg_id(id: u16) -> Option<SigAlg> {
        match id {
            alg_id::RSASSA => Some(SigAlg::RsaSsa),
            alg_id::RSAPSS => Some(SigAlg::RsaPss),
            alg_id::ECDSA => Some(SigAlg::Ecdsa),
            alg_id::ECDAA => Some(SigAlg::EcDaa),
            alg_id::SM2 => Some(SigAlg::Sm2),
            alg_id::ECSCHNORR => Some(SigAlg::EcSchnorr),
            _ => None,
        }
    }

    /// Whether the scheme signs with an RSA key (otherwise ECC).
    pub const fn is_rsa(self) -> bool {
        matches!(self, SigAlg::RsaSsa | SigAlg::RsaPss)
    }
}

impl fmt::Display for SigAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SigAlg {
    type Err = UnknownSigAlg;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        SigAlg::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| UnknownSigAlg(s.to_owned()))
    }
}

/// The scheme-specific part of a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureBody {
    /// `TPM2B_PUBLIC_KEY_RSA`: the signature as one big-endian integer.
    Rsa(Vec<u8>),
    /// `TPMS_SIGNATURE_ECC`: r and s, big-endian, possibly shorter than the curve size.
    Ecc { r: Vec<u8>, s: Vec<u8> },
}

/// A parsed `TPMT_SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub alg: SigAlg,
    /// The hash the TPM signed with, as a TPM_ALG_ID (kept raw so an unsupported hash is
    /// refused by policy rather than as a parse error; see [`Signature::hash`]).
    pub hash_alg: u16,
    pub body: SignatureBody,
}

const TPMT_SIGNATURE: &str = "TPMT_SIGNATURE";

impl Signature {
    /// Parses a `TPMT_SIGNATURE` that fills `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Signature, Error> {
        let mut r = Reader::new(bytes, TPMT_SIGNATURE);
        let offset = r.offset();
        let id = r.u16("sigAlg")?;
        let alg = SigAlg::from_tpm_alg_id(id).ok_or_else(|| {
            r.invalid("sigAlg", offset, id.into(), "RSASSA, RSAPSS, ECDSA, ECDAA, SM2 or ECSCHNORR")
        })?;
        let hash_alg = r.u16("hash")?;
        let body = if alg.is_rsa() {
            SignatureBody::Rsa(r.tpm2b("sig", MAX_RSA_BYTES)?.to_vec())
        } else {
            let sig_r = r.tpm2b("signatureR", MAX_ECC_BYTES)?.to_vec();
            let sig_s = r.tpm2b("signatureS", MAX_ECC_BYTES)?.to_vec();
            SignatureBody::Ecc { r: sig_r, s: sig_s }
        };
        r.finish()?;
        Ok(Signature { alg, hash_alg, body })
    }

    /// The hash algorithm, if it is one this crate implements.
    pub fn hash(&self) -> Option<HashAlg> {
        HashAlg::from_tpm_alg_id(self.hash_alg)
    }

    /// Marshals the structure.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u16(self.alg.tpm_alg_id());
        w.u16(self.hash_alg);
        match &self.body {
            SignatureBody::Rsa(sig) => w.tpm2b(sig),
            SignatureBody::Ecc { r, s } => {
                w.tpm2b(r);
                w.tpm2b(s);
            }
        }
        w.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for sig in [
            Signature {
                alg: SigAlg::RsaSsa,
                hash_alg: alg_id::SHA256,
                body: SignatureBody::Rsa(vec![1; 256]),
            },
            Signature {
                alg: SigAlg::Ecdsa,
                hash_alg: alg_id::SHA384,
                body: SignatureBody::Ecc { r: vec![2; 48], s: vec![3; 47] },
            },
        ] {
            assert_eq!(Signature::parse(&sig.to_bytes()).expect("parses"), sig);
        }
    }

    #[test]
    fn unknown_scheme_names_offset() {
        let err = Signature::parse(&[0x00, 0x05, 0x00, 0x0b]).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "TPMT_SIGNATURE.sigAlg at byte 0: 0x5 is not RSASSA, RSAPSS, ECDSA, ECDAA, SM2 or ECSCHNORR"
        );
    }

    #[test]
    fn names_parse() {
        for a in SigAlg::ALL {
            assert_eq!(a.name().parse::<SigAlg>(), Ok(a));
            assert_eq!(SigAlg::from_tpm_alg_id(a.tpm_alg_id()), Some(a));
        }
        assert!("hmac".parse::<SigAlg>().is_err());
    }
}
