//! The IMA measurement list (`ima_ml_path`, ASCII), served from an entry offset.
//!
//! The kernel's list only grows until the machine reboots, so the agent keeps the byte offset
//! of every complete line it has seen and, on each request, reads only what was appended since
//! (securityfs reports no file size, so the end is found by reading). A list that no longer
//! holds the last line indexed was replaced (a reboot, or a test rewriting the file): the index
//! starts again from the beginning.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Errors reading the measurement list.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImaLogError {
    #[error("IMA measurement list {}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// IMA entries as served to a verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImaSlice {
    /// Index of the first entry in `entries` (0 when the requested offset was past the end).
    pub offset: u64,
    /// Whole lines, each ending with a newline.
    pub entries: Vec<u8>,
    pub count: u32,
    /// Whether the list holds entries after the last one sent.
    pub more: bool,
    /// Whether the requested offset was past the end of the list (a reboot shortened it).
    pub restarted: bool,
}

/// The measurement list at a path and the line index built so far.
#[derive(Debug)]
pub struct ImaLog {
    path: PathBuf,
    index: Mutex<LineIndex>,
    /// Whether the list was missing when last looked at, so that is logged once, not per quote.
    missing: AtomicBool,
    /// The list opened once at start, for an agent that then gives up root (`run_as`):
    /// securityfs files are readable by root only.
    kept: Mutex<Option<File>>,
}

/// Byte offsets of line starts; `starts[n]` is where entry `n` begins and the last element is
/// the end of the last complete line.
#[derive(Debug, Default)]
struct LineIndex {
    starts: Vec<u64>,
    /// The last complete line indexed, to recognise a list that was replaced.
    last_line: Vec<u8>,
}

impl LineIndex {
    fn entries(&self) -> u64 {
        self.starts.len().saturating_sub(1) as u64
    }

    fn end(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }
}

impl ImaLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ImaLog {
            path: path.into(),
            index: Mutex::new(LineIndex::default()),
            missing: AtomicBool::new(false),
            kept: Mutex::new(None),
        }
    }

    /// Opens the list now and reads it through that descriptor from then on (before the agent
    /// gives up root). A list that cannot be opened is left to [`ImaLog::available`] to report.
    pub fn keep_open(&self) {
        if let Ok(file) = File::open(&self.path) {
            *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the list can be opened. A change is logged: a list that is missing fails the
    /// agent at a verifier that applies a runtime policy to it.
    pub fn available(&self) -> bool {
        if self.kept.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return true;
        }
        let opened = File::open(&self.path);
        let was_missing = self.missing.swap(opened.is_err(), Ordering::Relaxed);
        match (&opened, was_missing) {
            (Err(e), false) => tracing::warn!(
                ima_ml_path = %self.path.display(),
                error = %e,
                "no IMA measurement list: verifiers with a runtime policy for this agent will fail it"
            ),
            (Ok(_), true) => {
                tracing::info!(ima_ml_path = %self.path.display(), "IMA measurement list readable again")
            }
            _ => {}
        }
        opened.is_ok()
    }

    /// Up to `max` entries from entry `offset`. An offset past the end of the list means the
    /// list was restarted (the machine rebooted): entries are then served from 0.
    pub fn read_from(&self, offset: u64, max: u64) -> Result<ImaSlice, ImaLogError> {
        let err = |source| ImaLogError::Read { path: self.path.clone(), source };
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match kept.as_mut() {
            // Held under the lock: the descriptor's offset is shared by every reader.
            Some(file) => self.read_file(file, offset, max),
            None => {
                drop(kept);
                let mut file = File::open(&self.path).map_err(err)?;
                self.read_file(&mut file, offset, max)
            }
        }
    }

    fn read_file(&self, file: &mut File, offset: u64, max: u64) -> Result<ImaSlice, ImaLogError> {
        let err = |source| ImaLogError::Read { path: self.path.clone(), source };
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if !still_holds_last_line(file, &index).map_err(err)? {
            *index = LineIndex::default();
        }
        extend_index(file, &mut index).map_err(err)?;

        let total = index.entries();
        let (start, restarted) = if offset > total { (0, true) } else { (offset, false) };
        let end = start.saturating_add(max).min(total);
        let (from, to) = (index.starts[start as usize], index.starts[end as usize]);
        drop(index);

        let mut entries = vec![0u8; (to - from) as usize];
        file.seek(SeekFrom::Start(from)).map_err(err)?;
        file.read_exact(&mut entries).map_err(err)?;
        Ok(ImaSlice {
            offset: start,
            entries,
            count: u32::try_from(end - start).unwrap_or(u32::MAX),
            more: end < total,
            restarted,
        })
    }
}

