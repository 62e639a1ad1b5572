//! IMA appraisal throughput on one core: synthetic 200k-entry ima-ng logs (sha256 file digests,
//! SHA-1 template hashes) replayed in the sha256 bank and checked against a real
//! [`RuntimePolicy`] of 100k paths with a few excludes.
//!
//! Run with `cargo bench -p kl-core --bench ima`; arguments after `--` select lines by a part
//! of their label (e.g. `-- appraise` or `-- random`). Two log orders: `clustered` visits
//! packages (runs of 50 paths that sort together) in a random order, the files of a package in
//! order, as a real log measures a program and then its libraries; `random` visits the paths
//! in a uniformly random order, the worst case for the policy's caches. Each log measures
//! every path twice (two different orders) and has 1% entries for excluded paths under
//! `/tmp/`, which are not in the policy.
//!
//! Times are on-CPU time of the benchmark thread (best of several rounds), so that other load
//! on a shared machine does not count; wall time is printed beside it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kl_core::alg::{Digest, HashAlg};
use kl_core::ima::{
    AsciiLog, FileCheck, FileDigest, ImaOptions, ImaRules, ImaState, RecordedChecks,
    VerificationKeys, appraise_log, encode_entry, replay_log,
};
use kl_core::policy::{Lookup, RuntimePolicy, RuntimePolicyBuilder};

const PATHS: usize = 100_000;
/// Every path twice, plus one excluded entry per 100.
const ENTRIES: usize = 2 * PATHS + 2 * PATHS / 100;
const PACKAGE: usize = 50;
const ROUNDS: usize = 7;
const EXCLUDES: &[&str] = &["/tmp/", "/var/log/", "/proc/", "/sys/", ".*\\.pyc$"];

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

/// The policy without its prefetch hint: what the lookahead in appraisal saves.
struct NoPrefetch<'a>(&'a RuntimePolicy);

impl ImaRules for NoPrefetch<'_> {
    fn check_file(&self, path: &str, digest: &FileDigest<'_>) -> FileCheck {
        self.0.check_file(path, digest)
    }

    fn check_buf(&self, name: &str, digest: &FileDigest<'_>) -> FileCheck {
        self.0.check_buf(name, digest)
    }

    fn check_keyring(&self, keyring: &str, digest: &FileDigest<'_>) -> FileCheck {
        self.0.check_keyring(keyring, digest)
    }
}

fn path(i: usize) -> String {
    format!("/usr/lib/x86_64-linux-gnu/pkg{:05}/lib{}-component.so.{}", i / PACKAGE, i, i % 7)
}

/// xorshift64*: a fixed-seed generator, so that every run measures the same logs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Order {
    Clustered,
    Random,
}

/// Path indices in log order: each path twice, in two independent orders.
fn order(kind: Order, rng: &mut Rng) -> Vec<usize> {
    let mut out = Vec::with_capacity(2 * PATHS);
    for _ in 0..2 {
        match kind {
            Order::Random => {
                let mut v: Vec<usize> = (0..PATHS).collect();
                rng.shuffle(&mut v);
                out.extend(v);
            }
            Order::Clustered => {
                let mut packages: Vec<usize> = (0..PATHS.div_ceil(PACKAGE)).collect();
                rng.shuffle(&mut packages);
                for p in packages {
                    out.extend(p * PACKAGE..((p + 1) * PACKAGE).min(PATHS));
                }
            }
        }
    }
    out
}

fn digest_of(p: &str) -> Digest {
    HashAlg::Sha256.digest(p.as_bytes())
}

/// An ASCII ima-ng log with sha256 file digests and correct SHA-1 template hashes.
fn synthesize(order: &[usize], paths: &[String]) -> Vec<u8> {
    let mut log = String::with_capacity(ENTRIES * 180);
    let mut data = Vec::new();
    let mut line = |p: &str| {
        let digest = digest_of(p);
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
    };
    for (n, &i) in order.iter().enumerate() {
        line(&paths[i]);
        if n % 100 == 99 {
            line(&format!("/tmp/build-{n}/conftest"));
        }
    }
    log.into_bytes()
}

