//! [`Tpm`]: the one owner of the TPM connection, its EK and its AK.
//!
//! Every command goes through one `Context` behind a mutex. A TPM without a resource manager
//! (swtpm over TCP) has three transient object slots and three session slots shared by all
//! clients, so only the EK and the AK stay loaded; sessions and other objects are flushed as
//! soon as a command is done. When the connection breaks (the TPM restarted), the context is
//! rebuilt, the EK recreated, the AK reloaded from its blobs and the command tried once more.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use kl_core::alg::HashAlg;
use tss_esapi::Context;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::{TPM2_LOADED_SESSION_FIRST, TPM2_TRANSIENT_FIRST};
use tss_esapi::handles::{KeyHandle, TpmHandle};
use tss_esapi::structures::CapabilityData;
use tss_esapi::traits::Marshall;

use crate::ak::{self, AkBlobs};
use crate::credential;
use crate::ek::{self, KeyAlg};
use crate::error::{Failure, TpmError};
use crate::quote::{self, PcrValue, Quote};
use crate::tcti::Tcti;

/// The public identity of a key the TPM holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Which kind of key it is.
    pub alg: KeyAlg,
    /// The marshalled TPMT_PUBLIC.
    pub public: Vec<u8>,
    /// The TPM name: nameAlg (2 bytes) followed by the digest of `public`.
    pub name: Vec<u8>,
}

/// What [`Tpm::load_or_create_ak`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkInfo {
    pub key: KeyInfo,
    /// True when no AK files existed and a new AK was created (it must be registered).
    pub created: bool,
}

/// The agent's TPM. Cheap to share (`Arc<Tpm>`); calls block while the TPM works, so async
/// callers run them on a blocking thread.
#[derive(Debug)]
pub struct Tpm {
    tcti: Tcti,
    ek_alg: KeyAlg,
    ek: KeyInfo,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// None after a reconnect failed; the next call tries again.
    session: Option<Session>,
    ak: Option<AkBlobs>,
    reconnects: u64,
}

/// A live context with the keys loaded in it. Dropping it flushes what it loaded.
#[derive(Debug)]
struct Session {
    ctx: Context,
    ek: KeyHandle,
    ak: Option<KeyHandle>,
}

impl Tpm {
    /// Connects to the TPM named by `tcti`, flushes objects and sessions left loaded by
    /// earlier (crashed) clients, and creates the EK of type `ek_alg`.
    pub fn open(tcti: &str, ek_alg: KeyAlg) -> Result<Tpm, TpmError> {
        let tcti = Tcti::from_str(tcti)?;
        let mut session = connect(&tcti, ek_alg)?;
        let ek = key_info(&mut session.ctx, session.ek, ek_alg)
            .map_err(|f| f.into_error("read EK public area", tcti.as_str()))?;
        Ok(Tpm {
            tcti,
            ek_alg,
            ek,
            state: Mutex::new(State { session: Some(session), ak: None, reconnects: 0 }),
        })
    }

    /// The TCTI string this TPM was opened with.
    pub fn tcti(&self) -> &str {
        self.tcti.as_str()
    }

    /// The EK: key type, marshalled TPMT_PUBLIC and name.
    pub fn ek(&self) -> &KeyInfo {
        &self.ek
    }

    /// The EK certificate (DER) from NV, or `None` when the TPM holds none for this EK type.
    pub fn ek_certificate(&self) -> Result<Option<Vec<u8>>, TpmError> {
        let alg = self.ek_alg;
        self.run("read EK certificate", |s| Ok(ek::certificate(&mut s.ctx, alg)?))
    }

    /// Intermediate CA certificates (DER) stored in NV indices 0x01c00100-0x01c001ff, in index
    /// order; empty when there are none.
    pub fn ek_intermediate_certificates(&self) -> Result<Vec<Vec<u8>>, TpmError> {
        self.run("read EK intermediate certificates", |s| {
            Ok(ek::intermediate_certificates(&mut s.ctx)?)
        })
    }

