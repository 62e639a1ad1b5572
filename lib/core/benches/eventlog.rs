//! Parse, replay and evaluate the 120-event real UEFI log against a policy generated from it.
//!
//! Run with `cargo bench -p kl-core --bench eventlog`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use kl_core::alg::{Digest, HashAlg};
use kl_core::eventlog::EventLog;
use kl_core::policy::mb::{self as mbpolicy, DEFAULT_PCRS};

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keylime/eventlog/binary_bios_measurements"
    );
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let log = EventLog::parse(&raw).unwrap_or_else(|e| panic!("{path}: {e}"));
    let policy = mbpolicy::generate(&log, true);
    let quoted: BTreeMap<u32, Digest> = DEFAULT_PCRS
        .iter()
        .map(|p| {
            (*p, log.pcr(HashAlg::Sha256, *p).copied().unwrap_or_else(|| HashAlg::Sha256.zero()))
        })
        .collect();
    assert!(mbpolicy::evaluate(&log, &policy, Some(&quoted)).passed());
    let events = log.events.len();

    let run = |label: &str, f: &dyn Fn()| {
        for _ in 0..200 {
            f();
        }
        let mut samples = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            let t = Instant::now();
            f();
            samples.push(t.elapsed());
        }
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        let best = samples[0];
        println!(
            "{label:<40} median {:>7.1} us  best {:>7.1} us  ({:.0} events/s, {:.0} MB/s at the median)",
            median.as_secs_f64() * 1e6,
            best.as_secs_f64() * 1e6,
            events as f64 / median.as_secs_f64(),
            raw.len() as f64 / median.as_secs_f64() / 1e6,
        );
    };
    println!("log: {path} ({} bytes, {events} events incl. Spec ID)", raw.len());
    run("parse + replay (all banks checked)", &|| {
        black_box(EventLog::parse(black_box(&raw)).ok());
    });
    run("parse + replay (sha256 bank only)", &|| {
        black_box(EventLog::parse_for_banks(black_box(&raw), &[HashAlg::Sha256]).ok());
    });
    run("evaluate (parsed log)", &|| {
        black_box(mbpolicy::evaluate(black_box(&log), &policy, Some(&quoted)));
    });
    run("parse + replay + evaluate (sha256)", &|| {
        if let Ok(log) = EventLog::parse_for_banks(black_box(&raw), &[HashAlg::Sha256]) {
            black_box(mbpolicy::evaluate(&log, &policy, Some(&quoted)));
        }
    });
    run("parse + replay + evaluate (all banks)", &|| {
        if let Ok(log) = EventLog::parse(black_box(&raw)) {
            black_box(mbpolicy::evaluate(&log, &policy, Some(&quoted)));
        }
    });
}
