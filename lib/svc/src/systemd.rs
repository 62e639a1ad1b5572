//! `sd_notify` readiness: a datagram to `$NOTIFY_SOCKET`, when systemd set one.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Errors from sending a notification; each names the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={socket}: {source}")]
    Send { socket: String, source: io::Error },
}

/// Tells systemd the service is ready (`READY=1`). Returns `false` when not run under a
/// `Type=notify` unit (`NOTIFY_SOCKET` unset).
pub fn notify_ready() -> Result<bool, NotifyError> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(socket) if !socket.is_empty() => notify(&socket, "READY=1").map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`) to a notify socket: a path, or an
/// abstract socket name starting with `@`.
pub fn notify(socket: &str, state: &str) -> Result<(), NotifyError> {
    let err = |source| NotifyError::Send { socket: socket.to_owned(), source };
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?,
        None => SocketAddr::from_pathname(socket).map_err(err)?,
    };
    let sender = UnixDatagram::unbound().map_err(err)?;
    let sent = sender.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
    if sent != state.len() {
        return Err(err(io::Error::new(io::ErrorKind::WriteZero, "short datagram")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_datagram_reaches_a_path_socket() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path)?;
        notify(&path.to_string_lossy(), "READY=1")?;
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1");
        Ok(())
    }

    #[test]
    fn ready_datagram_reaches_an_abstract_socket() -> Result<(), Box<dyn std::error::Error>> {
        let name = format!("kl-svc-test-{}", std::process::id());
        let receiver = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        notify(&format!("@{name}"), "READY=1")?;
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1");
        Ok(())
    }

    #[test]
    fn missing_socket_is_named() {
        let err = notify("/nonexistent/notify", "READY=1").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("NOTIFY_SOCKET=/nonexistent/notify: ")));
    }
}
