//! `kl-tests`: the end-to-end test harness of keylime-rs.
//!
//! It starts what a deployment has, for real and privately per test: a software TPM
//! manufactured with its own EK certificate authority ([`swtpm`]), a deployment CA and config
//! files in a temporary `keylime_dir`, the daemons as the shipped binaries with `--config`
//! ([`deployment`], [`daemon`]), and synthetic IMA measurement lists with PCR 10 extended to
//! match ([`ima`]), state files damaged as a failing disk would ([`damage`]), and a private
//! PostgreSQL server for the database backend ([`postgres`]). The tests themselves are one
//! binary, `e2e/main.rs`. Nothing here is used by the daemons; nothing here replaces a real
//! component with a double.

pub mod apiref;
pub mod compat;
pub mod daemon;
pub mod damage;
pub mod deployment;
pub mod ima;
pub mod postgres;
pub mod swtpm;

/// Errors of the harness: anything, with a message saying what failed.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// An error from a message.
pub fn err(message: impl Into<String>) -> Error {
    message.into().into()
}
