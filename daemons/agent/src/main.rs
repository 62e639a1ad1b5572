//! `keylime_agent`: reads the agent config, starts the agent and serves until SIGTERM.
//!
//! Exit status: 0 after SIGTERM or SIGINT, 78 (EX_CONFIG) when restarting cannot help (bad
//! configuration, registration refused), 1 for other failures.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use kl_svc::config::{self, AgentConfig, ConfigArgs};

/// Exit status for errors a restart cannot fix (sysexits.h EX_CONFIG).
const EXIT_PERMANENT: u8 = 78;

/// The keylime-rs agent: registers this machine's TPM and answers attestation requests.
#[derive(Debug, Parser)]
#[command(name = "keylime_agent", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keylime_agent: {e:#}");
            let permanent = e.downcast_ref::<kl_agent::Error>().is_some_and(|e| e.is_permanent())
                || kl_svc::is_config_error(e.chain());
            ExitCode::from(if permanent { EXIT_PERMANENT } else { 1 })
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.config.render::<AgentConfig>(Args::command) {
        return Ok(());
    }
    let loaded = config::load::<AgentConfig>(&args.config.sources(Vec::new())?)?;
    if args.config.print_config {
        println!("{}", loaded.to_json()?);
        return Ok(());
    }
    let cfg = loaded.config;
    kl_svc::logging::init(cfg.log_format, &cfg.log_level)?;
    let agent = match kl_agent::Agent::start(cfg).await {
        Ok(agent) => agent,
        Err(e) => {
            tracing::error!("cannot start the agent: {e}");
            return Err(e.into());
        }
    };
    // Installed only now, so that SIGTERM during start-up (a TPM that takes long) still ends
    // the process at once.
    let shutdown = kl_svc::shutdown::Shutdown::install().context("installing signal handlers")?;
    kl_svc::systemd::notify_ready().context("notifying systemd")?;
    let stop = async move {
        let signal = shutdown.wait().await;
        tracing::info!(%signal, "stopping");
    };
    if let Err(e) = agent.serve(stop).await {
        tracing::error!("agent stopped: {e}");
        return Err(e.into());
    }
    Ok(())
}
