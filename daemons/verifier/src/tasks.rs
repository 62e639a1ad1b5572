//! The verifier's background work (attestation loops, notices, webhook delivery, event
//! streams) and the signal that ends it: shutdown waits for every task spawned here. And
//! [`blocking`], how async code calls the store.

use std::sync::Mutex;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Background tasks and the shutdown signal.
#[derive(Debug)]
pub(crate) struct Tasks {
    shutdown: watch::Receiver<bool>,
    set: Mutex<JoinSet<()>>,
}

impl Tasks {
    pub fn new(shutdown: watch::Receiver<bool>) -> Tasks {
        Tasks { shutdown, set: Mutex::new(JoinSet::new()) }
    }

    /// A receiver of the shutdown signal, for [`stopped`].
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs `task` until it ends; shutdown waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut tasks) = self.set.lock() {
            // Reap finished tasks so the set stays as large as the work in progress.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    /// The tasks still running, for shutdown to wait for.
    pub fn take(&self) -> JoinSet<()> {
        match self.set.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => JoinSet::new(),
        }
    }
}

/// Runs a store call on the blocking pool (every store call blocks), as the verifier's error.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, kl_store::StoreError> + Send + 'static,
) -> Result<T, crate::Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| crate::Error::Internal(format!("store task: {e}")))?
        .map_err(crate::Error::from)
}

/// Resolves once the verifier is shutting down.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
