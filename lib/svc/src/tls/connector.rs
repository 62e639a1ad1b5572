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

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the server takes this client's certificate. In TLS 1.3 a server checks the client
/// certificate after the client has finished its side of the handshake, and refuses it with an
/// alert that only the client's next read sees: a gRPC client then reports the call as
/// "operation was canceled". This completes a handshake, sends the HTTP/2 preface and reads the
/// server's first bytes; `Some(alert)` is the server's refusal. Anything else (an answer, no
/// answer within `wait`, another error) is `None`, for the real connection to report.
pub async fn client_refusal(
    host: &str,
    port: u16,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    wait: std::time::Duration,
) -> Option<rustls::AlertDescription> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut tls = connect(host, port, server_name, config).await?;
        tls.write_all(H2_PREFACE).await?;
        tls.flush().await?;
        let mut first = [0u8; 64];
        tls.read(&mut first).await
    };
    let Ok(Err(e)) = tokio::time::timeout(wait, probe).await else { return None };
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => Some(*alert),
        _ => None,
    }
}

/// What a TLS alert from a server that refused the client's certificate means, for people.
pub fn refusal_reason(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    let why = match alert {
        A::UnknownCA | A::BadCertificate => {
            "the client certificate is not issued by a CA the server trusts"
        }
        // What rustls answers a client certificate whose signature does not verify against
        // the CA it names: in practice one from another CA of the same name.
        A::DecryptError => {
            "the client certificate is not issued by a CA the server trusts (its signature does \
             not verify)"
        }
        A::CertificateRequired => "the server requires a client certificate",
        A::CertificateExpired => "the client certificate has expired",
        A::CertificateRevoked => "the client certificate is revoked",
        A::AccessDenied => "the server denies access to this client certificate",
        A::UnsupportedCertificate => "the server does not accept this kind of client certificate",
        _ => "the server ended the TLS session",
    };
    format!("{why} (TLS alert {alert:?})")
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
