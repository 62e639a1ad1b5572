//! Talking to the daemons: configuration (the tenant config of DESIGN §5 plus flags), TLS with
//! the deployment CA and the admin client certificate, and gRPC status to exit code mapping.

use std::time::Duration;

use anyhow::{Context, anyhow};
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::registrar::v1::{AgentRecord, ListAgentsRequest};
use kl_svc::config::{self, ConfigArgs, Flag, TenantConfig};
use kl_svc::tls::{self, ServerTrust, TlsConnector, TlsFiles};
use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::cli::Cli;
use crate::exit::Failure;

/// Where the daemons are and which tenant configuration to read, as given on a command line
/// or in another front's configuration; `None` falls back to the tenant configuration.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `HOST` or `HOST:PORT` of the verifier.
    pub verifier: Option<String>,
    /// `HOST` or `HOST:PORT` of the registrar.
    pub registrar: Option<String>,
    /// The directory with the CA and the admin client certificate.
    pub tls_dir: Option<std::path::PathBuf>,
    /// The tenant configuration file.
    pub config: Option<std::path::PathBuf>,
}

/// The effective tenant configuration: files, `KEYLIME_TENANT_*`, then kctl's flags.
pub fn tenant_config(cli: &Cli) -> Result<TenantConfig, Failure> {
    let connection = Connection {
        verifier: cli.verifier.clone(),
        registrar: cli.registrar.clone(),
        tls_dir: cli.tls_dir.clone(),
        config: cli.config.clone(),
    };
    tenant_config_for(&connection, "--")
}

/// The effective tenant configuration: files, `KEYLIME_TENANT_*`, then what `connection` sets.
/// `prefix` is how the settings are named in errors (`--` for flags).
pub fn tenant_config_for(connection: &Connection, prefix: &str) -> Result<TenantConfig, Failure> {
    let mut flags = Vec::new();
    if let Some(addr) = &connection.verifier {
        let (ip, port) = split_addr(addr, &format!("{prefix}verifier"))?;
        flags.push(Flag::new("verifier_ip", ip));
        if let Some(port) = port {
            flags.push(Flag::new("verifier_port", port));
        }
    }
    if let Some(addr) = &connection.registrar {
        let (ip, port) = split_addr(addr, &format!("{prefix}registrar"))?;
        flags.push(Flag::new("registrar_ip", ip));
        if let Some(port) = port {
            flags.push(Flag::new("registrar_port", port));
        }
    }
    if let Some(dir) = &connection.tls_dir {
        flags.push(Flag::new("tls_dir", dir.display().to_string()));
    }
    let args = ConfigArgs { config: connection.config.clone(), ..ConfigArgs::default() };
    let sources = args.sources(flags).map_err(|e| Failure::Input(e.into()))?;
    let loaded = config::load::<TenantConfig>(&sources).map_err(|e| Failure::Input(e.into()))?;
    Ok(loaded.config)
}

/// `HOST`, `HOST:PORT` or `[V6]:PORT`.
pub fn split_addr(addr: &str, flag: &str) -> Result<(String, Option<String>), Failure> {
    let bad = || Failure::Input(anyhow!("{flag} {addr:?}: expected HOST or HOST:PORT"));
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = tail.strip_prefix(':').map(str::to_owned);
        return Ok((host.to_owned(), port));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Ok((host.to_owned(), Some(port.to_owned()))),
        Some(_) => Ok((addr.to_owned(), None)),
        None if addr.is_empty() => Err(bad()),
        None => Ok((addr.to_owned(), None)),
    }
}

/// The deployment TLS files kctl uses (`tls_dir`: `default` = `<keylime_dir>/cv_ca`).
pub fn tls_files(config: &TenantConfig) -> TlsFiles {
    TlsFiles::new(config.tls_dir.path(&config.keylime_dir))
}

