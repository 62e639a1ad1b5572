//! `kl-svc`: the plumbing the registrar, verifier, agent and kctl share.
//!
//! It owns layered TOML configuration ([`config`]), the CA and TLS identities and rustls
//! configs ([`tls`]), tracing setup ([`logging`]), systemd readiness ([`systemd`]) and the
//! shutdown signal ([`shutdown`]). It holds no attestation logic and no protocol: it never
//! parses TPM structures, opens a database or speaks gRPC, and it keeps no global state beyond
//! the tracing subscriber a binary asks it to install.

pub mod config;
pub mod logging;
pub mod shutdown;
pub mod systemd;
pub mod tls;
