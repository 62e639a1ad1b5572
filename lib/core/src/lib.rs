//! `kl-core`: the pure attestation logic of keylime-rs.
//!
//! This crate parses and checks TPM 2.0 structures, quotes, EK certificates, IMA logs and
//! runtime policies, performs software MakeCredential, and turns evidence plus policy into a
//! [`verdict::Verdict`]. It owns the rules that decide whether a machine passes.
//!
//! It must never do I/O, spawn threads, be async, or link the TPM software stack: callers (the
//! verifier, the registrar, `kctl`) read files and sockets and hand bytes in. A failed
//! attestation is a `Verdict` with findings; an `Err` means the input could not be evaluated.
//!
//! # Module map
//!
//! Formats, each read in one place:
//! - `der` (private): the one DER reader (tag-length-value items with absolute offsets) and the
//!   few encodings the crate writes; `oid` (private): the one table of object identifiers.
//! - [`pem`]: the one PEM reader (certificates, bundles, public keys).
//! - [`key`]: the one public-key reader: SubjectPublicKeyInfo in certificates, PEM or base64,
//!   the one [`key::PublicKey`] and [`key::Curve`], and the one [`key::KeyError`].
//! - [`date`]: civil dates and Unix seconds, both ways (certificate times, shown timestamps).
//! - [`alg`]: hash algorithms and PCR extension; [`agent_id`]: the rule for agent ids.
//!
//! TPM structures and what is built on them:
//! - [`tpm2`]: `TPMT_PUBLIC`, `TPMS_ATTEST` (with the one `ClockInfo`), `TPMT_SIGNATURE`, PCR
//!   selections and values.
//! - [`quote`]: quote signature, nonce, PCR digest and clock checks.
//! - [`credential`]: software MakeCredential and the activation proof.
//! - [`ekcert`]: EK certificate chains against a CA store, TCG attributes.
//!
//! Logs, policies, outcomes:
//! - [`eventlog`]: UEFI event logs; [`ima`]: IMA measurement lists, replay and signatures.
//! - [`policy`]: runtime, measured-boot and PCR policies and their import formats.
//! - [`appraisal`]: evidence + policies + prior state -> verdict + next state.
//! - [`payload`]: the K/U/V secure payload; [`verdict`]: verdicts and their rule ids.

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
