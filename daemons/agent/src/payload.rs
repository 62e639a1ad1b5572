//! The agent's side of the secure payload (DESIGN §4): keep the two key halves as they arrive,
//! combine them only when the auth tag matches, decrypt the payload, extract it into the
//! secure directory after every entry has been checked, and run `autorun.sh` with a deadline.
//!
//! Nothing runs before both halves are here: U comes from kctl after it checked an identity
//! quote, V from the verifier after the first passing attestation, so a payload never runs on
//! a machine that has not passed.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kl_core::payload::{self, KEY_LEN, Limits, PayloadError, SealedHalf};
use kl_proto::agent::v1 as pb;
use tokio::io::AsyncBufReadExt;
use tonic::Status;

/// Why a key half or payload was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("secure directory {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the payload key has not been derived yet (both key halves are needed)")]
    NoKey,
}

impl From<InstallError> for Status {
    fn from(e: InstallError) -> Status {
        match &e {
            InstallError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            InstallError::Payload(_) | InstallError::NoKey => {
                Status::failed_precondition(e.to_string())
            }
            InstallError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

/// Where and how payloads are installed.
#[derive(Debug, Clone)]
pub struct PayloadSettings {
    /// The secure directory: a tmpfs when one can be mounted, else a 0700 directory.
    pub secure_dir: PathBuf,
    /// The script to run from the extracted payload (`payload_script`, default `autorun.sh`).
    pub script: String,
    pub script_timeout: Duration,
    pub limits: Limits,
    /// Try to mount a tmpfs of this many bytes on the secure directory (0: never).
    pub tmpfs_size: u64,
}

#[derive(Default)]
struct Halves {
    u: Option<([u8; KEY_LEN], Vec<u8>, Vec<u8>)>,
    v: Option<[u8; KEY_LEN]>,
    k: Option<[u8; KEY_LEN]>,
}

/// Receives key halves and installs the payload once both are here.
pub struct PayloadInstaller {
    agent_id: String,
    identity_pkcs8: Vec<u8>,
    settings: PayloadSettings,
    halves: tokio::sync::Mutex<Halves>,
}

impl std::fmt::Debug for PayloadInstaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadInstaller").field("agent_id", &self.agent_id).finish_non_exhaustive()
    }
}

/// The DER body of the first PEM block (the identity key is written as PKCS#8 PEM).
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    kl_core::pem::blocks(pem).ok()?.first()?.decode().ok()
}

impl PayloadInstaller {
    pub fn new(
        agent_id: &str,
        identity_key_pem: &str,
        settings: PayloadSettings,
    ) -> Result<Self, InstallError> {
        let identity_pkcs8 = pem_to_der(identity_key_pem).ok_or_else(|| InstallError::Invalid {
            field: "identity key",
            reason: "not a PEM private key".into(),
        })?;
        Ok(PayloadInstaller {
            agent_id: agent_id.to_owned(),
            identity_pkcs8,
            settings,
            halves: tokio::sync::Mutex::default(),
        })
    }

    /// Whether K has been derived (the payload, if any, is installed).
    pub fn key_derived(&self) -> bool {
        self.halves.try_lock().map(|h| h.k.is_some()).unwrap_or(false)
    }

