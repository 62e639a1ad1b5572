//! `keylime_registrar`: loads the layered config and runs the registrar until SIGTERM.

use anyhow::Context;
use clap::Parser;
use kl_svc::config::{self, ConfigArgs, RegistrarConfig};

/// The keylime-rs registrar: stores each agent's TPM identity after credential activation.
#[derive(Debug, Parser)]
#[command(name = "keylime_registrar", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let loaded = config::load::<RegistrarConfig>(&args.config.sources(Vec::new())?)?;
    if args.config.print_config {
        println!("{}", loaded.to_json()?);
        return Ok(());
    }
    let config = loaded.config;
    kl_svc::logging::init(config.log_format, &config.log_level)?;
    let shutdown = kl_svc::shutdown::Shutdown::install().context("installing signal handlers")?;
    let server = kl_registrar::Server::bind(&config).await?;
    kl_svc::systemd::notify_ready()?;
    let reload = server.reloader();
    server
        .serve(async {
            let signal = shutdown.wait_reloading(reload).await;
            tracing::info!(%signal, "stopping");
        })
        .await?;
    Ok(())
}
