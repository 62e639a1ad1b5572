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
//! With `--postgres` the verifier keeps its state in a private PostgreSQL server (kl-tests'
//! harness) instead of its redb file; with `--replicas N` (which implies it) N verifiers share
//! that database and divide the fleet with agent leases, the figures are their sums, and the
//! database's own costs are measured too (transactions, rows and WAL written per attestation,
//! its size per agent, the server's CPU). `--failover` then kills replica 1 with SIGKILL after
//! the window and times the takeover of its agents.
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

mod database;
mod detect;
mod failover;
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
    /// Verifier replicas sharing one PostgreSQL database (more than 1 implies --postgres);
    /// their ids are replica-1, replica-2, ...; agents are enrolled through replica 1.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Keep the verifiers' state in a private PostgreSQL server instead of redb files.
    #[arg(long)]
    postgres: bool,
    /// The replicas' agent_lease_seconds.
    #[arg(long, default_value_t = 10.0)]
    lease: f64,
    /// The verifiers' history_max_entries (attestation records kept per agent); unset: the
    /// verifier's default.
    #[arg(long)]
    history_max_entries: Option<u64>,
    /// After the window, kill replica 1 with SIGKILL and time until every agent it held is
    /// attested by another replica (needs --replicas 2 or more).
    #[arg(long)]
    failover: bool,
    /// Accepted and ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.replicas == 0 {
        return Err("--replicas: at least 1".into());
    }
    if args.failover && args.replicas < 2 {
        return Err("--failover needs --replicas 2 or more".into());
    }
    if args.lease.is_nan() || args.lease < 1.0 {
        return Err(format!("--lease {}: at least 1 second", args.lease).into());
    }
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

/// The columns of the curve: heading (table and stderr), CSV name, decimals in the table
/// (the CSV has two more).
const CURVE_COLUMNS: [(&str, &str, usize); 7] = [
    ("t (s)", "t_s", 0),
    ("attestations/s", "attestations_per_s", 0),
    ("verifier CPU per attestation (µs)", "verifier_cpu_us_per_attestation", 1),
    ("of which the store writer (µs)", "writer_cpu_us_per_attestation", 1),
    ("verifier CPU (% of a core)", "verifier_cpu_percent", 1),
    ("verifier RSS (MiB)", "verifier_rss_mib", 1),
    ("RSS per agent (KiB)", "rss_per_agent_kib", 1),
];

/// The interval from `a` to `b`, one value per [`CURVE_COLUMNS`]: its end, attestations/s,
/// verifier CPU per attestation and the store writer's part of it, CPU use, RSS at the end and
/// RSS per agent (above the RSS with the policy stored).
fn curve_row(a: &Point, b: &Point, n: usize, base_rss: u64) -> [f64; CURVE_COLUMNS.len()] {
    let seconds = (b.at - a.at).max(1e-9);
    let quotes = b.quotes.saturating_sub(a.quotes);
    let cpu = b.usage.cpu.saturating_sub(a.usage.cpu).as_secs_f64();
    let writer = b.usage.writer.saturating_sub(a.usage.writer).as_secs_f64();
    [
        b.at,
        quotes as f64 / seconds,
        cpu * 1e6 / quotes.max(1) as f64,
        writer * 1e6 / quotes.max(1) as f64,
        cpu * 100.0 / seconds,
        mib(b.usage.rss),
        b.usage.rss.saturating_sub(base_rss) as f64 / n as f64 / 1024.0,
    ]
}

/// `row`'s values, each with `decimals(column)` decimals, joined by `separator`.
fn format_row(row: &[f64], decimals: impl Fn(usize) -> usize, separator: &str) -> String {
    let cells: Vec<String> =
        row.iter().enumerate().map(|(i, v)| format!("{v:.*}", decimals(i))).collect();
    cells.join(separator)
}