fn policy(paths: &[String]) -> RuntimePolicy {
    let mut b = RuntimePolicyBuilder::new();
    for p in paths {
        b.add_file(p, digest_of(p).as_bytes()).expect("valid digest");
    }
    for e in EXCLUDES {
        b.add_exclude(e);
    }
    b.build().expect("builds")
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

fn report(what: &str, (wall, cpu): (Duration, Duration), n: usize, bytes: usize) {
    let secs = cpu.as_secs_f64();
    println!(
        "{what:<60} {:>6.1} ms cpu ({:>6.1} ms wall) {:>6.2} M entries/s {:>5.0} MB/s {:>4.0} ns/entry",
        secs * 1e3,
        wall.as_secs_f64() * 1e3,
        n as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
        secs * 1e9 / n as f64,
    );
}

fn primitives(policy: &RuntimePolicy, paths: &[String], order: &[usize]) {
    let sample = vec![0x5au8; 110];
    for alg in [HashAlg::Sha1, HashAlg::Sha256] {
        let d = best_of(ROUNDS, || {
            for _ in 0..ENTRIES {
                black_box(alg.digest(black_box(&sample)));
            }
        });
        report(&format!("primitive: {alg} of 110 bytes (ring)"), d, ENTRIES, 110 * ENTRIES);
    }
    let d = best_of(ROUNDS, || {
        use sha1::Digest as _;
        for _ in 0..ENTRIES {
            black_box(sha1::Sha1::digest(black_box(&sample)));
        }
    });
    report("primitive: sha1 of 110 bytes (sha1 crate)", d, ENTRIES, 110 * ENTRIES);
    let d = best_of(ROUNDS, || {
        let mut pcr = HashAlg::Sha256.zero();
        let m = HashAlg::Sha256.digest(b"m");
        for _ in 0..ENTRIES {
            pcr.extend(black_box(m.as_bytes()));
        }
        black_box(pcr);
    });
    report("primitive: sha256 PCR extend", d, ENTRIES, 32 * ENTRIES);
    let digests: Vec<Digest> = paths.iter().map(|p| digest_of(p)).collect();
    let d = best_of(ROUNDS, || {
        for &i in order {
            let ok = policy.lookup_file(&paths[i], digests[i].as_bytes()) == Lookup::Allowed;
            black_box(ok);
        }
    });
    report("primitive: policy lookup, random order", d, order.len(), 0);
    for batch in [8, 16, 32] {
        let d = best_of(ROUNDS, || {
            let mut names = Vec::with_capacity(batch);
            for chunk in order.chunks(batch) {
                names.clear();
                names.extend(chunk.iter().map(|&i| paths[i].as_str()));
                policy.prefetch_files(&names);
                for &i in chunk {
                    let ok =
                        policy.lookup_file(&paths[i], digests[i].as_bytes()) == Lookup::Allowed;
                    black_box(ok);
                }
            }
        });
        report(
            &format!("primitive: policy lookup, random order, prefetch {batch}"),
            d,
            order.len(),
            0,
        );
    }
}

fn appraise_line(
    what: &str,
    log: &[u8],
    rules: &(impl ImaRules + ?Sized),
    options: &ImaOptions,
    quoted: &Digest,
) {
    let keys = VerificationKeys::new();
    let d = best_of(ROUNDS, || {
        let a = appraise_log(log, rules, &keys, &ImaState::default(), options, quoted)
            .expect("appraises");
        assert!(a.verdict.passed(), "{:?}", a.verdict.findings.first());
        assert_eq!(a.entries, ENTRIES as u64);
        black_box(a);
    });
    report(what, d, ENTRIES, log.len());
}

/// One appraisal line: label, log, rules, options and quoted PCR value.
type Line<'a> = (&'a str, &'a [u8], &'a dyn ImaRules, &'a ImaOptions, &'a Digest);

