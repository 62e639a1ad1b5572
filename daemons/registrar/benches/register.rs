//! Registrations per second over real gRPC and TLS: Register, ActivateCredential in a software
//! TPM, Activate, from concurrent clients with pre-generated EK/AK pairs (no TPM).
//!
//! `cargo bench -p kl-registrar --bench register -- [--agents N] [--concurrency C]
//! [--alg ecc|rsa|both] [--connect-each]`
//!
//! The clients run on the same machine and do the agent's part in software (RSA-OAEP
//! decryption or ECDH per registration), so the figure is a lower bound for the registrar.
//! `--connect-each` opens a new TLS connection per registration, as agents do. The registrar
//! runs as the `keylime_registrar` binary in a child process, whose CPU time per registration
//! is reported too; `--in-process` runs it inside the benchmark instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kl_core::credential::activation_proof;
use kl_proto::registrar::v1 as pb;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_svc::config::RegistrarConfig;
use kl_svc::tls::{
    AgentIdentity, ServerTrust, TlsConnector, TlsDir, TlsFiles, client_config, ensure_generated,
};
use kl_testkit::soft_tpm::SoftTpm;
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
struct Options {
    agents: usize,
    concurrency: usize,
    algs: Vec<&'static str>,
    connect_each: bool,
    in_process: bool,
}

