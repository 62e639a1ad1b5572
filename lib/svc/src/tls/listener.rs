//! A TCP listener that runs TLS handshakes concurrently and yields established streams, for
//! `tonic`'s `serve_with_incoming` (which then exposes the client certificates to handlers).
//!
//! Each handshake runs in its own task under a deadline, so a client that connects and stalls
//! holds up nobody; failed handshakes are logged and dropped, never yielded, so they cannot end
//! the server's accept loop.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Established connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// Accepted TLS connections, as a stream. Dropping it stops accepting and frees the port.
#[derive(Debug)]
pub struct TlsIncoming {
    local_addr: SocketAddr,
    established: mpsc::Receiver<TlsStream<TcpStream>>,
    accept_task: JoinHandle<()>,
}

impl TlsIncoming {
    /// Binds `addr` (port 0 picks a free port) and starts accepting.
    pub async fn bind(
        addr: SocketAddr,
        config: Arc<ServerConfig>,
        handshake_timeout: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (sender, established) = mpsc::channel(BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        let accept_task = tokio::spawn(accept_loop(listener, acceptor, sender, handshake_timeout));
        Ok(TlsIncoming { local_addr, established, accept_task })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<TlsStream<TcpStream>>,
    handshake_timeout: Duration,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if sender.is_closed() {
            return;
        }
        let (acceptor, sender) = (acceptor.clone(), sender.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = sender.send(tls).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl futures_core::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.established.poll_recv(cx).map(|next| next.map(Ok))
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::tls::{
        ClientAuth, ServerTrust, TlsFiles, client_config, ensure_generated, role_of, server_config,
    };

    use futures_core::Stream;

    async fn next(incoming: &mut TlsIncoming) -> Option<std::io::Result<TlsStream<TcpStream>>> {
        poll_fn(|cx| Pin::new(&mut *incoming).poll_next(cx)).await
    }

    #[tokio::test]
    async fn stalled_and_failed_handshakes_do_not_block_good_clients()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let tls = TlsFiles::new(dir.path());
        ensure_generated(&tls, &[])?;
        let cas = tls.ca_certificates()?;
        let server = server_config(tls.server_identity()?, &cas, ClientAuth::Required)?;
        let addr: SocketAddr = "127.0.0.1:0".parse()?;
        let mut incoming =
            TlsIncoming::bind(addr, Arc::new(server), Duration::from_secs(30)).await?;
        let port = incoming.local_addr().port();

        // A client that connects and never speaks, and one without a certificate.
        let _stalled = TcpStream::connect(("127.0.0.1", port)).await?;
        let anonymous =
            TlsConnector::from(Arc::new(client_config(&ServerTrust::Ca(cas.clone()), None)?));
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let _refused = anonymous.connect("localhost".try_into()?, tcp).await;

        let admin = TlsConnector::from(Arc::new(client_config(
            &ServerTrust::Ca(cas),
            Some(tls.client_identity()?),
        )?));
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let client = tokio::spawn(async move {
            let mut stream = admin.connect("localhost".try_into()?, tcp).await?;
            let mut reply = [0u8; 2];
            stream.read_exact(&mut reply).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(reply)
        });

        let accepted = tokio::time::timeout(Duration::from_secs(10), next(&mut incoming)).await?;
        let mut stream = accepted.ok_or("stream ended")??;
        let role =
            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| role_of(c));
        assert_eq!(role.transpose()?.flatten(), Some(crate::tls::Role::Admin));
        stream.write_all(b"ok").await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), client).await??;
        assert_eq!(reply.map_err(|e| e.to_string())?, *b"ok");
        Ok(())
    }
}
