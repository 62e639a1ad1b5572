//! The config flags every program shares: `--config`, `--print-config`, `--set`.

use std::path::PathBuf;

use super::{ConfigError, Flag, Sources};

/// Flags to flatten into a program's clap parser (`#[command(flatten)]`).
#[derive(Debug, Clone, PartialEq, Eq, std::default::Default, clap::Args)]
pub struct ConfigArgs {
    /// Read only this config file instead of the files under /usr/etc/keylime and /etc/keylime
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as JSON and exit
    #[arg(long)]
    pub print_config: bool,
    /// Set an option, overriding files and environment (repeatable)
    #[arg(long = "set", value_name = "OPTION=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// The system sources (roots and environment) with these flags applied; `extra` holds the
    /// program's own option flags (`Flag::new("port", ..)`), applied after `--set`.
    pub fn sources(&self, extra: Vec<Flag>) -> Result<Sources, ConfigError> {
        self.apply(Sources::system(), extra)
    }

    /// These flags applied to given sources (tests pass temp-dir roots and a map environment).
    pub fn apply(&self, mut sources: Sources, extra: Vec<Flag>) -> Result<Sources, ConfigError> {
        if self.config.is_some() {
            sources.config_file.clone_from(&self.config);
        }
        for arg in &self.set {
            sources.flags.push(Flag::parse_set(arg)?);
        }
        sources.flags.extend(extra);
        Ok(sources)
    }
}
