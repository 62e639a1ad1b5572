//! kl-core's synthetic quotes (software keys signing as a TPM does), shared with its tests.

#![allow(dead_code)]

pub use kl_core::alg::HashAlg;
pub use kl_core::tpm2::{
    Attest, AttestBody, ClockInfo, EccCurve, EccPublic, ObjectAttributes, PcrSelection, PcrValues,
    Public, RsaPublic, Scheme, SigAlg, Signature, SignatureBody, SymmetricDef, TpmKey,
};

#[path = "../../../../../lib/core/tests/support/synthetic_quote.rs"]
mod quote;

pub use quote::*;
