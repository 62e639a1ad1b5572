//! A future that resolves when the process is asked to stop (SIGTERM or SIGINT).

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
}

impl Shutdown {
    /// Installs SIGTERM and SIGINT handlers; must run inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Shutdown {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn wait(mut self) -> StopSignal {
        tokio::select! {
            _ = self.terminate.recv() => StopSignal::Terminate,
            _ = self.interrupt.recv() => StopSignal::Interrupt,
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
}
