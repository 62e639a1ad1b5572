//! Group commit of activations: one thread owns the writes of new records and stores every
//! activation that arrived while the previous transaction was syncing in one transaction, so a
//! burst of agents costs one disk sync per batch rather than one each.
//!
//! After a failed write (a full disk) redb refuses every later operation on the store's
//! handle, so the store stays unwritable until it is opened again: [`CommitOutcome::recover`]
//! does that once the file system takes writes again, backing off while it keeps failing.
//! Activations are not held meanwhile: the agent registers again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kl_store::registrar::{Activation, AgentRecord, RegistrarStore};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// Most activations committed together.
const MAX_BATCH: usize = 256;
/// The first wait before opening an unwritable store again, doubled up to [`MAX_RETRY`].
const RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

type Reply = oneshot::Sender<Result<Activation, String>>;

/// Hands activations to the writer thread.
#[derive(Debug, Clone)]
pub struct ActivationWriter {
    jobs: mpsc::UnboundedSender<(AgentRecord, Reply)>,
    outcome: CommitOutcome,
}

impl ActivationWriter {
    /// Starts the writer thread; it ends, releasing its handle on the store, when the last
    /// `ActivationWriter` is dropped.
    pub fn start(
        store: Arc<RegistrarStore>,
    ) -> Result<(ActivationWriter, std::thread::JoinHandle<()>), Error> {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let outcome = CommitOutcome {
            store: store.clone(),
            failure: Arc::new(Mutex::new(Failure::default())),
        };
        let thread_outcome = outcome.clone();
        let thread = std::thread::Builder::new()
            .name("registrar-writer".to_owned())
            .spawn(move || write_batches(&store, receiver, &thread_outcome))
            .map_err(|e| Error::Internal(format!("cannot start the store writer thread: {e}")))?;
        Ok((ActivationWriter { jobs, outcome }, thread))
    }

    /// What the last commit came to, without holding the writer open (the thread ends with
    /// the last `ActivationWriter`).
    pub fn commits(&self) -> CommitOutcome {
        self.outcome.clone()
    }

    /// Stores `record` as [`RegistrarStore::activate`] does, batched with concurrent calls.
    pub async fn activate(&self, record: AgentRecord) -> Result<Activation, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((record, reply))
            .map_err(|_| Error::Internal("the store writer has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the store writer has stopped".to_owned()))?
            .map_err(Error::Internal)
    }
}

/// What the last write to the store came to, and the way back from a failed one.
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    store: Arc<RegistrarStore>,
    failure: Arc<Mutex<Failure>>,
}

#[derive(Debug, Default)]
struct Failure {
    /// Why the last write failed; `None` once the store takes writes again.
    reason: Option<String>,
    /// When to try opening the store again, and the wait after that.
    next_try: Option<Instant>,
    backoff: Duration,
}

impl CommitOutcome {
    /// Why the state store refused the last write, until it takes writes again.
    pub fn unwritable(&self) -> Option<String> {
        self.lock().reason.clone()
    }

    /// Notes what a write (a commit, a delete) came to.
    pub fn record(&self, result: Result<(), &kl_store::StoreError>) {
        let mut failure = self.lock();
        match result {
            Ok(()) => *failure = Failure::default(),
            Err(e) if e.is_io() => {
                if failure.reason.is_none() {
                    tracing::error!(error = %e, "the state store cannot be written");
                    failure.backoff = RETRY;
                    failure.next_try = Some(Instant::now() + RETRY);
                }
                failure.reason = Some(e.to_string());
            }
            Err(_) => {}
        }
    }

    /// After a failed write, opens the store again once its file system takes writes and the
    /// backoff has passed. Blocking.
    pub fn recover(&self) {
        {
            let failure = self.lock();
            if failure.reason.is_none() || failure.next_try.is_some_and(|t| Instant::now() < t) {
                return;
            }
        }
        let reopened = self.store.space_returned().then(|| self.store.reopen());
        let mut failure = self.lock();
        match reopened {
            Some(Ok(())) => {
                tracing::info!(
                    store = %self.store.location(),
                    "the state store can be written again"
                );
                *failure = Failure::default();
            }
            // Still no room, or the file did not open: the reason stays the write's.
            failed => {
                if let Some(Err(e)) = failed {
                    tracing::warn!(error = %e, "opening the state store again failed");
                }
                failure.backoff = (failure.backoff * 2).clamp(RETRY, MAX_RETRY);
                failure.next_try = Some(Instant::now() + failure.backoff);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failure> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn write_batches(
    store: &RegistrarStore,
    mut receiver: mpsc::UnboundedReceiver<(AgentRecord, Reply)>,
    outcome: &CommitOutcome,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (records, replies): (Vec<AgentRecord>, Vec<Reply>) = batch.into_iter().unzip();
        let committed = store.activate_many(records);
        outcome.record(committed.as_ref().map(drop));
        match committed {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let message = format!("state store: {e}");
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}