    /// Loads the AK from `dir/ak.pub` and `dir/ak.priv`, or, when neither exists, creates an
    /// AK of type `alg` under the EK and writes them (atomically, mode 0600). Replaces any
    /// AK loaded before.
    pub fn load_or_create_ak(&self, dir: &Path, alg: KeyAlg) -> Result<AkInfo, TpmError> {
        let mut state = self.lock();
        let (blobs, created) = match ak::read(dir)? {
            Some(blobs) if blobs.alg != alg => {
                return Err(TpmError::AkAlgorithm {
                    dir: dir.to_owned(),
                    found: blobs.alg.name(),
                    wanted: alg.name(),
                });
            }
            Some(blobs) => (blobs, false),
            None => {
                let blobs = self.run_locked(&mut state, "create AK", |s| {
                    flush_ak(s);
                    Ok(ak::create(&mut s.ctx, s.ek, alg)?)
                })?;
                ak::save(dir, &blobs)?;
                (blobs, true)
            }
        };
        let key = self.run_locked(&mut state, "load AK", |s| {
            flush_ak(s);
            let handle = ak::load(&mut s.ctx, s.ek, &blobs)?;
            s.ak = Some(handle);
            key_info(&mut s.ctx, handle, blobs.alg)
        })?;
        state.ak = Some(blobs);
        Ok(AkInfo { key, created })
    }

    /// The loaded AK: key type, marshalled TPMT_PUBLIC and name.
    pub fn ak(&self) -> Result<KeyInfo, TpmError> {
        let mut state = self.lock();
        let alg = state.ak.as_ref().map(|b| b.alg).ok_or(TpmError::NoAk)?;
        self.run_locked(&mut state, "read AK public area", |s| {
            let handle = s.ak.ok_or(TpmError::NoAk)?;
            key_info(&mut s.ctx, handle, alg)
        })
    }

    /// Quotes PCRs `pcrs` of `bank` with the AK over `nonce` (at most 64 bytes), returning
    /// the quote and PCR values that hash to its pcrDigest.
    pub fn quote(&self, nonce: &[u8], bank: HashAlg, pcrs: &[u32]) -> Result<Quote, TpmError> {
        if nonce.len() > quote::MAX_NONCE_LEN {
            return Err(TpmError::NonceTooLong { len: nonce.len() });
        }
        let indices = quote::sorted_indices(pcrs)?;
        let mut state = self.lock();
        if state.ak.is_none() {
            return Err(TpmError::NoAk);
        }
        self.run_locked(&mut state, "quote", |s| {
            let ak = s.ak.ok_or(TpmError::NoAk)?;
            quote::quote(&mut s.ctx, ak, nonce, bank, &indices)
        })
    }

    /// Reads PCRs `pcrs` of `bank`, in ascending index order.
    pub fn pcr_read(&self, bank: HashAlg, pcrs: &[u32]) -> Result<Vec<PcrValue>, TpmError> {
        let indices = quote::sorted_indices(pcrs)?;
        self.run("read PCRs", |s| quote::read(&mut s.ctx, bank, &indices))
    }

    /// Extends PCR `index` of `bank` with `digest` (which must have the bank's length).
    pub fn pcr_extend(&self, bank: HashAlg, index: u32, digest: &[u8]) -> Result<(), TpmError> {
        self.run("extend PCR", |s| quote::extend(&mut s.ctx, bank, index, digest))
    }

    /// Runs ActivateCredential with the AK and the EK: given the credential blob (the
    /// TPM2B_ID_OBJECT contents) and the encrypted secret (the TPM2B_ENCRYPTED_SECRET
    /// contents) from MakeCredential, returns the credential.
    pub fn activate_credential(
        &self,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let mut state = self.lock();
        if state.ak.is_none() {
            return Err(TpmError::NoAk);
        }
        self.run_locked(&mut state, "activate credential", |s| {
            let ak = s.ak.ok_or(TpmError::NoAk)?;
            credential::activate(&mut s.ctx, ak, s.ek, credential_blob, encrypted_secret)
        })
    }

    /// How many times the connection was rebuilt after it broke.
    pub fn reconnect_count(&self) -> u64 {
        self.lock().reconnects
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-command leaves nothing half-written on our side; the TPM state is
        // checked by the next command anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run<T>(
        &self,
        operation: &'static str,
        f: impl FnMut(&mut Session) -> Result<T, Failure>,
    ) -> Result<T, TpmError> {
        let mut state = self.lock();
        self.run_locked(&mut state, operation, f)
    }

