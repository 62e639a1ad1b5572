//! The operator's side of agent lifecycles (enrol, update, stop, resume, unenrol) and what
//! clients are shown of agents. Each change is a transition of [`crate::lifecycle`] made under
//! the agent's lock and committed before the answer; each status or history shown waits
//! until what it shows is committed, so that a crash never takes back what a client saw.

use std::sync::Arc;

use kl_core::appraisal::{AgentPolicy, PcrOwner};
use kl_proto::verifier::v1 as pb;
use kl_store::verifier::AgentEntry;

use crate::context::Context;
use crate::lifecycle::{self, AgentRuntime, AgentSlot, Enrolment, Identity};
use crate::{Error, convert, scheduler};

mod shared;

/// What an update asks to change; `None` leaves a setting as it is.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub runtime_policy: Option<String>,
    pub measured_boot_policy: Option<String>,
    pub pcr_policy_json: Option<String>,
    pub resume: bool,
}

impl Update {
    /// `entry` with the settings this update asks for.
    fn apply(&self, entry: &AgentEntry) -> AgentEntry {
        let mut settings = entry.clone();
        if let Some(name) = &self.runtime_policy {
            settings.runtime_policy = name.clone();
        }
        if let Some(name) = &self.measured_boot_policy {
            settings.measured_boot_policy = name.clone();
        }
        if let Some(json) = &self.pcr_policy_json {
            settings.pcr_policy_json = json.clone();
        }
        settings
    }
}

/// Refuses a PCR policy that pins a PCR the agent's measured-boot or runtime policy owns.
fn check_pcr_overlap(policy: &AgentPolicy, entry: &AgentEntry) -> Result<(), Error> {
    let Some((pcr, owner)) = policy.pcr_policy_overlap() else { return Ok(()) };
    let name = match owner {
        PcrOwner::MeasuredBoot => &entry.measured_boot_policy,
        PcrOwner::RuntimePolicy => &entry.runtime_policy,
    };
    Err(Error::invalid(
        "pcr_policy",
        format!(
            "PCR {pcr} is checked by {owner} {name:?}; a fixed value for it would fail later; \
             remove PCR {pcr} from the PCR policy"
        ),
    ))
}

/// `entry`, once its appraisal inputs are usable (built on the blocking pool: the policies
/// may have to be read and parsed).
pub(crate) async fn checked(ctx: &Arc<Context>, entry: AgentEntry) -> Result<AgentEntry, Error> {
    let _turn = ctx.changes.acquire().await.map_err(|_| Error::Internal("stopping".into()))?;
    let context = ctx.clone();
    tokio::task::spawn_blocking(move || {
        check_pcr_overlap(&context.build_policy(&entry)?, &entry)?;
        Ok(entry)
    })
    .await
    .map_err(|e| Error::Internal(format!("checking the agent's inputs: {e}")))?
}

/// The enrolled agent `agent_id`.
pub(crate) fn slot(ctx: &Context, agent_id: &str) -> Result<Arc<AgentSlot>, Error> {
    ctx.agents.get(agent_id).ok_or_else(|| Error::AgentNotFound { agent_id: agent_id.to_owned() })
}

/// NOT_FOUND unless `agent_id` is enrolled (attested here or, on a replica, stored).
pub(crate) async fn check_enrolled(ctx: &Context, agent_id: &str) -> Result<(), Error> {
    if ctx.agents.get(agent_id).is_some() {
        return Ok(());
    }
    if ctx.replica.is_some() {
        return shared::stored(ctx, agent_id).await.map(drop);
    }
    Err(Error::AgentNotFound { agent_id: agent_id.to_owned() })
}

/// Waits until the agent state a client is about to be shown is committed (it may hold
/// routine rounds still queued). While the store cannot be written (a full disk), the state is
/// shown at once from memory: reads keep working, and the failure is logged and counted by the
/// writer.
async fn durable(ctx: &Context, ticket: u64) {
    if let Err(e) = ctx.writer.wait_durable(ticket).await {
        tracing::debug!(error = %e, "showing agent state that is not stored yet");
    }
}

/// The status of `rt`'s agent, once committed.
async fn shown(ctx: &Context, rt: &AgentRuntime) -> pb::AgentStatus {
    durable(ctx, rt.submitted).await;
    convert::agent_status(&rt.current())
}

