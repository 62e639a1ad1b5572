//! `kl-core`: the pure attestation logic of keylime-rs.
//!
//! This crate parses and checks TPM 2.0 structures, quotes, EK certificates, IMA logs and
//! runtime policies, performs software MakeCredential, and turns evidence plus policy into a
//! [`verdict::Verdict`]. It owns the rules that decide whether a machine passes.
//!
//! It must never do I/O, spawn threads, be async, or link the TPM software stack: callers (the
//! verifier, the registrar, `kctl`) read files and sockets and hand bytes in. A failed
//! attestation is a `Verdict` with findings; an `Err` means the input could not be evaluated.

pub mod agent_id;
pub mod alg;
pub mod appraisal;
pub mod credential;
pub mod date;
mod der;
pub mod ekcert;
pub mod eventlog;
pub mod ima;
pub mod key;
mod oid;
pub mod payload;
pub mod pem;
pub mod policy;
pub mod quote;
pub mod tpm2;
pub mod verdict;
