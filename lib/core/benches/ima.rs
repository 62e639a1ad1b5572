//! IMA appraisal throughput on one core: a synthetic 200k-entry ima-ng log checked against a
//! 100k-path rule set. Run with `cargo bench -p kl-core --bench ima`.
//!
//! Times are on-CPU time of the benchmark thread (best of several rounds), so that other load
//! on a shared machine does not count; wall time is printed beside it.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use kl_core::alg::{Digest, HashAlg};
use kl_core::ima::{
    AsciiLog, FileCheck, FileDigest, ImaOptions, ImaRules, ImaState, VerificationKeys,
    appraise_log, encode_entry, replay_log,
};

const ENTRIES: usize = 200_000;
const PATHS: usize = 100_000;
const ROUNDS: usize = 5;

/// A runtime policy's core: path -> allowed digest (inline, one per path here, which saves a
/// cache miss per lookup over a `Vec`), and one exclude prefix.
struct Rules {
    files: HashMap<String, Digest>,
}

impl ImaRules for Rules {
    fn check_file(&self, path: &str, digest: &FileDigest<'_>) -> FileCheck {
        if path.starts_with("/tmp/") {
            return FileCheck::Excluded;
        }
        match self.files.get(path) {
            None => FileCheck::UnknownPath,
            Some(allowed) if allowed.as_bytes() == digest.as_bytes() => FileCheck::Allowed,
            Some(_) => FileCheck::DigestMismatch,
        }
    }

    fn check_buf(&self, _name: &str, _digest: &FileDigest<'_>) -> FileCheck {
        FileCheck::UnknownPath
    }

    fn check_keyring(&self, _keyring: &str, _digest: &FileDigest<'_>) -> FileCheck {
        FileCheck::UnknownPath
    }
}

/// Allows everything: isolates the cost of the IMA layer from that of a policy's lookups.
struct AllowAll;

impl ImaRules for AllowAll {
    fn check_file(&self, _path: &str, _digest: &FileDigest<'_>) -> FileCheck {
        FileCheck::Allowed
    }

    fn check_buf(&self, _name: &str, _digest: &FileDigest<'_>) -> FileCheck {
        FileCheck::Allowed
    }

    fn check_keyring(&self, _keyring: &str, _digest: &FileDigest<'_>) -> FileCheck {
        FileCheck::Allowed
    }
}

fn path(i: usize) -> String {
    format!("/usr/lib/x86_64-linux-gnu/pkg{:03}/lib{}-component.so.{}", i % 997, i, i % 7)
}

/// An ASCII ima-ng log with sha256 file digests and correct SHA-1 template hashes, each of the
/// `PATHS` paths measured twice, and rules allowing every one of them.
fn synthesize() -> (Vec<u8>, Rules) {
    let mut files = HashMap::with_capacity(PATHS);
    let mut log = String::with_capacity(ENTRIES * 160);
    let mut data = Vec::new();
    for i in 0..ENTRIES {
        let p = path(i % PATHS);
        let digest = HashAlg::Sha256.digest(p.as_bytes());
        files.entry(p.clone()).or_insert(digest);
        // ima-ng template data: d-ng then n-ng, each length-prefixed.
        data.clear();
        data.extend_from_slice(&(6 + 2 + 32u32).to_le_bytes());
        data.extend_from_slice(b"sha256:\0");
        data.extend_from_slice(digest.as_bytes());
        data.extend_from_slice(&(p.len() as u32 + 1).to_le_bytes());
        data.extend_from_slice(p.as_bytes());
        data.push(0);
        let th = HashAlg::Sha1.digest(&data);
        log.push_str(&format!("10 {th} ima-ng sha256:{digest} {p}\n"));
    }
    (log.into_bytes(), Rules { files })
}

/// On-CPU time of this thread from the scheduler; `None` where unavailable.
fn cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Best (wall, CPU) time over `rounds` runs.
fn best_of(rounds: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        let (t, c) = (Instant::now(), cpu_time());
        f();
        let wall = t.elapsed();
        let cpu = match (c, cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => wall,
        };
        best = (best.0.min(wall), best.1.min(cpu));
    }
    best
}

fn report(what: &str, (wall, cpu): (Duration, Duration), bytes: usize) {
    let secs = cpu.as_secs_f64();
    println!(
        "{what:<58} {:>6.1} ms cpu ({:>6.1} ms wall) {:>6.2} M entries/s {:>5.0} MB/s {:>4.0} ns/entry",
        secs * 1e3,
        wall.as_secs_f64() * 1e3,
        ENTRIES as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
        secs * 1e9 / ENTRIES as f64,
    );
}

