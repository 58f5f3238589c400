//! The worker's event log: every change to the worker's block set gets the
//! next id of a per-worker monotonic sequence (no gaps), is kept in a bounded
//! replay buffer, and is broadcast to live subscribers. The block set itself
//! is kept too, so that a subscriber that lost events can resync from a
//! snapshot.
//!
//! Ids restart at 1 with a new random `epoch` when the agent restarts.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use kvtier_proto::v1::{WorkerEvent, WorkerEventKind};

/// Medium name of the worker's own GPU pool (vLLM's naming).
pub const MEDIUM_GPU: &str = "GPU";

/// A change to apply to the worker's block set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockChange {
    /// Blocks became resident; `hashes` chain on `parent` in order.
    Stored {
        /// Parent of the first block.
        parent: Option<u64>,
        /// Sequence hashes, in prefix order.
        hashes: Vec<u64>,
    },
    /// Blocks left the pool.
    Removed(Vec<u64>),
    /// The pool was cleared.
    Cleared,
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    /// Recent events, oldest first, at most `capacity`.
    replay: VecDeque<WorkerEvent>,
    /// The worker's block set: hash → parent (0 for a root).
    blocks: HashMap<u64, u64>,
}

/// The worker's event log. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct EventLog {
    worker_id: String,
    epoch: u64,
    capacity: usize,
    inner: Mutex<Inner>,
    /// Bounded fan-out; a subscriber that falls behind is resynced from a snapshot.
    tx: broadcast::Sender<WorkerEvent>,
    /// Live subscriptions, at most `max_subscribers`.
    subscribers: Arc<AtomicUsize>,
    max_subscribers: usize,
}

/// Refusal of a subscription beyond the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} event subscribers already: the limit is reached, retry later")]
pub struct TooManySubscribers(pub usize);

/// Decrements the subscriber count when a subscription ends.
struct SubscriberGuard(Arc<AtomicUsize>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream of events for one subscriber.
pub type EventStream = Pin<Box<dyn Stream<Item = WorkerEvent> + Send>>;

impl EventLog {
    /// Default limit of concurrent subscriptions.
    pub const DEFAULT_MAX_SUBSCRIBERS: usize = 256;

    /// A log for `worker_id` keeping `capacity` events for replay.
    pub fn new(worker_id: impl Into<String>, capacity: usize) -> Arc<Self> {
        Self::with_limits(worker_id, capacity, Self::DEFAULT_MAX_SUBSCRIBERS)
    }

    /// A log keeping `capacity` events and serving at most `max_subscribers` at once.
    pub fn with_limits(
        worker_id: impl Into<String>,
        capacity: usize,
        max_subscribers: usize,
    ) -> Arc<Self> {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity.min(65_536));
        Arc::new(Self {
            worker_id: worker_id.into(),
            epoch: random_epoch(),
            capacity,
            inner: Mutex::new(Inner {
                next_id: 1,
                replay: VecDeque::with_capacity(capacity),
                blocks: HashMap::new(),
            }),
            tx,
            subscribers: Arc::new(AtomicUsize::new(0)),
            max_subscribers: max_subscribers.max(1),
        })
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Id of the last event recorded (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.inner.lock().next_id - 1
    }

    /// Applies a change and records it as the next event. Returns its id, or
    /// `None` when the change is empty (no event, no id consumed).
    pub fn record(&self, change: BlockChange) -> Option<u64> {
        let mut inner = self.inner.lock();
        let (kind, hashes, parent_hash) = match change {
            BlockChange::Stored { parent, hashes } => {
                if hashes.is_empty() {
                    return None;
                }
                let mut prev = parent;
                for &h in &hashes {
                    inner.blocks.insert(h, prev.unwrap_or(0));
                    prev = Some(h);
                }
                (WorkerEventKind::Stored, hashes, parent)
            }
            BlockChange::Removed(hashes) => {
                if hashes.is_empty() {
                    return None;
                }
                for h in &hashes {
                    inner.blocks.remove(h);
                }
                (WorkerEventKind::Removed, hashes, None)
            }
            BlockChange::Cleared => {
                inner.blocks.clear();
                (WorkerEventKind::Cleared, Vec::new(), None)
            }
        };
        let id = inner.next_id;
        inner.next_id += 1;
        let event = WorkerEvent {
            event_id: id,
            epoch: self.epoch,
            worker_id: self.worker_id.clone(),
            kind: kind as i32,
            hashes,
            parent_hash,
            parents: Vec::new(),
            medium: MEDIUM_GPU.into(),
        };
        if inner.replay.len() == self.capacity {
            inner.replay.pop_front();
        }
        inner.replay.push_back(event.clone());
        // Sent under the lock so that the broadcast order is the id order.
        // No receiver is not an error.
        let _ = self.tx.send(event);
        Some(id)
    }

    /// The worker's full block set as a SNAPSHOT event.
    pub fn snapshot(&self) -> WorkerEvent {
        let inner = self.inner.lock();
        self.snapshot_locked(&inner)
    }

    fn snapshot_locked(&self, inner: &Inner) -> WorkerEvent {
        let mut pairs: Vec<(u64, u64)> = inner.blocks.iter().map(|(&h, &p)| (h, p)).collect();
        pairs.sort_unstable();
        let (hashes, parents) = pairs.into_iter().unzip();
        WorkerEvent {
            event_id: inner.next_id - 1,
            epoch: self.epoch,
            worker_id: self.worker_id.clone(),
            kind: WorkerEventKind::Snapshot as i32,
            hashes,
            parent_hash: None,
            parents,
            medium: MEDIUM_GPU.into(),
        }
    }

    /// Events from `from_event_id` on, then live ones. When `from_event_id`
    /// is 0 or no longer buffered, the stream starts with a snapshot instead;
    /// a subscriber that falls behind the broadcast gets a fresh snapshot.
    /// The stream ends when `shutdown` fires.
    pub fn subscribe(
        self: &Arc<Self>,
        from_event_id: u64,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<EventStream, TooManySubscribers> {
        let count = self.subscribers.fetch_add(1, Ordering::Relaxed);
        let guard = SubscriberGuard(self.subscribers.clone());
        if count >= self.max_subscribers {
            return Err(TooManySubscribers(count));
        }
        let (backlog, rx) = {
            let inner = self.inner.lock();
            let rx = self.tx.subscribe();
            let oldest = inner
                .replay
                .front()
                .map(|e| e.event_id)
                .unwrap_or(inner.next_id);
            let backlog: VecDeque<WorkerEvent> =
                if from_event_id >= oldest && from_event_id <= inner.next_id {
                    inner
                        .replay
                        .iter()
                        .filter(|e| e.event_id >= from_event_id)
                        .cloned()
                        .collect()
                } else {
                    VecDeque::from([self.snapshot_locked(&inner)])
                };
            (backlog, rx)
        };
        let last_sent = backlog
            .back()
            .map(|e| e.event_id)
            .unwrap_or(from_event_id.saturating_sub(1));
        let state = SubState {
            log: self.clone(),
            backlog,
            rx,
            last_sent,
            shutdown,
            _guard: guard,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                let event = st.next().await?;
                Some((event, st))
            },
        )))
    }

    /// Subscriptions open now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }
}

