//! Group commit of attestation state: one thread owns the writes of agents, history and
//! events and commits what has queued up as one transaction, so a fleet's rounds cost one disk
//! sync per batch rather than one each.
//!
//! Routine writes (a passed round's state and history record) wait up to [`LINGER`] to be
//! committed with the others of that moment; the in-memory state is the authority meanwhile,
//! and a crash loses at most that much routine progress (the next round re-reads the IMA
//! entries the stored state has not seen). Writes that carry events or that a caller waits for
//! (failures, enrolment changes) are committed at once, together with everything queued before
//! them. Events are published (watchers, webhook worker) only once committed.
//!
//! Each write gets a ticket, numbered in queue order; [`StateWriter::wait_durable`] lets a
//! reader show a state only once the writes that produced it are committed, so that nothing a
//! client was shown is lost in a crash.
//!
//! When a commit fails with an I/O error (a full disk), redb refuses every later write on its
//! handle. The writer then keeps the failed writes, and those queued after them, in memory
//! (see [`MAX_HELD_HISTORY`]), says the store is unwritable ([`StateWriter::unwritable`]:
//! operator writes are refused, readers stop waiting for tickets), and once the file system
//! takes a small probe file again it opens the store again and commits what it holds (backing
//! off up to [`MAX_RETRY`] while that keeps failing). The first commit that succeeds ends it.
//! Until then the handle reads use stays open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kl_store::StoreError;
use kl_store::verifier::{Batch, EventRecord, VerifierStore};
use tokio::sync::oneshot;

use crate::Error;
use crate::events::EventHub;
use crate::metrics::Metrics;

