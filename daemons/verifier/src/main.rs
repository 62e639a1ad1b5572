//! `keylime_verifier`: loads the layered config and runs the verifier until SIGTERM.
//!
//! Exit status: 0 after SIGTERM or SIGINT, 78 (EX_CONFIG) on a configuration error (unreadable
//! file, unknown key, bad value) or a damaged state file (the unit does not restart on either),
//! 1 for other failures (one
//! line on stderr says why). `--check-store` checks the state file and exits: 0 sound, 1
//! damaged, 2 when it cannot be checked (absent, in use, unreadable).

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use kl_svc::config::{self, ConfigArgs, VerifierConfig};

/// The keylime-rs verifier: continuously attests enrolled agents.
#[derive(Debug, Parser)]
#[command(name = "keylime_verifier", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Check the state file (`<keylime_dir>/verifier.redb`) in full, print a one-line verdict
    /// and exit without starting the verifier: 0 sound, 1 damaged, 2 cannot be checked.
    #[arg(long)]
    check_store: bool,
}

/// mimalloc rather than glibc's malloc: glibc gives every thread that allocates its own arena
/// and, once a large block (a policy document) has been freed, keeps up to twice that size of
/// freed memory in each arena; at 2,000 agents that was 50 KiB per agent of memory in no use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error (sysexits.h EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keylime_verifier: {}", kl_svc::error_line(e.chain()));
            ExitCode::from(if restart_cannot_help(&e) { EXIT_CONFIG } else { 1 })
        }
    }
}

/// A configuration error (a bad `database_url` or password file too), or a damaged state file:
/// the same start would fail again, so the unit does not restart on it
/// (`RestartPreventExitStatus=78`).
fn restart_cannot_help(e: &anyhow::Error) -> bool {
    let store_refused = matches!(
        e.downcast_ref::<kl_verifier::Error>(),
        Some(kl_verifier::Error::Store(
            kl_store::StoreError::Damaged { .. }
                | kl_store::StoreError::DatabaseUrl { .. }
                | kl_store::StoreError::PasswordFile { .. }
        ))
    );
    store_refused
        || kl_svc::is_config_error(e.chain())
        || matches!(e.downcast_ref::<kl_verifier::Error>(), Some(kl_verifier::Error::Config(_)))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.config.render::<VerifierConfig>(Args::command) {
        return Ok(ExitCode::SUCCESS);
    }
    let loaded = config::load::<VerifierConfig>(&args.config.sources(Vec::new())?)?;
    if args.config.print_config {
        println!("{}", loaded.to_json()?);
        return Ok(ExitCode::SUCCESS);
    }
    let config = loaded.config;
    if args.check_store && config.database_url.is_some() {
        eprintln!(
            "keylime_verifier: not checked: --check-store checks the redb file, and database_url is \
             set; check a PostgreSQL database with its own tools (pg_amcheck)"
        );
        return Ok(ExitCode::from(2));
    }
    if args.check_store {
        let path = kl_verifier::store_path(&config);
        let checked = path.clone();
        let result =
            tokio::task::spawn_blocking(move || kl_store::verifier::VerifierStore::check(&checked))
                .await
                .context("checking the state store")?;
        let verdict = kl_store::Verdict::of(&path, result);
        if verdict.exit_code == 0 {
            println!("{}", verdict.line);
        } else {
            eprintln!("keylime_verifier: {}", verdict.line);
        }
        return Ok(ExitCode::from(verdict.exit_code));
    }
    kl_svc::logging::init(config.log_format, &config.log_level)?;
    let shutdown = kl_svc::shutdown::Shutdown::install().context("installing signal handlers")?;
    let server = kl_verifier::Server::bind(&config).await?;
    kl_svc::systemd::notify_ready()?;
    server
        .serve(async {
            let signal = shutdown.wait().await;
            tracing::info!(%signal, "stopping");
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
