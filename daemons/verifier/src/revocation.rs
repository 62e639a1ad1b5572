//! Revocation notices: when an agent fails, every other enrolled agent receives the failure
//! event as a JSON notice (`agent_id`, `state`, `findings`, `event_time`, `cursor`, ...)
//! signed with the verifier's server key and accompanied by the server certificate, which the
//! agents check against the deployment CA (`kl_svc::notice::verify_notice`) before running
//! their revocation actions. An agent that has failed itself is not trusted with what the
//! verifier sees elsewhere in the fleet: it gets the notice without findings and message, so
//! that its revocation actions still run (it may pass again later). A `revocation_sent` event
//! records how many agents took it.

use std::sync::Arc;

use kl_proto::agent::v1 as agent_pb;
use kl_proto::verifier::v1 as pb;
use kl_store::verifier::EventRecord;

use crate::context::Context;
use crate::{convert, lifecycle};

/// Notices in flight at once.
const MAX_CONCURRENT_NOTICES: usize = 64;

/// The signed notice of `event`.
fn signed_request(
    ctx: &Context,
    event: &EventRecord,
) -> Result<agent_pb::NotifyRevocationRequest, String> {
    let body = convert::event_json(event).to_string().into_bytes();
    let signed = ctx.signer.sign(body).map_err(|e| e.to_string())?;
    Ok(agent_pb::NotifyRevocationRequest {
        notice: signed.notice,
        signature: signed.signature,
        signer_certificate: signed.signer_certificate,
    })
}

/// Sends the notice of `failure` to every other agent, in the background; agents that have
/// failed themselves get it without findings.
pub(crate) fn notify_others(ctx: &Arc<Context>, failure: EventRecord) {
    let ctx_task = ctx.clone();
    ctx.spawn(async move {
        let ctx = ctx_task;
        let redacted = EventRecord {
            findings: Vec::new(),
            message: "attestation failed".to_owned(),
            ..failure.clone()
        };
        let (request, redacted) =
            match (signed_request(&ctx, &failure), signed_request(&ctx, &redacted)) {
                (Ok(full), Ok(redacted)) => (full, redacted),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot sign a revocation notice");
                    return;
                }
            };
        // On a replica, the agents it holds (each replica tells its own; see `replica`).
        let targets: Vec<_> = ctx
            .agents
            .all()
            .into_iter()
            .filter(|slot| slot.id != failure.agent_id && slot.may_act())
            .collect();
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_NOTICES));
        let mut sending = tokio::task::JoinSet::new();
        for slot in targets {
            let (ctx, permits) = (ctx.clone(), permits.clone());
            let (mut request, redacted) = (request.clone(), redacted.clone());
            let failed_agent = failure.agent_id.clone();
            sending.spawn(async move {
                let Ok(_permit) = permits.acquire().await else { return false };
                let client = {
                    let mut rt = slot.runtime.lock().await;
                    if rt.state() == pb::AgentState::Failed {
                        request = redacted;
                    }
                    if rt.client.is_none() {
                        rt.client = ctx.agent_client(&rt.entry).ok();
                    }
                    rt.client.clone()
                };
                let Some(mut client) = client else { return false };
                match client.notify_revocation(request).await {
                    Ok(_) => {
                        ctx.metrics.notices_taken.inc();
                        true
                    }
                    Err(status) => {
                        ctx.metrics.notices_not_taken.inc();
                        tracing::warn!(
                            agent = %slot.id,
                            failed_agent = %failed_agent,
                            code = ?status.code(),
                            message = status.message(),
                            "revocation notice not taken"
                        );
                        false
                    }
                }
            });
        }
        let total = sending.len();
        let mut sent = 0usize;
        while let Some(taken) = sending.join_next().await {
            sent += usize::from(taken.unwrap_or(false));
        }
        let message = format!(
            "revocation notice for {} (cursor {}) taken by {sent} of {total} agents",
            failure.agent_id, failure.cursor
        );
        tracing::info!(%message);
        ctx.writer.submit(lifecycle::revocation_sent(&failure, message));
    });
}
