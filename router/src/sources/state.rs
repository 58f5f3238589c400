//! Shared health tables of the event sources: which workers take traffic (and
//! why not), how far their event streams got, and the cache watch's state.
//! Cheap to clone and to read (one short read lock, no I/O).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::index::WorkerSlot;

/// One worker's state, as the cost model and `ListWorkers` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Configured worker id (the one its agent's events must carry).
    pub worker_id: String,
    /// Its agent's gRPC URL.
    pub agent_url: String,
    /// Its slot in the index.
    pub slot: WorkerSlot,
    /// Takes traffic: its event stream is up and its endpoint was not reported
    /// unreachable within the cool-down.
    pub available: bool,
    /// When `available` took its current value.
    pub since: Instant,
    /// Why the worker is unavailable (None when available).
    pub reason: Option<String>,
    /// Id of the last event applied from its agent.
    pub last_event_id: u64,
    /// Epoch of its agent process (0 before the first snapshot).
    pub epoch: u64,
    /// Blocks the index holds for its HBM.
    pub indexed_blocks: u64,
    /// Resyncs (gap, epoch change) since the router started.
    pub resyncs: u64,
    /// Its blocks were forgotten because it stayed unavailable past the expiry.
    pub expired: bool,
}

#[derive(Debug, Clone)]
enum Link {
    Up { since: Instant },
    Down { since: Instant, reason: String },
}

#[derive(Debug, Clone)]
struct Unreachable {
    since: Instant,
    until: Instant,
    reason: String,
}

#[derive(Debug, Clone)]
struct Record {
    worker_id: String,
    agent_url: String,
    slot: WorkerSlot,
    link: Link,
    unreachable: Option<Unreachable>,
    last_event_id: u64,
    epoch: u64,
    indexed_blocks: u64,
    resyncs: u64,
    expired: bool,
}

impl Record {
    fn status(&self, now: Instant) -> WorkerStatus {
        let (available, since, reason) = match (&self.link, &self.unreachable) {
            (Link::Down { since, reason }, _) => (false, *since, Some(reason.clone())),
            (Link::Up { .. }, Some(u)) if now < u.until => (
                false,
                u.since,
                Some(format!("endpoint unreachable: {}", u.reason)),
            ),
            (Link::Up { since }, Some(u)) => (true, (*since).max(u.until), None),
            (Link::Up { since }, None) => (true, *since, None),
        };
        WorkerStatus {
            worker_id: self.worker_id.clone(),
            agent_url: self.agent_url.clone(),
            slot: self.slot,
            available,
            since,
            reason,
            last_event_id: self.last_event_id,
            epoch: self.epoch,
            indexed_blocks: self.indexed_blocks,
            resyncs: self.resyncs,
            expired: self.expired,
        }
    }

    fn available(&self, now: Instant) -> bool {
        matches!(self.link, Link::Up { .. })
            && self.unreachable.as_ref().is_none_or(|u| now >= u.until)
    }
}

#[derive(Debug)]
struct Table {
    cooldown: Duration,
    workers: Vec<Record>,
}

/// The workers' state table, shared by the worker sources (writers) and the
/// router (readers). Cloning shares the table.
#[derive(Debug, Clone)]
pub struct WorkerStates {
    inner: Arc<RwLock<Table>>,
}

impl Default for WorkerStates {
    fn default() -> Self {
        Self::new(Self::DEFAULT_UNREACHABLE_COOLDOWN)
    }
}

impl WorkerStates {
    /// Default time a worker reported unreachable by the HTTP proxy stays
    /// unavailable (unless an event from its agent comes first).
    pub const DEFAULT_UNREACHABLE_COOLDOWN: Duration = Duration::from_secs(5);

