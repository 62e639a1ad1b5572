//! Fleet benchmark: the real `keylime_verifier` (a child process) attesting N software agents
//! served by this process on loopback (software P-256 AKs, valid quotes, IMA logs that grow
//! between quotes) against one shared runtime policy of 100,000 paths. Measures attestations/s
//! sustained, the round trips the verifier records, its CPU time per attestation and its
//! memory per agent. The registrar is the `keylime_registrar` binary, another child process
//! (kl-tests' daemon harness builds it when it is missing); the software agents are kl-tests'
//! `soft_agent`.
//!
//! `cargo bench -p kl-verifier --bench fleet -- --agents 1000 --seconds 30`
//!
//! All agents are served by one listening socket (each at its own loopback address), so the
//! simulator holds about one descriptor per agent, the verifier's connection; the open-file
//! limit is raised (by re-running through `sh -c 'ulimit -n ...'`) when it is too low.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::verifier::v1 as pb;
use kl_proto::verifier::v1::verifier_client::VerifierClient;
use kl_svc::tls::{ServerTrust, TlsConnector, TlsFiles, TlsIdentity, client_config};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use kl_tests::deployment::Deployment;
use kl_tests::{daemon, soft_agent as agent};

mod detect;
mod serve;
mod sim;
mod verifier;

pub use kl_tests::Error as BoxError;

const REEXEC_ENV: &str = "KL_FLEET_NOFILE_RAISED";

/// Fleet benchmark of the keylime-rs verifier.
#[derive(Debug, Parser)]
struct Args {
    /// Number of software agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The verifier's quote_interval, seconds.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Paths in the shared runtime policy.
    #[arg(long, default_value_t = 100_000)]
    policy_paths: u64,
    /// IMA entries in each agent's log before enrolment.
    #[arg(long, default_value_t = 50)]
    initial_entries: usize,
    /// Entries each agent measures after each quote.
    #[arg(long, default_value_t = 2)]
    per_round: usize,
    /// Agents whose attestation history gives the round-trip distribution.
    #[arg(long, default_value_t = 500)]
    sample: usize,
    /// Seconds between two points of the curve (the verifier's CPU per attestation and RSS per
    /// agent over the window).
    #[arg(long, default_value_t = 30)]
    sample_every: u64,
    /// Also write the curve to this CSV file.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Agents that measure a file the policy does not allow during the window, one at a time
    /// and evenly spread over it; the time to each `failed` event is the detection latency.
    #[arg(long, default_value_t = 0)]
    tamper: usize,
    /// Enrol the agents by running this program instead of over gRPC, and report its wall
    /// time. It gets `KEYLIME_FLEET_TENANT_CONFIG` (a tenant configuration for kctl),
    /// `KEYLIME_FLEET_AGENTS` (a file with one agent id a line, the policy to use is `fleet`)
    /// and `KEYLIME_FLEET_DIR` (a scratch directory); scripts/bench-ansible.sh runs a playbook.
    #[arg(long)]
    enrol_command: Option<std::path::PathBuf>,
    /// Accepted and ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    // The verifier's connection per agent (one listening socket serves them all), plus a few
    // hundred for the rest: the clients, connections being replaced.
    let needed = args.agents as u64 + 500;
    let limit = verifier::open_file_limit()?;
    if limit < needed {
        if std::env::var_os(REEXEC_ENV).is_some() {
            return Err(format!(
                "the open-file limit is {limit}, {needed} are needed for {} agents; run \
                 `ulimit -n {needed}` (as root, or raise the hard limit) first",
                args.agents
            )
            .into());
        }
        eprintln!("raising the open-file limit from {limit} to {needed}");
        let exe = std::env::current_exe()?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {needed} && exec \"$0\" \"$@\""))
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(REEXEC_ENV, "1")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn channel(
    tls: &TlsFiles,
    addr: SocketAddr,
    identity: Option<TlsIdentity>,
) -> Result<Channel, BoxError> {
    let config = client_config(&ServerTrust::Ca(tls.ca_certificates()?), identity)?;
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120));
    Ok(endpoint.connect_with_connector(TlsConnector::new(Arc::new(config))).await?)
}