fn options() -> Result<Options, BoxError> {
    let mut options = Options {
        agents: 2000,
        concurrency: 32,
        algs: vec!["ecc", "rsa"],
        connect_each: false,
        in_process: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--agents" => options.agents = args.next().ok_or("--agents N")?.parse()?,
            "--concurrency" => {
                options.concurrency = args.next().ok_or("--concurrency C")?.parse()?
            }
            "--alg" => {
                options.algs = match args.next().as_deref() {
                    Some("ecc") => vec!["ecc"],
                    Some("rsa") => vec!["rsa"],
                    Some("both") => vec!["ecc", "rsa"],
                    other => return Err(format!("--alg ecc|rsa|both, not {other:?}").into()),
                }
            }
            "--connect-each" => options.connect_each = true,
            "--in-process" => options.in_process = true,
            // cargo bench passes --bench.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(options)
}

/// The registrar under test: the `keylime_registrar` binary in a child process (so its CPU
/// time can be read apart from the clients'), or the library in this process.
struct Registrar {
    port: u16,
    child: Option<std::process::Child>,
    cpu_at_start: Option<Duration>,
    in_process: Option<(tokio::sync::oneshot::Sender<()>, Serving)>,
}

type Serving = tokio::task::JoinHandle<Result<(), kl_registrar::Error>>;

impl Registrar {
    async fn in_process(config: &RegistrarConfig) -> Result<Registrar, BoxError> {
        let server = kl_registrar::Server::bind(config).await?;
        let port = server.local_addr().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Ok(Registrar { port, child: None, cpu_at_start: None, in_process: Some((stop, serving)) })
    }

    fn child(config: &RegistrarConfig, dir: &std::path::Path) -> Result<Registrar, BoxError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config_file = dir.join("registrar.conf");
        std::fs::write(
            &config_file,
            format!(
                "keylime_dir = {:?}\nip = \"127.0.0.1\"\nport = {port}\ntls_dir = {:?}\n\
                 tpm_cert_store = {:?}\nrequire_ek_cert = false\nregistration_rate_limit = 0\n\
                 log_level = \"warn\"\n",
                config.keylime_dir.display().to_string(),
                config.tls_dir.to_string(),
                config.tpm_cert_store.display().to_string(),
            ),
        )?;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_keylime_registrar"))
            .arg("--config")
            .arg(&config_file)
            .env_remove("NOTIFY_SOCKET")
            .spawn()?;
        Ok(Registrar { port, child: Some(child), cpu_at_start: None, in_process: None })
    }

    /// User plus system time of the child process so far.
    fn cpu_total(&self) -> Option<Duration> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(Duration::from_millis(ticks * 10))
    }

    fn reset_cpu_time(mut self) -> Registrar {
        self.cpu_at_start = self.cpu_total();
        self
    }

    fn cpu_time(&self) -> Option<Duration> {
        Some(self.cpu_total()?.saturating_sub(self.cpu_at_start?))
    }

    async fn stop(mut self) -> Result<(), BoxError> {
        if let Some((stop, serving)) = self.in_process.take() {
            let _ = stop.send(());
            serving.await??;
        }
        if let Some(mut child) = self.child.take() {
            std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        // Only reached with a child still running when the benchmark failed half way.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the registrar answers a TLS connection.
async fn wait_until_serving(port: u16, tls: &TlsFiles) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(port, tls).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One registration's inputs, prepared before the clock starts.
struct Prepared {
    request: pb::RegisterRequest,
    tpm: usize,
}

async fn connect(port: u16, tls: &TlsFiles) -> Result<RegistrarClient<Channel>, BoxError> {
    let config = client_config(&ServerTrust::Ca(tls.ca_certificates()?), None)?;
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_with_connector(TlsConnector::new(Arc::new(config)))
        .await?;
    Ok(RegistrarClient::new(channel))
}

async fn run(alg: &'static str, options: &Options) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let tls = TlsFiles::new(dir.path().join("cv_ca"));
    ensure_generated(&tls, &[])?;
    let mut config = kl_svc::config::defaults::<RegistrarConfig>()?;
    config.keylime_dir = dir.path().to_owned();
    config.port = 0;
    config.tls_dir = TlsDir::Dir(tls.dir.clone());
    config.log_level = "warn".to_owned();
    config.tpm_cert_store = dir.path().join("tpm_cert_store");
    config.require_ek_cert = false;
    config.registration_rate_limit = 0;
    let registrar = if options.in_process {
        Registrar::in_process(&config).await?
    } else {
        Registrar::child(&config, dir.path())?
    };
    let port = registrar.port;
    wait_until_serving(port, &tls).await?;

    let setup = Instant::now();
    let pool: Vec<SoftTpm> = match alg {
        "ecc" => (0..64).map(|_| SoftTpm::ecc()).collect(),
        _ => (0..8)
            .map(|_| rsa::PrivateKey::new(&mut rand::rng(), 2048).map(SoftTpm::rsa))
            .collect::<Result<_, _>>()?,
    };
    let prepared: Vec<Prepared> = (0..options.agents)
        .map(|n| {
            let agent_id = format!("bench-{alg}-{n:08}");
            let tpm = n % pool.len();
            let certificate = AgentIdentity::generate(&agent_id, &[])?;
            Ok::<_, BoxError>(Prepared {
                request: pb::RegisterRequest {
                    agent_id,
                    ek_public: pool[tpm].ek_public.clone(),
                    ek_certificate: Vec::new(),
                    ek_intermediate_certificates: Vec::new(),
                    ak_public: pool[tpm].ak_public.clone(),
                    agent_certificate: certificate.cert_der.to_vec(),
                    contact: Some(pb::Contact { ip: "127.0.0.1".to_owned(), port: 9002 }),
                },
                tpm,
            })
        })
        .collect::<Result<_, _>>()?;
    let setup = setup.elapsed();
    let make_credential = time_make_credential(&pool[0])?;

    let pool = Arc::new(pool);
    let prepared = Arc::new(prepared);
    let next = Arc::new(AtomicUsize::new(0));
    let registrar = registrar.reset_cpu_time();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (pool, prepared, next, tls) =
            (pool.clone(), prepared.clone(), next.clone(), tls.clone());
        let connect_each = options.connect_each;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut soft_tpm_time = Duration::ZERO;
            let mut client = connect(port, &tls).await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = prepared.get(n) else { break };
                let begun = Instant::now();
                if connect_each {
                    client = connect(port, &tls).await?;
                }
                let challenge = client.register(item.request.clone()).await?.into_inner();
                // The software TPM's work runs off the async workers, as a TPM call would.
                let (pool_ref, tpm) = (pool.clone(), item.tpm);
                let (secret, took) = tokio::task::spawn_blocking(move || {
                    let decrypting = Instant::now();
                    let secret = pool_ref[tpm].activate_credential(
                        &challenge.credential_blob,
                        &challenge.encrypted_secret,
                    );
                    (secret, decrypting.elapsed())
                })
                .await?;
                let secret = secret?;
                soft_tpm_time += took;
                let agent_id = item.request.agent_id.clone();
                let auth_tag = activation_proof(&secret, &agent_id).to_vec();
                let count =
                    client.activate(pb::ActivateRequest { agent_id, auth_tag }).await?.into_inner();
                if count.registration_count != 1 {
                    return Err(
                        format!("registration {n}: count {}", count.registration_count).into()
                    );
                }
                latencies.push(begun.elapsed());
            }
            Ok::<_, BoxError>((latencies, soft_tpm_time))
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut soft_tpm_time = Duration::ZERO;
    for worker in workers {
        let (worker_latencies, worker_soft_tpm) = worker.await??;
        latencies.extend(worker_latencies);
        soft_tpm_time += worker_soft_tpm;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{alg}: {} registrations in {:.2} s = {:.0}/s (concurrency {}, {}; latency p50 {:.1} ms, p99 {:.1} ms; setup {:.1} s)",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        options.concurrency,
        if options.connect_each {
            "a TLS connection per registration"
        } else {
            "one TLS connection per client"
        },
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3,
        setup.as_secs_f64(),
    );
    println!(
        "{alg}: the registrar's software MakeCredential alone takes {:.2} ms (timed single-threaded before the run)",
        make_credential.as_secs_f64() * 1e3
    );
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1) as f64;
    println!(
        "{alg}: the clients' software ActivateCredential took {:.2} ms per registration, {:.0}% of the {cores} cores' time",
        soft_tpm_time.as_secs_f64() * 1e3 / latencies.len().max(1) as f64,
        100.0 * soft_tpm_time.as_secs_f64() / (elapsed.as_secs_f64() * cores),
    );
    if let Some(cpu) = registrar.cpu_time() {
        let per_registration = cpu.as_secs_f64() / latencies.len().max(1) as f64;
        println!(
            "{alg}: the registrar process used {:.2} ms of CPU per registration (about {:.0} registrations/s per core)",
            per_registration * 1e3,
            1.0 / per_registration,
        );
    }
    registrar.stop().await?;
    Ok(())
}

