//! `kctl policies ...`: offline policy generation and testing.

mod generate;
mod test;
mod tree;

use crate::cli::{MbCommand, PoliciesCommand, RuntimeCommand};
use crate::exit::CmdResult;
use crate::output::Format;

pub fn run(cmd: &PoliciesCommand, format: Format) -> CmdResult {
    match cmd {
        PoliciesCommand::Test(args) => test::run(args, format),
        PoliciesCommand::Runtime(RuntimeCommand::Generate(args)) => generate::runtime(args, format),
        PoliciesCommand::Mb(MbCommand::Generate(args)) => generate::measured_boot(args, format),
    }
}