fn still_holds_last_line(file: &mut File, index: &LineIndex) -> io::Result<bool> {
    if index.last_line.is_empty() {
        return Ok(true);
    }
    let start = index.end() - index.last_line.len() as u64;
    file.seek(SeekFrom::Start(start))?;
    let mut found = vec![0u8; index.last_line.len()];
    let mut filled = 0;
    while filled < found.len() {
        match file.read(&mut found[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(found == index.last_line)
}

/// Reads what follows the indexed part and records each complete line; a trailing partial
/// line (the kernel or a writer is mid-append) waits for the next call.
fn extend_index(file: &mut File, index: &mut LineIndex) -> io::Result<()> {
    if index.starts.is_empty() {
        index.starts.push(0);
    }
    let mut pos = index.end();
    file.seek(SeekFrom::Start(pos))?;
    let mut appended = Vec::new();
    file.read_to_end(&mut appended)?;
    let mut line_start = 0usize;
    for (i, byte) in appended.iter().enumerate() {
        if *byte == b'\n' {
            pos += (i + 1 - line_start) as u64;
            index.starts.push(pos);
            index.last_line.clear();
            index.last_line.extend_from_slice(&appended[line_start..=i]);
            line_start = i + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn line(n: usize) -> String {
        format!("10 {n:040x} ima-ng sha256:{n:064x} /usr/bin/file{n}\n")
    }

    fn append(path: &Path, text: &str) -> io::Result<()> {
        std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(text.as_bytes())
    }

    #[test]
    fn serves_from_offsets_in_bounded_pages() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ascii_runtime_measurements");
        for n in 0..5 {
            append(&path, &line(n))?;
        }
        let log = ImaLog::new(&path);
        let all = log.read_from(0, 100)?;
        assert_eq!((all.offset, all.count, all.more, all.restarted), (0, 5, false, false));
        assert_eq!(all.entries, (0..5).map(line).collect::<String>().into_bytes());

        let page = log.read_from(1, 2)?;
        assert_eq!((page.offset, page.count, page.more), (1, 2, true));
        assert_eq!(page.entries, format!("{}{}", line(1), line(2)).into_bytes());

        let none = log.read_from(5, 10)?;
        assert_eq!((none.offset, none.count, none.more, none.restarted), (5, 0, false, false));
        assert!(none.entries.is_empty());
        Ok(())
    }

    #[test]
    fn picks_up_appended_lines_and_waits_for_partial_ones() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        append(&path, &line(0))?;
        let log = ImaLog::new(&path);
        assert_eq!(log.read_from(0, 10)?.count, 1);
        let second = line(1);
        let (head, tail) = second.split_at(10);
        append(&path, head)?;
        let partial = log.read_from(0, 10)?;
        assert_eq!((partial.count, partial.more), (1, false));
        append(&path, tail)?;
        let next = log.read_from(1, 10)?;
        assert_eq!(next.entries, second.into_bytes());
        Ok(())
    }

    #[test]
    fn an_offset_past_the_end_after_a_reboot_serves_from_zero() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        for n in 0..4 {
            append(&path, &line(n))?;
        }
        let log = ImaLog::new(&path);
        assert_eq!(log.read_from(0, 10)?.count, 4);
        // The machine rebooted: a new, shorter list with different entries.
        std::fs::write(&path, format!("{}{}", line(7), line(8)))?;
        let after = log.read_from(4, 10)?;
        assert_eq!((after.offset, after.count, after.restarted), (0, 2, true));
        assert_eq!(after.entries, format!("{}{}", line(7), line(8)).into_bytes());
        // A same-length replacement is noticed too.
        std::fs::write(&path, format!("{}{}", line(5), line(6)))?;
        assert_eq!(log.read_from(1, 10)?.entries, line(6).into_bytes());
        Ok(())
    }

    #[test]
    fn a_missing_list_is_an_error_naming_the_path() {
        let log = ImaLog::new("/nonexistent/ima/ascii_runtime_measurements");
        assert!(!log.available());
        let err = log.read_from(0, 1).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("/nonexistent/ima/ascii_runtime_measurements")));
    }
}
