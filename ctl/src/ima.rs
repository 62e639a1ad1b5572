//! `kctl ima replay`: replay an IMA log into PCR 10 offline.

use kl_core::alg::HashAlg;
use kl_core::ima;
use serde_json::json;

use crate::cli::ImaCommand;
use crate::exit::{CmdResult, Outcome, input};
use crate::input::{malformed, read};
use crate::output::{self, Format};

pub fn run(cmd: &ImaCommand, format: Format) -> CmdResult {
    match cmd {
        ImaCommand::Replay { log, hash_alg } => {
            let bank: HashAlg = (*hash_alg).into();
            let bytes = read(log)?;
            let replayed = ima::replay_log(&bytes, &[bank]).map_err(malformed(log))?;
            let pcr10 = replayed.pcrs.first().map(|d| d.to_hex()).unwrap_or_default();
            match format {
                Format::Json => output::json(&json!({
                    "entries": replayed.entries,
                    "hash_alg": bank.name(),
                    "pcr10": pcr10,
                }))
                .map_err(input)?,
                Format::Table => output::text(&format!(
                    "entries  {}\nbank     {}\npcr10    {}\n",
                    replayed.entries,
                    bank.name(),
                    pcr10
                ))
                .map_err(input)?,
            }
            Ok(Outcome::Ok)
        }
    }
}