/// Longest a routine write waits for others to share its commit.
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// Most jobs merged into one transaction.
const MAX_BATCH: usize = 32_768;
/// How often the writer looks again at an unwritable store (and takes newly queued writes).
pub(crate) const RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to open the store again while commits keep failing.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Most history records held in memory while the store cannot be written (about 450 bytes
/// each); older ones are dropped beyond it, and said so in the log. Agent entries are held
/// once per agent (the newest), events all.
const MAX_HELD_HISTORY: usize = 200_000;

type Reply = oneshot::Sender<Result<Vec<EventRecord>, Refused>>;

/// Why a commit did not happen, and whether its writes are held for a later one.
#[derive(Debug, Clone)]
struct Refused {
    reason: String,
    /// Held in memory and committed once the store can be written (an I/O failure), or
    /// dropped (anything else).
    held: bool,
}

/// A batch, its ticket and, when the caller waits, where to answer.
struct Job {
    batch: Batch,
    ticket: u64,
    reply: Option<Reply>,
}

/// Write tickets: handed out in queue order, and the newest one committed.
#[derive(Debug, Default)]
struct Tickets {
    /// The last ticket handed out; held while a job is queued, so that tickets and queue
    /// order agree.
    issued: Mutex<u64>,
    /// The newest ticket whose transaction committed (with every earlier one that committed).
    committed: AtomicU64,
    /// Why the store cannot be written, from the failed commit until one succeeds again.
    unwritable: Mutex<Option<String>>,
}

impl Tickets {
    fn set_unwritable(&self, reason: Option<String>) {
        *self.unwritable.lock().unwrap_or_else(PoisonError::into_inner) = reason;
    }

    fn unwritable(&self) -> Option<String> {
        self.unwritable.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Hands batches to the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct StateWriter {
    /// `None` only while being dropped.
    jobs: Option<mpsc::Sender<Job>>,
    tickets: Arc<Tickets>,
    /// The writer thread, woken for urgent jobs only: routine jobs wait for its next look.
    thread: std::thread::Thread,
}

impl StateWriter {
    /// Starts the writer thread; it ends, after committing everything queued, when the last
    /// `StateWriter` is dropped.
    pub fn start(
        store: Arc<VerifierStore>,
        hub: EventHub,
        history_max_entries: u64,
        metrics: Arc<Metrics>,
        holder: Option<Holder>,
    ) -> Result<(StateWriter, std::thread::JoinHandle<()>), Error> {
        let (jobs, receiver) = mpsc::channel();
        let tickets = Arc::new(Tickets::default());
        let committed = tickets.clone();
        let target = Target { store, holder, history_max_entries };
        let thread = std::thread::Builder::new()
            .name("verifier-writer".to_owned())
            .spawn(move || write_batches(&target, &hub, &metrics, &committed, &receiver))
            .map_err(|e| Error::Internal(format!("cannot start the store writer thread: {e}")))?;
        Ok((StateWriter { jobs: Some(jobs), tickets, thread: thread.thread().clone() }, thread))
    }

    /// Queues `batch` without waiting for it to be durable (attestation rounds). A batch
    /// without events may wait up to [`LINGER`] to be committed. Returns its ticket (see
    /// [`StateWriter::wait_durable`]).
    pub fn submit(&self, batch: Batch) -> u64 {
        let wake = urgent(&batch, false);
        match self.send(batch, None) {
            Ok(ticket) => {
                if wake {
                    self.thread.unpark();
                }
                ticket
            }
            Err(()) => {
                tracing::error!("the store writer has stopped; a state update is lost");
                0
            }
        }
    }

    /// Waits until the write with `ticket` (from [`StateWriter::submit`]) is committed,
    /// committing what is queued at once when it is not yet.
    /// While the store cannot be written, returns at once with
    /// [`Error::StoreUnwritable`] rather than wait for a commit that cannot happen.
    pub async fn wait_durable(&self, ticket: u64) -> Result<(), Error> {
        if self.tickets.committed.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        if let Some(reason) = self.unwritable() {
            return Err(Error::StoreUnwritable(reason));
        }
        self.flush().await
    }

    /// Why the store cannot be written (the failed commit's error), while it cannot.
    pub fn unwritable(&self) -> Option<String> {
        self.tickets.unwritable()
    }

    /// Refuses an operator change while the store cannot be written, before anything is
    /// changed: it would not be durable.
    pub fn check_writable(&self) -> Result<(), Error> {
        match self.unwritable() {
            Some(reason) => Err(Error::StoreUnwritable(format!(
                "{reason}; nothing was changed (the verifier retries the store every second)"
            ))),
            None => Ok(()),
        }
    }

    /// Queues `batch` and waits until it and everything queued before it are committed;
    /// returns its events with their cursors.
    pub async fn commit(&self, batch: Batch) -> Result<Vec<EventRecord>, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(batch, Some(reply))
            .map_err(|_| Error::Internal("the store writer has stopped".to_owned()))?;
        self.thread.unpark();
        answer
            .await
            .map_err(|_| Error::Internal("the store writer has stopped".to_owned()))?
            .map_err(|refused| {
                if refused.held {
                    Error::StoreUnwritable(format!(
                        "{}; the change is held in memory and stored once the store can be \
                         written again",
                        refused.reason
                    ))
                } else {
                    Error::Internal(format!("{}; the change was not stored", refused.reason))
                }
            })
    }

    /// Waits until everything queued so far is committed (before reading the store).
    pub async fn flush(&self) -> Result<(), Error> {
        self.commit(Batch::default()).await.map(drop)
    }
}

impl StateWriter {
    /// Queues a job; its ticket.
    fn send(&self, batch: Batch, reply: Option<Reply>) -> Result<u64, ()> {
        let jobs = self.jobs.as_ref().ok_or(())?;
        let mut issued = self.tickets.issued.lock().map_err(drop)?;
        let ticket = *issued + 1;
        jobs.send(Job { batch, ticket, reply }).map_err(drop)?;
        *issued = ticket;
        Ok(ticket)
    }
}

impl Drop for StateWriter {
    /// The last handle gone, the thread commits what is queued without waiting out the linger:
    /// the sender goes first, so that the woken thread sees the channel closed.
    fn drop(&mut self) {
        drop(self.jobs.take());
        self.thread.unpark();
    }
}

/// Whether a job is committed at once rather than after [`LINGER`].
fn urgent(batch: &Batch, waited_for: bool) -> bool {
    waited_for || !batch.events.is_empty() || !batch.removed.is_empty()
}

/// A replica's writes: committed for `name` ([`VerifierStore::commit_as`]); `refused` is
/// called with the agents whose entries were not written.
pub(crate) struct Holder {
    pub name: String,
    pub refused: Box<dyn Fn(Vec<String>) + Send>,
}

/// Where the writer commits.
struct Target {
    store: Arc<VerifierStore>,
    holder: Option<Holder>,
    history_max_entries: u64,
}

impl Target {
    fn commit(&self, batch: &Batch) -> Result<Vec<EventRecord>, StoreError> {
        let Some(holder) = &self.holder else {
            return self.store.commit(batch, self.history_max_entries);
        };
        let committed = self.store.commit_as(&holder.name, batch, self.history_max_entries)?;
        if !committed.refused.is_empty() {
            tracing::info!(
                agents = ?committed.refused,
                "writes for agents this replica no longer holds, or that changed elsewhere, were \
                 left out (their events were kept)"
            );
            (holder.refused)(committed.refused);
        }
        Ok(committed.events)
    }
}

fn write_batches(
    target: &Target,
    hub: &EventHub,
    metrics: &Metrics,
    tickets: &Tickets,
    receiver: &mpsc::Receiver<Job>,
) {
    let store = &*target.store;
    // Writes that failed to commit, with the newest ticket among them, kept until the store
    // can be written again.
    let mut held: Option<(Batch, u64)> = None;
    // Set once every handle is gone: held writes get one last try, then the thread ends.
    let mut stopping = false;
    // While writes are held: when to look at the store again, and the wait after that.
    let mut backoff = RETRY;
    let mut next_try = Instant::now();
    loop {
        let Some(jobs) = next_jobs(receiver, held.is_some(), &mut stopping) else {
            if let Some((batch, _)) = held {
                tracing::error!(
                    store = %store.location(),
                    agents = batch.agents.len(),
                    history = batch.history.len(),
                    events = batch.events.len(),
                    "stopping with writes the state store could not take; they are lost"
                );
            }
            return;
        };
        let retrying = held.is_some();
        let mut newest = jobs.iter().map(|j| j.ticket).max().unwrap_or(0);
        // Each job's reply with the number of events it adds, in commit order.
        let mut replies: Vec<(usize, Option<Reply>)> = Vec::with_capacity(jobs.len() + 1);
        let mut batch = Batch::default();
        if let Some((earlier, ticket)) = held.take() {
            replies.push((earlier.events.len(), None));
            batch = earlier;
            newest = newest.max(ticket);
        }
        for job in jobs {
            replies.push((job.batch.events.len(), job.reply));
            batch.extend(job.batch);
        }
        if batch.is_empty() {
            // Flushes with nothing queued: nothing to write or sync.
            answer(replies, Ok(Vec::new()));
            tickets.committed.fetch_max(newest, Ordering::AcqRel);
            continue;
        }
        if retrying && !stopping && (Instant::now() < next_try || !store.space_returned()) {
            // Opening the store again closes the handle reads still use and has redb check
            // the whole file: only once the file system takes writes again, and backing off
            // while commits keep failing.
            held = Some((batch, newest));
            let reason = tickets
                .unwritable()
                .unwrap_or_else(|| "the state store cannot be written".to_owned());
            answer(replies, Err(Refused { reason, held: true }));
            continue;
        }
        let started = Instant::now();
        let reopen_and_commit = || {
            store.reopen()?;
            target.commit(&batch)
        };
        let mut result = if retrying { reopen_and_commit() } else { target.commit(&batch) };
        if !retrying && matches!(&result, Err(e) if e.is_io()) {
            // redb refuses writes after any earlier failure (also one outside this thread,
            // such as a policy put) until it is opened again: once at once, so that a failure
            // is reported with its own cause rather than as that refusal.
            result = reopen_and_commit();
        }
        match result {
            Ok(events) => {
                if retrying {
                    tracing::info!(
                        store = %store.location(),
                        "the state store can be written again; the held writes are committed"
                    );
                }
                tickets.set_unwritable(None);
                backoff = RETRY;
                tickets.committed.fetch_max(newest, Ordering::AcqRel);
                metrics.store_commits.inc();
                metrics.store_commit_seconds.observe(started.elapsed());
                let mut rest = events.as_slice();
                // Cursor 0: an event a replica's commit left out (see `commit_as`).
                let written = |events: &[EventRecord]| -> Vec<EventRecord> {
                    events.iter().filter(|e| e.cursor > 0).cloned().collect()
                };
                for (count, reply) in replies {
                    let (own, after) = rest.split_at(count.min(rest.len()));
                    rest = after;
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(written(own)));
                    }
                }
                hub.publish(written(&events));
            }
            Err(e) => {
                metrics.store_commit_failures.inc();
                let reason = e.to_string();
                if e.is_io() {
                    if !retrying {
                        tracing::error!(
                            error = %reason,
                            "committing attestation state failed; the writes are held in \
                             memory and retried every second"
                        );
                    }
                    tickets.set_unwritable(Some(reason.clone()));
                    if retrying {
                        backoff = (backoff * 2).min(MAX_RETRY);
                    }
                    next_try = Instant::now() + backoff;
                    hold(&mut batch);
                    held = Some((batch, newest));
                    answer(replies, Err(Refused { reason, held: true }));
                } else {
                    tracing::error!(
                        error = %reason,
                        "committing attestation state failed; the writes are dropped"
                    );
                    // Nothing is held any more: the store is not waiting for a retry.
                    tickets.set_unwritable(None);
                    answer(replies, Err(Refused { reason, held: false }));
                }
            }
        }
    }
}

