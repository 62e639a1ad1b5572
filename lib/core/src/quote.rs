//! TPM quote verification.