fn main() {
    let paths: Vec<String> = (0..PATHS).map(path).collect();
    let t = Instant::now();
    let policy = policy(&paths);
    let built = t.elapsed();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let clustered = synthesize(&order(Order::Clustered, &mut rng), &paths);
    let random_order = order(Order::Random, &mut rng);
    let random = synthesize(&random_order, &paths);
    let mut bin = Vec::with_capacity(random.len());
    for e in AsciiLog::new(&random) {
        encode_entry(&e.expect("synthetic log parses"), &mut bin);
    }
    let options = ImaOptions::default();
    let quoted_clustered = replay_log(&clustered, &[HashAlg::Sha256]).expect("replays").pcrs[0];
    let quoted_random = replay_log(&random, &[HashAlg::Sha256]).expect("replays").pcrs[0];
    println!(
        "{ENTRIES} ima-ng entries per log ({} bytes ASCII, {} bytes binary); policy of {} paths, \
         {} excludes, built in {:.0} ms",
        random.len(),
        bin.len(),
        policy.file_count(),
        EXCLUDES.len(),
        built.as_secs_f64() * 1e3,
    );
    // Arguments (other than cargo's `--bench`) select the lines whose label contains one of them.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run =
        |label: &str| filters.is_empty() || filters.iter().any(|f| label.contains(f.as_str()));
    if run("primitive") {
        primitives(&policy, &paths, &random_order);
    }
    if run("parse (ASCII)") {
        let d = best_of(ROUNDS, || {
            black_box(AsciiLog::new(&random).filter(|e| e.is_ok()).count());
        });
        report("parse (ASCII)", d, ENTRIES, random.len());
    }
    if run("parse + replay") {
        let d = best_of(ROUNDS, || {
            black_box(replay_log(&random, &[HashAlg::Sha256]).expect("replays"));
        });
        report("parse + replay sha256 bank", d, ENTRIES, random.len());
    }
    let sha1 = ImaOptions { bank: HashAlg::Sha1, ..options };
    let quoted1 = replay_log(&random, &[HashAlg::Sha1]).expect("replays").pcrs[0];
    let no_prefetch = NoPrefetch(&policy);
    let lines: [Line<'_>; 6] = [
        (
            "appraise ASCII, allow-all rules (no lookups)",
            &random,
            &AllowAll,
            &options,
            &quoted_random,
        ),
        (
            "appraise ASCII, 100k-path policy, clustered order",
            &clustered,
            &policy,
            &options,
            &quoted_clustered,
        ),
        (
            "appraise ASCII, 100k-path policy, random order",
            &random,
            &policy,
            &options,
            &quoted_random,
        ),
        (
            "appraise ASCII, random order, no prefetch hint",
            &random,
            &no_prefetch,
            &options,
            &quoted_random,
        ),
        (
            "appraise binary, 100k-path policy, random order",
            &bin,
            &policy,
            &options,
            &quoted_random,
        ),
        ("appraise ASCII, sha1 bank, random order", &random, &policy, &sha1, &quoted1),
    ];
    for (label, log, rules, options, quoted) in lines {
        if run(label) {
            appraise_line(label, log, rules, options, quoted);
        }
    }
    // What `kctl policies test` does: appraise while the policy loads, against rules that
    // record every question, then confirm the answers with the policy.
    let label = "appraise ASCII, random order, recording the lookups (RecordedChecks)";
    if run(label) {
        let keys = VerificationKeys::new();
        let d = best_of(ROUNDS, || {
            let recorded = RecordedChecks::with_capacity(ENTRIES);
            let a = appraise_log(
                &random,
                &recorded,
                &keys,
                &ImaState::default(),
                &options,
                &quoted_random,
            )
            .expect("appraises");
            assert!(a.verdict.passed());
            black_box((a, recorded));
        });
        report(label, d, ENTRIES, random.len());
    }
    let label = "confirm recorded lookups, 100k-path policy, random order";
    if run(label) {
        let recorded = RecordedChecks::with_capacity(ENTRIES);
        let keys = VerificationKeys::new();
        appraise_log(&random, &recorded, &keys, &ImaState::default(), &options, &quoted_random)
            .expect("appraises");
        let d = best_of(ROUNDS, || assert!(recorded.confirm(&policy)));
        report(label, d, ENTRIES, 0);
    }
}
