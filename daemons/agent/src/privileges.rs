//! The switch to the service user (`run_as = "user:group"`): the agent starts as root to open
//! the TPM and mount the tmpfs of its secure directory, hands its state directories to that user
//! and drops root for good, so the code that parses network input never runs as root.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

/// Why the switch failed; each names the `run_as` value or the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunAsError {
    #[error("run_as = \"{run_as}\": {reason}")]
    Setting { run_as: String, reason: String },
    #[error("run_as: cannot give {} to {owner}: {source}", path.display())]
    Chown { path: PathBuf, owner: String, source: std::io::Error },
    #[error("run_as = \"{run_as}\": cannot switch to it: {source}")]
    Switch { run_as: String, source: nix::Error },
}

/// A resolved `run_as` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: Uid,
    pub gid: Gid,
}

impl RunAs {
    /// Resolves `user:group` (names or numbers) through the system's user database.
    pub fn resolve(run_as: &str) -> Result<RunAs, RunAsError> {
        let bad = |reason: String| RunAsError::Setting { run_as: run_as.to_owned(), reason };
        let (user, group) =
            run_as.split_once(':').ok_or_else(|| bad("expected USER:GROUP".to_owned()))?;
        let uid = match user.parse::<u32>() {
            Ok(n) => Uid::from_raw(n),
            Err(_) => {
                User::from_name(user)
                    .map_err(|e| bad(format!("cannot look up user \"{user}\": {e}")))?
                    .ok_or_else(|| bad(format!("no user \"{user}\"")))?
                    .uid
            }
        };
        let gid = match group.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(group)
                    .map_err(|e| bad(format!("cannot look up group \"{group}\": {e}")))?
                    .ok_or_else(|| bad(format!("no group \"{group}\"")))?
                    .gid
            }
        };
        Ok(RunAs { uid, gid })
    }

    /// Gives `dirs` (recursively) to the user and switches the whole process to it: groups,
    /// then group, then user, so that nothing is left to regain root with.
    pub fn switch(&self, run_as: &str, dirs: &[&Path]) -> Result<(), RunAsError> {
        let owner = format!("{}:{}", self.uid, self.gid);
        for dir in dirs {
            chown_tree(dir, self.uid.as_raw(), self.gid.as_raw(), &owner)?;
        }
        let switch = |source| RunAsError::Switch { run_as: run_as.to_owned(), source };
        setgroups(&[self.gid]).map_err(switch)?;
        setgid(self.gid).map_err(switch)?;
        setuid(self.uid).map_err(switch)?;
        Ok(())
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32, owner: &str) -> Result<(), RunAsError> {
    let err = |source| RunAsError::Chown { path: path.to_owned(), owner: owner.to_owned(), source };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    // A symbolic link is not followed: it could point anywhere.
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    chown(path, Some(uid), Some(gid)).map_err(err)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(err)? {
            chown_tree(&entry.map_err(err)?.path(), uid, gid, owner)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_takes_names_and_numbers_and_names_what_is_wrong() {
        assert_eq!(
            RunAs::resolve("root:root").ok(),
            Some(RunAs { uid: Uid::from_raw(0), gid: Gid::from_raw(0) })
        );
        assert_eq!(
            RunAs::resolve("4242:4343").ok(),
            Some(RunAs { uid: Uid::from_raw(4242), gid: Gid::from_raw(4343) })
        );
        let no_group = RunAs::resolve("root").map_err(|e| e.to_string());
        assert_eq!(no_group, Err("run_as = \"root\": expected USER:GROUP".to_owned()));
        let unknown = RunAs::resolve("no-such-user-here:root").map_err(|e| e.to_string());
        assert_eq!(
            unknown,
            Err("run_as = \"no-such-user-here:root\": no user \"no-such-user-here\"".to_owned())
        );
    }
}