/// Per sampling interval, the [`CURVE_COLUMNS`]: as a table, and as CSV into `csv`.
fn print_curve(
    curve: &[Point],
    n: usize,
    base_rss: u64,
    csv: Option<&std::path::Path>,
) -> Result<(), BoxError> {
    let rows: Vec<_> =
        curve.windows(2).map(|pair| curve_row(&pair[0], &pair[1], n, base_rss)).collect();
    println!("Curve (each row: the interval ending at t):");
    println!();
    let headings: Vec<&str> = CURVE_COLUMNS.iter().map(|c| c.0).collect();
    println!("| {} |", headings.join(" | "));
    println!("|{}", "---:|".repeat(CURVE_COLUMNS.len()));
    for r in &rows {
        println!("| {} |", format_row(r, |i| CURVE_COLUMNS[i].2, " | "));
    }
    println!();
    if let Some(path) = csv {
        let names: Vec<&str> = CURVE_COLUMNS.iter().map(|c| c.1).collect();
        let mut out = names.join(",") + "\n";
        for r in &rows {
            out.push_str(&format_row(r, |i| CURVE_COLUMNS[i].2 + 1, ","));
            out.push('\n');
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

    // The database, when the state is not in the verifier's redb file.
    let database = if args.postgres || args.replicas > 1 {
        let database = tokio::task::spawn_blocking(database::FleetDatabase::start).await??;
        eprintln!("PostgreSQL started (process {})", database.server_pid()?);
        Some(database)
    } else {
        None
    };

    // The verifiers, as child processes: one, or the replicas.
    let mut verifiers = Vec::with_capacity(args.replicas);
    for k in 1..=args.replicas {
        let (name, mut extra) = match &database {
            Some(database) => {
                let id = replica_id(k);
                let extra = format!(
                    "{}id = {id:?}\nagent_lease_seconds = {}\n",
                    database.settings(),
                    args.lease
                );
                (id, extra)
            }
            None => ("verifier".to_owned(), String::new()),
        };
        if let Some(entries) = args.history_max_entries {
            extra.push_str(&format!("history_max_entries = {entries}\n"));
        }
        let verifier = verifier::VerifierProcess::start(&verifier::Settings {
            dir,
            name: &name,
            tls_dir: &tls.dir,
            port: daemon::free_port()?,
            registrar_port: registrar_addr.port(),
            quote_interval: args.interval,
            extra: &extra,
        })?;
        eprintln!("{} ({name}) is process {}", verifier.program().display(), verifier.pid());
        verifiers.push(verifier);
    }
    let port = verifiers[0].port();
    let mut admins = Vec::with_capacity(verifiers.len());
    for verifier in &mut verifiers {
        let addr: SocketAddr = ([127, 0, 0, 1], verifier.port()).into();
        let started = Instant::now();
        let admin = loop {
            match channel(&tls, addr, Some(tls.client_identity()?)).await {
                Ok(channel) => {
                    break VerifierClient::new(channel).max_decoding_message_size(64 << 20);
                }
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    verifier.check_running()?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("the verifier did not answer: {e}").into()),
            }
        };
        admins.push(admin);
    }
    // Enrolment, census and the sample of round trips go through replica 1.
    let mut admin = admins[0].clone();
    let idle = verifier::each_usage(&verifiers)?;

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
    let with_policy = verifier::each_usage(&verifiers)?;
    eprintln!(
        "policy: {} paths, {:.1} MB, stored in {:.2} s",
        args.policy_paths,
        policy_bytes as f64 / 1e6,
        policy_time.as_secs_f64()
    );
    // The RSS the agents add to: each verifier's idle RSS, and the policy as replica 1 holds
    // it once per verifier (the others parse it when their first agent is attested).
    let policy_rss = with_policy[0].rss.saturating_sub(idle[0].rss);
    let base_rss = idle.iter().map(|u| u.rss).sum::<u64>() + policy_rss * verifiers.len() as u64;
    let size_without_agents = match &database {
        Some(database) => Some(database.blocking(|db| db.size()).await?),
        None => None,
    };

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
        verifier::check_running(&mut verifiers)?;
        let (_, states) = census(&mut admin).await?;
        let passed = states.get("passed").copied().unwrap_or(0);
        if passed == n {
            break;
        }
        if t.elapsed() > warmup_limit {
            return Err(format!("warm-up: after {warmup_limit:?}, states {states:?}").into());
        }
    }
    eprintln!("all {n} agents passed after {:.1} s", t.elapsed().as_secs_f64());
    if let Some(database) = &database {
        // The replicas give back and claim agents until each holds its share.
        let holders = wait_divided(database, &mut verifiers, n, warmup_limit).await?;
        eprintln!("agents divided after {:.1} s: {holders:?}", t.elapsed().as_secs_f64());
    }
    // Two more intervals; with a database, long enough too for the server's statistics of
    // the enrolment to be in (a backend reports them within a second while it works, within
    // ten seconds once idle) rather than counted in the window.
    let settle = if database.is_some() { args.interval * 2.0 + 11.0 } else { args.interval * 2.0 };
    eprintln!("settling for {settle:.0} s");
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let warm = verifier::total_usage(&verifiers)?;

    // The measured window.
    let (failures, watcher) = if args.tamper > 0 {
        let (failures, task) = detect::watch_failures(&mut admin).await?;
        (Some(failures), Some(task))
    } else {
        (None, None)
    };
    let (count0, _) = census(&mut admin).await?;
    let quotes0 = sim::quotes(&agents);
    let db0 = match &database {
        Some(database) => Some(database.blocking(|db| db.snapshot()).await?),
        None => None,
    };
    let each0 = verifier::each_usage(&verifiers)?;
    let (v0, s0) = (verifier::sum(&each0), verifier::usage("/proc/self")?);
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let window = Duration::from_secs(args.seconds);
    let every = Duration::from_secs(args.sample_every.max(1));
    let mut curve = vec![Point { at: 0.0, quotes: quotes0, usage: v0 }];
    let headings: Vec<&str> = CURVE_COLUMNS.iter().map(|c| c.0).collect();
    eprintln!("curve: {}", headings.join(", "));
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
        verifier::check_running(&mut verifiers)?;
        let elapsed = t0.elapsed();
        if tampers.len() < args.tamper.min(n) && elapsed >= tamper_at(tampers.len()) {
            let index = (tampers.len() * tamper_step + tamper_step / 2) % n;
            tampers.push(detect::tamper(&agents[index], index));
        }
        if elapsed >= every * curve.len() as u32 && elapsed < window {
            curve.push(Point {
                at: elapsed.as_secs_f64(),
                quotes: sim::quotes(&agents),
                usage: verifier::total_usage(&verifiers)?,
            });
            // As it goes, so that a long run that is cut short still shows its curve.
            if let [.., a, b] = curve.as_slice() {
                eprintln!("{}", format_row(&curve_row(a, b, n, base_rss), |_| 1, " "));
            }
        }
    }
    let each1 = verifier::each_usage(&verifiers)?;
    let (v1, s1) = (verifier::sum(&each1), verifier::usage("/proc/self")?);
    let quotes1 = sim::quotes(&agents);
    let elapsed = t0.elapsed().as_secs_f64();
    let db1 = match &database {
        Some(database) => Some(database.blocking(|db| db.snapshot()).await?),
        None => None,
    };
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
    let end = verifier::total_usage(&verifiers)?;
    let per_agent =
        |usage: verifier::Usage| usage.rss.saturating_sub(base_rss) as f64 / n as f64 / 1024.0;
    let with_policy_total = verifier::sum(&with_policy);
    let replicas = verifiers.len();
    // With replicas, the verifier figures are the sums over them.
    let verifiers_name = if replicas > 1 { "verifiers (all replicas)" } else { "verifier" };

    println!();
    println!(
        "Fleet: {n} agents, quote_interval {} s, {} policy paths, {} s window{}, state in {}",
        args.interval,
        args.policy_paths,
        args.seconds,
        args.history_max_entries.map(|e| format!(", history_max_entries {e}")).unwrap_or_default(),
        match (&database, replicas) {
            (None, _) => "redb".to_owned(),
            (Some(_), 1) => "PostgreSQL".to_owned(),
            (Some(_), r) =>
                format!("PostgreSQL, {r} replicas (agent_lease_seconds {})", args.lease),
        }
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
    println!("| {verifiers_name} CPU per attestation | {:.1} µs |", per_attestation(verifier_cpu));
    println!("| {verifiers_name} CPU use | {:.1} % of a core |", verifier_cpu * 100.0 / elapsed);
    if replicas > 1 {
        let each: Vec<String> = each0
            .iter()
            .zip(&each1)
            .map(|(a, b)| format!("{:.1}", (b.cpu - a.cpu).as_secs_f64() * 100.0 / elapsed))
            .collect();
        println!("| CPU use per replica | {} % of a core |", each.join(" / "));
        let rss: Vec<String> = each1.iter().map(|u| format!("{:.1}", mib(u.rss))).collect();
        println!("| RSS per replica at the end of the window | {} MiB |", rss.join(" / "));
    }
    println!("| simulator CPU per attestation | {:.1} µs |", per_attestation(sim_cpu));
    println!("| simulator CPU use | {:.1} % of a core |", sim_cpu * 100.0 / elapsed);
    println!(
        "| {verifiers_name} RSS idle / with policy | {:.1} / {:.1} MiB |",
        mib(verifier::sum(&idle).rss),
        mib(with_policy_total.rss)
    );
    println!(
        "| {verifiers_name} RSS after warm-up / after window | {:.1} / {:.1} MiB |",
        mib(warm.rss),
        mib(end.rss)
    );
    println!("| {verifiers_name} peak RSS (VmHWM) | {:.1} MiB |", mib(end.hwm));
    println!(
        "| {verifiers_name} RSS per agent (after window - with policy) / N | {:.1} KiB |",
        per_agent(end)
    );
    // The allocator may keep memory it used while storing the policy and reuse it for the
    // agents, which the figure above does not count; this one counts it, and the parsed
    // policy too, so the two bracket the cost of an agent.
    println!(
        "| {verifiers_name} RSS per agent (after window - idle) / N | {:.1} KiB |",
        end.rss.saturating_sub(verifier::sum(&idle).rss) as f64 / n as f64 / 1024.0
    );
    println!("| agent states at the end | {states:?} |");
    println!();
    if let (Some(database), Some(db0), Some(db1), Some(size0)) =
        (&database, &db0, &db1, size_without_agents)
    {
        let holders = database.blocking(|db| db.lease_holders()).await?;
        let tables = database.blocking(|db| db.tables()).await?;
        let size1 = database.blocking(|db| db.size()).await?;
        database::print_window(&database::Window {
            before: db0,
            after: db1,
            seconds: elapsed,
            attestations: quotes,
            verifier_cpu,
            agents: n,
            size_without_agents: size0,
            size: size1,
            tables: &tables,
            holders: &holders,
        });
    }
    print_curve(&curve, n, base_rss, args.csv.as_deref())?;
    if let Some(failures) = &failures {
        let found = detect::latencies(&tampers, &agents, failures);
        print_detection(&found, tampers.len(), args.interval);
    }
    if let Some(dropped) = server.dropped() {
        println!("connections dropped by the simulator: {dropped}");
        println!();
    }

    if let (true, Some(database)) = (args.failover, &database) {
        let (killed, survivors) = verifiers.split_at_mut(1);
        let limit = Duration::from_secs_f64(3.0 * args.lease + 4.0 * args.interval + 30.0);
        let taken = failover::measure(
            &mut killed[0],
            &replica_id(1),
            survivors,
            &mut admins[1],
            database,
            &agents,
            limit,
        )
        .await?;
        failover::print(&taken, &replica_id(1), args.lease, args.interval);
    }
    grower.abort();

    for verifier in verifiers {
        verifier.stop()?;
    }
    Ok(())
}

/// The id of replica `k` (from 1).
fn replica_id(k: usize) -> String {
    format!("replica-{k}")
}

/// Waits until the live leases divide the `n` agents between the replicas, each holding its
/// share (N / replicas, rounded either way); returns the holders.
async fn wait_divided(
    database: &database::FleetDatabase,
    verifiers: &mut [verifier::VerifierProcess],
    n: usize,
    limit: Duration,
) -> Result<std::collections::BTreeMap<String, u64>, BoxError> {
    let replicas = verifiers.len() as u64;
    let (low, high) = (n as u64 / replicas, (n as u64).div_ceil(replicas));
    let t = Instant::now();
    loop {
        verifier::check_running(verifiers)?;
        let holders = database.blocking(|db| db.lease_holders()).await?;
        let divided = holders.len() as u64 == replicas
            && holders.values().sum::<u64>() == n as u64
            && holders.values().all(|held| (low..=high).contains(held));
        if divided {
            return Ok(holders);
        }
        if t.elapsed() > limit {
            return Err(format!("the agents were not divided after {limit:?}: {holders:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
