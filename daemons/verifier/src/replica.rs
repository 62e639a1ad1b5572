//! Verifier replicas sharing one PostgreSQL database (`database_url`): each attests the agents
//! leased to it, and the fleet is divided between the replicas present.
//!
//! Every sixth of `agent_lease_seconds` the lease loop ([`run`]) of a replica:
//!
//! 1. announces itself (present for one lease period) and learns which replicas are present;
//! 2. renews its agent leases in one statement: an agent not returned is lost (its lease ran
//!    out, or it was unenrolled) and its loop ends; an agent returned at another revision was
//!    changed by an operator through some replica and is read again;
//! 3. takes its share: `ceil(agents / replicas present)`, claiming agents whose lease is absent
//!    or expired (a dead replica's, once its leases run out) or giving back those beyond it
//!    (a replica joined), so that load spreads;
//! 4. takes or renews the duties one replica does for all: webhook delivery and pruning.
//!
//! Fencing: a replica acts for an agent (attests it, records a verdict, delivers its key,
//! sends notices) only while `sent + lease - margin` has not passed on its monotonic clock,
//! where `sent` is when the renewal that returned the agent was sent and the margin is a fifth
//! of the lease; a round still running then is cut off and dropped. Its writes are fenced by the
//! database itself ([`kl_store::verifier::VerifierStore::commit_as`]): the entries of agents it
//! no longer holds, or that an operator changed since it read them, are not written (their
//! events are), and the lease loop is woken to drop or re-read them.
//!
//! While the database cannot be reached, a replica reports NOT_SERVING and keeps attesting the
//! agents it holds until their deadlines pass, its writes held in memory by the writer; it then
//! attests none. Once the database answers, the held writes are committed first (the
//! events all; the entries and history of agents no other replica has taken meanwhile), and
//! only then does the lease loop renew, drop and claim again, reading agents with those
//! writes in.
//!
//! Operator changes go through the database under the agent's row lock
//! ([`kl_store::verifier::VerifierStore::modify_agent`], see [`crate::agents`]); reads of
//! agents this replica does not hold come from the database; events committed by every
//! replica are read back from the outbox in cursor order ([`follow_events`]) for watchers,
//! for policy changes, and for failures found by other replicas, whose revocation notices
//! each replica sends to the agents it holds (agents take signed notices from every address in
//! their `revocation_notification_ip`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kl_proto::verifier::v1 as pb;
use kl_store::StoreError;
use kl_store::verifier::{Batch, PolicyKind, VerifierStore};

use crate::context::Context;
use crate::lease::{PRUNE, Replica, WEBHOOK};
use crate::lifecycle::{self, AgentSlot};
use crate::tasks::{blocking, stopped};
use crate::{Error, revocation, scheduler};

/// How often the outbox is read for events other replicas committed.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);
/// Events read from the outbox at a time.
const FOLLOW_PAGE: usize = 1024;

