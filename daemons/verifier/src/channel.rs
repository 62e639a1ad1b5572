//! The verifier's connection to one agent: HTTP/2 over one TLS connection, opened on first use
//! and again after it closes, with nothing between a request and the connection.
//!
//! tonic's `Channel` puts a request queue with its own task and a reconnect layer in front of
//! the connection, and hyper drives a streaming request body on a task of its own. A verifier
//! holds one connection per agent and sends one small request per round on each, so here a
//! unary request's body (one encoded message) is collected and sent whole, and the caller's
//! task talks to the connection directly: fewer tasks to wake per round and about 10 KiB less
//! per agent.
//!
//! Errors are `tonic::Status` values: `Unavailable` when the agent cannot be reached or the
//! connection fails, `DeadlineExceeded` when it does not answer within the request timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tonic::Status;

/// A cloneable handle on the connection to one agent; clones share the connection.
#[derive(Debug, Clone)]
pub(crate) struct AgentChannel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    sender: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl AgentChannel {
    /// A channel to `host:port` (an IP address, IPv6 without brackets) that checks the server
    /// with `tls` under `server_name`; connecting and each request are bounded by `timeout`.
    pub fn new(
        host: String,
        port: u16,
        server_name: ServerName<'static>,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> AgentChannel {
        let sender = tokio::sync::Mutex::new(None);
        AgentChannel { inner: Arc::new(Inner { host, port, server_name, tls, timeout, sender }) }
    }
}

impl Inner {
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> Status {
        Status::unavailable(format!("{}:{}: {what}: {e}", self.host, self.port))
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, Status> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        *slot = None;
        let connecting =
            kl_svc::tls::connect(&self.host, self.port, self.server_name.clone(), self.tls.clone());
        let stream = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("connecting to {}:{}", self.host, self.port))
            })?
            .map_err(|e| self.unavailable("connect", e))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unavailable("HTTP/2 handshake", e))?;
        let (host, port) = (self.host.clone(), self.port);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(agent = %format!("{host}:{port}"), error = %e, "agent connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn call(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<Incoming>, Status> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))?
            .to_bytes();
        let mut request = http::Request::from_parts(parts, Full::new(body));
        // HTTP/2 takes the authority from the URI; tonic's client leaves the path only.
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(request.uri().path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|e| Status::internal(format!("request URI: {e}")))?;
        *request.uri_mut() = uri;
        let mut sender = self.sender().await?;
        let answer = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(self.unavailable("request", e)),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{}:{} did not answer within {:?}",
                self.host, self.port, self.timeout
            ))),
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for AgentChannel {
    type Response = http::Response<Incoming>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.call(request).await })
    }
}
