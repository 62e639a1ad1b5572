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
