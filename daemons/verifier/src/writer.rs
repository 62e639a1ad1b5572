//! Group commit of attestation state: one thread owns the writes of agents, history and
//! events, and commits whatever arrived while the previous transaction was syncing as one
//! transaction, so a fleet's rounds cost one disk sync per batch rather than one each. Events
//! are published (watchers, webhook worker) only once committed.

use std::sync::Arc;

use kl_store::verifier::{Batch, EventRecord, VerifierStore};
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::events::EventHub;

/// Most jobs merged into one transaction.
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<Vec<EventRecord>, String>>;

/// Hands batches to the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct StateWriter {
    jobs: mpsc::UnboundedSender<(Batch, Option<Reply>)>,
}

impl StateWriter {
    /// Starts the writer thread; it ends, after committing everything queued, when the last
    /// `StateWriter` is dropped.
    pub fn start(
        store: Arc<VerifierStore>,
        hub: EventHub,
        history_max_entries: u64,
    ) -> Result<(StateWriter, std::thread::JoinHandle<()>), Error> {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("verifier-writer".to_owned())
            .spawn(move || write_batches(&store, &hub, history_max_entries, receiver))
            .map_err(|e| Error::Internal(format!("cannot start the store writer thread: {e}")))?;
        Ok((StateWriter { jobs }, thread))
    }

    /// Queues `batch` without waiting for it to be durable (attestation rounds).
    pub fn submit(&self, batch: Batch) {
        if self.jobs.send((batch, None)).is_err() {
            tracing::error!("the store writer has stopped; a state update is lost");
        }
    }

    /// Queues `batch` and waits until it is committed; returns its events with their
    /// cursors.
    pub async fn commit(&self, batch: Batch) -> Result<Vec<EventRecord>, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((batch, Some(reply)))
            .map_err(|_| Error::Internal("the store writer has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the store writer has stopped".to_owned()))?
            .map_err(Error::Internal)
    }
}

fn write_batches(
    store: &VerifierStore,
    hub: &EventHub,
    history_max_entries: u64,
    mut receiver: mpsc::UnboundedReceiver<(Batch, Option<Reply>)>,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Each job's reply with the number of events it adds, in commit order.
        let mut replies: Vec<(usize, Option<Reply>)> = Vec::with_capacity(jobs.len());
        let mut batch = Batch::default();
        for (job, reply) in jobs {
            replies.push((job.events.len(), reply));
            batch.extend(job);
        }
        match store.commit(batch, history_max_entries) {
            Ok(events) => {
                let mut rest = events.as_slice();
                for (count, reply) in replies {
                    let (own, after) = rest.split_at(count.min(rest.len()));
                    rest = after;
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(own.to_vec()));
                    }
                }
                hub.publish(events);
            }
            Err(e) => {
                let message = format!("state store: {e}");
                tracing::error!(error = %message, "committing attestation state failed");
                for (_, reply) in replies.into_iter() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kl_store::verifier::{EventRecord, Timestamp};

    use super::*;

    fn event(n: u64) -> EventRecord {
        EventRecord {
            cursor: 0,
            at: Timestamp::now(),
            kind: 3,
            agent_id: format!("agent-{n}"),
            state: 2,
            previous_state: 1,
            findings_json: String::new(),
            message: String::new(),
        }
    }

    #[tokio::test]
    async fn merged_jobs_each_get_their_own_events_and_everything_is_published() -> Result<(), Error>
    {
        let dir = tempfile::tempdir().map_err(|e| Error::Internal(e.to_string()))?;
        let store = Arc::new(VerifierStore::open(&dir.path().join("verifier.redb"))?);
        let hub = EventHub::new();
        let mut live = hub.subscribe();
        let (writer, thread) = StateWriter::start(store.clone(), hub, 10)?;
        for n in 0..50 {
            writer.submit(Batch { events: vec![event(n)], ..Batch::default() });
        }
        let own = writer
            .commit(Batch { events: vec![event(100), event(101)], ..Batch::default() })
            .await?;
        assert_eq!(
            own.iter().map(|e| e.agent_id.as_str()).collect::<Vec<_>>(),
            ["agent-100", "agent-101"]
        );
        assert_eq!(own.iter().map(|e| e.cursor).collect::<Vec<_>>(), [51, 52]);
        for expected in 1..=52 {
            let published = live.recv().await.map_err(|e| Error::Internal(e.to_string()))?;
            assert_eq!(published.cursor, expected);
        }
        drop(writer);
        thread.join().map_err(|_| Error::Internal("writer panicked".into()))?;
        assert_eq!(store.last_event()?, 52);
        Ok(())
    }
}
