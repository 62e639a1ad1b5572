//! `kl-svc`: the plumbing the registrar, verifier, agent and kctl share.
//!
//! It owns the standard gRPC health and reflection services every daemon serves ([`api`]),
//! layered TOML configuration ([`config`]), file presence that tells "absent" from "cannot
//! look" ([`fs`]), the CA, TLS identities, rustls configs and TLS transports for tonic
//! ([`tls`]), signed revocation notices ([`notice`]), tracing setup ([`logging`]), man pages
//! rendered from a program's clap definition and option table ([`manual`]), Prometheus metrics
//! ([`metrics`]), systemd readiness ([`systemd`]) and the shutdown signal ([`shutdown`]). It
//! holds no attestation logic and no protocol of its own: it never parses TPM structures, opens
//! a database or defines a keylime RPC, and it keeps no global state beyond the tracing
//! subscriber a binary asks it to install.
//!
//! A daemon's start-up, in outline:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use kl_svc::config::{self, ConfigArgs, VerifierConfig};
//! use kl_svc::tls::{self, ClientAuth, TlsIncoming};
//!
//! # async fn start(args: ConfigArgs) -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = config::load::<VerifierConfig>(&args.sources(Vec::new())?)?;
//! if args.print_config {
//!     println!("{}", loaded.to_json()?);
//!     return Ok(());
//! }
//! let cfg = loaded.config;
//! kl_svc::logging::init(cfg.log_format, &cfg.log_level)?;
//! let shutdown = kl_svc::shutdown::Shutdown::install()?;
//! let files = tls::prepare(&cfg.tls_dir, &cfg.keylime_dir, &cfg.cert_subject_alternative_names)?;
//! let server = tls::server_config(files.server_identity()?, &files.ca_certificates()?, ClientAuth::Required)?;
//! let incoming = TlsIncoming::bind((cfg.ip, cfg.port).into(), Arc::new(server), Duration::from_secs(10)).await?;
//! // tonic::transport::Server::builder().add_service(..)
//! //     .serve_with_incoming_shutdown(incoming, async { shutdown.wait().await; })
//! kl_svc::systemd::notify_ready()?;
//! # drop((incoming, shutdown));
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod config;
pub mod fs;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod notice;
pub mod shutdown;
pub mod systemd;
pub mod tls;

/// Whether an error chain holds a configuration error (an unreadable file, an unknown key, a
/// bad value or log filter): the same start would fail again, so a daemon exits 78 (EX_CONFIG)
/// and its unit does not restart it.
pub fn is_config_error<'a>(
    mut chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> bool {
    chain.any(|cause| {
        cause.downcast_ref::<config::ConfigError>().is_some()
            || cause
                .downcast_ref::<logging::LoggingError>()
                .is_some_and(|e| matches!(e, logging::LoggingError::Filter { .. }))
    })
}

/// An error and its causes as one line for stderr: `a: b: c`, leaving out a cause whose text
/// the line already holds (an error that wraps another often repeats its message).
pub fn error_line<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    // One line, whatever a cause's text holds.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod error_line_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("state store: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("/x/verifier.redb: damaged\nreally")]
    struct Inner;

    #[test]
    fn repeated_causes_are_said_once_on_one_line() {
        let error = Outer(Inner);
        let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source());
        assert_eq!(super::error_line(chain), "state store: /x/verifier.redb: damaged really");
    }
}
