//! Webhook delivery: every committed event, in cursor order, is POSTed as JSON to
//! `webhook_url` with `X-Keylime-Signature: sha256=<hex HMAC-SHA256(webhook_secret, body)>`
//! and retried with exponential backoff until the receiver answers 2xx. The position delivered
//! up to is stored (cursor `webhook`), so a restart resumes with the first undelivered event.
//!
//! The client is a minimal HTTP/1.1 one, one connection per delivery, over TCP (`http://`) or
//! TLS 1.2/1.3 (`https://`), the receiver's certificate checked against `webhook_ca` or, unset,
//! the system's trust store and the deployment CA.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::context::Context;
use crate::tasks::stopped;
use crate::{convert, lease};

/// Stored position of the webhook worker.
pub(crate) const CURSOR: &str = "webhook";
/// Longest wait between two delivery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Events read from the outbox at a time.
const PAGE: usize = 64;

/// A parsed `http://` or `https://` `host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub tls: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, true, 443)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, false, 80)
        } else {
            return Err(format!("webhook_url {url:?}: not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| format!("webhook_url {url:?}: bad port {p:?}"))?)
            }
            _ => (authority, default_port),
        };
        if host.is_empty() {
            return Err(format!("webhook_url {url:?}: no host"));
        }
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "webhook_url {url:?}: spaces and control characters are not allowed"
            ));
        }
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            path: path.to_owned(),
            tls,
        })
    }
}

/// How deliveries reach the receiver.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    target: Target,
    /// For `https://`: the TLS settings and the name the certificate must carry.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl Client {
    /// The client for `url`, with its TLS settings; fails on a URL or CA file that cannot
    /// be used (the verifier then refuses to start).
    pub fn new(context: &Context, url: &str) -> Result<Client, String> {
        let target = Target::parse(url)?;
        if !target.tls {
            return Ok(Client { target, tls: None });
        }
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| format!("webhook_url {url:?}: host is not a DNS name or IP: {e}"))?;
        let mut roots = RootCertStore::empty();
        match &context.config.webhook_ca {
            Some(path) => {
                let certs =
                    kl_svc::tls::read_certificates(path).map_err(|e| format!("webhook_ca: {e}"))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| format!("webhook_ca {}: {e}", path.display()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    tracing::warn!(error = %e, "webhook: reading the system trust store");
                }
                let (added, _) = roots.add_parsable_certificates(native.certs);
                tracing::debug!(added, "webhook: system trust anchors");
                for cert in &context.ca_certificates {
                    roots.add(cert.clone()).map_err(|e| format!("deployment CA: {e}"))?;
                }
            }
        }
        let mut config = ClientConfig::builder_with_provider(kl_svc::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client { target, tls: Some((Arc::new(config), name)) })
    }

    /// One POST; the status code of the answer.
    async fn post(
        &self,
        body: &[u8],
        secret: Option<&str>,
        timeout: Duration,
    ) -> Result<u16, String> {
        let target = &self.target;
        let attempt = async {
            let head = request_head(target, body, secret);
            match &self.tls {
                None => {
                    let stream = TcpStream::connect((target.host.as_str(), target.port))
                        .await
                        .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
                    exchange(stream, &head, body).await
                }
                Some((config, name)) => {
                    let stream = kl_svc::tls::connect(
                        &target.host,
                        target.port,
                        name.clone(),
                        config.clone(),
                    )
                    .await
                    .map_err(|e| format!("TLS connect: {e}"))?;
                    exchange(stream, &head, body).await
                }
            }
        };
        tokio::time::timeout(timeout, attempt).await.map_err(|_| "timed out".to_owned())?
    }
}

fn request_head(target: &Target, body: &[u8], secret: Option<&str>) -> String {
    let host =
        if target.host.contains(':') { format!("[{}]", target.host) } else { target.host.clone() };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: keylime_verifier\r\n",
        target.path,
        target.port,
        body.len()
    );
    if let Some(secret) = secret {
        head.push_str(&format!("X-Keylime-Signature: {}\r\n", signature(secret, body)));
    }
    head.push_str("\r\n");
    head
}

