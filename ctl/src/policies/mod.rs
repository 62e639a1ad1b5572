//! `kctl policies ...`: offline policy generation and testing.

mod digest;
mod generate;
mod remote;
mod test;
mod tree;

use crate::cli::{Cli, MbCommand, PoliciesCommand, RuntimeCommand};
use crate::exit::CmdResult;

pub fn run(cli: &Cli, cmd: &PoliciesCommand) -> CmdResult {
    let format = cli.output;
    match cmd {
        PoliciesCommand::Test(args) => test::run(args, format),
        PoliciesCommand::Runtime(RuntimeCommand::Generate(args)) => generate::runtime(args, format),
        PoliciesCommand::Runtime(RuntimeCommand::Digest { file, exclude, signing_key }) => {
            digest::runtime(file, exclude.as_deref(), signing_key.as_deref(), format)
        }
        PoliciesCommand::Runtime(RuntimeCommand::Stored(cmd)) => {
            remote::run(cli, remote::Kind::Runtime, cmd)
        }
        PoliciesCommand::Mb(MbCommand::Generate(args)) => generate::measured_boot(args, format),
        PoliciesCommand::Mb(MbCommand::Digest { file }) => digest::measured_boot(file, format),
        PoliciesCommand::Mb(MbCommand::Stored(cmd)) => {
            remote::run(cli, remote::Kind::MeasuredBoot, cmd)
        }
    }
}
