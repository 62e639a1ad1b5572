//! The switch to the service user (`run_as = "user:group"`): the agent starts as root to open
//! the TPM and mount the tmpfs of its secure directory, hands its state directories to that user
//! and drops root for good, so the code that parses network input never runs as root.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, lchown};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
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

/// Gives `path` and everything below it to `uid:gid` without following a symbolic link
/// anywhere: the tree belongs to the service user after the first start, and that user could
/// swap an entry for a link to `/etc` while root walks it. Directories are opened with
/// `O_NOFOLLOW` and their entries reached through the open descriptor (`/proc/self/fd/N/name`),
/// so no path component is resolved twice; `lchown` never follows the entry itself.
fn chown_tree(path: &Path, uid: u32, gid: u32, owner: &str) -> Result<(), RunAsError> {
    let err = |at: &Path, source| RunAsError::Chown {
        path: at.to_owned(),
        owner: owner.to_owned(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, e)),
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    lchown(path, Some(uid), Some(gid)).map_err(|e| err(path, e))?;
    if !meta.is_dir() {
        return Ok(());
    }
    match open_dir(path) {
        Ok(dir) => chown_below(&dir, path, uid, gid).map_err(|(at, e)| err(&at, e)),
        Err(e) if is_link(&e) => Ok(()),
        Err(e) => Err(err(path, e)),
    }
}

fn open_dir(path: &Path) -> std::io::Result<File> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    OpenOptions::new().read(true).custom_flags(flags.bits()).open(path)
}

/// The open failed because the entry is (now) a symbolic link or no directory: not followed.
fn is_link(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(|n| n == Errno::ELOOP as i32 || n == Errno::ENOTDIR as i32)
}

fn chown_below(
    dir: &File,
    shown: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), (PathBuf, std::io::Error)> {
    let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let entries = std::fs::read_dir(&base).map_err(|e| (shown.to_owned(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (shown.to_owned(), e))?;
        let name = entry.file_name();
        let (child, child_shown) = (base.join(&name), shown.join(&name));
        lchown(&child, Some(uid), Some(gid)).map_err(|e| (child_shown.clone(), e))?;
        let is_dir = entry.file_type().map_err(|e| (child_shown.clone(), e))?.is_dir();
        if is_dir {
            match open_dir(&child) {
                Ok(sub) => chown_below(&sub, &child_shown, uid, gid)?,
                Err(e) if is_link(&e) => {}
                Err(e) => return Err((child_shown, e)),
            }
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

    #[test]
    fn the_handover_follows_no_link_inside_the_tree() {
        use std::os::unix::fs::{MetadataExt, symlink};
        assert!(Uid::effective().is_root(), "changing owners needs root");
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("inner")).expect("outside");
        std::fs::write(outside.join("file"), b"x").expect("outside file");
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).expect("tree");
        std::fs::write(tree.join("sub/state"), b"x").expect("state");
        symlink(outside.join("file"), tree.join("file-link")).expect("link");
        symlink(&outside, tree.join("sub/dir-link")).expect("dir link");
        chown_tree(&tree, 4242, 4343, "4242:4343").expect("handover");
        let uid = |p: &Path| std::fs::symlink_metadata(p).expect("stat").uid();
        for p in [tree.clone(), tree.join("sub"), tree.join("sub/state"), tree.join("file-link")] {
            assert_eq!(uid(&p), 4242, "{}", p.display());
        }
        for p in [outside.clone(), outside.join("inner"), outside.join("file")] {
            assert_eq!(uid(&p), 0, "{} was reached through a link", p.display());
        }
    }
}
