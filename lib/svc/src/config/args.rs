//! The config flags every daemon shares: `--config`, `--config-root`, `--print-config`, `--set`,
//! and the hidden `--render` that the install script uses.

use std::path::PathBuf;

use super::{ComponentConfig, ConfigError, Flag, Sources};
use crate::manual::Render;

/// Flags to flatten into a program's clap parser (`#[command(flatten)]`).
#[derive(Debug, Clone, PartialEq, Eq, std::default::Default, clap::Args)]
pub struct ConfigArgs {
    /// Read only this config file instead of the files under /usr/etc/keylime and /etc/keylime
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Look up usr/etc/keylime and etc/keylime below DIR instead of / (an installed tree that
    /// is not the running system)
    #[arg(long, value_name = "DIR", env = "KEYLIME_CONFIG_ROOT")]
    pub config_root: Option<PathBuf>,
    /// Print the effective configuration as JSON and exit
    #[arg(long)]
    pub print_config: bool,
    /// Set an option, overriding files and environment (repeatable)
    #[arg(long = "set", value_name = "OPTION=VALUE")]
    pub set: Vec<String>,
    /// Print this program's manual page or default config file and exit (for packaging)
    #[arg(long, value_enum, hide = true)]
    pub render: Option<Render>,
}

impl ConfigArgs {
    /// The system sources (roots and environment) with these flags applied; `extra` holds the
    /// program's own option flags (`Flag::new("port", ..)`), applied after `--set`.
    pub fn sources(&self, extra: Vec<Flag>) -> Result<Sources, ConfigError> {
        self.apply(Sources::system(), extra)
    }

    /// These flags applied to given sources (tests pass temp-dir roots and a map environment).
    pub fn apply(&self, mut sources: Sources, extra: Vec<Flag>) -> Result<Sources, ConfigError> {
        if let Some(root) = &self.config_root {
            sources.roots = Sources::rooted(root).roots;
        }
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

impl ConfigArgs {
    /// Prints what `--render` asks for (the man page of `cmd`, section 8, or the default config
    /// of `T`); whether it did, in which case the program exits.
    pub fn render<T: ComponentConfig>(&self, cmd: impl FnOnce() -> clap::Command) -> bool {
        match self.render {
            Some(Render::Man) => {
                print!("{}", crate::manual::page(cmd(), "8", Some((T::COMPONENT, &T::options()))));
                true
            }
            Some(Render::Config) => {
                print!("{}", super::sample::<T>());
                true
            }
            None => false,
        }
    }
}
