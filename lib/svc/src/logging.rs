//! Tracing setup: text (journald-friendly) or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Errors from installing the global subscriber.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    #[error("log_level = {level:?}: not a tracing filter: {message}")]
    Filter { level: String, message: String },
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the process-wide subscriber. `RUST_LOG`, when set, overrides `level` (a filter such
/// as `info` or `kl_verifier=debug,info`). Under systemd (`JOURNAL_STREAM` set) text lines
/// carry no timestamp or colours, since the journal adds its own.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(&from_env).map_err(|e| {
            LoggingError::Filter { level: from_env.clone(), message: e.to_string() }
        })?,
        _ => filter(level)?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let result = match (format, journald) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        // Colours only for a terminal, not for a log file or a pipe.
        (LogFormat::Text, false) => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
        }
    };
    result.map_err(|_| LoggingError::AlreadyInstalled)
}

/// Parses a `log_level` filter.
pub fn filter(level: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::try_new(level)
        .map_err(|e| LoggingError::Filter { level: level.to_owned(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_name_the_level() {
        assert!(filter("info,kl_verifier=debug").is_ok());
        let err = filter("kl_verifier=loud").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("log_level = \"kl_verifier=loud\": not a tracing filter"), "{err}");
    }
}
