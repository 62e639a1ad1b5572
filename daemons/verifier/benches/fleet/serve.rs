//! One listening socket for the whole fleet. It is bound to the wildcard address on one port, and
//! each agent registers its own loopback address with that port (Linux routes all of 127.0.0.0/8
//! to loopback): the local address of an accepted connection names the agent, whose TLS identity
//! and Agent service then serve that connection. The verifier pins each agent's certificate
//! under one server name, so SNI could not tell the agents apart. The simulator holds one
//! descriptor per connected agent, not a listening socket per agent besides.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::agent::{Machine, agent_server};

/// How long a peer may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The loopback address agent `index` is reached at: 127.0.0.0/8 counted from 127.0.0.1, with
/// last octets 1 to 254 only (no .0 or .255).
pub fn contact_ip(index: usize) -> Ipv4Addr {
    let (high, low) = (index / 254, index % 254);
    let [_, _, a, b] = (high as u32).to_be_bytes();
    Ipv4Addr::new(127, a, b, low as u8 + 1)
}

/// Serves one accepted connection: TLS handshake, then the agent's service until it closes.
type Serve = Arc<dyn Fn(TcpStream, Arc<Dropped>) -> BoxFuture + Send + Sync>;
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Connections dropped before they reached an agent.
#[derive(Default)]
struct Dropped {
    accept_errors: AtomicU64,
    unknown_address: AtomicU64,
    handshake_failed: AtomicU64,
    handshake_timed_out: AtomicU64,
}

/// The fleet's listener and accept loop.
pub struct FleetServer {
    port: u16,
    agents: Arc<RwLock<HashMap<IpAddr, Serve>>>,
    dropped: Arc<Dropped>,
    accept_task: JoinHandle<()>,
}

impl FleetServer {
    /// Binds 0.0.0.0 on a free port and starts accepting.
    pub async fn bind() -> std::io::Result<FleetServer> {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
        let port = listener.local_addr()?.port();
        let agents = Arc::new(RwLock::new(HashMap::new()));
        let dropped = Arc::new(Dropped::default());
        let accept_task = tokio::spawn(accept_loop(listener, agents.clone(), dropped.clone()));
        Ok(FleetServer { port, agents, dropped, accept_task })
    }

    /// The port every agent is reached on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves `machine` to connections made to `ip`, with the TLS server `config` built from
    /// its identity.
    pub fn add(&self, ip: IpAddr, machine: Arc<Mutex<Machine>>, config: rustls::ServerConfig) {
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let service = TowerToHyperService::new(agent_server(machine));
        let serve: Serve = Arc::new(move |tcp, dropped| {
            let (acceptor, service) = (acceptor.clone(), service.clone());
            Box::pin(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(_)) => {
                        dropped.handshake_failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        dropped.handshake_timed_out.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                // The verifier keeps the connection open and sends its requests over it.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            })
        });
        self.agents.write().unwrap_or_else(|e| e.into_inner()).insert(ip, serve);
    }

    /// The connections dropped so far, by reason; `None` when there were none.
    pub fn dropped(&self) -> Option<String> {
        let d = &self.dropped;
        let counts = [
            ("accept errors", d.accept_errors.load(Ordering::Relaxed)),
            ("unknown local address", d.unknown_address.load(Ordering::Relaxed)),
            ("TLS handshake failed", d.handshake_failed.load(Ordering::Relaxed)),
            ("TLS handshake timed out", d.handshake_timed_out.load(Ordering::Relaxed)),
        ];
        let parts: Vec<String> =
            counts.iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{what}: {n}")).collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

impl Drop for FleetServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    agents: Arc<RwLock<HashMap<IpAddr, Serve>>>,
    dropped: Arc<Dropped>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            Err(_) => {
                // Out of descriptors and the like: back off instead of spinning.
                dropped.accept_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let serve = tcp.local_addr().ok().and_then(|local| {
            agents.read().unwrap_or_else(|e| e.into_inner()).get(&local.ip()).cloned()
        });
        let Some(serve) = serve else {
            dropped.unknown_address.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(serve(tcp, dropped.clone()));
    }
}
