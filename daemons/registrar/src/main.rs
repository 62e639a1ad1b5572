//! `keylime_registrar`: loads the layered config and runs the registrar until SIGTERM.
//!
//! Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start or stops on an error (one
//! line on stderr says why). `--check-store` checks the state file and exits: 0 sound, 1
//! damaged, 2 when it cannot be checked (absent, in use, unreadable).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kl_svc::config::{self, ConfigArgs, RegistrarConfig};

/// The keylime-rs registrar: stores each agent's TPM identity after credential activation.
#[derive(Debug, Parser)]
#[command(name = "keylime_registrar", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Check the state file (`<keylime_dir>/registrar.redb`) in full, print a one-line verdict
    /// and exit without starting the registrar: 0 sound, 1 damaged, 2 cannot be checked.
    #[arg(long)]
    check_store: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keylime_registrar: {}", kl_svc::error_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = config::load::<RegistrarConfig>(&args.config.sources(Vec::new())?)?;
    if args.config.print_config {
        println!("{}", loaded.to_json()?);
        return Ok(ExitCode::SUCCESS);
    }
    let config = loaded.config;
    if args.check_store {
        let path = kl_registrar::store_path(&config);
        let checked = path.clone();
        let result = tokio::task::spawn_blocking(move || {
            kl_store::registrar::RegistrarStore::check(&checked)
        })
        .await
        .context("checking the state store")?;
        let verdict = kl_store::Verdict::of(&path, result);
        if verdict.exit_code == 0 {
            println!("{}", verdict.line);
        } else {
            eprintln!("keylime_registrar: {}", verdict.line);
        }
        return Ok(ExitCode::from(verdict.exit_code));
    }
    kl_svc::logging::init(config.log_format, &config.log_level)?;
    let shutdown = kl_svc::shutdown::Shutdown::install().context("installing signal handlers")?;
    let server = kl_registrar::Server::bind(&config).await?;
    kl_svc::systemd::notify_ready()?;
    server
        .serve(async {
            let signal = shutdown.wait().await;
            tracing::info!(%signal, "stopping");
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
