//! The agent's health: SERVING while the TPM answers a PCR read of the configured bank within
//! [`TPM_PROBE_TIMEOUT`], NOT_SERVING (with the TPM's error) while it does not.
//!
//! A TPM call cannot be cancelled: a probe that timed out keeps its blocking thread until the
//! TPM answers. So a new probe starts only once the previous one has returned, and until then
//! the agent reports NOT_SERVING; a hung TPM holds one thread, not one more every tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a PCR read may take before the TPM counts as not answering.
pub(crate) const TPM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking probe run on the blocking pool, never more than one at a time.
pub(crate) struct OneAtATime<F> {
    probe: Arc<F>,
    outstanding: Arc<AtomicBool>,
    timeout: Duration,
}

impl<F, E> OneAtATime<F>
where
    F: Fn() -> Result<(), E> + Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
{
    pub(crate) fn new(probe: F, timeout: Duration) -> Self {
        OneAtATime {
            probe: Arc::new(probe),
            outstanding: Arc::new(AtomicBool::new(false)),
            timeout,
        }
    }

    /// Runs the probe unless the previous run has not returned yet; `Err` says why the
    /// probed thing is not healthy.
    pub(crate) async fn run(&self) -> Result<(), String> {
        if self.outstanding.swap(true, Ordering::AcqRel) {
            return Err(format!(
                "no answer yet to a probe started more than {:?} ago",
                self.timeout
            ));
        }
        let (answer, answered) = oneshot::channel();
        let (probe, outstanding) = (self.probe.clone(), self.outstanding.clone());
        tokio::task::spawn_blocking(move || {
            let outcome = probe().map_err(|e| e.to_string());
            outstanding.store(false, Ordering::Release);
            let _ = answer.send(outcome);
        });
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err("the probe thread ended without an answer".to_owned()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn a_hung_probe_is_not_started_again_until_it_returns() {
        let started = Arc::new(AtomicUsize::new(0));
        let (release, hang) = std::sync::mpsc::channel::<()>();
        let hang = Mutex::new(hang);
        let probe = OneAtATime::new(
            {
                let started = started.clone();
                move || -> Result<(), String> {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = hang.lock().map(|h| h.recv());
                    Ok(())
                }
            },
            Duration::from_millis(50),
        );
        let Err(first) = probe.run().await else { panic!("a hung probe answered") };
        assert!(first.starts_with("no answer within"), "{first}");
        for _ in 0..5 {
            let Err(again) = probe.run().await else { panic!("a hung probe answered") };
            assert!(again.starts_with("no answer yet to a probe"), "{again}");
        }
        assert_eq!(started.load(Ordering::SeqCst), 1, "one thread blocked, not one per tick");
        release.send(()).expect("the probe is waiting");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while probe.outstanding.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "the probe never returned");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.send(()).expect("the probe thread lives");
        assert_eq!(probe.run().await, Ok(()));
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }
}
