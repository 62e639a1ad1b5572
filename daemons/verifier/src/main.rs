//! `keylime_verifier`: loads the layered config and runs the verifier until SIGTERM.

use anyhow::Context;
use clap::Parser;
use kl_svc::config::{self, ConfigArgs, VerifierConfig};

/// The keylime-rs verifier: continuously attests enrolled agents.
#[derive(Debug, Parser)]
#[command(name = "keylime_verifier", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let loaded = config::load::<VerifierConfig>(&args.config.sources(Vec::new())?)?;
    if args.config.print_config {
        println!("{}", loaded.to_json()?);
        return Ok(());
    }
    let config = loaded.config;
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
    Ok(())
}