    /// Runs `f` on the live session; if the connection turns out broken, rebuilds the session
    /// and runs `f` once more.
    fn run_locked<T>(
        &self,
        state: &mut State,
        operation: &'static str,
        mut f: impl FnMut(&mut Session) -> Result<T, Failure>,
    ) -> Result<T, TpmError> {
        if let Some(session) = state.session.as_mut() {
            match f(session) {
                Ok(v) => return Ok(v),
                Err(failure) if failure.is_connection_lost() => {}
                Err(failure) => return Err(failure.into_error(operation, self.tcti.as_str())),
            }
        }
        let session = self.reconnect(state)?;
        f(session).map_err(|failure| failure.into_error(operation, self.tcti.as_str()))
    }

    /// Drops the broken session (before connecting again: its handles must not be flushed
    /// on the new connection), connects, checks the EK is the same key, reloads the AK.
    fn reconnect<'s>(&self, state: &'s mut State) -> Result<&'s mut Session, TpmError> {
        state.session = None;
        state.reconnects += 1;
        let mut session = connect(&self.tcti, self.ek_alg)?;
        let tcti = self.tcti.as_str();
        let ek = key_info(&mut session.ctx, session.ek, self.ek_alg)
            .map_err(|f| f.into_error("read EK public area", tcti))?;
        if ek.name != self.ek.name {
            return Err(TpmError::EkChanged { tcti: tcti.to_owned() });
        }
        if let Some(blobs) = &state.ak {
            let handle = ak::load(&mut session.ctx, session.ek, blobs)
                .map_err(|e| TpmError::from_tss("reload AK after reconnecting", tcti, e))?;
            session.ak = Some(handle);
        }
        Ok(state.session.insert(session))
    }
}

/// Opens a context, flushes leftovers and creates the EK.
fn connect(tcti: &Tcti, ek_alg: KeyAlg) -> Result<Session, TpmError> {
    if let Some(path) = tcti.device_path()
        && let Err(source) = std::fs::metadata(&path)
    {
        return Err(TpmError::NoDevice { tcti: tcti.as_str().to_owned(), path, source });
    }
    let mut ctx = Context::new(tcti.name_conf())
        .map_err(|e| TpmError::Connect { tcti: tcti.as_str().to_owned(), source: e.into() })?;
    flush_leftovers(&mut ctx).map_err(|e| {
        match TpmError::from_tss("flush leftover handles", tcti.as_str(), e) {
            TpmError::ConnectionLost { source, .. } => {
                TpmError::Connect { tcti: tcti.as_str().to_owned(), source }
            }
            other => other,
        }
    })?;
    let ek = ek::create(&mut ctx, ek_alg)
        .map_err(|e| TpmError::from_tss("create EK", tcti.as_str(), e))?;
    Ok(Session { ctx, ek, ak: None })
}

/// Flushes transient objects and loaded sessions a crashed client left in the TPM (behind a
/// resource manager there are none to see).
fn flush_leftovers(ctx: &mut Context) -> tss_esapi::Result<()> {
    for first in [TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST] {
        let (data, _) =
            ctx.execute_without_session(|c| c.get_capability(CapabilityType::Handles, first, 64))?;
        let CapabilityData::Handles(handles) = data else {
            continue;
        };
        for handle in handles.iter().copied() {
            flush_handle(ctx, handle)?;
        }
    }
    Ok(())
}

fn flush_handle(ctx: &mut Context, handle: TpmHandle) -> tss_esapi::Result<()> {
    let object = ctx.execute_without_session(|c| c.tr_from_tpm_public(handle))?;
    ctx.flush_context(object)
}

fn flush_ak(session: &mut Session) {
    if let Some(handle) = session.ak.take() {
        // Failing to flush only costs a slot until the context is dropped.
        let _ = session.ctx.flush_context(handle.into());
    }
}

fn key_info(ctx: &mut Context, handle: KeyHandle, alg: KeyAlg) -> Result<KeyInfo, Failure> {
    let (public, name, _) = ctx.read_public(handle)?;
    Ok(KeyInfo { alg, public: public.marshall()?, name: name.value().to_vec() })
}
