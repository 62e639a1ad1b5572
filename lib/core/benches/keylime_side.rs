//! This project's side of the rows `scripts/bench-keylime.sh` compares with Keylime 7.14, on
//! the same files Keylime is timed on. Prints one JSON object of best times in seconds.
//!
//! ```text
//! cargo bench -p kl-core --bench keylime_side -- <ima-dir> <fixtures-dir>
//! ```
//!
//! - `policy_load`: `policy::load` of `<ima-dir>/runtime-policy.json` (parse, index; the
//!   digest is not computed), the work Keylime's `deserialize_runtime_policy` does per quote;
//! - `quote_per_agent_ak` / `quote_ak_each_time`: `verify_quote` of the real tpm2-tools quote
//!   in `<fixtures-dir>/quote/`, with the AK prepared once (as the verifier keeps it per
//!   agent) and parsed from its TPM2B_PUBLIC every time (as Keylime does per quote);
//! - `eventlog`: `EventLog::parse` (parse and replay every bank) of
//!   `<fixtures-dir>/eventlog/binary_bios_measurements`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use kl_core::alg::HashAlg;
use kl_core::eventlog::EventLog;
use kl_core::policy::{self, LoadOptions};
use kl_core::quote::{AcceptedAlgorithms, PreparedAk, QuoteEvidence, QuoteRequest, verify_quote};
use kl_core::tpm2::{PcrDump, PcrSet};

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Best time of one call of `f` over `rounds` calls, or over `budget` if that comes first
/// (at least two calls).
fn best(rounds: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut best = Duration::MAX;
    for i in 0..rounds {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        if i >= 1 && start.elapsed() > budget {
            break;
        }
    }
    best.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [ima_dir, fixtures] = args.as_slice() else {
        eprintln!("usage: keylime_side <ima-dir> <fixtures-dir>");
        std::process::exit(2);
    };
    let (ima_dir, fixtures) = (Path::new(ima_dir), Path::new(fixtures));
    let budget = Duration::from_secs(3);

    let policy_bytes = read(&ima_dir.join("runtime-policy.json"));
    let policy_load = best(5, budget, || {
        let (p, _) = policy::load(&policy_bytes, &LoadOptions::default()).expect("loads");
        black_box(p);
    });

    let quote = |name: &str| read(&fixtures.join("quote").join(name));
    let ak_public = quote("ak.pub");
    let (attest, signature, nonce) = (quote("quote.out"), quote("quotesig.out"), quote("rand.out"));
    let dump = PcrDump::parse(&quote("quotepcr.out")).expect("PCR dump");
    let algorithms = AcceptedAlgorithms::default();
    let request = QuoteRequest {
        qualifying_data: &nonce,
        bank: HashAlg::Sha256,
        pcrs: PcrSet::from_indices([15, 16, 22]).expect("in range"),
        algorithms: &algorithms,
    };
    let evidence = QuoteEvidence { attest: &attest, signature: &signature, pcrs: &dump.banks[0] };
    let prepared = PreparedAk::from_tpm2b_public(&ak_public).expect("AK");
    assert!(verify_quote(&prepared, &request, &evidence, None).verdict.passed());
    let quote_per_agent_ak = best(2000, budget, || {
        black_box(verify_quote(&prepared, &request, black_box(&evidence), None));
    });
    let quote_ak_each_time = best(2000, budget, || {
        let ak = PreparedAk::from_tpm2b_public(black_box(&ak_public)).expect("AK");
        black_box(verify_quote(&ak, &request, &evidence, None));
    });

    let log = read(&fixtures.join("eventlog").join("binary_bios_measurements"));
    let eventlog = best(2000, budget, || {
        black_box(EventLog::parse(black_box(&log)).expect("parses"));
    });

    println!(
        "{}",
        serde_json::json!({
            "policy_load": policy_load,
            "quote_per_agent_ak": quote_per_agent_ak,
            "quote_ak_each_time": quote_ak_each_time,
            "eventlog": eventlog,
        })
    );
}
