//! Revocation actions: what the agent runs when the verifier tells it that another machine
//! failed attestation. The notice's signature is checked before anything runs (see the
//! service); here each action named in `revocation_actions` (from `revocation_actions_dir`) and,
//! when allowed, each one a payload listed in its `action_list`, runs with one argument: the
//! path of a file holding the notice JSON.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long one action may run.
const ACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The verifiers whose notices are taken (`revocation_notification_ip`): a notice must come
/// from one of these addresses and carry a verifier signature the deployment CA vouches for.
/// Host names are looked up when a notice arrives (notices are rare; a verifier may move).
#[derive(Debug, Clone)]
pub struct NoticeSenders {
    hosts: Vec<String>,
}

impl NoticeSenders {
    pub fn new(hosts: &[String]) -> Self {
        NoticeSenders { hosts: hosts.to_vec() }
    }

    /// Whether a notice from `peer` is taken.
    pub async fn accepts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        for host in &self.hosts {
            if host == "*" {
                return true;
            }
            if let Ok(ip) = host.parse::<IpAddr>() {
                if ip.to_canonical() == peer {
                    return true;
                }
                continue;
            }
            match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(mut addrs) => {
                    if addrs.any(|a| a.ip().to_canonical() == peer) {
                        return true;
                    }
                }
                Err(e) => tracing::warn!(
                    host = %host,
                    error = %e,
                    "revocation_notification_ip: cannot look up the host"
                ),
            }
        }
        false
    }

    /// The setting, for messages.
    pub fn describe(&self) -> String {
        self.hosts.join(", ")
    }
}

/// Where the agent finds revocation actions.
#[derive(Debug, Clone)]
pub struct RevocationActions {
    /// `revocation_actions`: names of executables in `actions_dir`.
    pub configured: Vec<String>,
    /// `revocation_actions_dir`.
    pub actions_dir: PathBuf,
    /// The extracted payload (`<secure_dir>/unzipped`); its `action_list` names more actions.
    pub payload_dir: PathBuf,
    /// `allow_payload_revocation_actions`.
    pub allow_payload_actions: bool,
    /// Where the notice file is written (a private directory).
    pub work_dir: PathBuf,
}

/// A plain file name: no directories, no `..`, nothing hidden.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.') && !name.contains('\0')
}

impl RevocationActions {
    /// The actions to run, in order: the configured ones, then the payload's.
    pub fn actions(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for name in &self.configured {
            if plain_name(name) {
                out.push(self.actions_dir.join(name));
            } else {
                tracing::warn!(action = %name, "revocation action names must be plain file names; skipped");
            }
        }
        let listed = self
            .allow_payload_actions
            .then(|| std::fs::read_to_string(self.payload_dir.join("action_list")).ok())
            .flatten()
            .unwrap_or_default();
        for name in listed.split(|c: char| c == ',' || c.is_whitespace()).filter(|n| !n.is_empty())
        {
            if plain_name(name) {
                out.push(self.payload_dir.join(name));
            } else {
                tracing::warn!(action = %name, "payload action names must be plain file names; skipped");
            }
        }
        out
    }

    /// Writes the notice to a file and runs every action with its path. Returns how many ran
    /// and exited successfully.
    pub async fn run(&self, notice: &[u8]) -> std::io::Result<u32> {
        let actions = self.actions();
        if actions.is_empty() {
            return Ok(0);
        }
        std::fs::create_dir_all(&self.work_dir)?;
        let file = self.work_dir.join(format!("revocation-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&file);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?
            .write_all(notice)?;
        let mut ok = 0;
        for action in actions {
            if run_one(&action, &file).await {
                ok += 1;
            }
        }
        let _ = std::fs::remove_file(&file);
        Ok(ok)
    }
}

async fn run_one(action: &Path, notice_file: &Path) -> bool {
    let child = tokio::process::Command::new(action)
        .arg(notice_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(action = %action.display(), error = %e, "cannot run revocation action");
            return false;
        }
    };
    match tokio::time::timeout(ACTION_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                tracing::info!(action = %action.display(), "{line}");
            }
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                tracing::warn!(action = %action.display(), "{line}");
            }
            if out.status.success() {
                tracing::info!(action = %action.display(), "revocation action finished");
            } else {
                tracing::error!(action = %action.display(), status = %out.status, "revocation action failed");
            }
            out.status.success()
        }
        Ok(Err(e)) => {
            tracing::error!(action = %action.display(), error = %e, "revocation action could not be waited for");
            false
        }
        Err(_) => {
            tracing::error!(action = %action.display(), ?ACTION_TIMEOUT, "revocation action timed out and was killed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn notices_are_taken_only_from_the_configured_verifiers() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let senders = NoticeSenders::new(&["10.0.0.1".into(), "10.0.0.2".into()]);
        assert!(senders.accepts(ip("10.0.0.2")).await, "a second replica");
        assert!(senders.accepts(ip("::ffff:10.0.0.1")).await, "an IPv4-mapped peer");
        assert!(!senders.accepts(ip("10.0.0.3")).await);
        assert!(!senders.accepts(ip("127.0.0.1")).await);
        let named = NoticeSenders::new(&["localhost".into()]);
        assert!(named.accepts(ip("127.0.0.1")).await, "names are looked up");
        assert!(!named.accepts(ip("10.0.0.1")).await);
        assert!(NoticeSenders::new(&["*".into()]).accepts(ip("192.0.2.7")).await);
        assert!(!NoticeSenders::new(&[]).accepts(ip("127.0.0.1")).await, "empty: none");
    }

    fn script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[tokio::test]
    async fn configured_and_payload_actions_run_with_the_notice() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (actions_dir, payload_dir) = (tmp.path().join("actions"), tmp.path().join("unzipped"));
        std::fs::create_dir_all(&actions_dir).expect("mkdir");
        std::fs::create_dir_all(&payload_dir).expect("mkdir");
        let out = tmp.path().join("out");
        script(&actions_dir.join("local"), &format!("cat \"$1\" >> {}", out.display()));
        script(&payload_dir.join("from_payload"), &format!("echo payload >> {}", out.display()));
        std::fs::write(payload_dir.join("action_list"), "from_payload ../escape\n").expect("list");
        let r = RevocationActions {
            configured: vec!["local".into(), "../../bin/sh".into()],
            actions_dir,
            payload_dir,
            allow_payload_actions: true,
            work_dir: tmp.path().join("work"),
        };
        assert_eq!(r.actions().len(), 2, "names with paths are refused");
        assert_eq!(r.run(br#"{"agent_id":"x"}"#).await.expect("runs"), 2);
        assert_eq!(std::fs::read_to_string(&out).expect("out"), "{\"agent_id\":\"x\"}payload\n");

        let no_payload = RevocationActions { allow_payload_actions: false, ..r };
        assert_eq!(no_payload.actions().len(), 1);
    }
}
