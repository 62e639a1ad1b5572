//! `kl-tests`: the test harness of keylime-rs, its end-to-end tests, and the one home of the
//! helpers other crates' tests and benchmarks use (as a dev-dependency).
//!
//! The end-to-end harness starts what a deployment has, for real and privately per test:
//!
//! - [`swtpm`]: a software TPM manufactured with its own EK certificate authority;
//! - [`deployment`], [`daemon`]: a deployment CA and config files in a temporary
//!   `keylime_dir`, the daemons as the shipped binaries with `--config` (built when missing);
//! - [`ima`]: synthetic IMA measurement lists with PCR 10 extended to match;
//! - [`damage`]: state files damaged as a failing disk would;
//! - [`postgres`]: a private PostgreSQL server for the database backend;
//! - [`compat`], [`apiref`]: Keylime's own tools and the API reference the tests check against;
//! - [`layering`]: the crate dependency rules of the workspace, checked by a test.
//!
//! The tests themselves are one binary, `e2e/main.rs`; nothing there replaces a real component
//! with a double. The doubles are for the daemons' own tests and benchmarks, which need many
//! agents or a TPM without the cost of real ones:
//!
//! - [`soft_agent`]: software agents serving the Agent gRPC API over TLS, quoting with
//!   [`synthetic`] keys (the verifier's tests and fleet benchmark);
//! - [`soft_tpm`]: the EK side of a TPM in software, for Register and ActivateCredential;
//! - [`synthetic`]: quotes signed by software keys the way a TPM signs them.
//!
//! [`swtpm`], [`soft_tpm`] and [`synthetic`] live in `kl-testkit` (`tests/support/`) and are
//! re-exported here: they depend on kl-core only, so that kl-core's own tests can use them
//! without building the daemon plumbing this crate needs. A daemon's tests take these helpers
//! from here and another daemon as its binary ([`daemon`]), never as a crate: no daemon
//! depends on another, not even for tests. Nothing here is used by the daemons.

pub mod apiref;
pub mod compat;
pub mod daemon;
pub mod damage;
pub mod deployment;
pub mod ima;
pub mod layering;
pub mod postgres;
pub mod soft_agent;

pub use kl_testkit::{Error, Result, err, soft_tpm, swtpm, synthetic};
