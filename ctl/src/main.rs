//! `kctl`: the operator CLI. See the library for the commands.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    kctl::run(&kctl::Cli::parse())
}
