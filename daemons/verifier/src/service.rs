//! The gRPC service: each handler decodes and checks its request, calls [`crate::agents`] or
//! the store, and encodes the answer. Who may call what is decided before a handler runs
//! ([`crate::access`]).

use std::pin::Pin;
use std::sync::Arc;

use kl_proto::verifier::v1 as pb;
use kl_proto::verifier::v1::verifier_server::Verifier;
use kl_store::verifier::{PolicyDeletion, PolicyKind, PolicyPut, PutPrecondition};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::agents::{self, Control, Update};
use crate::context::{Context, parse_hash_algs, parse_sig_algs};
use crate::lifecycle::{self, Enrolment};
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

fn kind_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Runtime => "runtime",
        PolicyKind::MeasuredBoot => "measured-boot",
    }
}

impl VerifierService {
    fn check_policy_exists(&self, kind: PolicyKind, name: &str) -> Result<(), Error> {
        if name.is_empty() {
            return Ok(());
        }
        match self.ctx.store.policy_name(kind, name)? {
            Some(_) => Ok(()),
            None => Err(Error::PolicyNotFound { kind: kind_name(kind), name: name.to_owned() }),
        }
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
        let what = kind_name(kind);
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
            self.ctx.policies.changed();
            let message = format!("{what} policy {name} is now {}", record.digest);
            self.ctx.writer.commit(lifecycle::policy_changed(message)).await?;
            for slot in self.ctx.agents.all() {
                slot.wake.notify_one();
            }
        }
        let agents = agents::using_policy(&self.ctx, kind, name).await?;
        Ok((convert::policy_info(&record, agents), changed))
    }

    async fn get_policy(
        &self,
        kind: PolicyKind,
        name: &str,
    ) -> Result<(pb::PolicyInfo, Vec<u8>), Error> {
        let (record, document) = self.ctx.store.get_policy(kind, name)?.ok_or_else(|| {
            Error::PolicyNotFound { kind: kind_name(kind), name: name.to_owned() }
        })?;
        let agents = agents::using_policy(&self.ctx, kind, name).await?;
        Ok((convert::policy_info(&record, agents), document))
    }

    async fn list_policies(&self, kind: PolicyKind) -> Result<Vec<pb::PolicyInfo>, Error> {
        let mut out = Vec::new();
        for p in self.ctx.store.list_policies(kind)? {
            out.push(convert::policy_info(
                &p,
                agents::using_policy(&self.ctx, kind, &p.name).await?,
            ));
        }
        Ok(out)
    }

    fn delete_policy(&self, kind: PolicyKind, name: &str) -> Result<bool, Error> {
        match self.ctx.store.delete_policy(kind, name)? {
            PolicyDeletion::Deleted => {
                self.ctx.policies.changed();
                Ok(true)
            }
            PolicyDeletion::Absent => Ok(false),
            PolicyDeletion::InUse(agent_id) => {
                Err(Error::PolicyInUse { kind: kind_name(kind), name: name.to_owned(), agent_id })
            }
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
        let pcr_policy_json = convert::pcr_policy(req.pcr_policy.as_ref())?;
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
        let enrolment = Enrolment {
            agent_id: req.agent_id,
            runtime_policy: req.runtime_policy,
            measured_boot_policy: req.measured_boot_policy,
            pcr_policy_json,
            v_key_half: req.v_key_half,
            payload_digest,
            accept_hash_algorithms: req.accept_hash_algorithms,
            accept_signing_algorithms: req.accept_signing_algorithms,
            hash_algorithm,
        };
        let (agent, changed) = agents::enrol(&self.ctx, enrolment).await?;
        Ok(Response::new(pb::EnrollAgentResponse { agent: Some(agent), changed }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let agent_id = &request.get_ref().agent_id;
        check_agent_id(agent_id)?;
        let agent = agents::status(&self.ctx, agent_id).await?;
        Ok(Response::new(pb::GetAgentResponse { agent: Some(agent) }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let (agents, next_page_token) =
            agents::list(&self.ctx, &req.page_token, req.state, limit).await?;
        Ok(Response::new(pb::ListAgentsResponse { agents, next_page_token }))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let req = request.into_inner();
        check_agent_id(&req.agent_id)?;
        agents::check_enrolled(&self.ctx, &req.agent_id).await?;
        if let Some(name) = &req.runtime_policy {
            self.check_policy_exists(PolicyKind::Runtime, name)?;
        }
        if let Some(name) = &req.measured_boot_policy {
            self.check_policy_exists(PolicyKind::MeasuredBoot, name)?;
        }
        let pcr_policy_json = if req.pcr_policy.is_some() || req.clear_pcr_policy {
            Some(convert::pcr_policy(req.pcr_policy.as_ref())?)
        } else {
            None
        };
        let update = Update {
            runtime_policy: req.runtime_policy,
            measured_boot_policy: req.measured_boot_policy,
            pcr_policy_json,
            resume: req.resume,
        };
        let (agent, changed) = agents::update(&self.ctx, &req.agent_id, update).await?;
        Ok(Response::new(pb::UpdateAgentResponse { agent: Some(agent), changed }))
    }

    async fn unenroll_agent(
        &self,
        request: Request<pb::UnenrollAgentRequest>,
    ) -> Result<Response<pb::UnenrollAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let agent_id = request.into_inner().agent_id;
        check_agent_id(&agent_id)?;
        let changed = agents::unenrol(&self.ctx, &agent_id).await?;
        Ok(Response::new(pb::UnenrollAgentResponse { changed }))
    }

    async fn stop_agent(
        &self,
        request: Request<pb::StopAgentRequest>,
    ) -> Result<Response<pb::StopAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let agent_id = &request.get_ref().agent_id;
        check_agent_id(agent_id)?;
        let (agent, changed) = agents::control(&self.ctx, agent_id, Control::Stop).await?;
        Ok(Response::new(pb::StopAgentResponse { agent: Some(agent), changed }))
    }

    async fn resume_agent(
        &self,
        request: Request<pb::ResumeAgentRequest>,
    ) -> Result<Response<pb::ResumeAgentResponse>, Status> {
        self.ctx.writer.check_writable()?;
        let agent_id = &request.get_ref().agent_id;
        check_agent_id(agent_id)?;
        let (agent, changed) = agents::control(&self.ctx, agent_id, Control::Resume).await?;
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
        check_agent_id(&req.agent_id)?;
        // NOT_FOUND for an agent that is not enrolled (an empty history is an answer).
        agents::check_enrolled(&self.ctx, &req.agent_id).await?;
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
        let mut attestations = agents::history(&self.ctx, &req.agent_id, before, limit + 1).await?;
        let more = attestations.len() > limit;
        attestations.truncate(limit);
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
            self.ctx.tasks.shutdown(),
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
