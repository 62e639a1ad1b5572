//! The verifier's Prometheus metrics (`metrics_port`): counters updated where the work happens
//! and, per scrape, the number of agents in each state.

use kl_proto::verifier::v1 as pb;
use kl_svc::metrics::{Counter, Exposition, Histogram, LATENCY_BOUNDS};

use crate::convert;

/// Counters and distributions of a running verifier.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub rounds_passed: Counter,
    pub rounds_failed: Counter,
    pub rounds_unreachable: Counter,
    /// GetQuote round trip plus appraisal, of appraised rounds.
    pub round_seconds: Histogram,
    pub ima_entries: Counter,
    pub store_commits: Counter,
    pub store_commit_failures: Counter,
    pub store_commit_seconds: Histogram,
    pub webhooks_delivered: Counter,
    pub webhook_attempts_failed: Counter,
    pub notices_taken: Counter,
    pub notices_not_taken: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            rounds_passed: Counter::default(),
            rounds_failed: Counter::default(),
            rounds_unreachable: Counter::default(),
            round_seconds: Histogram::new(LATENCY_BOUNDS),
            ima_entries: Counter::default(),
            store_commits: Counter::default(),
            store_commit_failures: Counter::default(),
            store_commit_seconds: Histogram::new(LATENCY_BOUNDS),
            webhooks_delivered: Counter::default(),
            webhook_attempts_failed: Counter::default(),
            notices_taken: Counter::default(),
            notices_not_taken: Counter::default(),
        }
    }
}

const STATES: [pb::AgentState; 5] = [
    pb::AgentState::Pending,
    pb::AgentState::Passed,
    pb::AgentState::Failed,
    pb::AgentState::Unreachable,
    pb::AgentState::Stopped,
];

/// The exposition text of one scrape: `m`, the number of agents in each state, and whether
/// the state store can be written.
pub(crate) fn render(m: &Metrics, agents: &[(pb::AgentState, u64)], writable: bool) -> String {
    let counts =
        STATES.map(|state| agents.iter().filter(|(s, _)| *s == state).map(|(_, n)| n).sum());
    let names: Vec<&str> = STATES.iter().map(|s| convert::state_name(*s as i32)).collect();
    let labels: Vec<[(&str, &str); 1]> = names.iter().map(|n| [("state", *n)]).collect();
    let by_state: Vec<(&[(&str, &str)], u64)> =
        labels.iter().zip(counts).map(|(l, c)| (l.as_slice(), c)).collect();
    let held = by_state.iter().map(|(_, n)| n).sum();
    let mut e = Exposition::new();
    e.gauge(
        "keylime_verifier_agents",
        "Agents this verifier attests, by state (on replicas sharing a database: those leased to it).",
        &by_state,
    );
    e.gauge(
        "keylime_verifier_agents_held",
        "Agents this verifier attests (on replicas sharing a database: those leased to it).",
        &[(&[], held)],
    );
    e.counter(
        "keylime_verifier_attestations_total",
        "Attestation rounds by outcome (unreachable: the agent did not answer).",
        &[
            (&[("result", "passed")], m.rounds_passed.get()),
            (&[("result", "failed")], m.rounds_failed.get()),
            (&[("result", "unreachable")], m.rounds_unreachable.get()),
        ],
    );
    e.histogram(
        "keylime_verifier_attestation_duration_seconds",
        "GetQuote round trip plus appraisal of appraised rounds.",
        &m.round_seconds,
    );
    e.counter(
        "keylime_verifier_ima_entries_total",
        "IMA entries read from agents.",
        &[(&[], m.ima_entries.get())],
    );
    e.counter(
        "keylime_verifier_store_commits_total",
        "State store transactions by outcome.",
        &[
            (&[("result", "ok")], m.store_commits.get()),
            (&[("result", "error")], m.store_commit_failures.get()),
        ],
    );
    e.gauge(
        "keylime_verifier_store_writable",
        "1 while the state store can be written, 0 while it cannot (a full disk; writes are held in memory).",
        &[(&[], u64::from(writable))],
    );
    e.histogram(
        "keylime_verifier_store_commit_duration_seconds",
        "Duration of state store transactions, disk sync included.",
        &m.store_commit_seconds,
    );
    e.counter(
        "keylime_verifier_webhook_deliveries_total",
        "Webhook POSTs by outcome (failed: refused, unreachable or not 2xx; retried).",
        &[
            (&[("result", "delivered")], m.webhooks_delivered.get()),
            (&[("result", "failed")], m.webhook_attempts_failed.get()),
        ],
    );
    e.counter(
        "keylime_verifier_revocation_notices_total",
        "Revocation notices sent to agents by outcome.",
        &[
            (&[("result", "taken")], m.notices_taken.get()),
            (&[("result", "not_taken")], m.notices_not_taken.get()),
        ],
    );
    e.finish()
}
