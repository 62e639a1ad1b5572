//! The verifier's connection to one agent: HTTP/2 over one TLS connection, opened on first use
//! and again after it closes, with nothing between a request and the connection.
//!
//! tonic's `Channel` puts a request queue with its own task and a reconnect layer in front of
//! the connection, and hyper spawns a task per request to wait for its response. A verifier
//! holds one connection per agent and sends one small request per round on each, so here the
//! caller's task speaks HTTP/2 (the `h2` crate) on the connection directly: a unary request's
//! body (one encoded message) is sent whole with the headers, and the response is read from
//! its stream by the caller. One task per connection drives the connection itself; nothing
//! else is spawned or woken per round, and an agent costs about 10 KiB less.
//!
//! Errors are `tonic::Status` values: `Unavailable` when the agent cannot be reached or the
//! connection fails, `DeadlineExceeded` when it does not answer within the request timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http_body::Frame;
use http_body_util::BodyExt;
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
    /// `host:port` as a URI authority.
    authority: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    sender: tokio::sync::Mutex<Option<SendRequest<Bytes>>>,
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
        let authority =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let sender = tokio::sync::Mutex::new(None);
        let inner = Inner { host, port, authority, server_name, tls, timeout, sender };
        AgentChannel { inner: Arc::new(inner) }
    }
}

impl Inner {
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> Status {
        Status::unavailable(format!("{}: {what}: {e}", self.authority))
    }

    /// The open connection, ready for a request, or a new one.
    async fn sender(&self) -> Result<SendRequest<Bytes>, Status> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.clone() {
            match sender.ready().await {
                Ok(sender) => return Ok(sender),
                Err(e) => tracing::debug!(agent = %self.authority, error = %e, "reconnecting"),
            }
        }
        *slot = None;
        let connecting =
            kl_svc::tls::connect(&self.host, self.port, self.server_name.clone(), self.tls.clone());
        let stream = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| Status::deadline_exceeded(format!("connecting to {}", self.authority)))?
            .map_err(|e| self.unavailable("connect", e))?;
        let (sender, connection) = h2::client::handshake(stream)
            .await
            .map_err(|e| self.unavailable("HTTP/2 handshake", e))?;
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(agent = %authority, error = %e, "agent connection ended");
            }
        });
        let sender = sender.ready().await.map_err(|e| self.unavailable("HTTP/2", e))?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn call(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let (mut parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))?
            .to_bytes();
        // HTTP/2 takes the authority from the URI; tonic's client leaves the path only.
        parts.uri = http::Uri::builder()
            .scheme("https")
            .authority(self.authority.as_str())
            .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|e| Status::internal(format!("request URI: {e}")))?;
        let request = http::Request::from_parts(parts, ());
        let answer = async {
            let mut sender = self.sender().await?;
            let (response, mut stream) = sender
                .send_request(request, body.is_empty())
                .map_err(|e| self.unavailable("request", e))?;
            if !body.is_empty() {
                stream.send_data(body, true).map_err(|e| self.unavailable("request", e))?;
            }
            let response = response.await.map_err(|e| self.unavailable("response", e))?;
            Ok(response.map(|recv| ResponseBody { recv, data_done: false }))
        };
        tokio::time::timeout(self.timeout, answer).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "{} did not answer within {:?}",
                self.authority, self.timeout
            ))
        })?
    }
}

/// A response body read straight from its HTTP/2 stream: data, then trailers (where gRPC puts
/// its status). Received data is released to the flow-control window as it is handed on.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    recv: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for AgentChannel {
    type Response = http::Response<ResponseBody>;
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
