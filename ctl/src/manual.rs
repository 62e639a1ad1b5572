//! Shell completions and the manual page, rendered from kctl's own clap definition so they
//! always match the commands kctl has.

use std::io::Write;

use clap::CommandFactory;
use kl_svc::config::{Component, ComponentConfig, TenantConfig};
use kl_svc::manual::Render;

use crate::cli::Cli;
use crate::exit::{CmdResult, Outcome};

/// `kctl completion SHELL`: the completion script on stdout.
pub fn completion(shell: clap_complete::Shell) -> CmdResult {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kctl", &mut out);
    write_stdout(&out)
}

/// `kctl render man|config`: kctl(1), or the commented default tenant.conf.
pub fn render(what: Render) -> CmdResult {
    let text = match what {
        Render::Man => kl_svc::manual::page(
            Cli::command(),
            "1",
            Some((Component::Tenant, &TenantConfig::options())),
        ),
        Render::Config => kl_svc::config::sample::<TenantConfig>(),
    };
    write_stdout(text.as_bytes())
}

fn write_stdout(bytes: &[u8]) -> CmdResult {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(Outcome::Ok),
        // A closed pipe (`kctl completion bash | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Outcome::Ok),
        Err(e) => Err(crate::exit::Failure::Server(anyhow::anyhow!("writing to stdout: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kctl agents enroll` and the like: every command that takes no subcommand.
    fn leaves(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name()).trim().to_owned();
        let subs: Vec<_> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
        if subs.is_empty() {
            out.push(path.clone());
        }
        for sub in subs {
            leaves(sub, &path, out);
        }
    }

    #[test]
    fn the_man_page_describes_every_subcommand_and_the_tenant_config() {
        let page = kl_svc::manual::page(
            Cli::command(),
            "1",
            Some((Component::Tenant, &TenantConfig::options())),
        );
        let mut all = Vec::new();
        leaves(&Cli::command(), "", &mut all);
        assert!(all.len() > 20, "{all:?}");
        for leaf in &all {
            assert!(page.contains(&format!(".SS \"{leaf}\"")), "{leaf} missing");
        }
        assert!(!page.contains("kctl render"), "the hidden render command is not shown");
        for option in TenantConfig::options() {
            assert!(page.contains(option.name), "{} missing", option.name);
        }
    }

    #[test]
    fn bash_completion_parses_and_knows_the_nouns() -> Result<(), Box<dyn std::error::Error>> {
        let mut cmd = Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "kctl", &mut out);
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("kctl.bash");
        std::fs::write(&file, &out)?;
        let status = std::process::Command::new("bash").arg("-n").arg(&file).status()?;
        assert!(status.success());
        let text = String::from_utf8(out)?;
        for noun in ["agents", "policies", "registrar", "completion"] {
            assert!(text.contains(noun), "{noun}");
        }
        Ok(())
    }
}
