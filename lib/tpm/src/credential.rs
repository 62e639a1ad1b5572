//! ActivateCredential: the TPM proves to the registrar that the AK lives beside the EK by
//! recovering a secret that only this EK can decrypt and only for this AK's name.

use tss_esapi::Context;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{EncryptedSecret, IdObject, SymmetricDefinition};

use crate::error::{Failure, TpmError};

/// Recovers the credential from `credential_blob` (the TPM2B_ID_OBJECT contents) and
/// `encrypted_secret` (the TPM2B_ENCRYPTED_SECRET contents).
pub(crate) fn activate(
    ctx: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    credential_blob: &[u8],
    encrypted_secret: &[u8],
) -> Result<Vec<u8>, Failure> {
    let id_object =
        IdObject::try_from(credential_blob.to_vec()).map_err(|e| TpmError::InvalidInput {
            field: "credential_blob",
            what: "TPM2B_ID_OBJECT",
            reason: format!("{} bytes: {e}", credential_blob.len()),
        })?;
    let secret = EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(|e| {
        TpmError::InvalidInput {
            field: "encrypted_secret",
            what: "TPM2B_ENCRYPTED_SECRET",
            reason: format!("{} bytes: {e}", encrypted_secret.len()),
        }
    })?;

    // The default EK template allows use only through PolicySecret(TPM_RH_ENDORSEMENT).
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )?
        .ok_or_else(|| TpmError::UnexpectedResponse {
            what: "StartAuthSession",
            reason: "no session handle returned".to_owned(),
        })?;
    let result = (|| {
        let policy = PolicySession::try_from(session)?;
        ctx.execute_with_nullauth_session(|c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })?;
        ctx.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
            c.activate_credential(ak, ek, id_object, secret)
        })
    })();
    // A policy session outlives a successful command; the TPM has few session slots.
    let flushed = ctx.flush_context(SessionHandle::from(session).into());
    let credential = result?;
    flushed?;
    Ok(credential.value().to_vec())
}
