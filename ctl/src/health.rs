//! `kctl health`: asks a daemon's `grpc.health.v1.Health` service whether it serves.
//!
//! Exit 0 when SERVING, 1 when NOT_SERVING (evaluated and negative), 3 when the daemon does not
//! serve the named service (or no agent is registered at `--agent ADDR`), 4 when it cannot be
//! reached. The probe presents kctl's client certificate; the daemons admit any certificate
//! of the deployment CA to the health service, whatever its role.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use kl_proto::registrar::v1::ListAgentsRequest;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_svc::api::ServingStatus;
use kl_svc::tls::{self, ServerTrust, TlsConnector};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
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
    let mut registrar = RegistrarClient::new(registrar);
    let mut page_token = String::new();
    let certificate = loop {
        let page = registrar
            .list_agents(ListAgentsRequest { page_size: 1000, page_token })
            .await
            .map_err(|s| connect::status("registrar ListAgents", s))?
            .into_inner();
        let found = page.agents.into_iter().find(|a| {
            a.contact.as_ref().is_some_and(|c| c.ip == host && u32::from(port) == c.port)
        });
        if let Some(agent) = found {
            break agent.agent_certificate;
        }
        if page.next_page_token.is_empty() {
            return Err(Failure::NotFound(anyhow!(
                "no agent registered at the registrar has contact {host}:{port} (its identity \
                 certificate is needed to reach it)"
            )));
        }
        page_token = page.next_page_token;
    };
    let files = connect::tls_files(config);
    let client = (|| -> anyhow::Result<_> {
        let identity = files.client_identity()?;
        Ok(tls::client_config(
            &ServerTrust::Pinned(CertificateDer::from(certificate)),
            Some(identity),
        )?)
    })()
    .context("TLS client for the agent")
    .map_err(input)?;
    let host_uri = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    Endpoint::from_shared(format!("http://{host_uri}:{port}"))
        .map_err(|e| input(anyhow!("{host}:{port}: {e}")))?
        .timeout(config.request_timeout)
        .connect_with_connector(TlsConnector::new(Arc::new(client)))
        .await
        .map_err(|e| Failure::Server(anyhow!("agent at {host}:{port}: cannot connect: {e}")))
}
