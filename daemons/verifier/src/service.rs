//! The gRPC service: enrolment and agent control, policies, history and events.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kl_core::appraisal::{AgentPolicy, PcrOwner};
use kl_proto::registrar::v1 as registrar_pb;
use kl_proto::verifier::v1 as pb;
use kl_proto::verifier::v1::verifier_server::Verifier;
use kl_store::verifier::{
    AgentEntry, Batch, PolicyDeletion, PolicyKind, PolicyPut, PutPrecondition, Timestamp,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::context::{AgentRuntime, AgentSlot, Context, parse_hash_algs, parse_sig_algs};
use crate::scheduler::{self, event};
use crate::{Error, convert, events, policies};

/// Page size of list RPCs when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page of list RPCs.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest payload digest an enrolment may record (a hex SHA-512 with a prefix fits).
const MAX_PAYLOAD_DIGEST: usize = 128;

/// The verifier's gRPC service.
#[derive(Debug, Clone)]
pub struct VerifierService {
    pub(crate) ctx: Arc<Context>,
}

fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The registrar's rule (see [`kl_core::agent_id`]): an id it would refuse can never be
/// enrolled, so it is refused here as INVALID_ARGUMENT rather than looked up.
fn check_agent_id(agent_id: &str) -> Result<(), Error> {
    kl_core::agent_id::check_shown(agent_id).map_err(|reason| Error::invalid("agent_id", reason))
}

fn check_policy_name(name: &str) -> Result<(), Error> {
    let valid = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid("name", format!("{name:?} is not [A-Za-z0-9._-]{{1,128}}")))
    }
}

