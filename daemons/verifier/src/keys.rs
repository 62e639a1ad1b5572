//! Delivery of the V half of the payload key after an agent's first passing attestation,
//! sealed to the agent identity key (`kl_core::payload::seal_half`). An agent that does not take it yet
//! (UNIMPLEMENTED, unavailable) is offered it again after its next passing round.

use std::sync::Arc;

use kl_core::appraisal::AgentPolicy;
use kl_proto::agent::v1 as agent_pb;

use crate::context::Context;
use crate::lifecycle::{AgentRuntime, AgentSlot};

/// Sends V in the background; marks the agent `key_delivered` once it is taken.
pub(crate) fn deliver_v(
    ctx: &Arc<Context>,
    slot: &Arc<AgentSlot>,
    rt: &mut AgentRuntime,
    policy: &AgentPolicy,
) {
    if rt.delivering_key {
        return;
    }
    let Some(mut client) = rt.client.clone() else { return };
    let Ok(v) = <[u8; kl_core::payload::KEY_LEN]>::try_from(rt.entry.v_key_half.as_slice()) else {
        tracing::error!(agent = %slot.id, "the stored V key half is not 32 bytes; not delivered");
        return;
    };
    let sealed = match kl_core::payload::seal_half(&v, &policy.identity_spki) {
        Ok(sealed) => sealed,
        Err(e) => {
            tracing::error!(agent = %slot.id, error = %e, "cannot seal the V key half");
            return;
        }
    };
    let request = agent_pb::DeliverKeyRequest {
        half: agent_pb::KeyHalf::V as i32,
        sealed: Some(agent_pb::SealedKeyHalf {
            ephemeral_public_key: sealed.ephemeral_public_key,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
        }),
        auth_tag: Vec::new(),
        encrypted_payload: Vec::new(),
    };
    let ctx_task = ctx.clone();
    let slot = slot.clone();
    rt.delivering_key = true;
    ctx.spawn(async move {
        let answer = client.deliver_key(request).await;
        let mut rt = slot.runtime.lock().await;
        rt.delivering_key = false;
        match answer {
            Ok(_) => {
                // Unenrolled, or re-enrolled with another payload, while this was in flight:
                // what was delivered is not the agent's current V.
                if slot.is_removed() || rt.entry.v_key_half != v {
                    return;
                }
                tracing::info!(agent = %slot.id, "V key half delivered");
                let batch = rt.key_delivered();
                rt.submitted = ctx_task.writer.submit(batch);
            }
            Err(status) => tracing::warn!(
                agent = %slot.id,
                code = ?status.code(),
                message = status.message(),
                "the agent did not take the V key half; offering it again after the next pass"
            ),
        }
    });
}
