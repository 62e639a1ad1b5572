//! The pull loop of each enrolled agent: wait (quote interval, backoff, or a wake-up), take a
//! permit from the shared semaphore (bounded concurrency), run one round, record the outcome.
//!
//! Each agent is one small task that sleeps between rounds; the first round of each is delayed
//! by a random fraction of the quote interval (jitter), so a restarted verifier does not call
//! every agent at once. A failed or stopped agent's loop idles until it is resumed or updated.
//!
//! Reachability: a round whose agent does not answer is retried after `retry_interval`
//! (doubling when `exponential_backoff`); after `max_retries` consecutive misses the agent is
//! `unreachable` (an event) and probed at a slower rate; the first answer appraises it again
//! from its stored state. A missed round never produces a verdict, so an agent that is not
//! answering is never reported as passing anew.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{Batch, EventRecord, HistoryRecord, Timestamp};
use kl_svc::config::VerifierConfig;
use rand::RngExt;

use crate::attest::{self, RoundOutcome};
use crate::context::{AgentRuntime, AgentSlot, Context};
use crate::convert::{self, StoredVerdict};
use crate::{keys, revocation};

/// How long a paused (failed or stopped) agent's loop sleeps between checks.
const IDLE: Duration = Duration::from_secs(3600);
/// How long a passing agent's stored entry may lag behind its routine rounds. Each round's
/// history record is written; the entry (counters, IMA progress) is written with a change of
/// state and otherwise once per this period, and for every agent when the verifier stops. A
/// crash loses at most this much routine progress: counters lag, and the next round re-reads
/// the IMA entries since the stored offset.
pub(crate) const CHECKPOINT: Duration = Duration::from_secs(10);
/// The slowest probe of an unreachable agent.
const MAX_PROBE: Duration = Duration::from_secs(60);

/// An event about `entry`'s agent.
pub(crate) fn event(
    kind: pb::EventKind,
    agent_id: &str,
    state: i32,
    previous_state: i32,
    findings_json: String,
    message: String,
) -> EventRecord {
    EventRecord {
        cursor: 0,
        at: Timestamp::now(),
        kind: kind as i32,
        agent_id: agent_id.to_owned(),
        state,
        previous_state,
        findings_json,
        message,
    }
}

/// Starts the loop of `slot`, its first round after `first_delay`.
pub(crate) fn start(context: &Arc<Context>, slot: Arc<AgentSlot>, first_delay: Duration) {
    let ctx = context.clone();
    context.spawn(agent_loop(ctx, slot, first_delay));
}

/// A random delay in `[0, interval)`.
pub(crate) fn jitter(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random::<f64>())
}

async fn agent_loop(ctx: Arc<Context>, slot: Arc<AgentSlot>, first_delay: Duration) {
    let mut shutdown = ctx.shutdown.clone();
    let mut delay = first_delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = slot.wake.notified() => {}
            _ = crate::context::stopped(&mut shutdown) => return,
        }
        if slot.removed.load(Ordering::Acquire) || ctx.is_shutting_down() {
            return;
        }
        let state = slot.runtime.lock().await.entry.state;
        if state == pb::AgentState::Failed as i32 || state == pb::AgentState::Stopped as i32 {
            delay = IDLE;
            continue;
        }
        let permit = tokio::select! {
            permit = ctx.permits.acquire() => permit,
            _ = crate::context::stopped(&mut shutdown) => return,
        };
        let Ok(_permit) = permit else { return };
        delay = attest_once(&ctx, &slot).await;
    }
}