/// Commits a transition's batch, if it made one, and wakes the agent's loop; whether it did.
async fn apply(
    ctx: &Context,
    slot: &AgentSlot,
    batch: Option<kl_store::verifier::Batch>,
) -> Result<bool, Error> {
    let Some(batch) = batch else { return Ok(false) };
    ctx.writer.commit(batch).await?;
    slot.wake.notify_one();
    Ok(true)
}

/// Enrols an agent, or converges an enrolled one to the settings asked for. Returns its status
/// and whether anything changed.
pub(crate) async fn enrol(
    ctx: &Arc<Context>,
    wanted: Enrolment,
) -> Result<(pb::AgentStatus, bool), Error> {
    let record = ctx.registrar_record(&wanted.agent_id).await?;
    let _enrolment = ctx.agents.enrolment_lock(&wanted.agent_id).lock().await;
    let contact = record.contact.unwrap_or_default();
    let contact_port = u16::try_from(contact.port).map_err(|_| {
        Error::invalid("contact", format!("port {} from the registrar", contact.port))
    })?;
    let entry = wanted.entry(Identity {
        contact_ip: contact.ip,
        contact_port,
        ak_public: record.ak_public,
        agent_certificate: record.agent_certificate,
    });
    // The inputs must be usable before anything is stored.
    let entry = checked(ctx, entry).await?;
    if ctx.replica.is_some() {
        return shared::enrol(ctx, entry).await;
    }

    if let Some(slot) = ctx.agents.get(&entry.agent_id) {
        let mut rt = slot.runtime.lock().await;
        let batch = rt.converge(entry);
        let changed = apply(ctx, &slot, batch).await?;
        return Ok((shown(ctx, &rt).await, changed));
    }

    let status = convert::agent_status(&entry);
    let batch = lifecycle::enrol(entry.clone());
    let slot = Arc::new(AgentSlot::new(entry));
    if !ctx.agents.insert(&slot) {
        return Err(Error::Conflict("a concurrent enrolment of this agent is in progress; retry"));
    }
    if let Err(e) = ctx.writer.commit(batch).await {
        if matches!(e, Error::StoreUnwritable(_)) {
            // Held by the writer and stored once the disk takes it: the enrolment stands
            // (the answer says so), so its agent is attested meanwhile.
            scheduler::start(ctx, slot, std::time::Duration::ZERO);
        } else {
            ctx.agents.remove(&slot.id);
        }
        return Err(e);
    }
    tracing::info!(agent = %slot.id, "enrolled");
    scheduler::start(ctx, slot, std::time::Duration::ZERO);
    Ok((status, true))
}

/// Changes an agent's policies, resumes it, or both.
pub(crate) async fn update(
    ctx: &Arc<Context>,
    agent_id: &str,
    update: Update,
) -> Result<(pb::AgentStatus, bool), Error> {
    if ctx.replica.is_some() {
        return shared::update(ctx, agent_id, update).await;
    }
    let slot = slot(ctx, agent_id)?;
    let _enrolment = ctx.agents.enrolment_lock(&slot.id).lock().await;
    let mut rt = slot.runtime.lock().await;
    if slot.is_removed() {
        return Err(Error::AgentNotFound { agent_id: slot.id.clone() });
    }
    let settings = update.apply(&rt.entry);
    if settings != rt.entry {
        check_pcr_overlap(&ctx.build_policy(&settings)?, &settings)?;
    }
    let batch = rt.update(settings, update.resume);
    let changed = apply(ctx, &slot, batch).await?;
    let agent = if changed { convert::agent_status(&rt.current()) } else { shown(ctx, &rt).await };
    Ok((agent, changed))
}

/// A state change by an operator: stop or resume.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    Stop,
    Resume,
}

pub(crate) async fn control(
    ctx: &Arc<Context>,
    agent_id: &str,
    control: Control,
) -> Result<(pb::AgentStatus, bool), Error> {
    if ctx.replica.is_some() {
        return shared::control(ctx, agent_id, control).await;
    }
    let slot = slot(ctx, agent_id)?;
    let mut rt = slot.runtime.lock().await;
    let batch = match control {
        Control::Stop => rt.stop(),
        Control::Resume => rt.resume(),
    };
    if batch.is_some() && slot.is_removed() {
        // Unenrolled while this call waited for the agent: nothing to change.
        return Err(Error::AgentNotFound { agent_id: slot.id.clone() });
    }
    let changed = apply(ctx, &slot, batch).await?;
    Ok((shown(ctx, &rt).await, changed))
}

