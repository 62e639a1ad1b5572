//! Prometheus metrics: counters and histograms a daemon updates with atomic operations on its
//! hot paths, written out in the Prometheus text exposition format (version 0.0.4), and a small
//! HTTP endpoint serving `GET /metrics` on the optional metrics port.
//!
//! The endpoint speaks just enough HTTP/1.1 for a scraper: one request per connection, the
//! request head read with a size and time limit, anything but `GET /metrics` answered 404.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Calls per (RPC, gRPC status code), for daemons whose calls are counted but not timed.
#[derive(Debug, Default)]
pub struct CallCounts {
    calls: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl CallCounts {
    /// Counts a call of `rpc` that ended with `code`.
    pub fn count(&self, rpc: &'static str, code: tonic::Code) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((rpc, code_name(code))).or_default() += 1;
        }
    }

    /// Writes the counts as the counter family `name` with labels `rpc` and `code`.
    pub fn write(&self, exposition: &mut Exposition, name: &str, help: &str) {
        let calls = self.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let labels: Vec<[(&str, &str); 2]> =
            calls.keys().map(|(rpc, code)| [("rpc", *rpc), ("code", *code)]).collect();
        let samples: Vec<(&[(&str, &str)], u64)> =
            labels.iter().zip(calls.values()).map(|(l, n)| (l.as_slice(), *n)).collect();
        exposition.counter(name, help, &samples);
    }
}

/// The canonical name of a gRPC status code (`NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The reply of a call, counted in `calls` under `rpc`.
pub fn counted<T>(
    calls: &CallCounts,
    rpc: &'static str,
    result: Result<T, tonic::Status>,
) -> Result<tonic::Response<T>, tonic::Status> {
    calls.count(rpc, result.as_ref().map_or_else(tonic::Status::code, |_| tonic::Code::Ok));
    result.map(tonic::Response::new)
}

/// A distribution of durations over fixed buckets (upper bounds in seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let slot = self.bounds.iter().position(|&b| seconds <= b).unwrap_or(self.bounds.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Bounds for durations from 100 µs to 10 s.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

/// Text in the exposition format, one metric family after another.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A counter family: `samples` are (labels, value).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        self.header(name, help, "counter");
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }

    /// A gauge family: `samples` are (labels, value).
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        self.header(name, help, "gauge");
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }

    /// A histogram without labels.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, help, "histogram");
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, count) in histogram.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = histogram.bounds.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Produces the exposition text of one scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// The metrics endpoint, bound.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
}

/// Longest a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST: usize = 8192;
/// Scrapes answered at once; connections beyond are closed at once.
const MAX_CONNECTIONS: usize = 16;

impl MetricsListener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<MetricsListener> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("metrics endpoint {addr}: {e}")))?;
        Ok(MetricsListener { listener })
    }

    /// Binds `ip:port` when a port is configured (`metrics_port`); the error names the address.
    pub async fn bind_configured(
        ip: std::net::IpAddr,
        port: Option<u16>,
    ) -> Result<Option<MetricsListener>, (SocketAddr, std::io::Error)> {
        let Some(port) = port else { return Ok(None) };
        let address = SocketAddr::new(ip, port);
        MetricsListener::bind(address).await.map(Some).map_err(|e| (address, e))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes, at most [`MAX_CONNECTIONS`] at a time, until `stop` resolves; scrapes
    /// in progress then end too.
    pub async fn serve(self, render: Render, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut answering = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut stop => {
                    answering.abort_all();
                    return;
                }
            };
            while answering.try_join_next().is_some() {}
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let render = render.clone();
            answering.spawn(async move {
                answer(stream, render).await;
                drop(permit);
            });
        }
    }
}

async fn answer(mut stream: TcpStream, render: Render) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, content_type, body) = if method == Some(b"GET") && path == Some(b"/metrics") {
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render().await)
    } else {
        ("404 Not Found", "text/plain; charset=utf-8", "only GET /metrics is served\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let mut e = Exposition::new();
        e.histogram("round_seconds", "Round duration.", &h);
        let text = e.finish();
        assert!(text.contains("# TYPE round_seconds histogram\n"), "{text}");
        assert!(text.contains("round_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("round_seconds_bucket{le=\"0.01\"} 2\n"), "{text}");
        assert!(text.contains("round_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("round_seconds_sum 2.0055\n"), "{text}");
        assert!(text.contains("round_seconds_count 3\n"), "{text}");
    }

    #[test]
    fn labels_are_escaped() {
        let mut e = Exposition::new();
        e.counter("c_total", "A count.", &[(&[("path", "a\"b\\c\nd")], 7)]);
        assert!(e.finish().contains("c_total{path=\"a\\\"b\\\\c\\nd\"} 7\n"));
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_nothing_else() -> Result<(), Box<dyn std::error::Error>>
    {
        let listener = MetricsListener::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let counter = Arc::new(Counter::default());
        counter.add(3);
        let seen = counter.clone();
        let render: Render = Arc::new(move || {
            let value = seen.get();
            Box::pin(async move {
                let mut e = Exposition::new();
                e.counter("things_total", "Things.", &[(&[], value)]);
                e.finish()
            })
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(render, async {
            let _ = stopped.await;
        }));
        let get = |request: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok::<String, std::io::Error>(answer)
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.ends_with(
                "# HELP things_total Things.\n# TYPE things_total counter\nthings_total 3\n"
            ),
            "{ok}"
        );
        let other = get("GET / HTTP/1.1\r\n\r\n").await?;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get("POST /metrics HTTP/1.1\r\n\r\n").await?;
        assert!(post.starts_with("HTTP/1.1 404"), "{post}");
        let _ = stop.send(());
        server.await?;
        Ok(())
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_limit_are_closed() -> Result<(), Box<dyn std::error::Error>>
    {
        let listener = MetricsListener::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let render: Render = Arc::new(|| Box::pin(async { String::new() }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(render, async {
            let _ = stopped.await;
        }));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await?);
        }
        // Give the server time to accept the idle ones, then one more is closed unanswered.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = TcpStream::connect(addr).await?;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(REQUEST_TIMEOUT / 2, extra.read_to_end(&mut answer)).await;
        assert!(matches!(read, Ok(Ok(0))), "the extra connection was kept: {read:?}");
        drop(idle);
        let _ = stop.send(());
        server.await?;
        Ok(())
    }
}
