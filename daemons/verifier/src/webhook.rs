//! Webhook delivery: every committed event, in cursor order, is POSTed as JSON to
//! `webhook_url` with `X-Keylime-Signature: sha256=<hex HMAC-SHA256(webhook_secret, body)>`
//! and retried with exponential backoff until the receiver answers 2xx. The position delivered
//! up to is stored (cursor `webhook`), so a restart resumes with the first undelivered event.
//!
//! The client is a minimal HTTP/1.1 one over plain TCP (`http://` URLs); put a TLS-terminating
//! proxy in front of an `https://` receiver.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::context::Context;
use crate::convert;

/// Stored position of the webhook worker.
pub(crate) const CURSOR: &str = "webhook";
/// Longest wait between two delivery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Events read from the outbox at a time.
const PAGE: usize = 64;

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("webhook_url {url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| format!("webhook_url {url:?}: bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("webhook_url {url:?}: no host"));
        }
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// `sha256=<hex>` of the body under the secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
}

/// One POST; the status code of the answer.
async fn post(
    target: &Target,
    body: &[u8],
    secret: Option<&str>,
    timeout: Duration,
) -> Result<u16, String> {
    let attempt = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: keylime_verifier\r\n",
            target.path,
            target.host,
            target.port,
            body.len()
        );
        if let Some(secret) = secret {
            head.push_str(&format!("X-Keylime-Signature: {}\r\n", signature(secret, body)));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        stream.write_all(body).await.map_err(|e| format!("send: {e}"))?;
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
        let status =
            line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(
                || format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or("")),
            )?;
        Ok(status)
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| "timed out".to_owned())?
}

/// Delivers events until shutdown.
pub(crate) async fn run(context: Arc<Context>, url: String) {
    let target = match Target::parse(&url) {
        Ok(target) => target,
        Err(e) => {
            tracing::error!(error = %e, "webhooks disabled");
            return;
        }
    };
    let secret = context.config.webhook_secret.clone();
    let mut shutdown = context.shutdown.clone();
    loop {
        if context.is_shutting_down() {
            return;
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
                _ = crate::context::stopped(&mut shutdown) => return,
            }
            continue;
        }
        for event in events {
            let body = convert::event_json(&event).to_string().into_bytes();
            let mut backoff = context.config.retry_interval.max(Duration::from_millis(50));
            loop {
                match post(&target, &body, secret.as_deref(), context.config.request_timeout).await
                {
                    Ok(status) if (200..300).contains(&status) => break,
                    Ok(status) => {
                        tracing::warn!(cursor = event.cursor, status, "webhook refused; retrying")
                    }
                    Err(e) => {
                        tracing::warn!(cursor = event.cursor, error = %e, "webhook failed; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::context::stopped(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
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
    fn urls_parse_and_https_is_refused() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/hook"),
            Ok(Target { host: "127.0.0.1".into(), port: 8080, path: "/hook".into() })
        );
        assert_eq!(
            Target::parse("http://example.org"),
            Ok(Target { host: "example.org".into(), port: 80, path: "/".into() })
        );
        assert!(Target::parse("https://example.org/").is_err());
        assert!(Target::parse("http://h:x/").is_err());
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
