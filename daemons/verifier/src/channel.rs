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
//! connection or stream fails (also while the reply is read), `DeadlineExceeded` when connecting
//! or the reply's headers take longer than the request timeout. The caller bounds the whole
//! call, body included (`attest::round`).

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
use tonic::{Code, Status};

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
    authority: http::uri::Authority,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    sender: tokio::sync::Mutex<Option<SendRequest<Bytes>>>,
}

impl AgentChannel {
    /// A channel to `host:port` (an IP address, IPv6 without brackets) that checks the server
    /// with `tls` under `server_name`; connecting and each request are bounded by `timeout`.
    /// Fails when `host:port` is not a URI authority.
    pub fn new(
        host: String,
        port: u16,
        server_name: ServerName<'static>,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<AgentChannel, http::uri::InvalidUri> {
        let authority =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let authority = http::uri::Authority::try_from(authority)?;
        let sender = tokio::sync::Mutex::new(None);
        let inner = Inner { host, port, authority, server_name, tls, timeout, sender };
        Ok(AgentChannel { inner: Arc::new(inner) })
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
        // Windows as hyper sets them (a first replay or an event log is megabytes), headers
        // bounded as a reply needs, no server push.
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(2 << 20)
            .initial_connection_window_size(4 << 20)
            .max_header_list_size(16 << 10)
            .enable_push(false)
            .handshake(stream)
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
            .authority(self.authority.clone())
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

/// A stream that breaks while the reply is read: the agent went away (or reset it), which is
/// not an answer. tonic would call an h2 error without a reason code `Unknown`.
fn broken(e: h2::Error) -> Status {
    Status::unavailable(format!("the reply was cut off: {e}"))
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(broken(e)))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(broken(e)))),
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

/// Whether a status means the agent is not there rather than that it refused.
pub(crate) fn is_transport(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
        || (status.code() == Code::Unknown && status.message().contains("transport"))
}

#[cfg(test)]
mod tests {
    use kl_proto::agent::v1 as agent_pb;
    use kl_proto::agent::v1::agent_client::AgentClient;

    use super::*;

    /// A channel over an established HTTP/2 connection.
    fn connected(sender: SendRequest<Bytes>) -> AgentChannel {
        let tls = ClientConfig::builder_with_provider(kl_svc::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let channel = AgentChannel::new(
            "127.0.0.1".to_owned(),
            1,
            ServerName::try_from("keylime-agent").expect("name"),
            Arc::new(tls),
            Duration::from_secs(5),
        )
        .expect("authority");
        *channel.inner.sender.try_lock().expect("unlocked") = Some(sender);
        channel
    }

    #[test]
    fn a_contact_that_is_no_uri_authority_is_refused_up_front() {
        let tls = ClientConfig::builder_with_provider(kl_svc::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from("keylime-agent").expect("name");
        let made = AgentChannel::new(
            "bad host/x".to_owned(),
            9002,
            name,
            Arc::new(tls),
            Duration::from_secs(1),
        );
        assert!(made.is_err());
    }

    /// An agent that goes away in the middle of its reply did not answer: the status is one
    /// the round counts as unreachable, not a refusal that would fail the agent.
    #[tokio::test]
    async fn a_reply_cut_off_after_its_headers_is_a_transport_failure()
    -> Result<(), Box<dyn std::error::Error>> {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let Ok(mut connection) = h2::server::handshake(server_io).await else { return };
            let Some(Ok((_request, mut respond))) = connection.accept().await else { return };
            let Ok(response) =
                http::Response::builder().header("content-type", "application/grpc").body(())
            else {
                return;
            };
            let Ok(mut send) = respond.send_response(response, false) else { return };
            // A gRPC frame header announcing 1000 bytes, then 10 of them, then the connection
            // is dropped.
            let mut data = vec![0u8, 0, 0, 0x03, 0xe8];
            data.extend_from_slice(&[0u8; 10]);
            let _ = send.send_data(Bytes::from(data), false);
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                std::future::poll_fn(|cx| connection.poll_closed(cx)),
            )
            .await;
        });
        let (sender, connection) = h2::client::handshake(client_io).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = AgentClient::new(connected(sender));
        let Err(status) = client.get_quote(agent_pb::GetQuoteRequest::default()).await else {
            return Err("a cut-off reply was accepted".into());
        };
        assert!(is_transport(&status), "reported as a refusal: {status:?}");
        Ok(())
    }
}
