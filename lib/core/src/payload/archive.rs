//! Payload archives: a zip read fully in memory and checked entry by entry before anything is
//! written, and the stored-only zips kctl builds.

use std::io::{Cursor, Read, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::PayloadError;

/// Bounds on what an archive may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: usize,
    pub max_file_size: u64,
    pub max_total_size: u64,
}

impl Default for Limits {
    /// 1,000 entries, 64 MiB per file, 256 MiB in all.
    fn default() -> Limits {
        Limits { max_entries: 1000, max_file_size: 64 << 20, max_total_size: 256 << 20 }
    }
}

/// One regular file of a payload, its path relative to the secure directory.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// `/`-separated, no empty, `.` or `..` components, not absolute.
    pub path: String,
    pub contents: Vec<u8>,
    /// The archive marks it executable (any x bit in its Unix mode).
    pub executable: bool,
}

impl std::fmt::Debug for PayloadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadFile")
            .field("path", &self.path)
            .field("len", &self.contents.len())
            .field("executable", &self.executable)
            .finish()
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// Reads every entry of a zip archive, refusing anything that could escape the directory it is
/// extracted into or exhaust it: absolute paths, `..`, backslashes, links and other special
/// files, and sizes over `limits` (counted on the bytes actually inflated, not the sizes the
/// archive declares). Directories are implied by file paths and not returned.
pub fn unpack(zip: &[u8], limits: &Limits) -> Result<Vec<PayloadFile>, PayloadError> {
    let mut archive =
        ZipArchive::new(Cursor::new(zip)).map_err(|e| PayloadError::Archive(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(PayloadError::Archive(format!(
            "{} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        )));
    }
    let mut files = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry =
            archive.by_index(i).map_err(|e| PayloadError::Archive(format!("entry {i}: {e}")))?;
        let raw_name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let bad = |problem: &str| PayloadError::Entry {
            name: raw_name.clone(),
            problem: problem.to_owned(),
        };
        let path = checked_path(&raw_name).map_err(&bad)?;
        let mode = entry.unix_mode().unwrap_or(if entry.is_dir() {
            S_IFDIR | 0o755
        } else {
            S_IFREG | 0o644
        });
        let kind = mode & S_IFMT;
        if entry.is_dir() || kind == S_IFDIR {
            continue;
        }
        if kind != 0 && kind != S_IFREG {
            return Err(bad("is a link or special file; only regular files are extracted"));
        }
        let room = limits.max_file_size.min(limits.max_total_size - total);
        let mut contents = Vec::new();
        (&mut entry)
            .take(room + 1)
            .read_to_end(&mut contents)
            .map_err(|e| bad(&format!("cannot be read: {e}")))?;
        if contents.len() as u64 > room {
            return Err(bad(&if room == limits.max_file_size {
                format!("larger than the limit of {} bytes per file", limits.max_file_size)
            } else {
                format!(
                    "the archive expands past the limit of {} bytes in all",
                    limits.max_total_size
                )
            }));
        }
        total += contents.len() as u64;
        if files.iter().any(|f: &PayloadFile| f.path == path) {
            return Err(bad("appears twice"));
        }
        files.push(PayloadFile { path, contents, executable: mode & 0o111 != 0 });
    }
    // A file may not also be a directory of another entry (`a` and `a/b`): refused here, so
    // that nothing is written for an archive that cannot be extracted whole.
    let paths: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for f in &files {
        for (i, _) in f.path.match_indices('/') {
            let dir = &f.path[..i];
            if paths.contains(dir) {
                return Err(PayloadError::Entry {
                    name: f.path.clone(),
                    problem: format!("lies under {dir:?}, which is a file"),
                });
            }
        }
    }
    Ok(files)
}

/// A relative, normalised path, or what is wrong with it.
fn checked_path(name: &str) -> Result<String, &'static str> {
    if name.is_empty() {
        return Err("has an empty name");
    }
    if name.contains('\0') {
        return Err("has a NUL byte in its name");
    }
    if name.contains('\\') {
        return Err("has a backslash in its name");
    }
    if name.starts_with('/') || name.as_bytes().get(1) == Some(&b':') {
        return Err("has an absolute path");
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("has a `..` component"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("names no file");
    }
    Ok(parts.join("/"))
}

/// Builds a zip of `files` (stored, not compressed), marking executables 0755.
pub fn pack(files: &[PayloadFile]) -> Result<Vec<u8>, PayloadError> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for f in files {
        checked_path(&f.path)
            .map_err(|p| PayloadError::Entry { name: f.path.clone(), problem: p.to_owned() })?;
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .unix_permissions(if f.executable { 0o755 } else { 0o644 });
        writer
            .start_file(f.path.as_str(), options)
            .map_err(|e| PayloadError::Archive(e.to_string()))?;
        writer.write_all(&f.contents).map_err(|e| PayloadError::Archive(e.to_string()))?;
    }
    let cursor = writer.finish().map_err(|e| PayloadError::Archive(e.to_string()))?;
    Ok(cursor.into_inner())
}
