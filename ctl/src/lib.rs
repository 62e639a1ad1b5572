//! `kctl`: the operator CLI, as a library so that `keylime_tenant` (the front that accepts the
//! commands of the Keylime guide) runs the very same code.
//!
//! Output discipline: with `-o json` stdout holds exactly one JSON document; logs, progress and
//! errors go to stderr. Exit codes: 0 ok, 1 evaluated and negative, 2 usage, config or input
//! error, 3 not found, 4 server or transport error.
//!
//! Modules: [`cli`] (the grammar), one module per noun (`agents`, `policies`, `registrar`,
//! `events`, `ca`, `health`, `ima`, `eventlog`, `keylime_conf` for `config convert`, `manual`),
//! and what they share: `connect` (config and TLS to the daemons), `payload` (bootstrap key
//! delivery), `input`, `output`, `verifier_json` and `exit` (exit codes).

mod agents;
mod ca;
pub mod cli;
mod connect;
mod eventlog;
mod events;
mod exit;
mod health;
mod ima;
mod input;
mod keylime_conf;
mod manual;
mod output;
mod payload;
mod policies;
mod registrar;
mod verifier_json;

use std::process::ExitCode;

/// What other fronts (the Terraform provider) use of kctl: the tenant configuration and
/// connections, enrolment with payload delivery, PCR policies and the agent listing, so that
/// they behave as kctl does.
pub mod api {
    pub use crate::agents::{Enrollment, agent_listing, enroll_agent, pcr_policy_from_json};
    pub use crate::connect::{
        Connection, block_on, channel, rfc3339, status, tenant_config_for, tls_files,
    };
    pub use crate::exit::Failure;
    pub use crate::payload::{PayloadSpec, digest as payload_digest};
    pub use crate::verifier_json::{agent as agent_json, state_name};
}

pub use crate::cli::Cli;
use crate::cli::Command;

/// Runs one kctl command and reports a failure on stderr; the exit code follows DESIGN §6.
pub fn run(cli: &Cli) -> ExitCode {
    ExitCode::from(execute(cli))
}

/// [`run`], returning the exit code as a number (0 ok, 1 negative, 2 input, 3 not found,
/// 4 server).
pub fn execute(cli: &Cli) -> u8 {
    let result = match &cli.command {
        Command::Ima(cmd) => ima::run(cmd, cli.output),
        Command::Policies(cmd) => policies::run(cli, cmd),
        Command::Eventlog(cmd) => eventlog::run(cmd, cli.output),
        Command::Registrar(cmd) => registrar::run(cli, cmd),
        Command::Ca(cmd) => ca::run(cli, cmd),
        Command::Agents(cmd) => agents::run(cli, cmd),
        Command::Events(cmd) => events::run(cli, cmd),
        Command::Config(cmd) => keylime_conf::run(cli, cmd),
        Command::Health(args) => health::run(cli, args),
        Command::Completion { shell } => manual::completion(*shell),
        Command::Render { what } => manual::render(*what),
    };
    match result {
        Ok(code) => code.into(),
        Err(failure) => failure.report(&cli.program),
    }
}
