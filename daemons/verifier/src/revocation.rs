//! Revocation notices: when an agent fails, every other enrolled agent that has not failed
//! itself receives the failure event as a JSON notice (`agent_id`, `state`, `findings`, `event_time`, `cursor`, ...)
//! signed with the verifier's server key and accompanied by the server certificate, which the
//! agents check against the deployment CA (`kl_svc::notice::verify_notice`) before running
//! their revocation actions. A failed agent is not told about others: it is not trusted, and
//! the findings would tell an intruder what the verifier sees elsewhere in the fleet. A
//! `revocation_sent` event records how many agents took it.

use std::sync::Arc;

use kl_proto::agent::v1 as agent_pb;
use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{Batch, EventRecord};

use crate::context::Context;
use crate::convert;
use crate::scheduler::event;

/// Notices in flight at once.
const MAX_CONCURRENT_NOTICES: usize = 64;

/// Sends the notice of `failure` to every other agent that has not failed, in the background.
pub(crate) fn notify_others(ctx: &Arc<Context>, failure: EventRecord) {
    let ctx_task = ctx.clone();
    ctx.spawn(async move {
        let ctx = ctx_task;
        let body = convert::event_json(&failure).to_string().into_bytes();
        let signed = match ctx.signer.sign(body) {
            Ok(signed) => signed,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a revocation notice");
                return;
            }
        };
        let request = agent_pb::NotifyRevocationRequest {
            notice: signed.notice,
            signature: signed.signature,
            signer_certificate: signed.signer_certificate,
        };
        let targets: Vec<_> =
            ctx.slots().into_iter().filter(|slot| slot.id != failure.agent_id).collect();
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_NOTICES));
        let mut sending = tokio::task::JoinSet::new();
        for slot in targets {
            let (ctx, request, permits) = (ctx.clone(), request.clone(), permits.clone());
            let failed_agent = failure.agent_id.clone();
            sending.spawn(async move {
                let Ok(_permit) = permits.acquire().await else { return None };
                let client = {
                    let mut rt = slot.runtime.lock().await;
                    if rt.entry.state == pb::AgentState::Failed as i32 {
                        return None;
                    }
                    if rt.client.is_none() {
                        rt.client = ctx.agent_client(&rt.entry).ok();
                    }
                    rt.client.clone()
                };
                let Some(mut client) = client else { return Some(false) };
                match client.notify_revocation(request).await {
                    Ok(_) => {
                        ctx.metrics.notices_taken.inc();
                        Some(true)
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
                        Some(false)
                    }
                }
            });
        }
        let (mut sent, mut total) = (0usize, 0usize);
        while let Some(offered) = sending.join_next().await {
            // `None`: the agent has failed itself and is not told.
            if let Some(taken) = offered.unwrap_or(Some(false)) {
                total += 1;
                sent += usize::from(taken);
            }
        }
        let message = format!(
            "revocation notice for {} (cursor {}) taken by {sent} of {total} agents",
            failure.agent_id, failure.cursor
        );
        tracing::info!(%message);
        let batch = Batch {
            events: vec![event(
                pb::EventKind::RevocationSent,
                &failure.agent_id,
                failure.state,
                failure.state,
                String::new(),
                message,
            )],
            ..Batch::default()
        };
        ctx.writer.submit(batch);
    });
}
