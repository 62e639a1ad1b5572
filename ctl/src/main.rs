//! `kctl`: the operator CLI.
//!
//! Output discipline: with `-o json` stdout holds exactly one JSON document; logs, progress and
//! errors go to stderr. Exit codes: 0 ok, 1 evaluated and negative, 2 usage, config or input
//! error, 3 not found, 4 server or transport error.

mod cli;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: exit::CmdResult = match &cli.command {
        Command::Ima(_) | Command::Policies(_) => {
            Err(Failure::Input(anyhow::anyhow!("not built yet")))
        }
    };
    match result {
        Ok(code) => code.into(),
        Err(failure) => failure.report(),
    }
}