/// Sends the request and reads the status line of the answer.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    head: &str,
    body: &[u8],
) -> Result<u16, String> {
    stream.write_all(head.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    stream.write_all(body).await.map_err(|e| format!("send: {e}"))?;
    stream.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        let n = stream.read(&mut buffer).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or("")))
}

/// `sha256=<hex>` of the body under the secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
}

/// Delivers events until shutdown.
pub(crate) async fn run(context: Arc<Context>, client: Client) {
    let secret = context.config.webhook_secret.clone();
    let mut shutdown = context.tasks.shutdown();
    loop {
        if context.tasks.is_shutting_down() {
            return;
        }
        if context.replica.as_ref().is_some_and(|r| !r.has_duty(lease::WEBHOOK)) {
            // Another replica delivers (one at a time, so each event once).
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped(&mut shutdown) => return,
            }
            continue;
        }
        let delivered = match context.store.cursor(CURSOR) {
            Ok(c) => c.unwrap_or(0),
            Err(e) => {
                tracing::error!(error = %e, "webhook: reading the delivery cursor");
                0
            }
        };
        let events = context.store.events_after(delivered, PAGE).unwrap_or_else(|e| {
            tracing::error!(error = %e, "webhook: reading the outbox");
            Vec::new()
        });
        if events.is_empty() {
            tokio::select! {
                _ = context.events.committed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stopped(&mut shutdown) => return,
            }
            continue;
        }
        'events: for event in events {
            if context.replica.as_ref().is_some_and(|r| !r.has_duty(lease::WEBHOOK)) {
                break;
            }
            let body = convert::event_json(&event).to_string().into_bytes();
            let mut backoff = context.config.retry_interval.max(Duration::from_millis(50));
            loop {
                match client.post(&body, secret.as_deref(), context.config.request_timeout).await {
                    Ok(status) if (200..300).contains(&status) => {
                        context.metrics.webhooks_delivered.inc();
                        break;
                    }
                    Ok(status) => {
                        context.metrics.webhook_attempts_failed.inc();
                        tracing::warn!(cursor = event.cursor, status, "webhook refused; retrying")
                    }
                    Err(e) => {
                        context.metrics.webhook_attempts_failed.inc();
                        tracing::warn!(cursor = event.cursor, error = %e, "webhook failed; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if context.replica.as_ref().is_some_and(|r| !r.has_duty(lease::WEBHOOK)) {
                    // Another replica delivers now, from the stored cursor.
                    break 'events;
                }
            }
            if let Err(e) = context.store.set_cursor(CURSOR, event.cursor) {
                tracing::error!(error = %e, "webhook: storing the delivery cursor");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_default_ports() {
        let target = |host: &str, port, path: &str, tls| Target {
            host: host.into(),
            port,
            path: path.into(),
            tls,
        };
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/hook"),
            Ok(target("127.0.0.1", 8080, "/hook", false))
        );
        assert_eq!(Target::parse("http://example.org"), Ok(target("example.org", 80, "/", false)));
        assert_eq!(
            Target::parse("https://example.org/a?b"),
            Ok(target("example.org", 443, "/a?b", true))
        );
        assert_eq!(Target::parse("https://[::1]:8443/"), Ok(target("::1", 8443, "/", true)));
        assert!(Target::parse("ftp://example.org/").is_err());
        assert!(Target::parse("http://h:x/").is_err());
        assert!(Target::parse("http://h/a\r\nX-Injected: 1").is_err());
        let v6 = Target::parse("https://[::1]:8443/").map(|t| request_head(&t, b"{}", None));
        assert!(v6.is_ok_and(|head| head.contains("\r\nHost: [::1]:8443\r\n")));
    }

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