/// The `mode` of a policy put; an unknown number is refused rather than read as upsert, which
/// would replace a policy the caller meant only to create.
fn put_mode(mode: i32) -> Result<pb::PutPolicyMode, Error> {
    pb::PutPolicyMode::try_from(mode)
        .map_err(|_| Error::invalid("mode", format!("{mode} is not a PutPolicyMode")))
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

fn state_of(state: i32) -> pb::AgentState {
    pb::AgentState::try_from(state).unwrap_or(pb::AgentState::Unspecified)
}

impl VerifierService {
    fn check_policy_exists(&self, kind: PolicyKind, name: &str) -> Result<(), Error> {
        if name.is_empty() {
            return Ok(());
        }
        match self.ctx.store.policy_name(kind, name)? {
            Some(_) => Ok(()),
            None => Err(Error::PolicyNotFound {
                kind: match kind {
                    PolicyKind::Runtime => "runtime",
                    PolicyKind::MeasuredBoot => "measured-boot",
                },
                name: name.to_owned(),
            }),
        }
    }

    async fn registrar_record(&self, agent_id: &str) -> Result<registrar_pb::AgentRecord, Error> {
        let mut client = self.ctx.registrar()?;
        let request = registrar_pb::GetAgentRequest { agent_id: agent_id.to_owned() };
        match client.get_agent(request).await {
            Ok(answer) => answer
                .into_inner()
                .agent
                .ok_or_else(|| Error::NotRegistered { agent_id: agent_id.to_owned() }),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(Error::NotRegistered { agent_id: agent_id.to_owned() })
            }
            // The registrar's own rule refused the id: the caller's mistake, not an outage.
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                Err(Error::invalid("agent_id", format!("the registrar says: {}", status.message())))
            }
            Err(status) => Err(Error::Registrar {
                address: format!(
                    "{}:{}",
                    self.ctx.config.registrar_ip, self.ctx.config.registrar_port
                ),
                reason: format!("{}: {}", status.code(), status.message()),
            }),
        }
    }

    fn slot(&self, agent_id: &str) -> Result<Arc<AgentSlot>, Error> {
        check_agent_id(agent_id)?;
        self.ctx
            .slot(agent_id)
            .ok_or_else(|| Error::AgentNotFound { agent_id: agent_id.to_owned() })
    }

    /// Waits until the agent state a client is about to be shown is committed (it may hold
    /// routine rounds still queued), so that a crash never takes back what a client saw. While
    /// the store cannot be written (a full disk), the state is shown at once from memory:
    /// reads keep working, and the failure is logged and counted by the writer.
    async fn durable(&self, ticket: u64) {
        if let Err(e) = self.ctx.writer.wait_durable(ticket).await {
            tracing::debug!(error = %e, "showing agent state that is not stored yet");
        }
    }

    async fn agents_using(&self, kind: PolicyKind, name: &str) -> u64 {
        let mut count = 0;
        for slot in self.ctx.slots() {
            let rt = slot.runtime.lock().await;
            let used = match kind {
                PolicyKind::Runtime => &rt.entry.runtime_policy,
                PolicyKind::MeasuredBoot => &rt.entry.measured_boot_policy,
            };
            count += u64::from(used == name);
        }
        count
    }

    /// Moves an agent to `state` with a `state_changed` event, commits, and wakes its loop.
    async fn set_state(
        &self,
        slot: &AgentSlot,
        rt: &mut AgentRuntime,
        state: pb::AgentState,
        why: &str,
    ) -> Result<(), Error> {
        if slot.removed.load(Ordering::Acquire) {
            // Unenrolled while this call waited for the agent: nothing to change.
            return Err(Error::AgentNotFound { agent_id: slot.id.clone() });
        }
        let previous = rt.entry.state;
        rt.entry.state = state as i32;
        rt.changed();
        let batch = Batch {
            agents: vec![rt.snapshot()],
            events: vec![event(
                pb::EventKind::StateChanged,
                &slot.id,
                state as i32,
                previous,
                String::new(),
                why.to_owned(),
            )],
            ..Batch::default()
        };
        self.ctx.writer.commit(batch).await?;
        slot.wake.notify_one();
        Ok(())
    }

    async fn put_policy(
        &self,
        kind: PolicyKind,
        name: &str,
        mode: pb::PutPolicyMode,
        canonical: policies::Canonical,
    ) -> Result<(pb::PolicyInfo, bool), Error> {
        let precondition = match mode {
            pb::PutPolicyMode::Upsert => PutPrecondition::Any,
            pb::PutPolicyMode::Create => PutPrecondition::Absent,
            pb::PutPolicyMode::Replace => PutPrecondition::Present,
        };
        let what = if kind == PolicyKind::Runtime { "runtime" } else { "measured-boot" };
        let put = self.ctx.store.put_policy(
            kind,
            name,
            precondition,
            &canonical.digest,
            &canonical.document,
            canonical.entries,
        )?;
        let (record, changed) = match put {
            PolicyPut::Stored { record, changed } => (record, changed),
            PolicyPut::Exists(_) => {
                return Err(Error::PolicyExists { kind: what, name: name.to_owned() });
            }
            PolicyPut::Missing => {
                return Err(Error::PolicyNotFound { kind: what, name: name.to_owned() });
            }
        };
        if changed {
            self.ctx.policies_changed();
            let batch = Batch {
                events: vec![event(
                    pb::EventKind::PolicyChanged,
                    "",
                    0,
                    0,
                    String::new(),
                    format!("{what} policy {name} is now {}", record.digest),
                )],
                ..Batch::default()
            };
            self.ctx.writer.commit(batch).await?;
            for slot in self.ctx.slots() {
                slot.wake.notify_one();
            }
        }
        Ok((convert::policy_info(&record, self.agents_using(kind, name).await), changed))
    }

    async fn get_policy(
        &self,
        kind: PolicyKind,
        name: &str,
    ) -> Result<(pb::PolicyInfo, Vec<u8>), Error> {
        let (record, document) =
            self.ctx.store.get_policy(kind, name)?.ok_or_else(|| Error::PolicyNotFound {
                kind: if kind == PolicyKind::Runtime { "runtime" } else { "measured-boot" },
                name: name.to_owned(),
            })?;
        Ok((convert::policy_info(&record, self.agents_using(kind, name).await), document))
    }

    async fn list_policies(&self, kind: PolicyKind) -> Result<Vec<pb::PolicyInfo>, Error> {
        let mut out = Vec::new();
        for p in self.ctx.store.list_policies(kind)? {
            out.push(convert::policy_info(&p, self.agents_using(kind, &p.name).await));
        }
        Ok(out)
    }

    fn delete_policy(&self, kind: PolicyKind, name: &str) -> Result<bool, Error> {
        match self.ctx.store.delete_policy(kind, name)? {
            PolicyDeletion::Deleted => {
                self.ctx.policies_changed();
                Ok(true)
            }
            PolicyDeletion::Absent => Ok(false),
            PolicyDeletion::InUse(agent_id) => Err(Error::PolicyInUse {
                kind: if kind == PolicyKind::Runtime { "runtime" } else { "measured-boot" },
                name: name.to_owned(),
                agent_id,
            }),
        }
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Verifier for VerifierService {
    async fn enroll_agent(
        &self,
        request: Request<pb::EnrollAgentRequest>,
    ) -> Result<Response<pb::EnrollAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let req = request.into_inner();
        check_agent_id(&req.agent_id)?;
        self.check_policy_exists(PolicyKind::Runtime, &req.runtime_policy)?;
        self.check_policy_exists(PolicyKind::MeasuredBoot, &req.measured_boot_policy)?;
        let pcr_policy_json = policies::pcr_policy(req.pcr_policy.as_ref())?;
        if !req.v_key_half.is_empty() && req.v_key_half.len() != 32 {
            return Err(Error::invalid("v_key_half", "must be 32 bytes or empty").into());
        }
        if req.payload_digest.len() > MAX_PAYLOAD_DIGEST {
            return Err(Error::invalid(
                "payload_digest",
                format!("{} characters, at most {MAX_PAYLOAD_DIGEST}", req.payload_digest.len()),
            )
            .into());
        }
        // The digest describes the payload of this V half; without one it means nothing.
        let payload_digest =
            if req.v_key_half.is_empty() { String::new() } else { req.payload_digest };
        let hash_algorithm =
            if req.hash_algorithm.is_empty() { "sha256".to_owned() } else { req.hash_algorithm };
        parse_hash_algs(std::slice::from_ref(&hash_algorithm), "hash_algorithm")?;
        parse_hash_algs(&req.accept_hash_algorithms, "accept_hash_algorithms")?;
        parse_sig_algs(&req.accept_signing_algorithms, "accept_signing_algorithms")?;
        let record = self.registrar_record(&req.agent_id).await?;
        let _enrolment = self.ctx.enrolment_lock(&req.agent_id).lock().await;
        let contact = record.contact.unwrap_or_default();
        let contact_port = u16::try_from(contact.port).map_err(|_| {
            Error::invalid("contact", format!("port {} from the registrar", contact.port))
        })?;

        let mut entry = AgentEntry {
            agent_id: req.agent_id.clone(),
            contact_ip: contact.ip,
            contact_port,
            ak_public: record.ak_public,
            agent_certificate: record.agent_certificate,
            runtime_policy: req.runtime_policy,
            measured_boot_policy: req.measured_boot_policy,
            pcr_policy_json,
            v_key_half: req.v_key_half,
            key_delivered: false,
            accept_hash_algorithms: req.accept_hash_algorithms,
            accept_signing_algorithms: req.accept_signing_algorithms,
            hash_algorithm,
            state: pb::AgentState::Pending as i32,
            attestation_count: 0,
            enrolled_at: Timestamp::now(),
            last_attestation_at: None,
            last_success_at: None,
            last_verdict_json: String::new(),
            attestation_state_json: String::new(),
            ima_offset: 0,
            reset_count: 0,
            consecutive_errors: 0,
            history_sequence: 0,
            payload_digest,
        };
        // The inputs must be usable before anything is stored.
        check_pcr_overlap(&self.ctx.build_policy(&entry)?, &entry)?;

        if let Some(slot) = self.ctx.slot(&entry.agent_id) {
            let mut rt = slot.runtime.lock().await;
            let before = rt.entry.clone();
            let current = &mut rt.entry;
            let identity_changed = current.ak_public != entry.ak_public
                || current.agent_certificate != entry.agent_certificate
                || current.contact_ip != entry.contact_ip
                || current.contact_port != entry.contact_port;
            current.contact_ip = entry.contact_ip;
            current.contact_port = entry.contact_port;
            current.ak_public = entry.ak_public;
            current.agent_certificate = entry.agent_certificate;
            current.runtime_policy = entry.runtime_policy;
            current.measured_boot_policy = entry.measured_boot_policy;
            current.pcr_policy_json = entry.pcr_policy_json;
            // No V half means no payload this time: the one delivered before stays delivered.
            if !entry.v_key_half.is_empty() && current.v_key_half != entry.v_key_half {
                current.v_key_half = entry.v_key_half;
                current.key_delivered = false;
                current.payload_digest = entry.payload_digest;
            }
            current.accept_hash_algorithms = entry.accept_hash_algorithms;
            current.accept_signing_algorithms = entry.accept_signing_algorithms;
            current.hash_algorithm = entry.hash_algorithm;
            let changed = rt.entry != before;
            if changed {
                rt.changed();
                if identity_changed {
                    rt.client = None;
                }
                let mut events = vec![event(
                    pb::EventKind::PolicyChanged,
                    &slot.id,
                    rt.entry.state,
                    rt.entry.state,
                    String::new(),
                    "enrolment settings converged".to_owned(),
                )];
                // As with UpdateAgent, new settings attest a failed agent again.
                if state_of(rt.entry.state) == pb::AgentState::Failed {
                    rt.entry.state = pb::AgentState::Pending as i32;
                    events.push(event(
                        pb::EventKind::StateChanged,
                        &slot.id,
                        rt.entry.state,
                        pb::AgentState::Failed as i32,
                        String::new(),
                        "attestation resumed by a new enrolment".to_owned(),
                    ));
                }
                let batch = Batch { agents: vec![rt.snapshot()], events, ..Batch::default() };
                self.ctx.writer.commit(batch).await?;
                slot.wake.notify_one();
            }
            self.durable(rt.submitted).await;
            let agent = convert::agent_status(&rt.current());
            return Ok(Response::new(pb::EnrollAgentResponse { agent: Some(agent), changed }));
        }

        entry.attestation_state_json = String::new();
        let status = convert::agent_status(&entry);
        let slot = Arc::new(AgentSlot {
            id: entry.agent_id.clone(),
            runtime: tokio::sync::Mutex::new(AgentRuntime::new(entry.clone())),
            wake: tokio::sync::Notify::new(),
            removed: std::sync::atomic::AtomicBool::new(false),
        });
        {
            let mut agents =
                self.ctx.agents.write().map_err(|_| Error::Internal("agent table lock".into()))?;
            if agents.contains_key(&slot.id) {
                return Err(Status::aborted(
                    "a concurrent enrolment of this agent is in progress; retry",
                ));
            }
            agents.insert(slot.id.clone(), slot.clone());
        }
        let batch = Batch {
            agents: vec![entry],
            events: vec![event(
                pb::EventKind::Enrolled,
                &slot.id,
                pb::AgentState::Pending as i32,
                pb::AgentState::Unspecified as i32,
                String::new(),
                "enrolled".to_owned(),
            )],
            ..Batch::default()
        };
        if let Err(e) = self.ctx.writer.commit(batch).await {
            if matches!(e, Error::StoreUnwritable(_)) {
                // Held by the writer and stored once the disk takes it: the enrolment stands
                // (the answer says so), so its agent is attested meanwhile.
                scheduler::start(&self.ctx, slot, std::time::Duration::ZERO);
            } else if let Ok(mut agents) = self.ctx.agents.write() {
                agents.remove(&slot.id);
            }
            return Err(e.into());
        }
        tracing::info!(agent = %slot.id, "enrolled");
        scheduler::start(&self.ctx, slot, std::time::Duration::ZERO);
        Ok(Response::new(pb::EnrollAgentResponse { agent: Some(status), changed: true }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let slot = self.slot(&request.get_ref().agent_id)?;
        let (agent, ticket) = {
            let rt = slot.runtime.lock().await;
            (convert::agent_status(&rt.current()), rt.submitted)
        };
        self.durable(ticket).await;
        Ok(Response::new(pb::GetAgentResponse { agent: Some(agent) }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let after = req.page_token;
        let slots: Vec<Arc<AgentSlot>> = {
            let agents =
                self.ctx.agents.read().map_err(|_| Error::Internal("agent table lock".into()))?;
            agents
                .range::<String, _>((
                    if after.is_empty() {
                        std::ops::Bound::Unbounded
                    } else {
                        std::ops::Bound::Excluded(after.clone())
                    },
                    std::ops::Bound::Unbounded,
                ))
                .map(|(_, slot)| slot.clone())
                .collect()
        };
        let mut agents = Vec::new();
        let mut next_page_token = String::new();
        let mut newest = 0;
        for slot in slots {
            let status = {
                let rt = slot.runtime.lock().await;
                newest = newest.max(rt.submitted);
                convert::agent_status(&rt.current())
            };
            if req.state != 0 && status.state != req.state {
                continue;
            }
            if agents.len() == limit {
                next_page_token =
                    agents.last().map(|a: &pb::AgentStatus| a.agent_id.clone()).unwrap_or_default();
                break;
            }
            agents.push(status);
        }
        self.durable(newest).await;
        Ok(Response::new(pb::ListAgentsResponse { agents, next_page_token }))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let req = request.into_inner();
        let slot = self.slot(&req.agent_id)?;
        if let Some(name) = &req.runtime_policy {
            self.check_policy_exists(PolicyKind::Runtime, name)?;
        }
        if let Some(name) = &req.measured_boot_policy {
            self.check_policy_exists(PolicyKind::MeasuredBoot, name)?;
        }
        let pcr_policy_json = if req.pcr_policy.is_some() || req.clear_pcr_policy {
            Some(policies::pcr_policy(req.pcr_policy.as_ref())?)
        } else {
            None
        };
        let _enrolment = self.ctx.enrolment_lock(&req.agent_id).lock().await;
        let mut rt = slot.runtime.lock().await;
        if slot.removed.load(Ordering::Acquire) {
            return Err(Error::AgentNotFound { agent_id: req.agent_id.clone() }.into());
        }
        let mut settings = rt.entry.clone();
        if let Some(name) = req.runtime_policy {
            settings.runtime_policy = name;
        }
        if let Some(name) = req.measured_boot_policy {
            settings.measured_boot_policy = name;
        }
        if let Some(json) = pcr_policy_json {
            settings.pcr_policy_json = json;
        }
        let settings_changed = settings != rt.entry;
        if settings_changed {
            check_pcr_overlap(&self.ctx.build_policy(&settings)?, &settings)?;
        }
        let previous = rt.entry.state;
        let resume = state_of(previous) == pb::AgentState::Failed && settings_changed
            || req.resume
                && matches!(state_of(previous), pb::AgentState::Failed | pb::AgentState::Stopped);
        if !settings_changed && !resume {
            self.durable(rt.submitted).await;
            let agent = convert::agent_status(&rt.current());
            return Ok(Response::new(pb::UpdateAgentResponse {
                agent: Some(agent),
                changed: false,
            }));
        }
        rt.entry = settings;
        rt.changed();
        let mut batch = Batch::default();
        if settings_changed {
            batch.events.push(event(
                pb::EventKind::PolicyChanged,
                &slot.id,
                previous,
                previous,
                String::new(),
                "policies updated".to_owned(),
            ));
        }
        if resume {
            rt.entry.state = pb::AgentState::Pending as i32;
            batch.events.push(event(
                pb::EventKind::StateChanged,
                &slot.id,
                rt.entry.state,
                previous,
                String::new(),
                "attestation resumed by an update".to_owned(),
            ));
        }
        batch.agents.push(rt.snapshot());
        self.ctx.writer.commit(batch).await?;
        slot.wake.notify_one();
        let agent = convert::agent_status(&rt.current());
        Ok(Response::new(pb::UpdateAgentResponse { agent: Some(agent), changed: true }))
    }

    async fn unenroll_agent(
        &self,
        request: Request<pb::UnenrollAgentRequest>,
    ) -> Result<Response<pb::UnenrollAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let agent_id = request.into_inner().agent_id;
        check_agent_id(&agent_id)?;
        let _enrolment = self.ctx.enrolment_lock(&agent_id).lock().await;
        let removed = self
            .ctx
            .agents
            .write()
            .map_err(|_| Error::Internal("agent table lock".into()))?
            .remove(&agent_id);
        let Some(slot) = removed else {
            return Ok(Response::new(pb::UnenrollAgentResponse { changed: false }));
        };
        let rt = slot.runtime.lock().await;
        slot.removed.store(true, Ordering::Release);
        slot.wake.notify_one();
        let batch = Batch {
            removed: vec![agent_id.clone()],
            events: vec![event(
                pb::EventKind::Unenrolled,
                &agent_id,
                pb::AgentState::Unspecified as i32,
                rt.entry.state,
                String::new(),
                "unenrolled".to_owned(),
            )],
            ..Batch::default()
        };
        self.ctx.writer.commit(batch).await?;
        tracing::info!(agent = %agent_id, "unenrolled");
        Ok(Response::new(pb::UnenrollAgentResponse { changed: true }))
    }

    async fn stop_agent(
        &self,
        request: Request<pb::StopAgentRequest>,
    ) -> Result<Response<pb::StopAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let slot = self.slot(&request.get_ref().agent_id)?;
        let mut rt = slot.runtime.lock().await;
        let changed = state_of(rt.entry.state) != pb::AgentState::Stopped;
        if changed {
            self.set_state(&slot, &mut rt, pb::AgentState::Stopped, "stopped by an operator")
                .await?;
        }
        self.durable(rt.submitted).await;
        let agent = convert::agent_status(&rt.current());
        Ok(Response::new(pb::StopAgentResponse { agent: Some(agent), changed }))
    }

    async fn resume_agent(
        &self,
        request: Request<pb::ResumeAgentRequest>,
    ) -> Result<Response<pb::ResumeAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let slot = self.slot(&request.get_ref().agent_id)?;
        let mut rt = slot.runtime.lock().await;
        let changed =
            matches!(state_of(rt.entry.state), pb::AgentState::Stopped | pb::AgentState::Failed);
        if changed {
            self.set_state(&slot, &mut rt, pb::AgentState::Pending, "resumed by an operator")
                .await?;
        }
        self.durable(rt.submitted).await;
        let agent = convert::agent_status(&rt.current());
        Ok(Response::new(pb::ResumeAgentResponse { agent: Some(agent), changed }))
    }

    async fn put_runtime_policy(
        &self,
        request: Request<pb::PutRuntimePolicyRequest>,
    ) -> Result<Response<pb::PutRuntimePolicyResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let req = request.into_inner();
        check_policy_name(&req.name)?;
        let canonical =
            policies::canonical_runtime(&req.document, &req.exclude_list, &req.signing_key)?;
        let (policy, changed) =
            self.put_policy(PolicyKind::Runtime, &req.name, put_mode(req.mode)?, canonical).await?;
        Ok(Response::new(pb::PutRuntimePolicyResponse { policy: Some(policy), changed }))
    }

    async fn get_runtime_policy(
        &self,
        request: Request<pb::GetRuntimePolicyRequest>,
    ) -> Result<Response<pb::GetRuntimePolicyResponse>, Status> {
        let (policy, document) =
            self.get_policy(PolicyKind::Runtime, &request.get_ref().name).await?;
        Ok(Response::new(pb::GetRuntimePolicyResponse { policy: Some(policy), document }))
    }

    async fn list_runtime_policies(
        &self,
        _request: Request<pb::ListRuntimePoliciesRequest>,
    ) -> Result<Response<pb::ListRuntimePoliciesResponse>, Status> {
        let policies = self.list_policies(PolicyKind::Runtime).await?;
        Ok(Response::new(pb::ListRuntimePoliciesResponse { policies }))
    }

    async fn delete_runtime_policy(
        &self,
        request: Request<pb::DeleteRuntimePolicyRequest>,
    ) -> Result<Response<pb::DeleteRuntimePolicyResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let changed = self.delete_policy(PolicyKind::Runtime, &request.get_ref().name)?;
        Ok(Response::new(pb::DeleteRuntimePolicyResponse { changed }))
    }

    async fn put_measured_boot_policy(
        &self,
        request: Request<pb::PutMeasuredBootPolicyRequest>,
    ) -> Result<Response<pb::PutMeasuredBootPolicyResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let req = request.into_inner();
        check_policy_name(&req.name)?;
        let canonical = policies::canonical_mb(&req.document)?;
        let (policy, changed) = self
            .put_policy(PolicyKind::MeasuredBoot, &req.name, put_mode(req.mode)?, canonical)
            .await?;
        Ok(Response::new(pb::PutMeasuredBootPolicyResponse { policy: Some(policy), changed }))
    }

    async fn get_measured_boot_policy(
        &self,
        request: Request<pb::GetMeasuredBootPolicyRequest>,
    ) -> Result<Response<pb::GetMeasuredBootPolicyResponse>, Status> {
        let (policy, document) =
            self.get_policy(PolicyKind::MeasuredBoot, &request.get_ref().name).await?;
        Ok(Response::new(pb::GetMeasuredBootPolicyResponse { policy: Some(policy), document }))
    }

    async fn list_measured_boot_policies(
        &self,
        _request: Request<pb::ListMeasuredBootPoliciesRequest>,
    ) -> Result<Response<pb::ListMeasuredBootPoliciesResponse>, Status> {
        let policies = self.list_policies(PolicyKind::MeasuredBoot).await?;
        Ok(Response::new(pb::ListMeasuredBootPoliciesResponse { policies }))
    }

    async fn delete_measured_boot_policy(
        &self,
        request: Request<pb::DeleteMeasuredBootPolicyRequest>,
    ) -> Result<Response<pb::DeleteMeasuredBootPolicyResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let changed = self.delete_policy(PolicyKind::MeasuredBoot, &request.get_ref().name)?;
        Ok(Response::new(pb::DeleteMeasuredBootPolicyResponse { changed }))
    }

    async fn list_attestations(
        &self,
        request: Request<pb::ListAttestationsRequest>,
    ) -> Result<Response<pb::ListAttestationsResponse>, Status> {
        let req = request.into_inner();
        self.slot(&req.agent_id)?;
        let before = if req.page_token.is_empty() {
            None
        } else {
            Some(req.page_token.parse::<u64>().map_err(|_| {
                Error::invalid(
                    "page_token",
                    format!("{:?} is not a token of this list", req.page_token),
                )
            })?)
        };
        let limit = page_size(req.page_size);
        // Rounds not yet committed (see `writer::LINGER`) are part of the answer; while the
        // store cannot be written, the answer is what it holds (the rounds since are held in
        // memory, and listed once committed).
        if self.ctx.writer.unwritable().is_none() {
            self.ctx.writer.flush().await?;
        }
        let records =
            self.ctx.store.history(&req.agent_id, before, limit + 1).map_err(Error::from)?;
        let more = records.len() > limit;
        let attestations: Vec<pb::Attestation> =
            records.iter().take(limit).map(convert::attestation).collect();
        let next_page_token = if more {
            attestations.last().map(|a| a.sequence.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAttestationsResponse { attestations, next_page_token }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let req = request.into_inner();
        if !req.agent_id.is_empty() {
            check_agent_id(&req.agent_id)?;
        }
        let watch = events::Watch {
            from_cursor: req.from_cursor,
            agent_id: req.agent_id,
            until_cursor: req.until_cursor,
        };
        let (receiver, task) = events::watch(
            self.ctx.store.clone(),
            &self.ctx.events,
            watch,
            self.ctx.shutdown.clone(),
        )?;
        self.ctx.spawn(task);
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn get_event_cursors(
        &self,
        _request: Request<pb::GetEventCursorsRequest>,
    ) -> Result<Response<pb::GetEventCursorsResponse>, Status> {
        // Newest first: an event committed between the two reads then cannot make the oldest
        // look newer than the newest.
        let newest_cursor = self.ctx.store.last_event().map_err(Error::from)?;
        let oldest_cursor =
            self.ctx.store.oldest_event().map_err(Error::from)?.unwrap_or(newest_cursor + 1);
        Ok(Response::new(pb::GetEventCursorsResponse { oldest_cursor, newest_cursor }))
    }
}
