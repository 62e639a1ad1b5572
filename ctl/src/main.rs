//! `kctl`: the operator CLI.
//!
//! Output discipline: with `-o json` stdout holds exactly one JSON document; logs, progress and
//! errors go to stderr. Exit codes: 0 ok, 1 evaluated and negative, 2 usage, config or input
//! error, 3 not found, 4 server or transport error.

mod agents;
mod ca;
mod cli;
mod connect;
mod eventlog;
mod events;
mod exit;
mod ima;
mod input;
mod output;
mod policies;
mod registrar;
mod verifier_json;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Ima(cmd) => ima::run(cmd, cli.output),
        Command::Policies(cmd) => policies::run(&cli, cmd),
        Command::Eventlog(cmd) => eventlog::run(cmd, cli.output),
        Command::Registrar(cmd) => registrar::run(&cli, cmd),
        Command::Ca(cmd) => ca::run(&cli, cmd),
        Command::Agents(cmd) => agents::run(&cli, cmd),
        Command::Events(cmd) => events::run(&cli, cmd),
    };
    match result {
        Ok(code) => code.into(),
        Err(failure) => failure.report(),
    }
}
