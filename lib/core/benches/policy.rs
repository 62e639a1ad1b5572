//! Runtime policy benchmark: load time of a ~30 MB policy in each format, and lookups/s.
//!
//! Run with `cargo bench -p kl-core --bench policy`. Single-threaded; prints one line per figure.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kl_core::alg::HashAlg;
use kl_core::policy::{self, LoadOptions, Lookup, RuntimePolicy, RuntimePolicyBuilder};

const PATHS: usize = 250_000;
const EXCLUDES: &[&str] = &["/tmp/", "/var/log/", "/proc/", "/sys/", ".*\\.pyc$"];

fn path(i: usize) -> String {
    format!("/usr/lib64/package-{:05}/lib/libexample-{i}.so.{}", i / 50, i % 7)
}

fn digest(i: usize) -> [u8; 32] {
    let d = HashAlg::Sha256.digest(&(i as u64).to_le_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_bytes());
    out
}

/// A Keylime policy of `paths` (with the benchmark's excludes) listing them in a fixed
/// pseudo-random order.
fn keylime_json_in_random_order(paths: &[String], digests: &[[u8; 32]]) -> String {
    let mut order: Vec<usize> = (0..paths.len()).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut out = String::from("{\"meta\": {\"version\": 1}, \"digests\": {");
    for (n, &i) in order.iter().enumerate() {
        if n > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("\"{}\": [\"{}\"]", paths[i], hex::encode(digests[i])));
    }
    let excludes: Vec<String> = EXCLUDES.iter().map(|e| format!("{e:?}")).collect();
    out.push_str(&format!("}}, \"excludes\": [{}]}}", excludes.join(", ")));
    out
}

/// Best of `runs` wall-clock times of `f`.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = black_box(f());
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("runs > 0"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let paths: Vec<String> = (0..PATHS).map(path).collect();
    let digests: Vec<[u8; 32]> = (0..PATHS).map(digest).collect();

    let (t, policy) = best(3, || {
        let mut b = RuntimePolicyBuilder::new();
        for (p, d) in paths.iter().zip(&digests) {
            b.add_file(p, d).expect("valid digest");
        }
        for e in EXCLUDES {
            b.add_exclude(e);
        }
        b.build().expect("builds")
    });
    println!("build from {PATHS} (path, digest) pairs: {:.1} ms", ms(t));

    let (t, native_json) = best(3, || policy.to_json());
    println!("serialize native: {:.1} MB in {:.1} ms", native_json.len() as f64 / 1e6, ms(t));
    let (t, keylime_json) = best(3, || policy.to_keylime_json());
    println!("serialize Keylime: {:.1} MB in {:.1} ms", keylime_json.len() as f64 / 1e6, ms(t));
    let flat = policy.to_flat_allowlist();

    let (t, parsed) = best(5, || policy::native::parse(native_json.as_bytes()).expect("parses"));
    println!("load native ({:.1} MB): {:.1} ms", native_json.len() as f64 / 1e6, ms(t));
    assert_eq!(parsed, policy);
    let (t, parsed) = best(5, || policy::keylime::parse(keylime_json.as_bytes()).expect("parses"));
    println!("load Keylime JSON ({:.1} MB): {:.1} ms", keylime_json.len() as f64 / 1e6, ms(t));
    assert_eq!(parsed.file_count(), PATHS);
    // Keylime's tools do not sort the paths they write: such a policy is indexed in the order
    // it is read, and sorted only when serialised (for the content digest).
    let shuffled = keylime_json_in_random_order(&paths, &digests);
    let (t, parsed) = best(5, || policy::keylime::parse(shuffled.as_bytes()).expect("parses"));
    println!(
        "load Keylime JSON, paths in random order ({:.1} MB): {:.1} ms",
        shuffled.len() as f64 / 1e6,
        ms(t)
    );
    assert_eq!(parsed, policy);
    let (t, _) = best(3, || {
        let p = policy::keylime::parse(shuffled.as_bytes()).expect("parses");
        p.content_digest()
    });
    println!("load Keylime JSON in random order + content digest: {:.1} ms", ms(t));
    let (t, _) = best(5, || policy::allowlist::parse_allowlist(flat.as_bytes()).expect("parses"));
    println!("load flat allowlist ({:.1} MB): {:.1} ms", flat.len() as f64 / 1e6, ms(t));
    let (t, _) =
        best(5, || policy::load(native_json.as_bytes(), &LoadOptions::default()).expect("loads"));
    println!("load with format detection (native): {:.1} ms", ms(t));
    let (t, _) = best(3, || {
        let p = policy::native::parse(native_json.as_bytes()).expect("parses");
        p.content_digest()
    });
    println!("load native + content digest: {:.1} ms", ms(t));

    lookups(&policy, &paths, &digests);

    // A policy of a few thousand paths stays in cache: the cost of the lookup code itself.
    let small = kl_core::policy::from_file_digests(
        paths.iter().zip(&digests).take(5_000).map(|(p, d)| (p.as_str(), &d[..])),
    )
    .expect("builds");
    let (t, allowed) = best(3, || {
        let mut allowed = 0usize;
        for _ in 0..400 {
            for (p, d) in paths.iter().zip(&digests).take(5_000) {
                allowed += usize::from(small.lookup_file(p, d) == Lookup::Allowed);
            }
        }
        allowed
    });
    assert_eq!(allowed, 2_000_000);
    println!("lookup known path, 5,000-path policy (in cache): {}", rate(2_000_000, t));
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:.1} M/s ({:.0} ns each)",
        n as f64 / d.as_secs_f64() / 1e6,
        d.as_nanos() as f64 / n as f64
    )
}