/// Runs one round of `slot` and records it; returns the delay before the next.
async fn attest_once(ctx: &Arc<Context>, slot: &Arc<AgentSlot>) -> Duration {
    let interval = ctx.config.quote_interval;
    let (mut client, policy, prior, generation) = {
        let mut rt = slot.runtime.lock().await;
        if slot.removed.load(Ordering::Acquire) {
            return IDLE;
        }
        let epoch = ctx.policy_epoch();
        if rt.policy.as_ref().map(|(e, _)| *e) != Some(epoch) {
            match ctx.build_policy(&rt.entry) {
                Ok(policy) => rt.policy = Some((epoch, Arc::new(policy))),
                Err(e) => {
                    tracing::error!(agent = %slot.id, error = %e, "cannot build the agent's policy");
                    let finding = kl_core::verdict::Finding::new(
                        "verifier.policy",
                        format!("the agent's policy cannot be used: {e}"),
                    );
                    let mut verdict = kl_core::verdict::Verdict::default();
                    verdict.push(finding);
                    record_verdict(ctx, &slot.id, &mut rt, verdict, None, 0, Duration::ZERO).await;
                    return IDLE;
                }
            }
        }
        if rt.client.is_none() {
            match ctx.agent_client(&rt.entry) {
                Ok(client) => rt.client = Some(client),
                Err(e) => {
                    tracing::error!(agent = %slot.id, error = %e, "cannot make a client for the agent");
                    return interval;
                }
            }
        }
        let (Some(client), Some((_, policy))) = (rt.client.clone(), rt.policy.clone()) else {
            return interval;
        };
        (client, policy, rt.attestation.clone(), rt.generation)
    };
    let outcome = attest::round(&mut client, &policy, &prior, ctx.config.request_timeout).await;
    let mut rt = slot.runtime.lock().await;
    if rt.generation != generation || slot.removed.load(Ordering::Acquire) {
        // Settings changed while the round ran: its result belongs to the old settings.
        return Duration::ZERO;
    }
    match outcome {
        RoundOutcome::Unreachable(reason) => {
            ctx.metrics.rounds_unreachable.inc();
            missed(ctx, &slot.id, &mut rt, reason)
        }
        RoundOutcome::Appraised(appraisal, duration) => {
            let passed = appraisal.verdict.passed();
            let metrics = &ctx.metrics;
            if passed { &metrics.rounds_passed } else { &metrics.rounds_failed }.inc();
            metrics.round_seconds.observe(duration);
            metrics.ima_entries.add(appraisal.ima_entries);
            let appraisal = *appraisal;
            rt.attestation = appraisal.state;
            let events = record_verdict(
                ctx,
                &slot.id,
                &mut rt,
                appraisal.verdict,
                appraisal.clock,
                appraisal.ima_entries,
                duration,
            )
            .await;
            if passed {
                if !rt.entry.key_delivered && !rt.entry.v_key_half.is_empty() {
                    keys::deliver_v(ctx, slot, &mut rt, &policy);
                }
                interval
            } else {
                for failure in
                    events.into_iter().filter(|e| e.kind == pb::EventKind::AttestationFailed as i32)
                {
                    revocation::notify_others(ctx, failure);
                }
                IDLE
            }
        }
    }
}

/// The entries of agents whose routine rounds have not been stored yet (at shutdown).
pub(crate) async fn unsaved_entries(ctx: &Context) -> Batch {
    let mut batch = Batch::default();
    for slot in ctx.slots() {
        let mut rt = slot.runtime.lock().await;
        if rt.unsaved && !slot.removed.load(Ordering::Acquire) {
            batch.agents.push(rt.snapshot());
        }
    }
    batch
}

/// A round the agent did not answer.
fn missed(ctx: &Context, agent_id: &str, rt: &mut AgentRuntime, reason: String) -> Duration {
    let config = &ctx.config;
    rt.client = None;
    rt.entry.consecutive_errors = rt.entry.consecutive_errors.saturating_add(1);
    let misses = rt.entry.consecutive_errors;
    let unreachable = pb::AgentState::Unreachable as i32;
    let mut batch = Batch::default();
    if u64::from(misses) >= config.max_retries.max(1) && rt.entry.state != unreachable {
        let previous = rt.entry.state;
        rt.entry.state = unreachable;
        tracing::warn!(agent = %agent_id, misses, reason = %reason, "agent unreachable");
        batch.events.push(event(
            pb::EventKind::Unreachable,
            agent_id,
            unreachable,
            previous,
            String::new(),
            format!("no answer after {misses} attempts: {reason}"),
        ));
    } else {
        tracing::info!(agent = %agent_id, misses, reason = %reason, "agent did not answer");
    }
    batch.agents.push(rt.snapshot());
    rt.submitted = ctx.writer.submit(batch);
    retry_delay(config, misses, rt.entry.state == unreachable)
}

