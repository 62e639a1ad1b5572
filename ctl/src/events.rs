//! `kctl events watch`: the verifier's event stream as NDJSON, one event per line.
//!
//! A watch outlives the verifier: when the connection breaks (a restart, a network blip) it
//! reconnects with capped exponential backoff and resumes after the last cursor it printed, so
//! each event is printed once and none is skipped. Events pruned from the verifier's outbox
//! before the watch could read them cannot be recovered; it says how many on stderr. What it
//! does on stderr is for people; stdout holds only events.

use std::io::Write;
use std::time::Duration;

use kl_proto::verifier::v1::verifier_client::VerifierClient;
use kl_proto::verifier::v1::{Event, GetEventCursorsRequest, WatchEventsRequest};
use kl_svc::config::TenantConfig;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cli::{Cli, EventsCommand};
use crate::connect::{self, block_on};
use crate::exit::{CmdResult, Failure, Outcome};
use crate::output::Format;
use crate::verifier_json as vj;

/// First wait before reconnecting.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between attempts: a verifier back after a restart is found within this.
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Waits between reconnection attempts: 0.5 s, doubling up to 10 s, back to 0.5 s once a
/// stream is open again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: BACKOFF_START }
    }
}

impl Backoff {
    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        delay
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// Whether a failed call is worth repeating: the connection or the server failed, not the
/// request. Refusals (a certificate without the role, a bad agent id) are reported at once.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Where a (re)started stream begins, given the cursors the verifier holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// Stream the events after this cursor.
    pub after: u64,
    /// Events after the watch's cursor that were pruned before it read them.
    pub lost: u64,
    /// The verifier's outbox ends before the watch's cursor: its state was replaced, and its
    /// events are all new to this watch.
    pub outbox_replaced: bool,
}

/// Decides where to resume after `last` (the last cursor printed, or `--from`). `seen` says
/// whether `last` came from this verifier (a resumption) rather than from the command line,
/// where `0` means "every retained event" and a loss is not one.
pub fn resume_point(last: u64, seen: bool, oldest: u64, newest: u64) -> ResumePoint {
    if seen && newest < last {
        return ResumePoint { after: 0, lost: 0, outbox_replaced: true };
    }
    if last > 0 && oldest > last + 1 {
        return ResumePoint { after: oldest - 1, lost: oldest - 1 - last, outbox_replaced: false };
    }
    ResumePoint { after: last, lost: 0, outbox_replaced: false }
}

/// How one stream ended.
enum Ended {
    /// Everything asked for was printed (`--count`, `--until-now`, or the reader went away).
    Done,
    /// The connection or the verifier failed; try again.
    Broken(String),
}

struct Watcher<'a> {
    cli: &'a Cli,
    config: TenantConfig,
    address: String,
    uuid: Option<String>,
    count: Option<u64>,
    /// The last cursor printed (or `--from`).
    last: u64,
    /// Whether `last` came from the verifier.
    seen_any: bool,
    printed: u64,
    /// `--until-now`: the newest cursor when the command started.
    until: u64,
}

pub fn run(cli: &Cli, cmd: &EventsCommand) -> CmdResult {
    let EventsCommand::Watch { from, uuid, count, until_now } = cmd;
    let config = connect::tenant_config(cli)?;
    let address = format!("{}:{}", config.verifier_ip, config.verifier_port);
    block_on(async {
        let mut client = connect(&config).await?;
        let until = if *until_now {
            let cursors = client
                .get_event_cursors(GetEventCursorsRequest {})
                .await
                .map_err(|s| connect::status("event cursors", s))?
                .into_inner();
            if cursors.newest_cursor <= *from {
                return Ok(Outcome::Ok);
            }
            cursors.newest_cursor
        } else {
            0
        };
        let mut watcher = Watcher {
            cli,
            config,
            address,
            uuid: uuid.clone(),
            count: *count,
            last: *from,
            seen_any: false,
            printed: 0,
            until,
        };
        watcher.follow(client).await
    })?
}

async fn connect(config: &TenantConfig) -> Result<VerifierClient<Channel>, Failure> {
    let channel = connect::channel(config, &config.verifier_ip, config.verifier_port).await?;
    Ok(VerifierClient::new(channel))
}