/// The lease loop, until shutdown.
pub(crate) async fn run(ctx: Arc<Context>) {
    let Some(replica) = ctx.replica.as_ref() else { return };
    replica.starting();
    let mut shutdown = ctx.tasks.shutdown();
    let mut failing = false;
    loop {
        match cycle(&ctx, replica).await {
            Ok(()) => {
                if failing {
                    tracing::info!(replica = %replica.id, "agent leases renewed again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::error!(
                        replica = %replica.id,
                        error = %e,
                        "renewing agent leases; the agents held are attested until their leases run out"
                    );
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(replica.period()) => {}
            _ = replica.wake.notified() => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// What one visit to the database returned.
struct Census {
    replicas: usize,
    agents: u64,
    /// The agents still leased to this replica, with their revisions.
    held: BTreeMap<String, u64>,
    duties: Vec<(&'static str, bool)>,
    /// Every stored policy's name and digest.
    policies: Vec<(String, String)>,
}

async fn cycle(ctx: &Arc<Context>, replica: &Replica) -> Result<(), Error> {
    if let Some(reason) = ctx.writer.unwritable() {
        // Writes are held: they go in before this replica reads any agent again, or what it
        // read would lack them.
        return Err(Error::StoreUnwritable(reason));
    }
    let sent = Instant::now();
    let store = ctx.store.clone();
    let (id, holder, lease) = (replica.id.clone(), replica.holder.clone(), replica.lease);
    let duties: Vec<&'static str> =
        if ctx.config.webhook_url.is_some() { vec![WEBHOOK, PRUNE] } else { vec![PRUNE] };
    let token = replica.token.clone();
    let census = blocking(move || {
        let replicas = store.announce(&id, &token, lease)?.len();
        let renewed = store.renew_leases(&holder, lease)?;
        let agents = store.agent_count()?;
        let duties = duties
            .into_iter()
            .map(|duty| Ok((duty, store.take_duty(duty, &holder, lease)?.is_some())))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let held = renewed.agents.into_iter().zip(renewed.revisions).collect();
        let mut policies = Vec::new();
        for kind in [PolicyKind::Runtime, PolicyKind::MeasuredBoot] {
            policies.extend(store.list_policies(kind)?.into_iter().map(|p| (p.name, p.digest)));
        }
        Ok(Census { replicas, agents, held, duties, policies })
    })
    .await?;
    // A policy changed through another replica reaches this one by its event, or here if the
    // event was lost (stored apart from the policy).
    if replica.policies_seen(census.policies) {
        ctx.policies.changed();
        for slot in ctx.agents.all() {
            slot.wake.notify_one();
        }
    }
    let deadline = sent + replica.lease - replica.margin();
    replica.renewed(sent, &census.duties, deadline);

    // Agents lost, kept, or changed by an operator elsewhere.
    let mut lost = false;
    for slot in ctx.agents.all() {
        if !census.held.contains_key(&slot.id) {
            tracing::info!(agent = %slot.id, replica = %replica.id, "agent lease lost; no longer attested here");
            ctx.agents.remove_slot(&slot);
            lost = true;
        }
    }
    let mut unread = Vec::new();
    for (agent_id, revision) in &census.held {
        match ctx.agents.get(agent_id) {
            Some(slot) => {
                slot.set_deadline(deadline);
                if slot.revision() < *revision {
                    unread.push(agent_id.clone());
                }
            }
            None => unread.push(agent_id.clone()),
        }
    }
    let held = census.held.len();
    if !unread.is_empty() {
        read_agents(ctx, replica, unread, deadline).await?;
    }

    // The share of this replica.
    let fair = usize::try_from(census.agents.div_ceil(census.replicas.max(1) as u64))
        .unwrap_or(usize::MAX);
    if held < fair {
        if lost {
            // Writes for agents just dropped go first (refused, as they should be), so none
            // lands on an agent read below (one enrolled again, say).
            ctx.writer.flush().await?;
        }
        let store = ctx.store.clone();
        let (holder, lease, wanted) = (replica.holder.clone(), replica.lease, fair - held);
        let sent = Instant::now();
        let claimed = blocking(move || store.claim_leases(&holder, wanted, lease)).await?;
        if !claimed.agents.is_empty() {
            tracing::info!(agents = claimed.agents.len(), replica = %replica.id, "agents claimed");
            let deadline = sent + replica.lease - replica.margin();
            read_agents(ctx, replica, claimed.agents, deadline).await?;
        }
    } else if held > fair {
        let excess: Vec<Arc<AgentSlot>> =
            ctx.agents.all().into_iter().rev().take(held - fair).collect();
        release(ctx, replica, excess).await?;
    }
    Ok(())
}

/// Reads `agent_ids` from the store (brought up to their newest history record) and attests
/// them here until `deadline`, replacing what this replica held of them when the store's is
/// newer, in one read whatever their number. An agent whose records cannot be decoded is given
/// back (and logged), so that it neither stops the others nor stays leased to a replica that
/// does not attest it; an error reaching the database ends the cycle (the next reads again).
async fn read_agents(
    ctx: &Arc<Context>,
    replica: &Replica,
    agent_ids: Vec<String>,
    deadline: Instant,
) -> Result<(), Error> {
    let store = ctx.store.clone();
    let read = blocking(move || store.agents_with_newest_history(&agent_ids)).await?;
    let mut unreadable = Vec::new();
    for (agent_id, read) in read {
        let entry = match read {
            Ok((mut entry, newest)) => {
                if let Some(newest) = newest {
                    lifecycle::catch_up(&mut entry, &newest);
                }
                entry
            }
            Err(e) => {
                tracing::error!(agent = %agent_id, error = %e, "cannot read the agent; its lease is given back");
                if let Some(slot) = ctx.agents.get(&agent_id) {
                    ctx.agents.remove_slot(&slot);
                }
                unreadable.push(agent_id);
                continue;
            }
        };
        match ctx.agents.get(&entry.agent_id) {
            Some(slot) => {
                let mut rt = slot.runtime.lock().await;
                let revision = entry.revision;
                if slot.reload(&mut rt, entry) {
                    tracing::info!(agent = %slot.id, revision, "agent changed elsewhere; read again");
                }
                slot.set_deadline(deadline);
            }
            None => {
                let slot = Arc::new(AgentSlot::new(entry));
                slot.set_deadline(deadline);
                if ctx.agents.insert(&slot) {
                    let delay = scheduler::jitter(ctx.config.quote_interval);
                    scheduler::start(ctx, slot, delay);
                }
            }
        }
    }
    if !unreadable.is_empty() {
        let store = ctx.store.clone();
        let holder = replica.holder.clone();
        blocking(move || store.release_leases(&holder, &unreadable)).await?;
    }
    Ok(())
}

/// Gives `slots`' agents back for other replicas to claim, their routine progress stored
/// first.
async fn release(
    ctx: &Arc<Context>,
    replica: &Replica,
    slots: Vec<Arc<AgentSlot>>,
) -> Result<(), Error> {
    let mut batch = Batch::default();
    let mut ids = Vec::with_capacity(slots.len());
    for slot in &slots {
        ctx.agents.remove_slot(slot);
        let mut rt = slot.runtime.lock().await;
        if rt.unsaved {
            batch.agents.push(rt.snapshot());
        }
        ids.push(slot.id.clone());
    }
    if let Err(e) = ctx.writer.commit(batch).await {
        tracing::warn!(error = %e, "storing the progress of agents given back");
    }
    let store = ctx.store.clone();
    let holder = replica.holder.clone();
    let count = ids.len();
    blocking(move || store.release_leases(&holder, &ids)).await?;
    tracing::info!(agents = count, replica = %replica.id, "agents given back for other replicas");
    Ok(())
}

/// Publishes the events every replica commits, in cursor order, to this replica's watchers
/// and webhook worker; a policy change made through another replica has this one's agents
/// rebuild their inputs.
pub(crate) async fn follow_events(ctx: Arc<Context>) {
    let mut shutdown = ctx.tasks.shutdown();
    let mut last = loop {
        let store = ctx.store.clone();
        match blocking(move || store.last_event()).await {
            Ok(last) => break last,
            Err(e) => tracing::warn!(error = %e, "reading the outbox; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL * 4) => {}
            _ = stopped(&mut shutdown) => return,
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let store = ctx.store.clone();
        let page = match blocking(move || store.events_after(last, FOLLOW_PAGE)).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, "reading the outbox");
                continue;
            }
        };
        let Some(newest) = page.last().map(|e| e.cursor) else { continue };
        last = newest;
        let policy_changed = page
            .iter()
            .any(|e| e.agent_id.is_empty() && e.kind == pb::EventKind::PolicyChanged as i32);
        if policy_changed {
            ctx.policies.changed();
            for slot in ctx.agents.all() {
                slot.wake.notify_one();
            }
        }
        // A failure found by another replica: the agents this one holds hear it from this one.
        for failure in page.iter().filter(|e| {
            e.kind == pb::EventKind::AttestationFailed as i32
                && ctx.agents.get(&e.agent_id).is_none()
        }) {
            revocation::notify_others(&ctx, failure.clone());
        }
        ctx.events.publish(page);
    }
}

/// At shutdown, once the writer has committed everything: the replica `id` (this process,
/// `token`) leaves, and its agents and duties are free for the others at once.
pub(crate) fn withdraw(store: &VerifierStore, id: &str, token: &str, holder: &str) {
    match store.withdraw(id, token, holder) {
        Ok(()) => tracing::info!(replica = %id, "agents and duties given back"),
        Err(e) => tracing::warn!(
            replica = %id,
            error = %e,
            "giving back agents at shutdown; other replicas take them when the leases run out"
        ),
    }
}