/// The jobs of the next commit: those queued up after the first arrives, waiting up to
/// [`LINGER`] for routine ones to share it. While writes are held (`retrying`), whatever
/// arrived within [`RETRY`]. `None` once every [`StateWriter`] is gone and nothing is left to
/// try: held writes are tried once more first (`stopping` marks that last try).
fn next_jobs(
    receiver: &mpsc::Receiver<Job>,
    retrying: bool,
    stopping: &mut bool,
) -> Option<Vec<Job>> {
    if retrying {
        if *stopping {
            return None;
        }
        let mut jobs = Vec::new();
        let deadline = Instant::now() + RETRY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout) => return Some(jobs),
                Err(RecvTimeoutError::Disconnected) => {
                    *stopping = true;
                    return Some(jobs);
                }
            }
        }
    }
    let first = receiver.recv().ok()?;
    let deadline = Instant::now() + LINGER;
    let mut now = urgent(&first.batch, first.reply.is_some());
    let mut jobs = vec![first];
    loop {
        // Take what has queued up; routine jobs do not wake this thread, urgent ones do.
        while jobs.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => {
                    now |= urgent(&job.batch, job.reply.is_some());
                    jobs.push(job);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    now = true;
                    break;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if now || jobs.len() >= MAX_BATCH || left.is_zero() {
            return Some(jobs);
        }
        std::thread::park_timeout(left);
    }
}

