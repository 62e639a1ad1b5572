//! The `keylime.registrar.v1.Registrar` gRPC service.

use std::sync::Arc;

use kl_core::credential;
use kl_proto::registrar::v1 as pb;
use kl_proto::registrar::v1::registrar_server::Registrar;
use kl_store::registrar::{Activation, AgentRecord, RegistrarStore, Timestamp};
use kl_svc::metrics::counted;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::access::Access;
use crate::pending::{Full, PendingRegistrations};
use crate::ratelimit::RateLimiter;
use crate::registration::{self, EkTrustSource};
use crate::writer::ActivationWriter;

/// Page size of ListAgents when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page ListAgents returns.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The registrar's request handling; cheap to clone (shared state behind `Arc`s).
#[derive(Debug, Clone)]
pub struct RegistrarService {
    pub(crate) store: Arc<RegistrarStore>,
    pub(crate) writer: ActivationWriter,
    pub(crate) pending: Arc<PendingRegistrations>,
    pub(crate) trust: Arc<EkTrustSource>,
    pub(crate) access: Access,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) calls: Arc<kl_svc::metrics::CallCounts>,
}

impl RegistrarService {
    fn rate_limit<T>(&self, request: &Request<T>, action: &'static str) -> Result<(), Error> {
        let Some(source) = request.remote_addr().map(|a| a.ip()) else {
            return Ok(());
        };
        if self.limiter.allow(source) {
            Ok(())
        } else {
            Err(Error::RateLimited { action, source_ip: source.to_string() })
        }
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<pb::RegisterResponse, Error> {
        self.rate_limit(&request, "Register")?;
        let request = request.into_inner();
        let checked = registration::check(&request, &self.trust.current())?;
        if let Some(existing) = self.read(move |store| store.get_agent(&request.agent_id)).await?
            && !existing.same_tpm_identity(&checked.record)
        {
            tracing::warn!(agent_id = %existing.agent_id, "registration with a different TPM identity refused");
            return Err(Error::IdentityConflict);
        }
        let (secret, made) = registration::challenge(&checked.ek, &checked.record.ak_name)?;
        let agent_id = checked.record.agent_id.clone();
        self.pending.insert(checked.record, secret).map_err(|full| match full {
            Full::Count => Error::PendingFull,
            Full::Bytes => Error::PendingBytes,
        })?;
        tracing::info!(%agent_id, "registration pending activation");
        Ok(pb::RegisterResponse {
            credential_blob: made.id_object,
            encrypted_secret: made.encrypted_secret,
        })
    }

    async fn activate(
        &self,
        request: Request<pb::ActivateRequest>,
    ) -> Result<pb::ActivateResponse, Error> {
        self.rate_limit(&request, "Activate")?;
        let request = request.into_inner();
        registration::check_agent_id(&request.agent_id)?;
        let agent_id = request.agent_id;
        let opens = |secret: &[u8; registration::SECRET_LEN]| {
            credential::verify_activation(secret, &agent_id, &request.auth_tag)
        };
        let pending = match self.pending.take_matching(&agent_id, opens) {
            Ok(pending) => pending,
            Err(false) => return Err(Error::NoPendingRegistration { agent_id }),
            Err(true) => {
                tracing::warn!(%agent_id, "activation proof matches no pending registration");
                return Err(Error::NoPendingRegistration { agent_id });
            }
        };
        let mut record = pending.record;
        record.activated_at = Timestamp::now();
        match self.writer.activate(record).await? {
            Activation::Activated(record) => {
                tracing::info!(%agent_id, registration_count = record.registration_count, "agent activated");
                Ok(pb::ActivateResponse { registration_count: record.registration_count })
            }
            Activation::IdentityConflict => {
                tracing::warn!(%agent_id, "activation refused: another TPM identity activated this id first");
                Err(Error::IdentityConflict)
            }
        }
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<pb::GetAgentResponse, Error> {
        let agent_id = request.into_inner().agent_id;
        registration::check_agent_id(&agent_id)?;
        let id = agent_id.clone();
        match self.read(move |store| store.get_agent(&id)).await? {
            Some(record) => Ok(pb::GetAgentResponse { agent: Some(to_proto(record)) }),
            None => Err(Error::AgentNotFound { agent_id }),
        }
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<pb::ListAgentsResponse, Error> {
        let request = request.into_inner();
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            registration::check_agent_id(&request.page_token)
                .map_err(|_| Error::invalid("page_token", "not a token returned by ListAgents"))?;
            Some(request.page_token)
        };
        let mut agents =
            self.read(move |store| store.list_agents(after.as_deref(), page_size + 1)).await?;
        let next_page_token = if agents.len() > page_size {
            agents.truncate(page_size);
            agents.last().map(|a| a.agent_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListAgentsResponse {
            agents: agents.into_iter().map(to_proto).collect(),
            next_page_token,
        })
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<pb::DeleteAgentResponse, Error> {
        let agent_id = request.into_inner().agent_id;
        registration::check_agent_id(&agent_id)?;
        let id = agent_id.clone();
        let commits = self.writer.commits();
        let deleted = self
            .read(move |store| {
                let deleted = store.delete_agent(&id);
                commits.record(deleted.as_ref().map(drop));
                deleted
            })
            .await?;
        tracing::info!(%agent_id, deleted, "agent deleted by an admin");
        Ok(pb::DeleteAgentResponse { deleted })
    }

    /// Runs a store call off the async workers (redb calls block).
    async fn read<T: Send + 'static>(
        &self,
        call: impl FnOnce(&RegistrarStore) -> Result<T, kl_store::StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| Error::Internal(format!("store task failed: {e}")))?
            .map_err(Error::from)
    }
}

fn to_proto(record: AgentRecord) -> pb::AgentRecord {
    let timestamp = |t: Timestamp| prost_types::Timestamp {
        seconds: t.seconds,
        nanos: i32::try_from(t.nanos).unwrap_or(0),
    };
    pb::AgentRecord {
        agent_id: record.agent_id,
        ek_public: record.ek_public,
        ek_certificate: record.ek_certificate,
        ek_intermediate_certificates: record.ek_intermediate_certificates,
        ek_certificate_verified: record.ek_certificate_verified,
        ak_public: record.ak_public,
        ak_name: record.ak_name,
        agent_certificate: record.agent_certificate,
        contact: Some(pb::Contact { ip: record.contact_ip, port: u32::from(record.contact_port) }),
        registration_count: record.registration_count,
        registered_at: Some(timestamp(record.registered_at)),
        activated_at: Some(timestamp(record.activated_at)),
    }
}

#[tonic::async_trait]
impl Registrar for RegistrarService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let (agent_id, peer) = (request.get_ref().agent_id.clone(), request.remote_addr());
        let result = RegistrarService::register(self, request).await;
        // Refusals for load (rate limit, pending set full) are counted, not logged one by one:
        // a flood of them must not flood the log too.
        let for_load = matches!(
            &result,
            Err(Error::RateLimited { .. } | Error::PendingFull | Error::PendingBytes)
        );
        if let Err(e) = &result
            && !for_load
        {
            // An operator diagnosing an agent that never appears needs the why, here.
            let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".to_owned());
            tracing::warn!(agent_id = %agent_id.escape_debug(), %peer, reason = %e, "registration refused");
        }
        counted(&self.calls, "Register", result.map_err(Status::from))
    }

    async fn activate(
        &self,
        request: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let result = RegistrarService::activate(self, request).await.map_err(Status::from);
        counted(&self.calls, "Activate", result)
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let result = RegistrarService::get_agent(self, request).await.map_err(Status::from);
        counted(&self.calls, "GetAgent", result)
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let result = RegistrarService::list_agents(self, request).await.map_err(Status::from);
        counted(&self.calls, "ListAgents", result)
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let result = RegistrarService::delete_agent(self, request).await.map_err(Status::from);
        counted(&self.calls, "DeleteAgent", result)
    }
}
