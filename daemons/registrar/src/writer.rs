//! Group commit of activations: one thread owns the writes of new records and stores every
//! activation that arrived while the previous transaction was syncing in one transaction, so a
//! burst of agents costs one disk sync per batch rather than one each.

use std::sync::{Arc, Mutex, PoisonError};

use kl_store::registrar::{Activation, AgentRecord, RegistrarStore};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// Most activations committed together.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Activation, String>>;

/// Hands activations to the writer thread.
#[derive(Debug, Clone)]
pub struct ActivationWriter {
    jobs: mpsc::UnboundedSender<(AgentRecord, Reply)>,
    /// Why the last commit failed; `None` once one succeeds.
    failed: Arc<Mutex<Option<String>>>,
}

impl ActivationWriter {
    /// Starts the writer thread; it ends, releasing its handle on the store, when the last
    /// `ActivationWriter` is dropped.
    pub fn start(
        store: Arc<RegistrarStore>,
    ) -> Result<(ActivationWriter, std::thread::JoinHandle<()>), Error> {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let failed = Arc::new(Mutex::new(None));
        let outcome = failed.clone();
        let thread = std::thread::Builder::new()
            .name("registrar-writer".to_owned())
            .spawn(move || write_batches(&store, receiver, &outcome))
            .map_err(|e| Error::Internal(format!("cannot start the store writer thread: {e}")))?;
        Ok((ActivationWriter { jobs, failed }, thread))
    }

    /// What the last commit came to, without holding the writer open (the thread ends with
    /// the last `ActivationWriter`).
    pub fn commits(&self) -> CommitOutcome {
        CommitOutcome(self.failed.clone())
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

/// What the writer's last commit came to.
#[derive(Debug, Clone)]
pub struct CommitOutcome(Arc<Mutex<Option<String>>>);

impl CommitOutcome {
    /// Why the state store refused the last commit, until one succeeds again.
    pub fn unwritable(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn write_batches(
    store: &RegistrarStore,
    mut receiver: mpsc::UnboundedReceiver<(AgentRecord, Reply)>,
    failed: &Mutex<Option<String>>,
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
        *failed.lock().unwrap_or_else(PoisonError::into_inner) =
            committed.as_ref().err().map(|e| e.to_string());
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
