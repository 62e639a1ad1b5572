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
use std::time::Duration;

use kl_core::verdict::{Finding, Verdict, rule};
use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{Batch, EventRecord};
use kl_svc::config::VerifierConfig;
use rand::RngExt;

use crate::attest::{self, RoundOutcome};
use crate::context::Context;
use crate::lifecycle::{AgentRuntime, AgentSlot};
use crate::tasks::stopped;
use crate::{keys, revocation};

/// How long a paused (failed or stopped) agent's loop sleeps between checks.
const IDLE: Duration = Duration::from_secs(3600);
/// How often a replica looks again at an agent whose lease (less the margin) ran out.
const LAPSED: Duration = Duration::from_secs(1);
/// The slowest probe of an unreachable agent.
const MAX_PROBE: Duration = Duration::from_secs(60);

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
    let mut shutdown = ctx.tasks.shutdown();
    let mut delay = first_delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = slot.wake.notified() => {}
            _ = stopped(&mut shutdown) => return,
        }
        if slot.is_removed() || ctx.tasks.is_shutting_down() {
            return;
        }
        if slot.runtime.lock().await.paused() {
            delay = IDLE;
            continue;
        }
        if !slot.may_act() {
            // A replica whose lease on the agent runs out: woken when it is renewed.
            delay = LAPSED;
            continue;
        }
        let permit = tokio::select! {
            permit = ctx.permits.acquire() => permit,
            _ = stopped(&mut shutdown) => return,
        };
        let Ok(_permit) = permit else { return };
        // Boxed: the round's state (several KiB) is allocated only while it runs, instead of
        // sizing every agent's resident task for it.
        delay = Box::pin(attest_once(&ctx, &slot)).await;
    }
}

/// Runs one round of `slot` and records it; returns the delay before the next.
async fn attest_once(ctx: &Arc<Context>, slot: &Arc<AgentSlot>) -> Duration {
    let interval = ctx.config.quote_interval;
    let (mut client, policy, prior, generation) = {
        let mut rt = slot.runtime.lock().await;
        if slot.is_removed() {
            return IDLE;
        }
        let epoch = ctx.policies.epoch();
        if rt.policy.as_ref().map(|(e, _)| *e) != Some(epoch) {
            match ctx.build_policy(&rt.entry) {
                Ok(policy) => rt.policy = Some((epoch, Arc::new(policy))),
                Err(e) => {
                    tracing::error!(agent = %slot.id, error = %e, "cannot build the agent's policy");
                    let finding = Finding::new(
                        rule::VERIFIER_POLICY,
                        format!("the agent's policy cannot be used: {e}"),
                    );
                    let mut verdict = Verdict::default();
                    verdict.push(finding);
                    record_verdict(ctx, &mut rt, verdict, None, 0, Duration::ZERO).await;
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
    let round = attest::round(&mut client, &policy, &prior, ctx.config.request_timeout);
    // A replica's round ends with its lease (less the margin), renewals included: past it,
    // another may hold the agent.
    let outcome = {
        let mut round = std::pin::pin!(round);
        loop {
            let Some(deadline) = slot.deadline() else { break round.await };
            match tokio::time::timeout_at(deadline.into(), &mut round).await {
                Ok(outcome) => break outcome,
                Err(_) if slot.may_act() => continue,
                Err(_) => {
                    tracing::info!(agent = %slot.id, "lease ran out during a round; the round is dropped");
                    return LAPSED;
                }
            }
        }
    };
    let mut rt = slot.runtime.lock().await;
    if rt.generation != generation || slot.is_removed() {
        // Settings changed while the round ran: its result belongs to the old settings.
        return Duration::ZERO;
    }
    if !slot.may_act() {
        // The lease ran out while the round ran: another replica may hold the agent now.
        return LAPSED;
    }
    match outcome {
        RoundOutcome::Unreachable(reason) => {
            ctx.metrics.rounds_unreachable.inc();
            let batch = rt.miss(&reason, ctx.config.max_retries);
            rt.submitted = ctx.writer.submit(batch);
            retry_delay(
                &ctx.config,
                rt.entry.consecutive_errors,
                rt.state() == pb::AgentState::Unreachable,
            )
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
    for slot in ctx.agents.all() {
        let mut rt = slot.runtime.lock().await;
        if rt.unsaved && !slot.is_removed() {
            batch.agents.push(rt.snapshot());
        }
    }
    batch
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

/// Records a verdict ([`AgentRuntime::record_verdict`]). Waits for the commit of a failure
/// (its event must be durable before notices go out) and returns the committed events.
async fn record_verdict(
    ctx: &Context,
    rt: &mut AgentRuntime,
    verdict: Verdict,
    clock: Option<kl_core::tpm2::ClockInfo>,
    ima_entries: u64,
    duration: Duration,
) -> Vec<EventRecord> {
    let recorded = rt.record_verdict(verdict, clock, ima_entries, duration);
    if recorded.passed {
        rt.submitted = ctx.writer.submit(recorded.batch);
        return Vec::new();
    }
    // Revocation notices go out even when the failure cannot be stored yet (a full disk):
    // whoever can fill the verifier's disk must not be able to hold them back.
    let unstored = recorded.batch.events.clone();
    ctx.writer.commit(recorded.batch).await.unwrap_or_else(|e| {
        tracing::error!(
            agent = %rt.entry.agent_id,
            error = %e,
            "recording a failed attestation; revocation notices are sent all the same"
        );
        unstored
    })
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