impl Watcher<'_> {
    /// Streams, reconnecting after failures, until done or a failure that retrying cannot fix.
    async fn follow(&mut self, mut client: VerifierClient<Channel>) -> CmdResult {
        let mut backoff = Backoff::default();
        let mut reconnecting = false;
        loop {
            let why = match self.stream(&mut client, reconnecting, &mut backoff).await? {
                Ended::Done => return Ok(Outcome::Ok),
                Ended::Broken(why) => why,
            };
            let mut delay = backoff.next_delay();
            eprintln!(
                "kctl: verifier at {} went away ({why}); reconnecting in {}",
                self.address,
                seconds(delay)
            );
            client = loop {
                tokio::time::sleep(delay).await;
                match connect(&self.config).await {
                    Ok(client) => break client,
                    Err(Failure::Server(e)) => {
                        delay = backoff.next_delay();
                        eprintln!("kctl: {e:#}; retrying in {}", seconds(delay));
                    }
                    Err(other) => return Err(other),
                }
            };
            reconnecting = true;
        }
    }

    /// One WatchEvents call, from the resume point to its end.
    async fn stream(
        &mut self,
        client: &mut VerifierClient<Channel>,
        reconnecting: bool,
        backoff: &mut Backoff,
    ) -> Result<Ended, Failure> {
        match client.get_event_cursors(GetEventCursorsRequest {}).await {
            Ok(cursors) => {
                let c = cursors.into_inner();
                self.resume(resume_point(
                    self.last,
                    self.seen_any,
                    c.oldest_cursor,
                    c.newest_cursor,
                ));
            }
            // A verifier without the RPC: WatchEvents still refuses a pruned cursor.
            Err(s) if s.code() == Code::Unimplemented => {}
            Err(s) if retryable(s.code()) => return Ok(Ended::Broken(describe(&s))),
            Err(s) => return Err(connect::status("event cursors", s)),
        }
        let request = WatchEventsRequest {
            from_cursor: self.last,
            agent_id: self.uuid.clone().unwrap_or_default(),
            until_cursor: self.until,
        };
        let mut stream = match client.watch_events(request).await {
            Ok(response) => response.into_inner(),
            Err(s) if retryable(s.code()) => return Ok(Ended::Broken(describe(&s))),
            Err(s) => return Err(connect::status("watch events", s)),
        };
        backoff.reset();
        if reconnecting {
            eprintln!("kctl: reconnected, resuming after cursor {}", self.last);
        }
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if self.print(&event) {
                        return Ok(Ended::Done);
                    }
                }
                // The verifier ends a stream by itself only once `until_cursor` is reached;
                // without a filter every cursor up to it was printed, so that can be checked.
                Ok(None) if self.until > 0 && (self.uuid.is_some() || self.last >= self.until) => {
                    return Ok(Ended::Done);
                }
                Ok(None) => return Ok(Ended::Broken("the stream ended".to_owned())),
                Err(s) if retryable(s.code()) => return Ok(Ended::Broken(describe(&s))),
                Err(s) => return Err(connect::status("watch events", s)),
            }
        }
    }

    fn resume(&mut self, point: ResumePoint) {
        if point.outbox_replaced {
            eprintln!(
                "kctl: the verifier's event outbox no longer reaches cursor {} (its state was \
                 replaced); reading it from the start",
                self.last
            );
        }
        if point.lost > 0 {
            let scope = if self.uuid.is_some() { " (of all agents)" } else { "" };
            eprintln!(
                "kctl: {} events{scope} after cursor {} were pruned from the verifier's outbox \
                 before this watch read them; they are lost, continuing after cursor {}",
                point.lost, self.last, point.after
            );
        }
        self.last = point.after;
    }

    /// Prints one event; true when the watch is done.
    fn print(&mut self, event: &Event) -> bool {
        let doc = vj::event(event);
        let line = match self.cli.output {
            Format::Json => doc.to_string(),
            Format::Table => format!(
                "{} #{} {} {} {}{}",
                doc["at"].as_str().unwrap_or("-"),
                event.cursor,
                doc["uuid"].as_str().unwrap_or("-"),
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
            return true;
        }
        self.last = event.cursor;
        self.seen_any = true;
        self.printed += 1;
        self.count.is_some_and(|c| self.printed >= c) || self.until > 0 && self.last >= self.until
    }
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// `0.5s`, `1s`, `10s`.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_ten_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::default();
        let delays: Vec<String> = (0..8).map(|_| seconds(backoff.next_delay())).collect();
        assert_eq!(delays, ["0.5s", "1s", "2s", "4s", "8s", "10s", "10s", "10s"]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn transport_failures_are_retried_refusals_are_not() {
        for code in [Code::Unavailable, Code::Unknown, Code::Internal, Code::Cancelled] {
            assert!(retryable(code), "{code:?}");
        }
        for code in [
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::OutOfRange,
        ] {
            assert!(!retryable(code), "{code:?}");
        }
    }

    #[test]
    fn a_resumed_watch_continues_after_its_cursor() {
        assert_eq!(
            resume_point(41, true, 1, 60),
            ResumePoint { after: 41, lost: 0, outbox_replaced: false }
        );
        // The next event to read is the oldest held: nothing lost.
        assert_eq!(resume_point(41, true, 42, 60).lost, 0);
        // Nothing new, nothing held: still nothing lost.
        assert_eq!(resume_point(41, true, 42, 41).after, 41);
    }

    #[test]
    fn a_resumed_watch_counts_the_events_pruned_before_it_read_them() {
        assert_eq!(
            resume_point(41, true, 50, 60),
            ResumePoint { after: 49, lost: 8, outbox_replaced: false }
        );
        // `--from 10` on a verifier that pruned up to 19.
        assert_eq!(resume_point(10, false, 20, 30).lost, 9);
    }

    #[test]
    fn from_zero_reads_what_is_retained_without_reporting_a_loss() {
        assert_eq!(
            resume_point(0, false, 500, 900),
            ResumePoint { after: 0, lost: 0, outbox_replaced: false }
        );
    }

    #[test]
    fn a_replaced_outbox_is_read_from_the_start() {
        assert_eq!(
            resume_point(41, true, 1, 5),
            ResumePoint { after: 0, lost: 0, outbox_replaced: true }
        );
        // A `--from` beyond the newest event is the user's choice, not a replaced outbox.
        assert!(!resume_point(41, false, 1, 5).outbox_replaced);
    }
}
