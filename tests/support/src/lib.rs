//! `kl-testkit`: the test doubles of keylime-rs that need nothing but the library crates.
//!
//! - [`synthetic`]: software attestation keys that sign quotes the way a TPM does, and
//!   `TPMS_ATTEST` structures quoting chosen PCR values (kl-core's quote tests and benches,
//!   the software agents of [`kl-tests`]).
//! - [`soft_tpm`]: the EK side of a TPM in software: EK and AK public areas marshalled as a
//!   TPM marshals them, and TPM2_ActivateCredential (the registrar's and verifier's tests).
//! - [`swtpm`]: a real software TPM (`swtpm`) per test, manufactured with its own EK
//!   certificate authority (kl-tpm's tests and the end-to-end tests).
//!
//! Why a crate of its own beside `kl-tests` (which re-exports these modules): kl-core's
//! integration tests and benches use [`synthetic`], and a crate that kl-core's tests depend on
//! must not pull in the daemon plumbing (kl-svc, kl-proto, tonic) that kl-tests is built on.
//! Everything here depends on kl-core only, so a library crate can take it as a
//! dev-dependency without a heavier build. As for any crate that depends on kl-core, its types
//! are those of the kl-core library, not those of kl-core's own unit-test build: tests that
//! need these helpers are integration tests (`lib/core/tests/`), never `#[cfg(test)]` modules.
//!
//! [`kl-tests`]: ../kl_tests/index.html

pub mod soft_tpm;
pub mod swtpm;
pub mod synthetic;

/// Errors of the test doubles: anything, with a message saying what failed.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// An error from a message.
pub fn err(message: impl Into<String>) -> Error {
    message.into().into()
}