/// The wait after `misses` consecutive unanswered rounds: `retry_interval`, doubled per miss
/// with `exponential_backoff`; an unreachable agent is probed no faster than `quote_interval`;
/// never more than [`MAX_PROBE`].
fn retry_delay(config: &VerifierConfig, misses: u32, unreachable: bool) -> Duration {
    let exponent = if config.exponential_backoff { misses.saturating_sub(1).min(16) } else { 0 };
    let backoff = config.retry_interval.saturating_mul(1 << exponent);
    if unreachable {
        backoff.max(config.quote_interval).min(MAX_PROBE)
    } else {
        backoff.min(MAX_PROBE)
    }
}

/// Records a verdict: counters, last verdict, history, state change and its event. Waits for
/// the commit of a failure (its event must be durable before notices go out) and returns the
/// committed events.
async fn record_verdict(
    ctx: &Context,
    agent_id: &str,
    rt: &mut AgentRuntime,
    verdict: kl_core::verdict::Verdict,
    clock: Option<kl_core::tpm2::ClockInfo>,
    ima_entries: u64,
    duration: Duration,
) -> Vec<EventRecord> {
    let now = Timestamp::now();
    let passed = verdict.passed();
    let entry = &mut rt.entry;
    entry.attestation_count += 1;
    entry.consecutive_errors = 0;
    entry.last_attestation_at = Some(now);
    if let Some(clock) = clock {
        entry.reset_count = clock.reset_count;
    }
    entry.history_sequence += 1;
    let stored = StoredVerdict { verdict, at: now };
    let verdict_json = serde_json::to_string(&stored).unwrap_or_default();
    entry.last_verdict_json = verdict_json.clone();
    let history = HistoryRecord {
        sequence: entry.history_sequence,
        at: now,
        verdict_json,
        reset_count: clock.map_or(entry.reset_count, |c| c.reset_count),
        restart_count: clock.map_or(0, |c| c.restart_count),
        clock: clock.map_or(0, |c| c.clock),
        ima_entries,
        duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
    };
    let previous = entry.state;
    let mut batch = Batch::default();
    if passed {
        entry.state = pb::AgentState::Passed as i32;
        entry.last_success_at = Some(now);
        if previous != entry.state {
            batch.events.push(event(
                pb::EventKind::StateChanged,
                agent_id,
                entry.state,
                previous,
                String::new(),
                format!("attestation passed ({} before)", convert::state_name(previous)),
            ));
        }
    } else {
        entry.state = pb::AgentState::Failed as i32;
        let findings_json = serde_json::to_string(&stored.verdict.findings).unwrap_or_default();
        let rules: Vec<&str> = stored.verdict.findings.iter().map(|f| f.rule.as_str()).collect();
        tracing::warn!(agent = %agent_id, rules = ?rules, "attestation failed");
        batch.events.push(event(
            pb::EventKind::AttestationFailed,
            agent_id,
            entry.state,
            previous,
            findings_json,
            format!("attestation failed: {}", rules.join(", ")),
        ));
    }
    batch.history.push((agent_id.to_owned(), history));
    if batch.events.is_empty() && passed && rt.saved_at.elapsed() < CHECKPOINT {
        rt.unsaved = true;
    } else {
        batch.agents.push(rt.snapshot());
    }
    if passed {
        rt.submitted = ctx.writer.submit(batch);
        Vec::new()
    } else {
        // Revocation notices go out even when the failure cannot be stored yet (a full disk):
        // whoever can fill the verifier's disk must not be able to hold them back.
        let unstored = batch.events.clone();
        ctx.writer.commit(batch).await.unwrap_or_else(|e| {
            tracing::error!(
                agent = %agent_id,
                error = %e,
                "recording a failed attestation; revocation notices are sent all the same"
            );
            unstored
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_and_unreachable_agents_are_probed_slower() {
        let mut config = kl_svc::config::defaults::<VerifierConfig>().expect("defaults");
        config.retry_interval = Duration::from_secs(1);
        config.quote_interval = Duration::from_secs(5);
        let delays: Vec<u64> = (1..=8).map(|m| retry_delay(&config, m, false).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(&config, 1, true), Duration::from_secs(5));
        config.exponential_backoff = false;
        assert_eq!(retry_delay(&config, 6, false), Duration::from_secs(1));
        assert!(jitter(Duration::from_secs(2)) < Duration::from_secs(2));
    }
}