    /// Handles one DeliverKey. Returns whether K is now derived and the payload installed.
    ///
    /// One delivery at a time: the halves, the check of the combined key and the installation
    /// happen under one lock, and K is kept only once the payload is installed. A half that
    /// does not combine with the stored other half is dropped, so a later right one can.
    pub async fn deliver(&self, request: pb::DeliverKeyRequest) -> Result<bool, InstallError> {
        let sealed = request
            .sealed
            .ok_or(InstallError::Invalid { field: "sealed", reason: "missing".into() })?;
        let sealed = SealedHalf {
            ephemeral_public_key: sealed.ephemeral_public_key,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
        };
        let half = payload::open_half(&sealed, &self.identity_pkcs8)?;
        let which = pb::KeyHalf::try_from(request.half)
            .ok()
            .filter(|h| *h != pb::KeyHalf::Unspecified)
            .ok_or(InstallError::Invalid { field: "half", reason: "must be U or V".into() })?;
        if which == pb::KeyHalf::U && request.auth_tag.len() != 32 {
            return Err(InstallError::Invalid {
                field: "auth_tag",
                reason: "must be 32 bytes".into(),
            });
        }
        let mut h = self.halves.lock().await;
        let previous = (h.u.clone(), h.v);
        match which {
            pb::KeyHalf::U => {
                // U comes first in every bootstrap (kctl sends it before it enrols the agent
                // with V), so a new U starts a new one: the halves and key of the previous
                // bootstrap would never combine with it.
                if h.k.is_some() || h.v.is_some() {
                    tracing::info!(agent = %self.agent_id, "a new U key half: the previous payload key is dropped");
                }
                *h = Halves::default();
                h.u = Some((half, request.auth_tag, request.encrypted_payload));
            }
            _ => h.v = Some(half),
        }
        let (Some((u, tag, encrypted)), Some(v)) = (h.u.clone(), h.v) else { return Ok(false) };
        let k = match payload::combine(&u, &v, &self.agent_id, &tag) {
            Ok(k) => k,
            Err(e) => {
                (h.u, h.v) = previous;
                return Err(e.into());
            }
        };
        if h.k == Some(k) {
            // The same V again (the verifier retries when it did not see the answer): the
            // payload is installed and has run; it does not run twice.
            return Ok(true);
        }
        tracing::info!(agent = %self.agent_id, "payload key derived from both halves");
        if !encrypted.is_empty() {
            let archive = payload::decrypt(&k, &encrypted)?;
            let files = payload::unpack(&archive, &self.settings.limits)?;
            let dir = self.prepare_secure_dir()?;
            write_files(&dir, &files)?;
            tracing::info!(files = files.len(), dir = %dir.display(), "payload extracted");
            if files.iter().any(|f| f.path == self.settings.script) {
                run_script(&dir, &self.settings.script, self.settings.script_timeout).await;
            }
        }
        h.k = Some(k);
        Ok(true)
    }

    /// `HMAC-SHA256(K, challenge)`: proves K was derived.
    pub fn verify(&self, challenge: &[u8]) -> Result<Vec<u8>, InstallError> {
        if !(16..=64).contains(&challenge.len()) {
            return Err(InstallError::Invalid {
                field: "challenge",
                reason: "must be 16 to 64 bytes".into(),
            });
        }
        let k = self.halves.try_lock().ok().and_then(|h| h.k).ok_or(InstallError::NoKey)?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k);
        Ok(ring::hmac::sign(&key, challenge).as_ref().to_vec())
    }

    /// The directory payload files go to: `<secure_dir>/unzipped`, emptied first. The secure
    /// directory is a tmpfs when one can be mounted (root, `tmpfs_size` > 0), else 0700.
    fn prepare_secure_dir(&self) -> Result<PathBuf, InstallError> {
        let secure = &self.settings.secure_dir;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| InstallError::Io { path, source }
        };
        mount_secure_dir(&self.settings)?;
        let unzipped = secure.join("unzipped");
        if unzipped.exists() {
            std::fs::remove_dir_all(&unzipped).map_err(io(&unzipped))?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&unzipped).map_err(io(&unzipped))?;
        Ok(unzipped)
    }
}

/// Creates the secure directory (0700) and mounts a tmpfs of `tmpfs_size` bytes on it when it
/// is not one already and the agent may mount (root). An agent with `run_as` does this at start,
/// before it gives up root.
pub fn mount_secure_dir(settings: &PayloadSettings) -> Result<(), InstallError> {
    let secure = &settings.secure_dir;
    let io = |source| InstallError::Io { path: secure.clone(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(secure).map_err(io)?;
    std::fs::set_permissions(secure, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    if settings.tmpfs_size > 0 && !is_mount_point(secure) {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={},mode=0700", settings.tmpfs_size))
            .arg("tmpfs")
            .arg(secure)
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {
                tracing::info!(dir = %secure.display(), "mounted a tmpfs for the payload")
            }
            _ => {
                tracing::warn!(dir = %secure.display(), "cannot mount a tmpfs; using a 0700 directory")
            }
        }
    }
    Ok(())
}

fn is_mount_point(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return false };
    let Ok(dir) = dir.canonicalize() else { return false };
    mounts.lines().any(|l| l.split(' ').nth(1).is_some_and(|m| Path::new(m) == dir))
}

/// Writes checked payload files below `dir`, never following links (files are created new).
fn write_files(dir: &Path, files: &[payload::PayloadFile]) -> Result<(), InstallError> {
    use std::io::Write;
    for f in files {
        let path = dir.join(&f.path);
        let io = |source| InstallError::Io { path: path.clone(), source };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(io)?;
        }
        let mode = if f.executable { 0o700 } else { 0o600 };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io)?;
        out.write_all(&f.contents).map_err(io)?;
    }
    Ok(())
}