struct SubState {
    log: Arc<EventLog>,
    backlog: VecDeque<WorkerEvent>,
    rx: broadcast::Receiver<WorkerEvent>,
    /// Id of the last event (or snapshot) delivered; older broadcasts are skipped.
    last_sent: u64,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _guard: SubscriberGuard,
}

impl SubState {
    async fn next(&mut self) -> Option<WorkerEvent> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            let received = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.shutdown.changed() => return None,
            };
            match received {
                Ok(e) if e.event_id <= self.last_sent => continue,
                Ok(e) => {
                    self.last_sent = e.event_id;
                    return Some(e);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "event subscriber fell behind; sending a snapshot");
                    let snap = self.log.snapshot();
                    self.last_sent = snap.event_id;
                    return Some(snap);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn random_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn ids_are_gap_free_and_old_starts_resync() {
        let log = EventLog::new("w", 4);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        for i in 0..6u64 {
            log.record(BlockChange::Stored {
                parent: None,
                hashes: vec![100 + i],
            });
        }
        assert_eq!(log.record(BlockChange::Removed(vec![])), None);
        assert_eq!(log.last_id(), 6);
        // ids 3..=6 are buffered
        let mut s = log.subscribe(4, rx.clone()).expect("subscribe");
        let ids: Vec<u64> = (0..3).map(|_| 0).collect::<Vec<_>>();
        let mut got = Vec::new();
        for _ in ids {
            got.push(s.next().await.expect("event").event_id);
        }
        assert_eq!(got, vec![4, 5, 6]);
        log.record(BlockChange::Removed(vec![100]));
        assert_eq!(s.next().await.expect("live").event_id, 7);
        // id 1 is gone: snapshot first
        let mut old = log.subscribe(1, rx.clone()).expect("subscribe");
        let snap = old.next().await.expect("snapshot");
        assert_eq!(snap.kind, WorkerEventKind::Snapshot as i32);
        assert_eq!(snap.event_id, 7);
        assert_eq!(snap.hashes, vec![101, 102, 103, 104, 105]);
    }

    #[tokio::test]
    async fn subscribers_are_bounded() {
        let log = EventLog::with_limits("w", 4, 2);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let a = log.subscribe(0, rx.clone()).expect("first");
        let _b = log.subscribe(0, rx.clone()).expect("second");
        assert!(log.subscribe(0, rx.clone()).is_err());
        drop(a);
        assert_eq!(log.subscribers(), 1);
        assert!(log.subscribe(0, rx).is_ok());
    }
}
