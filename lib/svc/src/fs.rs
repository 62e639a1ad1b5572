//! Whether a file is there, told apart from whether it can be looked at.
//!
//! `Path::exists`, `is_file` and `is_dir` answer "no" when the answer is "permission denied"
//! (a directory the daemon's user cannot traverse, after `chmod -R 600 /etc/keylime`): a daemon
//! would then run on built-in defaults or create a new CA beside an unreadable one. Only a path
//! that does not exist is absent; every other failure is the caller's error to report.

use std::io::ErrorKind;
use std::path::Path;

/// The metadata of `path` (following symbolic links), `None` when nothing is there, or the
/// error that kept it from being looked at.
pub fn probe(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether something is at `path`; an error when that cannot be told.
pub fn exists(path: &Path) -> std::io::Result<bool> {
    probe(path).map(|m| m.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_present_and_unreachable_paths_are_told_apart() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(!exists(&dir.path().join("absent"))?);
        std::fs::write(dir.path().join("file"), "x")?;
        assert!(probe(&dir.path().join("file"))?.is_some_and(|m| m.is_file()));
        // A path through a regular file cannot be looked at: not "absent".
        let through_file = dir.path().join("file").join("below");
        assert_eq!(exists(&through_file).map_err(|e| e.kind()), Err(ErrorKind::NotADirectory));
        Ok(())
    }
}