fn lookups(policy: &RuntimePolicy, paths: &[String], digests: &[[u8; 32]]) {
    // Queries in a scattered order, laid out one after another like the lines of an IMA log:
    // the query side is read sequentially, the policy side is hit at random.
    let order: Vec<usize> = (0..PATHS).map(|i| (i * 7919) % PATHS).collect();
    let mut log = String::new();
    let mut queries = Vec::with_capacity(PATHS);
    for &i in &order {
        let start = log.len();
        log.push_str(&paths[i]);
        queries.push((start, log.len(), digests[i]));
    }
    const ROUNDS: usize = 8;
    let n = PATHS * ROUNDS;

    let (t, allowed) = best(3, || {
        let mut allowed = 0usize;
        for _ in 0..ROUNDS {
            for (start, end, digest) in &queries {
                let path = &log[*start..*end];
                allowed += usize::from(policy.lookup_file(path, digest) == Lookup::Allowed);
            }
        }
        allowed
    });
    assert_eq!(allowed, n);
    println!("lookup known path, allowed digest ({} excludes): {}", EXCLUDES.len(), rate(n, t));

    // The same in path order (a log whose order follows the policy's): cache-friendly.
    let (t, allowed) = best(3, || {
        let mut allowed = 0usize;
        for _ in 0..ROUNDS {
            for (p, d) in paths.iter().zip(digests) {
                allowed += usize::from(policy.lookup_file(p, d) == Lookup::Allowed);
            }
        }
        allowed
    });
    assert_eq!(allowed, n);
    println!("lookup known path, allowed digest, sequential: {}", rate(n, t));

    let (t, mismatched) = best(3, || {
        let mut count = 0usize;
        for &i in &order {
            let other = &digests[(i + 1) % PATHS];
            count += usize::from(matches!(
                policy.lookup_file(&paths[i], other),
                Lookup::DigestNotAllowed { .. }
            ));
        }
        count
    });
    assert_eq!(mismatched, PATHS);
    println!("lookup known path, wrong digest (runs excludes): {}", rate(PATHS, t));

    let unknown: Vec<String> = (0..PATHS).map(|i| format!("/opt/other/bin/tool-{i}")).collect();
    let (t, count) = best(3, || {
        unknown.iter().filter(|p| policy.lookup_file(p, &digests[0]) == Lookup::UnknownPath).count()
    });
    assert_eq!(count, PATHS);
    println!("lookup unknown path (runs excludes): {}", rate(PATHS, t));

    let excluded: Vec<String> = (0..PATHS).map(|i| format!("/tmp/work-{i}/x")).collect();
    let (t, count) = best(3, || {
        excluded.iter().filter(|p| policy.lookup_file(p, &digests[0]) == Lookup::Excluded).count()
    });
    assert_eq!(count, PATHS);
    println!("lookup excluded path: {}", rate(PATHS, t));
}