    /// An empty table; [`WorkerStates::mark_unreachable`] lasts `unreachable_cooldown`.
    pub fn new(unreachable_cooldown: Duration) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Table {
                cooldown: unreachable_cooldown,
                workers: Vec::new(),
            })),
        }
    }

    /// Adds a worker (unavailable until its event stream is up). Registering
    /// an id again updates its URL and slot and keeps the rest.
    pub fn register(&self, worker_id: &str, agent_url: &str, slot: WorkerSlot) {
        let mut t = self.inner.write();
        if let Some(r) = t.workers.iter_mut().find(|r| r.worker_id == worker_id) {
            r.agent_url = agent_url.to_string();
            r.slot = slot;
            return;
        }
        t.workers.push(Record {
            worker_id: worker_id.to_string(),
            agent_url: agent_url.to_string(),
            slot,
            link: Link::Down {
                since: Instant::now(),
                reason: "not connected yet".into(),
            },
            unreachable: None,
            last_event_id: 0,
            epoch: 0,
            indexed_blocks: 0,
            resyncs: 0,
            expired: false,
        });
    }

    /// State of one worker.
    pub fn get(&self, worker_id: &str) -> Option<WorkerStatus> {
        let now = Instant::now();
        self.inner
            .read()
            .workers
            .iter()
            .find(|r| r.worker_id == worker_id)
            .map(|r| r.status(now))
    }

    /// State of the worker in index slot `slot`.
    pub fn by_slot(&self, slot: WorkerSlot) -> Option<WorkerStatus> {
        let now = Instant::now();
        self.inner
            .read()
            .workers
            .iter()
            .find(|r| r.slot == slot)
            .map(|r| r.status(now))
    }

    /// Every worker, in registration order.
    pub fn list(&self) -> Vec<WorkerStatus> {
        let now = Instant::now();
        self.inner
            .read()
            .workers
            .iter()
            .map(|r| r.status(now))
            .collect()
    }

    /// The worker takes traffic now (false for an unknown id).
    pub fn is_available(&self, worker_id: &str) -> bool {
        let now = Instant::now();
        self.inner
            .read()
            .workers
            .iter()
            .find(|r| r.worker_id == worker_id)
            .is_some_and(|r| r.available(now))
    }

    /// [`WorkerStates::is_available`] of each worker, in order, under one read of the table.
    pub fn availability(&self, worker_ids: &[&str]) -> Vec<bool> {
        let now = Instant::now();
        let table = self.inner.read();
        let mut available = vec![false; worker_ids.len()];
        let position: std::collections::HashMap<&str, usize> = worker_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        for record in &table.workers {
            if let Some(&i) = position.get(record.worker_id.as_str()) {
                available[i] = record.available(now);
            }
        }
        available
    }

    /// The worker in slot `slot` takes traffic now (false for an unknown slot).
    pub fn is_slot_available(&self, slot: WorkerSlot) -> bool {
        let now = Instant::now();
        self.inner
            .read()
            .workers
            .iter()
            .find(|r| r.slot == slot)
            .is_some_and(|r| r.available(now))
    }

    /// The worker's HTTP endpoint refused a connection (told by the proxy): the
    /// worker is unavailable until its agent's next event or the cool-down
    /// ends, whichever comes first. Returns false for an unknown id.
    pub fn mark_unreachable(&self, worker_id: &str, reason: &str) -> bool {
        let now = Instant::now();
        let mut t = self.inner.write();
        let cooldown = t.cooldown;
        let Some(r) = t.workers.iter_mut().find(|r| r.worker_id == worker_id) else {
            return false;
        };
        if r.available(now) {
            tracing::warn!(
                worker = worker_id,
                reason,
                "worker endpoint unreachable: unavailable for {cooldown:?}"
            );
        }
        r.unreachable = Some(Unreachable {
            since: r
                .unreachable
                .as_ref()
                .filter(|u| now < u.until)
                .map_or(now, |u| u.since),
            until: now + cooldown,
            reason: reason.to_string(),
        });
        true
    }

    fn with<R>(&self, worker_id: &str, f: impl FnOnce(&mut Record) -> R) -> Option<R> {
        let mut t = self.inner.write();
        t.workers
            .iter_mut()
            .find(|r| r.worker_id == worker_id)
            .map(f)
    }

    /// The worker's event stream is up.
    pub(crate) fn set_up(&self, worker_id: &str) {
        self.with(worker_id, |r| {
            if let Link::Down { .. } = r.link {
                r.link = Link::Up {
                    since: Instant::now(),
                };
            }
        });
    }

    /// The worker's event stream is down. Returns true when it was up.
    pub(crate) fn set_down(&self, worker_id: &str, reason: &str) -> bool {
        self.with(worker_id, |r| match &mut r.link {
            Link::Up { .. } => {
                r.link = Link::Down {
                    since: Instant::now(),
                    reason: reason.to_string(),
                };
                true
            }
            Link::Down { reason: old, .. } => {
                reason.clone_into(old);
                false
            }
        })
        .unwrap_or(false)
    }

    /// An event was applied: position and index size; clears an unreachable mark.
    pub(crate) fn applied(&self, worker_id: &str, last_event_id: u64, epoch: u64, blocks: u64) {
        self.with(worker_id, |r| {
            r.last_event_id = last_event_id;
            r.epoch = epoch;
            r.indexed_blocks = blocks;
            r.expired = false;
            r.unreachable = None;
        });
    }

    /// A resync began.
    pub(crate) fn resynced(&self, worker_id: &str) {
        self.with(worker_id, |r| r.resyncs += 1);
    }

    /// The worker's blocks were forgotten after the expiry.
    pub(crate) fn expired(&self, worker_id: &str) {
        self.with(worker_id, |r| {
            r.expired = true;
            r.indexed_blocks = 0;
        });
    }
}

