//! The operator's side on a replica sharing its database with others (see
//! [`crate::replica`]): any replica may be asked about any agent, and the agent may be
//! attested by another. Each change is the same typed transition of [`crate::lifecycle`], made
//! on the agent as stored while its row is locked
//! ([`kl_store::verifier::VerifierStore::modify_agent`]), so changes through different
//! replicas never overwrite each other; the agent's holder reads it again before its next
//! write (at once when that is this replica, else at its next lease renewal). What is shown of
//! an agent another replica holds is what the database holds: one agent is brought up to its
//! newest history record, while a list shows the stored entries, whose routine progress
//! (counters, last attestation time) may lag by up to `lifecycle::CHECKPOINT`.

use std::sync::Arc;

use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{AgentEntry, Batch, HistoryRecord};

use super::{Control, Update, checked, held_status};
use crate::context::Context;
use crate::lifecycle::{self, AgentRuntime};
use crate::tasks::blocking;
use crate::{Error, convert};

/// Makes `change` on the stored agent `agent_id` under its row lock and commits what it
/// returns; then this replica's copy of the agent, if it holds it, is the stored one. The
/// copy's lock is held throughout, so no round of this replica records anything between the
/// change and the copy taking it (a round in flight is dropped).
async fn modify<T: Send + 'static>(
    ctx: &Arc<Context>,
    agent_id: &str,
    change: impl FnOnce(Option<AgentEntry>) -> (Option<Batch>, T) + Send + 'static,
) -> Result<T, Error> {
    ctx.writer.check_writable()?;
    let _turn = ctx.changes.acquire().await.map_err(|_| Error::Internal("stopping".into()))?;
    let held = ctx.agents.get(agent_id);
    let mut runtime = match &held {
        Some(slot) => Some(slot.runtime.lock().await),
        None => None,
    };
    if let Some(rt) = runtime.as_mut() {
        // This replica's copy first (with every write queued before it), so that the change
        // starts from it.
        let batch = Batch { agents: vec![rt.snapshot()], ..Batch::default() };
        ctx.writer.commit(batch).await?;
    }
    let store = ctx.store.clone();
    let (id, max) = (agent_id.to_owned(), ctx.config.history_max_entries);
    // The change starts from the agent brought up to its newest history record, as a replica
    // reads an agent it takes.
    let agent = id.clone();
    let caught_up = move |current: Option<(AgentEntry, Option<HistoryRecord>)>| {
        let existed = current.is_some();
        let (batch, answer) = change(current.map(|(mut entry, newest)| {
            if let Some(newest) = newest {
                lifecycle::catch_up(&mut entry, &newest);
            }
            entry
        }));
        let removed = batch.as_ref().is_some_and(|b| b.removed.contains(&agent));
        (batch, (answer, existed && !removed))
    };
    let modified = blocking(move || store.modify_agent(&id, max, caught_up)).await?;
    let (answer, same_enrolment) = modified.answer;
    ctx.events.publish(modified.events);
    if let (Some(slot), Some(rt)) = (&held, runtime.as_mut()) {
        match modified.stored.into_iter().find(|e| e.agent_id == slot.id) {
            // The same enrolment, changed: the copy takes it.
            Some(stored) if same_enrolment => {
                slot.reload(rt, stored);
            }
            // The same enrolment, unchanged.
            None if same_enrolment => {}
            // Unenrolled, or enrolled anew (without a lease until one is claimed): the copy
            // of the old enrolment ends here, under its lock, so no round of it is recorded.
            _ => {
                ctx.agents.remove_slot(slot);
            }
        }
    }
    Ok(answer)
}

/// Enrols `entry`'s agent, or converges the enrolled one to it.
pub(super) async fn enrol(
    ctx: &Arc<Context>,
    entry: AgentEntry,
) -> Result<(pb::AgentStatus, bool), Error> {
    let agent_id = entry.agent_id.clone();
    let answer = modify(ctx, &agent_id, move |current| match current {
        None => {
            let status = convert::agent_status(&entry);
            (Some(lifecycle::enrol(entry)), (status, true))
        }
        Some(stored) => {
            let mut rt = AgentRuntime::new(stored);
            let batch = rt.converge(entry);
            let changed = batch.is_some();
            (batch, (convert::agent_status(&rt.current()), changed))
        }
    })
    .await?;
    if answer.1 {
        tracing::info!(agent = %agent_id, "enrolled");
    }
    // A new agent is claimed by the first replica whose lease loop looks: this one, now.
    if let Some(replica) = &ctx.replica {
        replica.wake.notify_one();
    }
    Ok(answer)
}