/// The mean time of one MakeCredential (with the fresh secret) for `tpm`'s EK and AK.
fn time_make_credential(tpm: &SoftTpm) -> Result<Duration, BoxError> {
    let request = pb::RegisterRequest {
        agent_id: "timing".to_owned(),
        ek_public: tpm.ek_public.clone(),
        ak_public: tpm.ak_public.clone(),
        ..Default::default()
    };
    let ek = kl_core::tpm2::Public::parse(&request.ek_public)?;
    let ek = match &ek.key {
        kl_core::tpm2::TpmKey::Rsa(k) => kl_core::credential::EkKey::rsa(
            &k.modulus,
            k.exponent(),
            ek.name_alg,
            kl_core::credential::EkSymmetric::Aes128,
        ),
        kl_core::tpm2::TpmKey::Ecc(k) => kl_core::credential::EkKey::ecc(
            kl_core::key::Curve::P256,
            &k.x,
            &k.y,
            ek.name_alg,
            kl_core::credential::EkSymmetric::Aes128,
        ),
    };
    let ak_name = tpm.ak_name();
    const ROUNDS: u32 = 200;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        kl_registrar::registration::challenge(&ek, &ak_name)?;
    }
    Ok(started.elapsed() / ROUNDS)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = options()?;
    for alg in options.algs.clone() {
        run(alg, &options).await?;
    }
    Ok(())
}