/// The cache watch's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    /// The watch is up and its snapshot applied.
    pub synced: bool,
    /// When `synced` took its current value.
    pub since: Instant,
    /// Why the watch is not synced (None when synced).
    pub reason: Option<String>,
    /// Id of the last event applied.
    pub last_event_id: u64,
    /// Epoch of the cache-server process (0 before the first snapshot).
    pub epoch: u64,
    /// Blocks in the last snapshot applied.
    pub snapshot_blocks: u64,
    /// Resyncs (gap, epoch change) since the router started.
    pub resyncs: u64,
}

/// The cache watch's state, shared by the cache source (writer) and the router
/// (readers). Cloning shares it.
#[derive(Debug, Clone)]
pub struct CacheState {
    inner: Arc<RwLock<CacheStatus>>,
}

impl Default for CacheState {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(CacheStatus {
                synced: false,
                since: Instant::now(),
                reason: Some("not connected yet".into()),
                last_event_id: 0,
                epoch: 0,
                snapshot_blocks: 0,
                resyncs: 0,
            })),
        }
    }
}

impl CacheState {
    /// The current state.
    pub fn get(&self) -> CacheStatus {
        self.inner.read().clone()
    }

    pub(crate) fn synced(&self, epoch: u64, last_event_id: u64, blocks: u64) {
        let mut s = self.inner.write();
        if !s.synced {
            s.synced = true;
            s.since = Instant::now();
        }
        s.reason = None;
        s.epoch = epoch;
        s.last_event_id = last_event_id;
        s.snapshot_blocks = blocks;
    }

    pub(crate) fn applied(&self, last_event_id: u64) {
        self.inner.write().last_event_id = last_event_id;
    }

    pub(crate) fn down(&self, reason: &str) {
        let mut s = self.inner.write();
        if s.synced {
            s.synced = false;
            s.since = Instant::now();
        }
        s.reason = Some(reason.to_string());
    }

    pub(crate) fn resynced(&self) {
        self.inner.write().resyncs += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_follows_the_stream_and_unreachable_marks() {
        let states = WorkerStates::new(Duration::from_millis(50));
        states.register("a", "http://a", 0);
        assert!(!states.is_available("a"));
        assert_eq!(
            states.get("a").and_then(|s| s.reason).as_deref(),
            Some("not connected yet")
        );
        states.set_up("a");
        assert!(states.is_available("a") && states.is_slot_available(0));
        assert!(states.mark_unreachable("a", "connection refused"));
        assert!(!states.mark_unreachable("nope", "x"));
        let s = states.get("a").expect("registered");
        assert!(!s.available);
        assert!(s.reason.is_some_and(|r| r.contains("connection refused")));
        // the next event clears the mark
        states.applied("a", 3, 9, 12);
        let s = states.by_slot(0).expect("slot");
        assert!(s.available);
        assert_eq!((s.last_event_id, s.epoch, s.indexed_blocks), (3, 9, 12));
        // so does the cool-down
        states.mark_unreachable("a", "refused");
        assert!(!states.is_available("a"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(states.is_available("a"));
        // the stream going down wins
        assert!(states.set_down("a", "stream ended"));
        assert!(!states.set_down("a", "connect refused"));
        let s = states.get("a").expect("registered");
        assert_eq!(
            (s.available, s.reason.as_deref()),
            (false, Some("connect refused"))
        );
        states.expired("a");
        let s = &states.list()[0];
        assert!(s.expired && s.indexed_blocks == 0);
    }

    #[test]
    fn cache_state_tracks_sync() {
        let c = CacheState::default();
        assert!(!c.get().synced);
        c.synced(4, 10, 100);
        c.applied(11);
        let s = c.get();
        assert!(s.synced && s.reason.is_none());
        assert_eq!((s.epoch, s.last_event_id, s.snapshot_blocks), (4, 11, 100));
        c.down("server gone");
        c.resynced();
        let s = c.get();
        assert_eq!(
            (s.synced, s.reason.as_deref(), s.resyncs),
            (false, Some("server gone"), 1)
        );
    }
}