/// Unenrols `agent_id`; whether it was enrolled.
pub(crate) async fn unenrol(ctx: &Arc<Context>, agent_id: &str) -> Result<bool, Error> {
    if ctx.replica.is_some() {
        return shared::unenrol(ctx, agent_id).await;
    }
    let _enrolment = ctx.agents.enrolment_lock(agent_id).lock().await;
    let Some(slot) = ctx.agents.remove(agent_id) else { return Ok(false) };
    let rt = slot.runtime.lock().await;
    slot.mark_removed();
    ctx.writer.commit(lifecycle::unenrol(&rt)).await?;
    tracing::info!(agent = %agent_id, "unenrolled");
    Ok(true)
}

/// The status of one agent.
pub(crate) async fn status(ctx: &Arc<Context>, agent_id: &str) -> Result<pb::AgentStatus, Error> {
    match ctx.agents.get(agent_id) {
        Some(slot) => Ok(held_status(ctx, &slot).await),
        None if ctx.replica.is_some() => shared::status(ctx, agent_id).await,
        None => Err(Error::AgentNotFound { agent_id: agent_id.to_owned() }),
    }
}

/// The status of an agent this verifier attests, once committed.
async fn held_status(ctx: &Context, slot: &AgentSlot) -> pb::AgentStatus {
    let (agent, ticket) = {
        let rt = slot.runtime.lock().await;
        (convert::agent_status(&rt.current()), rt.submitted)
    };
    durable(ctx, ticket).await;
    agent
}

/// A page of agents after `after` (in id order), of `state` unless 0; and the token of the
/// next page ("" when this is the last).
pub(crate) async fn list(
    ctx: &Arc<Context>,
    after: &str,
    state: i32,
    limit: usize,
) -> Result<(Vec<pb::AgentStatus>, String), Error> {
    if ctx.replica.is_some() {
        return shared::list(ctx, after, state, limit).await;
    }
    let mut agents = Vec::new();
    let mut next_page_token = String::new();
    let mut newest = 0;
    for slot in ctx.agents.after(after) {
        let status = {
            let rt = slot.runtime.lock().await;
            newest = newest.max(rt.submitted);
            convert::agent_status(&rt.current())
        };
        if state != 0 && status.state != state {
            continue;
        }
        if agents.len() == limit {
            next_page_token =
                agents.last().map(|a: &pb::AgentStatus| a.agent_id.clone()).unwrap_or_default();
            break;
        }
        agents.push(status);
    }
    durable(ctx, newest).await;
    Ok((agents, next_page_token))
}

/// Up to `limit` of an agent's attestations, newest first, before sequence `before`.
pub(crate) async fn history(
    ctx: &Context,
    agent_id: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<pb::Attestation>, Error> {
    // Rounds not yet committed (see `writer::LINGER`) are part of the answer; while the store
    // cannot be written, the answer is what it holds (the rounds since are held in memory,
    // and listed once committed).
    if ctx.writer.unwritable().is_none() {
        ctx.writer.flush().await?;
    }
    let records = ctx.store.history(agent_id, before, limit)?;
    Ok(records.iter().map(convert::attestation).collect())
}

/// How many agents use the `kind` policy `name`.
pub(crate) async fn using_policy(
    ctx: &Context,
    kind: kl_store::verifier::PolicyKind,
    name: &str,
) -> Result<u64, Error> {
    if ctx.replica.is_some() {
        let store = ctx.store.clone();
        let name = name.to_owned();
        return tokio::task::spawn_blocking(move || store.policy_users(kind, &name))
            .await
            .map_err(|e| Error::Internal(format!("store task: {e}")))?
            .map_err(Error::from);
    }
    let mut count = 0;
    for slot in ctx.agents.all() {
        let rt = slot.runtime.lock().await;
        let used = match kind {
            kl_store::verifier::PolicyKind::Runtime => &rt.entry.runtime_policy,
            kl_store::verifier::PolicyKind::MeasuredBoot => &rt.entry.measured_boot_policy,
        };
        count += u64::from(used == name);
    }
    Ok(count)
}

/// The number of agents in each state, for metrics.
pub(crate) async fn count_by_state(ctx: &Context) -> Vec<(pb::AgentState, u64)> {
    let mut counts: Vec<(pb::AgentState, u64)> = Vec::new();
    for slot in ctx.agents.all() {
        let state = slot.runtime.lock().await.state();
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    counts
}
