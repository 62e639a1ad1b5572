//! Client connections with this crate's rustls [`ClientConfig`]s (TLS 1.3, CA trust or a
//! pinned agent certificate), as a connector for tonic's `Endpoint::connect_with_connector`.
//!
//! tonic adds its own TLS layer to `https://` endpoints, so endpoints used with this connector
//! are written `http://host:port`: the connection is TLS all the same, done here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Connects over TCP and runs the TLS handshake with `config`. `server_name` is the name the
/// server certificate must carry (ignored by a pinned-certificate config).
pub async fn connect(
    host: &str,
    port: u16,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let context = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{host}:{port}: {e}"));
    let tcp = TcpStream::connect((host, port)).await.map_err(context)?;
    tcp.set_nodelay(true).map_err(context)?;
    tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await.map_err(context)
}

/// A `tower` connector for tonic: each call opens a TLS connection to the URI's host and port.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// Checks the server certificate against the URI's host.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsConnector { config, server_name: None }
    }

    /// Checks the server certificate against `name` instead of the URI's host.
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        let fixed_name = self.server_name.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let server_name = match fixed_name {
                Some(name) => name,
                None => ServerName::try_from(host.clone())
                    .map_err(|_| invalid("host is not a valid server name"))?,
            };
            connect(&host, port, server_name, config).await.map(TokioIo::new)
        })
    }
}