/// An agent's stored entry, or NOT_FOUND.
pub(super) async fn stored(ctx: &Context, agent_id: &str) -> Result<AgentEntry, Error> {
    let store = ctx.store.clone();
    let id = agent_id.to_owned();
    blocking(move || store.get_agent(&id))
        .await?
        .ok_or_else(|| Error::AgentNotFound { agent_id: agent_id.to_owned() })
}

pub(super) async fn update(
    ctx: &Arc<Context>,
    agent_id: &str,
    update: Update,
) -> Result<(pb::AgentStatus, bool), Error> {
    // The new inputs must be usable before anything is stored.
    let current = stored(ctx, agent_id).await?;
    let settings = update.apply(&current);
    if settings != current {
        checked(ctx, settings).await?;
    }
    let id = agent_id.to_owned();
    modify(ctx, agent_id, move |current| {
        let Some(stored) = current else {
            return (None, Err(Error::AgentNotFound { agent_id: id }));
        };
        let settings = update.apply(&stored);
        let mut rt = AgentRuntime::new(stored);
        let batch = rt.update(settings, update.resume);
        let changed = batch.is_some();
        (batch, Ok((convert::agent_status(&rt.current()), changed)))
    })
    .await?
}

pub(super) async fn control(
    ctx: &Arc<Context>,
    agent_id: &str,
    control: Control,
) -> Result<(pb::AgentStatus, bool), Error> {
    let id = agent_id.to_owned();
    modify(ctx, agent_id, move |current| {
        let Some(stored) = current else {
            return (None, Err(Error::AgentNotFound { agent_id: id }));
        };
        let mut rt = AgentRuntime::new(stored);
        let batch = match control {
            Control::Stop => rt.stop(),
            Control::Resume => rt.resume(),
        };
        let changed = batch.is_some();
        (batch, Ok((convert::agent_status(&rt.current()), changed)))
    })
    .await?
}

pub(super) async fn unenrol(ctx: &Arc<Context>, agent_id: &str) -> Result<bool, Error> {
    let removed = modify(ctx, agent_id, |current| match current {
        None => (None, false),
        Some(stored) => (Some(lifecycle::unenrol(&AgentRuntime::new(stored))), true),
    })
    .await?;
    if removed {
        tracing::info!(agent = %agent_id, "unenrolled");
    }
    Ok(removed)
}

/// The status of an agent another replica may hold: as stored, brought up to its newest
/// history record (the holder stores routine rounds' history at once and the entry only now
/// and then; see `lifecycle::CHECKPOINT`).
pub(super) async fn status(ctx: &Context, agent_id: &str) -> Result<pb::AgentStatus, Error> {
    let store = ctx.store.clone();
    let id = agent_id.to_owned();
    let entry = blocking(move || {
        let Some(mut entry) = store.get_agent(&id)? else { return Ok(None) };
        if let Some(newest) = store.history(&id, None, 1)?.first() {
            lifecycle::catch_up(&mut entry, newest);
        }
        Ok(Some(entry))
    })
    .await?
    .ok_or_else(|| Error::AgentNotFound { agent_id: agent_id.to_owned() })?;
    Ok(convert::agent_status(&entry))
}

/// A page of the whole fleet's agents: as stored, or as this replica holds them.
pub(super) async fn list(
    ctx: &Arc<Context>,
    after: &str,
    state: i32,
    limit: usize,
) -> Result<(Vec<pb::AgentStatus>, String), Error> {
    const READ: usize = 1000;
    let mut agents: Vec<pb::AgentStatus> = Vec::new();
    let mut cursor = (!after.is_empty()).then(|| after.to_owned());
    loop {
        let store = ctx.store.clone();
        let from = cursor.clone();
        let page = blocking(move || store.list_agents(from.as_deref(), READ)).await?;
        let full = page.len() == READ;
        for entry in page {
            cursor = Some(entry.agent_id.clone());
            let status = match ctx.agents.get(&entry.agent_id) {
                Some(slot) => held_status(ctx, &slot).await,
                None => convert::agent_status(&entry),
            };
            if state != 0 && status.state != state {
                continue;
            }
            if agents.len() == limit {
                let next = agents.last().map(|a| a.agent_id.clone()).unwrap_or_default();
                return Ok((agents, next));
            }
            agents.push(status);
        }
        if !full {
            return Ok((agents, String::new()));
        }
    }
}
