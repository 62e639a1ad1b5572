//! Hashing a directory tree for runtime policy generation: walk, then hash files in parallel,
//! with a progress bar on stderr.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kl_core::alg::{Digest, HashAlg};
use rayon::prelude::*;

/// A file measured from the tree: the path it will have on the attested machine and its digest.
pub struct Measured {
    pub path: String,
    pub digest: Digest,
}

/// What could not be hashed (unreadable files), reported but not fatal.
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Hashes every regular file under `dir` (symbolic links are not followed: IMA measures the
/// target under its own path), mapping `dir` to `root` in the recorded paths.
pub fn hash_tree(
    dir: &Path,
    root: &Path,
    skip: &[PathBuf],
    alg: HashAlg,
) -> anyhow::Result<(Vec<Measured>, Vec<Skipped>)> {
    let meta = std::fs::metadata(dir).with_context(|| dir.display().to_string())?;
    anyhow::ensure!(meta.is_dir(), "{}: not a directory", dir.display());

    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(dir).follow_links(false).into_iter();
    for entry in walker.filter_entry(|e| !skip.iter().any(|s| e.path().starts_with(s))) {
        let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    files.sort();

    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} hashing {pos}/{len} files [{bar:30}] {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let results: Vec<Result<Measured, Skipped>> = files
        .par_iter()
        .map(|file| {
            let result = hash_file(file, alg)
                .map(|digest| Measured { path: recorded_path(dir, root, file), digest })
                .map_err(|e| Skipped { path: file.clone(), reason: e.to_string() });
            bar.inc(1);
            result
        })
        .collect();
    bar.finish_and_clear();

    let mut measured = Vec::with_capacity(results.len());
    let mut skipped = Vec::new();
    for r in results {
        match r {
            Ok(m) => measured.push(m),
            Err(s) => skipped.push(s),
        }
    }
    Ok((measured, skipped))
}

fn hash_file(path: &Path, alg: HashAlg) -> std::io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = alg.hasher();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// `dir/a/b` becomes `root/a/b`, always absolute, with `/` separators.
fn recorded_path(dir: &Path, root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(dir).unwrap_or(file);
    let joined = root.join(rel);
    let s = joined.to_string_lossy();
    if s.starts_with('/') { s.into_owned() } else { format!("/{s}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_mapped_onto_the_root() {
        let p =
            recorded_path(Path::new("/mnt/img"), Path::new("/"), Path::new("/mnt/img/usr/bin/x"));
        assert_eq!(p, "/usr/bin/x");
        let p =
            recorded_path(Path::new("/usr/bin"), Path::new("/usr/bin"), Path::new("/usr/bin/x"));
        assert_eq!(p, "/usr/bin/x");
    }
}
