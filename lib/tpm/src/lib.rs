//! `kl-tpm`: the agent's TPM, through `tss-esapi`.
//!
//! This crate owns the one connection to the TPM ([`Tpm`]): it creates the endorsement key
//! from the TCG default template and reads its certificates from NV, creates the attestation
//! key once and keeps it as two blob files, takes quotes with PCR values that match them,
//! reads and extends PCRs, and runs ActivateCredential for registration. It recovers from a
//! TPM that restarts under it, and names the TCTI, the operation and the raw TPM response code
//! in its errors.
//!
//! It is the only crate that links the TPM software stack (libtss2), so only the agent and the
//! test harness may depend on it; servers parse and verify TPM structures with `kl-core`
//! instead. It must never verify evidence, decide policy, or talk to the network.
//!
//! Modules: [`tpm`](Tpm) owns the connection, its recovery and the EK and AK handles; [`ek`]
//! creates the EK and reads its certificates; [`ak`] creates, stores and loads the AK; [`quote`]
//! takes quotes and reads and extends PCRs; `credential` runs ActivateCredential; [`tcti`]
//! checks the `tcti` option; [`error`] classifies TSS response codes. TPM structures and
//! values that leave this crate are `kl-core`'s types (`kl_core::tpm2::ClockInfo`,
//! `kl_core::alg::HashAlg`, marshalled `TPMT_PUBLIC`/`TPMS_ATTEST` bytes that
//! `kl_core::tpm2` parses): this crate converts tss-esapi's types into them and defines no
//! second form of any of them.
//!
//! The C library logs expected failures (an absent NV index, a dropped connection) to stderr.
//! Programs that do not want those lines set `TSS2_LOG=all+NONE` in the environment before the
//! first [`Tpm::open`] (`TSS2_LOG=esys+debug,tcti+trace` shows every command instead).
//!
//! ```no_run
//! use kl_core::alg::HashAlg;
//! use kl_tpm::{KeyAlg, Tpm};
//!
//! # fn main() -> Result<(), kl_tpm::TpmError> {
//! let tpm = Tpm::open("device:/dev/tpmrm0", KeyAlg::Rsa2048)?;
//! let ek_cert = tpm.ek_certificate()?; // None when the TPM holds no certificate
//! let ak = tpm.load_or_create_ak("/var/lib/keylime/agent".as_ref(), KeyAlg::Rsa2048)?;
//! let quote = tpm.quote(b"verifier nonce", HashAlg::Sha256, &[0, 1, 2, 3, 4, 5, 6, 7, 10])?;
//! # let _ = (ek_cert, ak, quote);
//! # Ok(())
//! # }
//! ```

pub mod ak;
mod credential;
pub mod ek;
pub mod error;
pub mod quote;
pub mod tcti;
mod tpm;

pub use ek::KeyAlg;
pub use error::{TpmError, TssError};
pub use quote::{PcrValue, Quote};
pub use tcti::Tcti;
pub use tpm::{AkInfo, KeyInfo, Tpm};