fn answer(replies: Vec<(usize, Option<Reply>)>, result: Result<Vec<EventRecord>, Refused>) {
    for (_, reply) in replies {
        if let Some(reply) = reply {
            let _ = reply.send(result.clone());
        }
    }
}

/// Bounds the writes held while the store cannot be written: one entry per agent (the
/// newest, which a commit keeps anyway) and at most [`MAX_HELD_HISTORY`] history records.
fn hold(batch: &mut Batch) {
    let mut newest: HashMap<String, usize> = HashMap::with_capacity(batch.agents.len());
    for (i, agent) in batch.agents.iter().enumerate() {
        newest.insert(agent.agent_id.clone(), i);
    }
    if newest.len() < batch.agents.len() {
        let mut index = 0;
        batch.agents.retain(|agent| {
            index += 1;
            newest.get(&agent.agent_id) == Some(&(index - 1))
        });
    }
    if batch.history.len() > MAX_HELD_HISTORY {
        let dropped = batch.history.len() - MAX_HELD_HISTORY;
        batch.history.drain(..dropped);
        tracing::warn!(
            dropped,
            "the state store still cannot be written; the oldest held history records are dropped"
        );
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
            findings: Vec::new(),
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
        let (writer, thread) =
            StateWriter::start(store.clone(), hub, 10, Default::default(), None)?;
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

    #[tokio::test]
    async fn routine_writes_are_committed_after_the_linger_or_on_flush() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::Internal(e.to_string()))?;
        let store = Arc::new(VerifierStore::open(&dir.path().join("verifier.redb"))?);
        let (writer, thread) =
            StateWriter::start(store.clone(), EventHub::new(), 10, Default::default(), None)?;
        let history = |n| kl_store::verifier::HistoryRecord {
            sequence: n,
            at: Timestamp::now(),
            verdict: None,
            reset_count: 0,
            restart_count: 0,
            clock: 0,
            ima_entries: 0,
            duration_us: 0,
        };
        let round = |n| Batch { history: vec![("a".to_owned(), history(n))], ..Batch::default() };
        writer.submit(round(1));
        let started = std::time::Instant::now();
        while store.history("a", None, 10)?.is_empty() {
            assert!(started.elapsed() < LINGER * 5, "a routine write was never committed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.submit(round(2));
        writer.flush().await?;
        assert_eq!(store.history("a", None, 10)?.len(), 2, "flush commits what was queued");
        let ticket = writer.submit(round(3));
        assert!(ticket > 0);
        let started = std::time::Instant::now();
        writer.wait_durable(ticket).await?;
        assert!(started.elapsed() < LINGER / 2, "a reader does not wait out the linger");
        assert_eq!(store.history("a", None, 10)?.len(), 3, "durable once waited for");
        writer.wait_durable(ticket).await?;
        writer.submit(round(4));
        drop(writer);
        thread.join().map_err(|_| Error::Internal("writer panicked".into()))?;
        assert_eq!(store.history("a", None, 10)?.len(), 4, "stopping commits what was queued");
        Ok(())
    }
}
