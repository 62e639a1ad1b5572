//! Detection latency: chosen agents measure a file the policy does not allow, and the verifier's
//! event stream (WatchEvents) says when each was found. Per tamper the benchmark records three
//! moments: the entry appended to the agent's log, the first quote that carried it to the
//! verifier (the agent's answer), and the first `attestation_failed` (or `state_changed` to
//! failed) event of that agent, as received by a WatchEvents client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kl_proto::verifier::v1 as pb;
use kl_proto::verifier::v1::verifier_client::VerifierClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::BoxError;
use crate::agent::SoftAgent;

/// When each agent's first failure event arrived.
pub type Failures = Arc<Mutex<HashMap<String, Instant>>>;

/// Follows the verifier's events from now on and records the first failure of each agent.
pub async fn watch_failures(
    admin: &mut VerifierClient<Channel>,
) -> Result<(Failures, JoinHandle<Result<(), BoxError>>), BoxError> {
    let cursors = admin.get_event_cursors(pb::GetEventCursorsRequest {}).await?.into_inner();
    let request = pb::WatchEventsRequest {
        from_cursor: cursors.newest_cursor,
        agent_id: String::new(),
        until_cursor: 0,
    };
    let mut stream = admin.watch_events(request).await?.into_inner();
    let failures: Failures = Arc::default();
    let seen = failures.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = stream.message().await? {
            let now = Instant::now();
            let failed = event.kind == pb::EventKind::AttestationFailed as i32
                || (event.kind == pb::EventKind::StateChanged as i32
                    && event.state == pb::AgentState::Failed as i32);
            if failed {
                seen.lock().unwrap_or_else(|e| e.into_inner()).entry(event.agent_id).or_insert(now);
            }
        }
        Ok(())
    });
    Ok((failures, task))
}

/// One tampered agent.
pub struct Tamper {
    pub agent: usize,
    pub at: Instant,
}

/// Appends an entry the policy does not allow (an unknown path) to `agent`'s log and watches
/// its delivery.
pub fn tamper(agent: &SoftAgent, index: usize) -> Tamper {
    let at = agent.with(|m| {
        m.watched_entry = Some(m.ima.lines.len());
        m.watched_served = None;
        m.ima.measure("/usr/local/bin/not-in-the-policy", b"tampered");
        Instant::now()
    });
    Tamper { agent: index, at }
}

/// The latencies of the tampers, milliseconds: (tamper to failure event, quote carrying the entry
/// to failure event); tampers not detected are counted apart.
pub struct Latencies {
    pub from_tamper: Vec<f64>,
    pub from_quote: Vec<f64>,
    pub undetected: usize,
}

pub fn latencies(tampers: &[Tamper], agents: &[SoftAgent], failures: &Failures) -> Latencies {
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = Latencies { from_tamper: Vec::new(), from_quote: Vec::new(), undetected: 0 };
    for tamper in tampers {
        let agent = &agents[tamper.agent];
        let Some(&failed) = failures.get(&agent.id) else {
            out.undetected += 1;
            continue;
        };
        out.from_tamper.push(ms(failed.saturating_duration_since(tamper.at)));
        if let Some(served) = agent.with(|m| m.watched_served) {
            out.from_quote.push(ms(failed.saturating_duration_since(served)));
        }
    }
    out.from_tamper.sort_by(f64::total_cmp);
    out.from_quote.sort_by(f64::total_cmp);
    out
}
