//! A future that resolves when the process is asked to stop (SIGTERM or SIGINT), and what
//! SIGHUP does meanwhile: by default it is logged and ignored (a daemon is never ended by
//! it); a daemon with something to reload passes its own action.

use std::fmt;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Terminate,
    Interrupt,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Interrupt => "SIGINT",
        })
    }
}

/// Signal handlers, installed when created so no signal between start-up and the first
/// `wait` is lost.
#[derive(Debug)]
pub struct Shutdown {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Shutdown {
    /// Installs SIGTERM, SIGINT and SIGHUP handlers; must run inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Shutdown {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT; a SIGHUP meanwhile is logged and ignored.
    pub async fn wait(self) -> StopSignal {
        self.wait_reloading(|| {
            tracing::info!(
                "SIGHUP: nothing to reload in this daemon; restart it to apply configuration changes"
            )
        })
        .await
    }

    /// Resolves on the next SIGTERM or SIGINT, running `reload` on each SIGHUP meanwhile.
    pub async fn wait_reloading(mut self, mut reload: impl FnMut()) -> StopSignal {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return StopSignal::Terminate,
                _ = self.interrupt.recv() => return StopSignal::Interrupt,
                _ = self.hangup.recv() => reload(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sigterm_resolves_the_future() -> Result<(), Box<dyn std::error::Error>> {
        let shutdown = Shutdown::install()?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()?;
        assert!(status.success());
        let got = tokio::time::timeout(Duration::from_secs(10), shutdown.wait()).await?;
        assert_eq!(got, StopSignal::Terminate);
        Ok(())
    }

    #[tokio::test]
    async fn sighup_reloads_and_does_not_stop() -> Result<(), Box<dyn std::error::Error>> {
        let shutdown = Shutdown::install()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiting = tokio::spawn(shutdown.wait_reloading(move || {
            let _ = tx.send(());
        }));
        let kill = |sig: &str| {
            std::process::Command::new("kill").args([sig, &std::process::id().to_string()]).status()
        };
        assert!(kill("-HUP")?.success());
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.ok_or("no reload")?;
        assert!(!waiting.is_finished(), "SIGHUP does not stop the process");
        assert!(kill("-INT")?.success());
        let got = tokio::time::timeout(Duration::from_secs(10), waiting).await??;
        assert_eq!(got, StopSignal::Interrupt);
        Ok(())
    }
}