/// Runs the payload script with `sh` in `dir`, logging its output, killed after `timeout`.
async fn run_script(dir: &Path, script: &str, timeout: Duration) {
    let child = tokio::process::Command::new("sh")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(script, error = %e, "cannot start the payload script");
            return;
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let log_lines = async move {
        if let Some(out) = stdout {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(script, "{line}");
            }
        }
    };
    let log_errors = async move {
        if let Some(err) = stderr {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(script, "{line}");
            }
        }
    };
    let run = async {
        let (_, _, status) = tokio::join!(log_lines, log_errors, child.wait());
        status
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) if status.success() => tracing::info!(script, "payload script finished"),
        Ok(Ok(status)) => tracing::error!(script, %status, "payload script failed"),
        Ok(Err(e)) => tracing::error!(script, error = %e, "payload script could not be waited for"),
        Err(_) => tracing::error!(script, ?timeout, "payload script timed out and was killed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kl_core::payload::{PayloadFile, SplitKey, pack, seal_half};

    fn installer(dir: &Path) -> (PayloadInstaller, Vec<u8>) {
        let identity = kl_svc::tls::AgentIdentity::generate("agent-1", &[]).expect("identity");
        let settings = PayloadSettings {
            secure_dir: dir.join("secure"),
            script: "autorun.sh".into(),
            script_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            tmpfs_size: 0,
        };
        (
            PayloadInstaller::new("agent-1", &identity.key_pem, settings).expect("installer"),
            identity.spki_der,
        )
    }

    fn half(
        which: pb::KeyHalf,
        key: &[u8; 32],
        spki: &[u8],
        tag: Vec<u8>,
        payload: Vec<u8>,
    ) -> pb::DeliverKeyRequest {
        let s = seal_half(key, spki).expect("seal");
        pb::DeliverKeyRequest {
            half: which as i32,
            sealed: Some(pb::SealedKeyHalf {
                ephemeral_public_key: s.ephemeral_public_key,
                nonce: s.nonce,
                ciphertext: s.ciphertext,
            }),
            auth_tag: tag,
            encrypted_payload: payload,
        }
    }

    #[tokio::test]
    async fn the_script_runs_only_after_both_halves() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (inst, spki) = installer(tmp.path());
        let key = SplitKey::generate().expect("key");
        let zip = pack(&[PayloadFile {
            path: "autorun.sh".into(),
            contents: b"echo ran > marker\n".to_vec(),
            executable: true,
        }])
        .expect("zip");
        let encrypted = payload::encrypt(&key.k, &zip).expect("encrypt");
        let u = half(pb::KeyHalf::U, &key.u, &spki, key.auth_tag("agent-1").to_vec(), encrypted);
        assert!(!inst.deliver(u).await.expect("U accepted"));
        let marker = tmp.path().join("secure/unzipped/marker");
        assert!(!marker.exists(), "nothing runs with one half");
        assert!(matches!(inst.verify(&[0; 16]), Err(InstallError::NoKey)));
        let v = half(pb::KeyHalf::V, &key.v, &spki, vec![], vec![]);
        assert!(inst.deliver(v).await.expect("V accepted"));
        assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "ran\n");
        let mode = std::fs::metadata(tmp.path().join("secure")).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let expected =
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.k), &[1; 16]);
        assert_eq!(inst.verify(&[1; 16]).expect("K derived"), expected.as_ref());
    }

    /// A payload whose `autorun.sh` appends `line` to `runs` beside the secure directory.
    fn counting_payload(key: &SplitKey, line: &str) -> Vec<u8> {
        let script = format!("echo {line} >> ../../runs\necho {line} > marker\n");
        let zip = pack(&[PayloadFile {
            path: "autorun.sh".into(),
            contents: script.into_bytes(),
            executable: true,
        }])
        .expect("zip");
        payload::encrypt(&key.k, &zip).expect("encrypt")
    }

    #[tokio::test]
    async fn a_new_u_starts_a_new_bootstrap_and_a_repeated_v_runs_nothing_twice() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (inst, spki) = installer(tmp.path());
        let first = SplitKey::generate().expect("key");
        let tag = |k: &SplitKey| k.auth_tag("agent-1").to_vec();
        let u1 = half(pb::KeyHalf::U, &first.u, &spki, tag(&first), counting_payload(&first, "1"));
        inst.deliver(u1).await.expect("U1");
        let v1 = || half(pb::KeyHalf::V, &first.v, &spki, vec![], vec![]);
        assert!(inst.deliver(v1()).await.expect("V1"));
        assert!(inst.deliver(v1()).await.expect("V1 again"), "the same V is taken again");
        let runs = tmp.path().join("runs");
        assert_eq!(std::fs::read_to_string(&runs).expect("runs"), "1\n", "ran once");

        // Unenrolled and enrolled again with another payload: fresh U and V.
        let second = SplitKey::generate().expect("key");
        let u2 =
            half(pb::KeyHalf::U, &second.u, &spki, tag(&second), counting_payload(&second, "2"));
        assert!(!inst.deliver(u2).await.expect("U2 starts a new bootstrap"));
        assert!(!inst.key_derived(), "the first key is dropped");
        assert!(matches!(inst.verify(&[0; 16]), Err(InstallError::NoKey)));
        assert!(inst.deliver(v1()).await.is_err(), "the old V does not combine with U2");
        let v2 = half(pb::KeyHalf::V, &second.v, &spki, vec![], vec![]);
        assert!(inst.deliver(v2).await.expect("V2"));
        assert_eq!(std::fs::read_to_string(&runs).expect("runs"), "1\n2\n");
        let marker = tmp.path().join("secure/unzipped/marker");
        assert_eq!(std::fs::read_to_string(marker).expect("marker"), "2\n");
    }

    #[tokio::test]
    async fn a_wrong_half_a_wrong_tag_or_a_foreign_seal_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (inst, spki) = installer(tmp.path());
        let key = SplitKey::generate().expect("key");
        let other = SplitKey::generate().expect("key");
        let u = half(pb::KeyHalf::U, &key.u, &spki, key.auth_tag("agent-1").to_vec(), vec![]);
        inst.deliver(u).await.expect("U");
        let wrong_v = half(pb::KeyHalf::V, &other.v, &spki, vec![], vec![]);
        let err = inst.deliver(wrong_v).await.expect_err("mismatched halves");
        assert!(matches!(err, InstallError::Payload(PayloadError::AuthTag)), "{err}");
        assert_eq!(Status::from(err).code(), tonic::Code::FailedPrecondition);
        assert!(!inst.key_derived());

        let (_, other_spki) = installer(tmp.path());
        let foreign = half(pb::KeyHalf::V, &key.v, &other_spki, vec![], vec![]);
        assert!(
            inst.deliver(foreign).await.is_err(),
            "a half sealed to another agent does not open"
        );
        assert!(!tmp.path().join("secure").exists(), "nothing was written");
    }

    #[tokio::test]
    async fn an_escaping_payload_writes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (inst, spki) = installer(tmp.path());
        let key = SplitKey::generate().expect("key");
        // A zip whose entry climbs out of the secure directory.
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("../escaped", zip::write::SimpleFileOptions::default()).expect("entry");
        std::io::Write::write_all(&mut w, b"x").expect("write");
        let zip = w.finish().expect("zip").into_inner();
        let encrypted = payload::encrypt(&key.k, &zip).expect("encrypt");
        inst.deliver(half(
            pb::KeyHalf::U,
            &key.u,
            &spki,
            key.auth_tag("agent-1").to_vec(),
            encrypted,
        ))
        .await
        .expect("U");
        let err = inst
            .deliver(half(pb::KeyHalf::V, &key.v, &spki, vec![], vec![]))
            .await
            .expect_err("escape");
        assert!(err.to_string().contains("`..`"), "{err}");
        assert!(
            !tmp.path().join("escaped").exists() && !tmp.path().join("secure/escaped").exists()
        );
    }
}
