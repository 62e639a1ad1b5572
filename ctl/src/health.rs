//! `kctl health`: asks a daemon's `grpc.health.v1.Health` service whether it serves.
//!
//! Exit 0 when SERVING, 1 when NOT_SERVING (evaluated and negative), 3 when the daemon does not
//! serve the named service (or no agent is registered at `--agent ADDR`), 4 when it cannot be
//! reached. The probe presents kctl's client certificate; the daemons admit any certificate
//! of the deployment CA to the health service, whatever its role.

use anyhow::anyhow;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_svc::api::ServingStatus;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::cli::{Cli, HealthArgs};
use crate::connect::{self, block_on};
use crate::exit::{CmdResult, Failure, Outcome, input};
use crate::output::{self, Format};

/// The agent's default port (DESIGN §5).
const AGENT_PORT: u16 = 9002;

pub fn run(cli: &Cli, args: &HealthArgs) -> CmdResult {
    let chosen = [cli.verifier.is_some(), cli.registrar.is_some(), args.agent.is_some()];
    if chosen.iter().filter(|c| **c).count() > 1 {
        return Err(input(anyhow!(
            "health probes one daemon: give at most one of --verifier, --registrar, --agent"
        )));
    }
    let config = connect::tenant_config(cli)?;
    block_on(async {
        let (daemon, address, channel) = if let Some(addr) = &args.agent {
            let (host, port) = agent_addr(addr)?;
            let channel = agent_channel(&config, &host, port).await?;
            ("agent", format!("{host}:{port}"), channel)
        } else if cli.registrar.is_some() {
            let (host, port) = (config.registrar_ip.clone(), config.registrar_port);
            let channel = connect::channel(&config, &host, port).await?;
            ("registrar", format!("{host}:{port}"), channel)
        } else {
            let (host, port) = (config.verifier_ip.clone(), config.verifier_port);
            let channel = connect::channel(&config, &host, port).await?;
            ("verifier", format!("{host}:{port}"), channel)
        };
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: args.service.clone() })
            .await;
        let status = match answer {
            Ok(response) => response.into_inner().status(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(Failure::NotFound(anyhow!(
                    "{daemon} at {address} does not serve {:?}: {}",
                    args.service,
                    s.message()
                )));
            }
            Err(s) => return Err(connect::status(&format!("{daemon} at {address}: health"), s)),
        };
        let serving = status == ServingStatus::Serving;
        let doc = json!({
            "daemon": daemon,
            "address": address,
            "service": args.service,
            "status": status.as_str_name(),
            "serving": serving,
        });
        match cli.output {
            Format::Json => output::json(&doc).map_err(input)?,
            Format::Table => output::text(&format!(
                "{daemon} at {address}{}: {}\n",
                if args.service.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", args.service)
                },
                status.as_str_name()
            ))
            .map_err(input)?,
        }
        Ok(if serving { Outcome::Ok } else { Outcome::Negative })
    })?
}

fn agent_addr(addr: &str) -> Result<(String, u16), Failure> {
    let (host, port) = connect::split_addr(addr, "--agent")?;
    let port = match port {
        Some(p) => {
            p.parse().map_err(|_| input(anyhow!("--agent {addr:?}: {p:?} is not a port number")))?
        }
        None => AGENT_PORT,
    };
    Ok((host, port))
}

/// A channel to the agent at `host:port`, pinning the identity certificate of the agent the
/// registrar knows at that contact address (the agent's certificate is self-signed).
async fn agent_channel(
    config: &kl_svc::config::TenantConfig,
    host: &str,
    port: u16,
) -> Result<Channel, Failure> {
    let registrar = connect::channel(config, &config.registrar_ip, config.registrar_port).await?;
    let agents = connect::registrar_agents(&mut RegistrarClient::new(registrar)).await?;
    let found = agents
        .into_iter()
        .find(|a| a.contact.as_ref().is_some_and(|c| c.ip == host && u32::from(port) == c.port));
    let Some(agent) = found else {
        return Err(Failure::NotFound(anyhow!(
            "no agent registered at the registrar has contact {host}:{port} (its identity \
             certificate is needed to reach it)"
        )));
    };
    connect::agent_channel(config, host, port, &agent.agent_certificate).await
}
