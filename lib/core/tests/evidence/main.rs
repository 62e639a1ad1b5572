//! Quote verification and appraisal through kl-core's public API: golden tests on a real
//! tpm2-tools quote and real UEFI event logs, synthetic quotes signed by software keys the way
//! a TPM signs them (kl-testkit's `synthetic`), and property tests that no input panics or
//! passes by accident.
//!
//! These are integration tests rather than unit tests because kl-testkit depends on kl-core:
//! its types are those of the kl-core library, which only an integration test shares.

mod appraisal;
mod quote;
