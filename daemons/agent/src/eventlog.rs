//! The UEFI event log the agent serves with quotes (`measuredboot_ml_path`), read whole per
//! request. An agent that gives up root (`run_as`) opens it first and reads it through that
//! descriptor: securityfs files are root's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    kept: Mutex<Option<File>>,
}

impl EventLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EventLog { path: path.into(), kept: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the log now and reads it through that descriptor from then on. A log that cannot
    /// be opened (a machine without one) stays absent.
    pub fn keep_open(&self) {
        if let Ok(file) = File::open(&self.path) {
            *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        }
    }

    /// Whether there is a log to serve.
    pub fn available(&self) -> bool {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).is_some() || self.path.is_file()
    }

    /// The whole log.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match kept.as_mut() {
            Some(file) => {
                file.seek(SeekFrom::Start(0))?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            None => std::fs::read(&self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_log_is_read_whole_each_time_even_once_unreadable_by_path()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("binary_bios_measurements");
        std::fs::write(&path, b"events")?;
        let log = EventLog::new(&path);
        log.keep_open();
        assert_eq!(log.read()?, b"events");
        // The path is gone (as an unreadable securityfs file is to the service user); the
        // descriptor still reads it, from the start each time.
        std::fs::remove_file(&path)?;
        assert!(log.available());
        assert_eq!(log.read()?, b"events");
        assert_eq!(log.read()?, b"events");
        assert!(!EventLog::new(dir.path().join("absent")).available());
        Ok(())
    }
}
