//! Measured-boot policy.