fn primitives(rules: &Rules) {
    let sample = vec![0x5au8; 150];
    for alg in [HashAlg::Sha1, HashAlg::Sha256] {
        let d = best_of(ROUNDS, || {
            for _ in 0..ENTRIES {
                black_box(alg.digest(black_box(&sample)));
            }
        });
        report(&format!("primitive: {alg} of 150 bytes (ring)"), d, 150 * ENTRIES);
    }
    let d = best_of(ROUNDS, || {
        use sha1::Digest as _;
        for _ in 0..ENTRIES {
            black_box(sha1::Sha1::digest(black_box(&sample)));
        }
    });
    report("primitive: sha1 of 150 bytes (sha1 crate)", d, 150 * ENTRIES);
    let d = best_of(ROUNDS, || {
        let mut pcr = HashAlg::Sha256.zero();
        let m = HashAlg::Sha256.digest(b"m");
        for _ in 0..ENTRIES {
            pcr.extend(black_box(m.as_bytes()));
        }
        black_box(pcr);
    });
    report("primitive: sha256 PCR extend", d, 32 * ENTRIES);
    let paths: Vec<String> = (0..ENTRIES).map(|i| path(i % PATHS)).collect();
    let d = best_of(ROUNDS, || {
        for p in &paths {
            black_box(rules.files.get(black_box(p.as_str())));
        }
    });
    report("primitive: rule map lookup", d, 0);
}

fn main() {
    let (log, rules) = synthesize();
    let mut bin = Vec::with_capacity(log.len());
    for e in AsciiLog::new(&log) {
        encode_entry(&e.expect("synthetic log parses"), &mut bin);
    }
    let quoted = replay_log(&log, &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let keys = VerificationKeys::new();
    let options = ImaOptions::default();
    println!(
        "{ENTRIES} ima-ng entries ({} bytes ASCII, {} bytes binary), {} rule paths",
        log.len(),
        bin.len(),
        rules.files.len()
    );
    let only_appraise = std::env::args().any(|a| a == "appraise");
    if !only_appraise {
        primitives(&rules);
        let d = best_of(ROUNDS, || {
            black_box(AsciiLog::new(&log).filter(|e| e.is_ok()).count());
        });
        report("parse (ASCII)", d, log.len());
        let d = best_of(ROUNDS, || {
            black_box(replay_log(&log, &[HashAlg::Sha256]).expect("replays"));
        });
        report("parse + replay sha256 bank", d, log.len());
    }

    let d = best_of(ROUNDS, || {
        let a = appraise_log(&log, &rules, &keys, &ImaState::default(), &options, &quoted)
            .expect("appraises");
        assert!(a.verdict.passed(), "{:?}", a.verdict.findings.first());
        black_box(a);
    });
    report("appraise ASCII: parse+replay sha256+template hash+rules", d, log.len());
    if only_appraise {
        return;
    }

    let d = best_of(ROUNDS, || {
        let a = appraise_log(&bin, &rules, &keys, &ImaState::default(), &options, &quoted)
            .expect("appraises");
        assert!(a.verdict.passed(), "{:?}", a.verdict.findings.first());
        black_box(a);
    });
    report("appraise binary: parse+replay sha256+template hash+rules", d, bin.len());

    let d = best_of(ROUNDS, || {
        let a = appraise_log(&log, &AllowAll, &keys, &ImaState::default(), &options, &quoted)
            .expect("appraises");
        assert!(a.verdict.passed(), "{:?}", a.verdict.findings.first());
        black_box(a);
    });
    report("appraise ASCII, allow-all rules (no lookup)", d, log.len());

    let sha1 = ImaOptions { bank: HashAlg::Sha1, ..options };
    let quoted1 = replay_log(&log, &[HashAlg::Sha1]).expect("replays").pcrs[0];
    let d = best_of(ROUNDS, || {
        let a = appraise_log(&log, &rules, &keys, &ImaState::default(), &sha1, &quoted1)
            .expect("appraises");
        assert!(a.verdict.passed(), "{:?}", a.verdict.findings.first());
        black_box(a);
    });
    report("appraise ASCII, sha1 bank", d, log.len());
}