/// Sum of `attestation_count` and the number of agents per state, over all enrolled agents.
async fn census(
    admin: &mut VerifierClient<Channel>,
) -> Result<(u64, std::collections::BTreeMap<String, usize>), BoxError> {
    let mut total = 0;
    let mut states = std::collections::BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAgentsRequest { page_size: 1000, page_token, state: 0 };
        let answer = admin.list_agents(request).await?.into_inner();
        for agent in &answer.agents {
            total += agent.attestation_count;
            let state = pb::AgentState::try_from(agent.state)
                .map(|s| s.as_str_name().trim_start_matches("AGENT_STATE_").to_lowercase())
                .unwrap_or_else(|_| agent.state.to_string());
            *states.entry(state).or_insert(0) += 1;
        }
        if answer.next_page_token.is_empty() {
            return Ok((total, states));
        }
        page_token = answer.next_page_token;
    }
}

/// Runs `command` with the tenant configuration and the agent ids in the environment, and
/// reports how long it took.
async fn enrol_with_command(
    command: &std::path::Path,
    dir: &std::path::Path,
    agents: &[agent::SoftAgent],
    verifier_port: u16,
    registrar_port: u16,
) -> Result<(), BoxError> {
    let tenant = dir.join("tenant.conf");
    std::fs::write(
        &tenant,
        format!(
            "keylime_dir = {:?}\nverifier_port = {verifier_port}\nregistrar_port = {registrar_port}\n",
            dir.display().to_string()
        ),
    )?;
    let ids = dir.join("agents.txt");
    let list: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    std::fs::write(&ids, list.join("\n") + "\n")?;
    let scratch = dir.join("enrol");
    std::fs::create_dir_all(&scratch)?;
    let mut cmd = std::process::Command::new(command);
    cmd.env("KEYLIME_FLEET_TENANT_CONFIG", &tenant)
        .env("KEYLIME_FLEET_AGENTS", &ids)
        .env("KEYLIME_FLEET_DIR", &scratch);
    let t = Instant::now();
    // The simulated agents keep being served by the runtime while the command runs.
    let status = tokio::task::spawn_blocking(move || cmd.status()).await??;
    if !status.success() {
        return Err(format!("{}: {status}", command.display()).into());
    }
    eprintln!(
        "{} agents enrolled by {} in {:.2} s",
        agents.len(),
        command.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One point of the curve: the quotes served and the verifier's usage at `at` seconds into the
/// window.
struct Point {
    at: f64,
    quotes: u64,
    usage: verifier::Usage,
}

/// The interval from `a` to `b`: its end (s), attestations/s, verifier CPU per attestation
/// (µs), CPU use (% of a core), RSS (MiB), RSS per agent (KiB).
fn curve_row(a: &Point, b: &Point, n: usize, base_rss: u64) -> [f64; 6] {
    let seconds = (b.at - a.at).max(1e-9);
    let quotes = b.quotes.saturating_sub(a.quotes);
    let cpu = b.usage.cpu.saturating_sub(a.usage.cpu).as_secs_f64();
    [
        b.at,
        quotes as f64 / seconds,
        cpu * 1e6 / quotes.max(1) as f64,
        cpu * 100.0 / seconds,
        mib(b.usage.rss),
        b.usage.rss.saturating_sub(base_rss) as f64 / n as f64 / 1024.0,
    ]
}

/// Per sampling interval: attestations/s, the verifier's CPU per attestation and CPU use, its RSS
/// and RSS per agent (above the RSS with the policy stored).
fn print_curve(
    curve: &[Point],
    n: usize,
    base_rss: u64,
    csv: Option<&std::path::Path>,
) -> Result<(), BoxError> {
    let rows: Vec<[f64; 6]> =
        curve.windows(2).map(|pair| curve_row(&pair[0], &pair[1], n, base_rss)).collect();
    println!("Curve (each row: the interval ending at t):");
    println!();
    println!(
        "| t (s) | attestations/s | verifier CPU per attestation (µs) | verifier CPU (% of a \
         core) | verifier RSS (MiB) | RSS per agent (KiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
    }
    println!();
    if let Some(path) = csv {
        let mut out = String::from(
            "t_s,attestations_per_s,verifier_cpu_us_per_attestation,verifier_cpu_percent,\
             verifier_rss_mib,rss_per_agent_kib\n",
        );
        for r in &rows {
            out.push_str(&format!(
                "{:.1},{:.1},{:.2},{:.2},{:.2},{:.2}\n",
                r[0], r[1], r[2], r[3], r[4], r[5]
            ));
        }
        std::fs::write(path, out).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Detection latency: p50, p99 and max from the tamper, the same minus the quote interval, and
/// from the quote that carried the tampered entry.
fn print_detection(found: &detect::Latencies, tampers: usize, interval: f64) {
    let pick = |v: &[f64], p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[rank.min(v.len() - 1)]
    };
    let interval_ms = interval * 1e3;
    let t = &found.from_tamper;
    let q = &found.from_quote;
    let max = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
    println!(
        "Detection latency ({} tampers, {} detected, quote_interval {interval} s):",
        tampers,
        t.len()
    );
    println!();
    println!("| | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    println!(
        "| tamper to `failed` event | {:.0} ms | {:.0} ms | {:.0} ms |",
        pick(t, 50.0),
        pick(t, 99.0),
        max(t)
    );
    println!(
        "| the same minus the quote interval | {:.0} ms | {:.0} ms | {:.0} ms |",
        pick(t, 50.0) - interval_ms,
        pick(t, 99.0) - interval_ms,
        max(t) - interval_ms
    );
    println!(
        "| quote carrying the entry to `failed` event | {:.1} ms | {:.1} ms | {:.1} ms |",
        pick(q, 50.0),
        pick(q, 99.0),
        max(q)
    );
    println!();
    if found.undetected > 0 {
        println!("tampers without a failed event: {}", found.undetected);
        println!();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(args: Args) -> Result<(), BoxError> {
    let n = args.agents;
    // A temporary keylime_dir with the deployment CA (cv_ca/).
    let deployment = Deployment::new()?;
    let dir = deployment.keylime_dir();
    let tls = deployment.tls();
    std::fs::create_dir_all(dir.join("tpm_cert_store"))?;

    // The registrar, as its binary in a child process (built when missing).
    let mut registrar_config =
        deployment.registrar_config(daemon::free_port()?, &dir.join("tpm_cert_store"), false);
    registrar_config.insert("registration_rate_limit".into(), 0.into());
    registrar_config.insert("log_level".into(), "warn".into());
    let registrar_daemon = deployment.start_registrar(&registrar_config)?;
    let registrar_addr: SocketAddr = ([127, 0, 0, 1], registrar_daemon.port()).into();

    // The verifier, as a child process.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut verifier = verifier::VerifierProcess::start(
        dir,
        &tls.dir,
        port,
        registrar_addr.port(),
        args.interval,
    )?;
    let verifier_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    eprintln!("{} is process {}", verifier.program().display(), verifier.pid());
    let started = Instant::now();
    let mut admin = loop {
        match channel(&tls, verifier_addr, Some(tls.client_identity()?)).await {
            Ok(channel) => break VerifierClient::new(channel).max_decoding_message_size(64 << 20),
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                verifier.check_running()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("the verifier did not answer: {e}").into()),
        }
    };
    let idle = verifier.usage()?;

    // The shared policy.
    let document = sim::policy_document(args.policy_paths);
    let policy_bytes = document.len();
    let t = Instant::now();
    admin
        .put_runtime_policy(pb::PutRuntimePolicyRequest {
            name: "fleet".to_owned(),
            document: document.into_bytes(),
            exclude_list: Vec::new(),
            signing_key: Vec::new(),
            ..Default::default()
        })
        .await?;
    let policy_time = t.elapsed();
    let with_policy = verifier.usage()?;
    eprintln!(
        "policy: {} paths, {:.1} MB, stored in {:.2} s",
        args.policy_paths,
        policy_bytes as f64 / 1e6,
        policy_time.as_secs_f64()
    );

    // The fleet.
    let t = Instant::now();
    let registrar = RegistrarClient::new(channel(&tls, registrar_addr, None).await?);
    let server = Arc::new(serve::FleetServer::bind().await?);
    let agents = sim::start_agents(
        n,
        &tls,
        server.clone(),
        registrar,
        args.policy_paths,
        args.initial_entries,
    )
    .await?;
    eprintln!("{n} agents started and registered in {:.1} s", t.elapsed().as_secs_f64());

    if let Some(command) = &args.enrol_command {
        enrol_with_command(command, dir, &agents, port, registrar_addr.port()).await?;
        let (_, states) = census(&mut admin).await?;
        let enrolled: usize = states.values().sum();
        if enrolled != n {
            return Err(format!("{} enrolled {enrolled} of {n} agents", command.display()).into());
        }
    } else {
        let t = Instant::now();
        let limit = Arc::new(Semaphore::new(256));
        let mut tasks = JoinSet::new();
        for agent in &agents {
            let permit = limit.clone().acquire_owned().await?;
            let mut admin = admin.clone();
            let request = pb::EnrollAgentRequest {
                agent_id: agent.id.clone(),
                runtime_policy: "fleet".to_owned(),
                ..Default::default()
            };
            tasks.spawn(async move {
                let answer = admin.enroll_agent(request).await;
                drop(permit);
                answer.map(|_| ())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        eprintln!("{n} agents enrolled in {:.1} s", t.elapsed().as_secs_f64());
    }
    let agents = Arc::new(agents);
    let grower = sim::spawn_grower(agents.clone(), args.policy_paths, args.per_round);

    // Warm-up: every agent passes its first round (the whole initial log) at least once.
    let t = Instant::now();
    let warmup_limit = Duration::from_secs_f64(60.0 + n as f64 / 100.0);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        verifier.check_running()?;
        let (_, states) = census(&mut admin).await?;
        let passed = states.get("passed").copied().unwrap_or(0);
        if passed == n {
            break;
        }
        if t.elapsed() > warmup_limit {
            return Err(format!("warm-up: after {warmup_limit:?}, states {states:?}").into());
        }
    }
    eprintln!("all {n} agents passed after {:.1} s; one more interval", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs_f64(args.interval * 2.0)).await;
    let warm = verifier.usage()?;

    // The measured window.
    let (failures, watcher) = if args.tamper > 0 {
        let (failures, task) = detect::watch_failures(&mut admin).await?;
        (Some(failures), Some(task))
    } else {
        (None, None)
    };
    let (count0, _) = census(&mut admin).await?;
    let quotes0 = sim::quotes(&agents);
    let (v0, s0) = (verifier.usage()?, verifier::usage("/proc/self")?);
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let window = Duration::from_secs(args.seconds);
    let every = Duration::from_secs(args.sample_every.max(1));
    let mut curve = vec![Point { at: 0.0, quotes: quotes0, usage: v0 }];
    eprintln!(
        "curve: t (s), attestations/s, verifier CPU per attestation (µs), verifier CPU (% of a \
         core), verifier RSS (MiB), RSS per agent (KiB)"
    );
    // Tamper k at (k + 0.5) / N of the window, on agents spread over the fleet, so that the
    // revocation notices each failure sends have settled before the next.
    let tamper_at = |k: usize| window.mul_f64((k as f64 + 0.5) / args.tamper.max(1) as f64);
    let tamper_step = (n / args.tamper.max(1)).max(1);
    let mut tampers = Vec::new();
    while t0.elapsed() < window {
        let mut next = window.min(every * curve.len() as u32);
        if tampers.len() < args.tamper.min(n) {
            next = next.min(tamper_at(tampers.len()));
        }
        let wait = next.saturating_sub(t0.elapsed()).min(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        verifier.check_running()?;
        let elapsed = t0.elapsed();
        if tampers.len() < args.tamper.min(n) && elapsed >= tamper_at(tampers.len()) {
            let index = (tampers.len() * tamper_step + tamper_step / 2) % n;
            tampers.push(detect::tamper(&agents[index], index));
        }
        if elapsed >= every * curve.len() as u32 && elapsed < window {
            curve.push(Point {
                at: elapsed.as_secs_f64(),
                quotes: sim::quotes(&agents),
                usage: verifier.usage()?,
            });
            // As it goes, so that a long run that is cut short still shows its curve.
            if let [.., a, b] = curve.as_slice() {
                eprintln!(
                    "{}",
                    curve_row(a, b, n, with_policy.rss).map(|v| format!("{v:.1}")).join(" ")
                );
            }
        }
    }
    let (v1, s1) = (verifier.usage()?, verifier::usage("/proc/self")?);
    let quotes1 = sim::quotes(&agents);
    let elapsed = t0.elapsed().as_secs_f64();
    curve.push(Point { at: elapsed, quotes: quotes1, usage: v1 });
    let wall1 = SystemTime::now();
    if let Some(failures) = &failures {
        // Tampers near the end of the window get a quote interval and a little more to be found.
        let limit = Instant::now() + Duration::from_secs_f64(args.interval * 2.0 + 5.0);
        while Instant::now() < limit {
            let found = failures.lock().unwrap_or_else(|e| e.into_inner()).len();
            if found >= tampers.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    let (count1, states) = census(&mut admin).await?;
    grower.abort();

    // Round trips recorded by the verifier, for a sample of agents, inside the window.
    let step = (n / args.sample.max(1)).max(1);
    let mut durations = Vec::new();
    let mut entries = 0u64;
    for agent in agents.iter().step_by(step) {
        let request = pb::ListAttestationsRequest {
            agent_id: agent.id.clone(),
            page_size: 1000,
            page_token: String::new(),
        };
        let answer = admin.list_attestations(request).await?.into_inner();
        for record in answer.attestations {
            let Some(at) = record.at else { continue };
            let at = SystemTime::UNIX_EPOCH
                + Duration::new(at.seconds.max(0) as u64, at.nanos.max(0) as u32);
            if at >= wall0 && at <= wall1 {
                durations.push(record.duration_us);
                entries += record.ima_entries;
            }
        }
    }
    durations.sort_unstable();
    let sampled = durations.len().max(1) as u64;

    let quotes = quotes1 - quotes0;
    let recorded = count1 - count0;
    let rate = quotes as f64 / elapsed;
    let verifier_cpu = (v1.cpu - v0.cpu).as_secs_f64();
    let sim_cpu = (s1.cpu - s0.cpu).as_secs_f64();
    let per_attestation = |cpu: f64| cpu * 1e6 / quotes.max(1) as f64;
    let end = verifier.usage()?;
    let per_agent = |usage: verifier::Usage| {
        usage.rss.saturating_sub(with_policy.rss) as f64 / n as f64 / 1024.0
    };

    println!();
    println!(
        "Fleet: {n} agents, quote_interval {} s, {} policy paths, {} s window",
        args.interval, args.policy_paths, args.seconds
    );
    println!();
    println!("| | |");
    println!("|---|---:|");
    println!("| attestations/s sustained (quotes served) | {rate:.0} |");
    println!("| attestations/s recorded by the verifier | {:.0} |", recorded as f64 / elapsed);
    println!("| ideal (N / quote_interval) | {:.0} |", n as f64 / args.interval);
    println!(
        "| round trip p50 (verifier's duration_us, {} rounds of {} agents) | {} µs |",
        durations.len(),
        n.div_ceil(step),
        percentile(&durations, 50.0)
    );
    println!("| round trip p99 | {} µs |", percentile(&durations, 99.0));
    println!("| round trip max | {} µs |", durations.last().copied().unwrap_or(0));
    println!("| IMA entries per round (mean) | {:.1} |", entries as f64 / sampled as f64);
    println!("| verifier CPU per attestation | {:.1} µs |", per_attestation(verifier_cpu));
    println!("| verifier CPU use | {:.1} % of a core |", verifier_cpu * 100.0 / elapsed);
    println!("| simulator CPU per attestation | {:.1} µs |", per_attestation(sim_cpu));
    println!("| simulator CPU use | {:.1} % of a core |", sim_cpu * 100.0 / elapsed);
    println!(
        "| verifier RSS idle / with policy | {:.1} / {:.1} MiB |",
        mib(idle.rss),
        mib(with_policy.rss)
    );
    println!(
        "| verifier RSS after warm-up / after window | {:.1} / {:.1} MiB |",
        mib(warm.rss),
        mib(end.rss)
    );
    println!("| verifier peak RSS (VmHWM) | {:.1} MiB |", mib(end.hwm));
    println!(
        "| verifier RSS per agent (after window - with policy) / N | {:.1} KiB |",
        per_agent(end)
    );
    println!("| agent states at the end | {states:?} |");
    println!();
    print_curve(&curve, n, with_policy.rss, args.csv.as_deref())?;
    if let Some(failures) = &failures {
        let found = detect::latencies(&tampers, &agents, failures);
        print_detection(&found, tampers.len(), args.interval);
    }
    if let Some(dropped) = server.dropped() {
        println!("connections dropped by the simulator: {dropped}");
        println!();
    }

    verifier.stop()?;
    Ok(())
}
