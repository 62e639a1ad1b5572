//! `kctl events watch`: the verifier's event stream as NDJSON, one event per line.

use std::io::Write;

use kl_proto::verifier::v1::WatchEventsRequest;
use kl_proto::verifier::v1::verifier_client::VerifierClient;

use crate::cli::{Cli, EventsCommand};
use crate::connect::{self, block_on};
use crate::exit::{CmdResult, Failure, Outcome};
use crate::output::Format;
use crate::verifier_json as vj;

pub fn run(cli: &Cli, cmd: &EventsCommand) -> CmdResult {
    let EventsCommand::Watch { from, uuid, count } = cmd;
    let config = connect::tenant_config(cli)?;
    block_on(async {
        let channel = connect::channel(&config, &config.verifier_ip, config.verifier_port).await?;
        let mut stream = VerifierClient::new(channel)
            .watch_events(WatchEventsRequest {
                from_cursor: *from,
                agent_id: uuid.clone().unwrap_or_default(),
            })
            .await
            .map_err(|s| connect::status("watch events", s))?
            .into_inner();
        let mut seen = 0u64;
        while let Some(event) =
            stream.message().await.map_err(|s| connect::status("watch events", s))?
        {
            let doc = vj::event(&event);
            let line = match cli.output {
                Format::Json => doc.to_string(),
                Format::Table => format!(
                    "{} #{} {} {} {}{}",
                    doc["at"].as_str().unwrap_or("-"),
                    event.cursor,
                    doc["uuid"].as_str().unwrap_or(""),
                    doc["kind"].as_str().unwrap_or(""),
                    doc["state"].as_str().unwrap_or(""),
                    event
                        .findings
                        .first()
                        .map(|f| format!(" ({}: {})", f.rule, f.message))
                        .unwrap_or_default(),
                ),
            };
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // The reader went away (`| head`): that is how a watch ends.
                return Ok(Outcome::Ok);
            }
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(Outcome::Ok);
            }
        }
        Ok::<_, Failure>(Outcome::Ok)
    })?
}