/// A gRPC channel to `host:port` over TLS 1.3, trusting the deployment CA and presenting the
/// admin client certificate.
pub async fn channel(config: &TenantConfig, host: &str, port: u16) -> Result<Channel, Failure> {
    let files = tls_files(config);
    let setup = || -> anyhow::Result<_> {
        let cas = files.ca_certificates()?;
        let identity = files.client_identity()?;
        Ok(tls::client_config(&ServerTrust::Ca(cas), Some(identity))?)
    };
    let client = setup()
        .with_context(|| {
            format!(
                "TLS files in {}",
                files.ca_cert().parent().map(|p| p.display().to_string()).unwrap_or_default()
            )
        })
        .map_err(Failure::Input)?;
    let client = std::sync::Arc::new(client);
    if let Ok(name) = ServerName::try_from(host.to_owned()) {
        let wait = Duration::from_secs(5);
        if let Some(alert) = tls::client_refusal(host, port, name, client.clone(), wait).await {
            return Err(Failure::Server(anyhow!(
                "{host}:{port} refused this client: {}; kctl presents {} (tls_dir)",
                tls::refusal_reason(alert),
                files.client_cert().display()
            )));
        }
    }
    let host_uri = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let endpoint = Endpoint::from_shared(format!("http://{host_uri}:{port}"))
        .map_err(|e| Failure::Input(anyhow!("{host}:{port}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(config.request_timeout);
    endpoint.connect_with_connector(TlsConnector::new(client)).await.map_err(|e| {
        Failure::Server(anyhow!("{host}:{port}: cannot connect: {}", source_chain(&e)))
    })
}

/// A gRPC channel to the agent at `host:port` over TLS 1.3, pinning its self-signed identity
/// `certificate` (DER, as the registrar recorded it) and presenting the admin client
/// certificate.
pub async fn agent_channel(
    config: &TenantConfig,
    host: &str,
    port: u16,
    certificate: &[u8],
) -> Result<Channel, Failure> {
    let files = tls_files(config);
    let client = (|| -> anyhow::Result<_> {
        let identity = files.client_identity()?;
        let pinned = CertificateDer::from(certificate.to_vec());
        Ok(tls::client_config(&ServerTrust::Pinned(pinned), Some(identity))?)
    })()
    .context("TLS client for the agent")
    .map_err(Failure::Input)?;
    let host_uri = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    Endpoint::from_shared(format!("http://{host_uri}:{port}"))
        .map_err(|e| Failure::Input(anyhow!("{host}:{port}: {e}")))?
        .timeout(config.request_timeout)
        .connect_with_connector(TlsConnector::new(std::sync::Arc::new(client)))
        .await
        .map_err(|e| Failure::Server(anyhow!("agent at {host}:{port}: cannot connect: {e}")))
}

/// Every agent record the registrar holds, read page by page.
pub async fn registrar_agents(
    registrar: &mut RegistrarClient<Channel>,
) -> Result<Vec<AgentRecord>, Failure> {
    let mut agents = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = registrar
            .list_agents(ListAgentsRequest { page_size: 1000, page_token })
            .await
            .map_err(|s| status("registrar ListAgents", s))?
            .into_inner();
        agents.extend(page.agents);
        if page.next_page_token.is_empty() {
            return Ok(agents);
        }
        page_token = page.next_page_token;
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

/// The exit code contract: INVALID_ARGUMENT exits 2, NOT_FOUND 3, FAILED_PRECONDITION and
/// ALREADY_EXISTS 5, every other failure 4.
pub fn status(what: &str, status: Status) -> Failure {
    let err = anyhow!("{what}: {} ({:?})", status.message(), status.code());
    match status.code() {
        Code::InvalidArgument => Failure::Input(err),
        Code::NotFound => Failure::NotFound(err),
        Code::FailedPrecondition | Code::AlreadyExists => Failure::Refused(err),
        _ => Failure::Server(err),
    }
}

/// Runs a future on a single-threaded runtime (kctl makes one call at a time).
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Server(anyhow!("starting the async runtime: {e}")))?;
    Ok(rt.block_on(f))
}

/// RFC 3339 for a protobuf timestamp.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let t = time::OffsetDateTime::from_unix_timestamp(ts.seconds).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_addr("10.0.0.1:8881", "--v").ok(),
            Some(("10.0.0.1".into(), Some("8881".into())))
        );
        assert_eq!(
            split_addr("verifier.example", "--v").ok(),
            Some(("verifier.example".into(), None))
        );
        assert_eq!(split_addr("[::1]:8891", "--v").ok(), Some(("::1".into(), Some("8891".into()))));
        assert_eq!(split_addr("::1", "--v").ok(), Some(("::1".into(), None)));
        assert!(split_addr("", "--v").is_err());
    }

    #[test]
    fn grpc_statuses_map_to_exit_codes() {
        let code = |c: Code| status("call", Status::new(c, "why")).report("kctl");
        assert_eq!(code(Code::InvalidArgument), 2);
        assert_eq!(code(Code::NotFound), 3);
        assert_eq!(code(Code::FailedPrecondition), 5);
        assert_eq!(code(Code::AlreadyExists), 5);
        for other in [Code::Unavailable, Code::Internal, Code::PermissionDenied, Code::Unknown] {
            assert_eq!(code(other), 4, "{other:?}");
        }
    }
}
