//! Events after they are committed: published live to `WatchEvents` streams and the webhook
//! worker, and replayed from the outbox for a stream that starts at an older cursor.
//!
//! A watcher subscribes to the live feed before it reads the outbox, then skips live events it
//! already sent, so no event falls between the two; a watcher that lags behind the live feed
//! re-reads the outbox from its last cursor.

use std::sync::Arc;

use kl_proto::verifier::v1 as pb;
use kl_store::verifier::{EventRecord, VerifierStore};
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::Error;
use crate::convert;
use crate::tasks::stopped;

/// Live events buffered per watcher before it must catch up from the outbox.
const LIVE_CAPACITY: usize = 4096;
/// Events read from the outbox at a time.
const PAGE: usize = 256;

/// Fan-out of committed events.
#[derive(Debug, Clone)]
pub(crate) struct EventHub {
    live: broadcast::Sender<Arc<EventRecord>>,
    /// Wakes the webhook worker.
    pub committed: Arc<Notify>,
}

impl EventHub {
    pub fn new() -> EventHub {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        EventHub { live, committed: Arc::new(Notify::new()) }
    }

    pub fn publish(&self, events: Vec<EventRecord>) {
        if events.is_empty() {
            return;
        }
        for event in events {
            let _ = self.live.send(Arc::new(event));
        }
        self.committed.notify_one();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.live.subscribe()
    }
}

/// What a watcher asked for: the events after `from_cursor`, of `agent_id` only unless empty, up
/// to `until_cursor` unless 0.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub from_cursor: u64,
    pub agent_id: String,
    pub until_cursor: u64,
}

/// Prepares a stream of the events a watcher asked for into a channel, fed by the returned
/// task. The stream ends with OK after `until_cursor`, with UNAVAILABLE when the verifier
/// stops (so the client knows to come back), or when the client goes away.
pub(crate) fn watch(
    store: Arc<VerifierStore>,
    hub: &EventHub,
    request: Watch,
    mut shutdown: watch::Receiver<bool>,
) -> Result<
    (mpsc::Receiver<Result<pb::Event, tonic::Status>>, impl Future<Output = ()> + Send + 'static),
    Error,
> {
    let Watch { from_cursor, agent_id, until_cursor } = request;
    let done = move |last: u64| until_cursor > 0 && last >= until_cursor;
    if from_cursor > 0 {
        let oldest = store.oldest_event()?;
        let last = store.last_event()?;
        match oldest {
            Some(oldest) if from_cursor + 1 < oldest => {
                return Err(Error::CursorPruned { requested: from_cursor, oldest });
            }
            None if from_cursor < last => {
                return Err(Error::CursorPruned { requested: from_cursor, oldest: last + 1 });
            }
            _ => {}
        }
    }
    let mut live = hub.subscribe();
    let (tx, rx) = mpsc::channel(PAGE);
    let task = async move {
        let mut last = from_cursor;
        let wanted = |e: &EventRecord| agent_id.is_empty() || e.agent_id == agent_id;
        if done(last) {
            return;
        }
        'catch_up: loop {
            loop {
                let page = match store.events_after(last, PAGE) {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(Error::from(e).into())).await;
                        return;
                    }
                };
                let full = page.len() == PAGE;
                for event in page {
                    last = event.cursor;
                    if wanted(&event) && !deliver(&tx, &event, &mut shutdown).await || done(last) {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            loop {
                tokio::select! {
                    received = live.recv() => match received {
                        Ok(event) => {
                            if event.cursor <= last {
                                continue;
                            }
                            if event.cursor > last + 1 {
                                continue 'catch_up;
                            }
                            last = event.cursor;
                            if wanted(&event) && !deliver(&tx, &event, &mut shutdown).await
                                || done(last)
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                        // The hub goes with the verifier: as a stop, not as an end.
                        Err(broadcast::error::RecvError::Closed) => return stopping(&tx).await,
                    },
                    _ = tx.closed() => return,
                    _ = stopped(&mut shutdown) => return stopping(&tx).await,
                }
            }
        }
    };
    Ok((rx, task))
}

/// Sends one event to a watcher; false when the watcher is gone or the verifier is stopping
/// (a watcher that does not read must not hold up shutdown).
async fn deliver(
    tx: &mpsc::Sender<Result<pb::Event, tonic::Status>>,
    event: &EventRecord,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = tx.send(Ok(convert::event(event))) => sent.is_ok(),
        _ = stopped(shutdown) => {
            stopping(tx).await;
            false
        }
    }
}

/// How long a stopping verifier waits for room to tell a watcher it stops.
const STOPPING_NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends a stream because the verifier stops: UNAVAILABLE rather than a plain end, so that a
/// client tells "the verifier went away" from "the events asked for were all sent". A watcher
/// whose queue is full gets a moment to make room (it must not hold up the stop for longer).
async fn stopping(tx: &mpsc::Sender<Result<pb::Event, tonic::Status>>) {
    let status = tonic::Status::unavailable("the verifier is stopping");
    let _ = tokio::time::timeout(STOPPING_NOTICE_WAIT, tx.send(Err(status))).await;
}
