//! Pure decisions of the event sources: what an event does to the index and
//! when the stream must be resynced. No I/O; the tasks in `worker` and `cache`
//! feed events in and carry the answers out.

use std::collections::{HashMap, HashSet};

use kvtier_proto::v1::{CacheEvent, EventKind, Tier, WorkerEvent, WorkerEventKind};

use crate::index::{UpdateIndex, WorkerSlot};

/// Why a stream must be resynced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResyncReason {
    /// Event ids jumped: events were lost.
    #[error("event id gap: expected {expected}, got {got}")]
    Gap {
        /// The id that should have come.
        expected: u64,
        /// The id that came.
        got: u64,
    },
    /// The peer restarted (its ids started again).
    #[error("epoch changed from {old} to {new}")]
    EpochChanged {
        /// The epoch known so far.
        old: u64,
        /// The event's epoch.
        new: u64,
    },
    /// A live event came before any snapshot: there is nothing to apply it to.
    #[error("event {0} before any snapshot")]
    NoBaseline(u64),
    /// The snapshot phase of a cache watch was broken by an unexpected event.
    #[error("unexpected {0} event inside a snapshot")]
    BrokenSnapshot(&'static str),
}

/// Blocks in an order where every parent present in the set comes before its
/// children, grouped into chains (`parent`, then hashes each the child of the
/// previous): the shape `LocalityIndex::worker_stored` takes. `blocks` pairs a
/// hash with its parent (`None` for a root).
pub fn chains_parents_first(blocks: &[(u64, Option<u64>)]) -> Vec<(Option<u64>, Vec<u64>)> {
    let present: HashSet<u64> = blocks.iter().map(|&(h, _)| h).collect();
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut parent_of: HashMap<u64, Option<u64>> = HashMap::with_capacity(blocks.len());
    let mut roots = Vec::new();
    for &(hash, parent) in blocks {
        if parent_of.insert(hash, parent).is_some() {
            continue; // duplicate hash: first parent wins
        }
        match parent.filter(|p| present.contains(p) && *p != hash) {
            Some(p) => children.entry(p).or_default().push(hash),
            None => roots.push(hash),
        }
    }
    let mut out: Vec<(Option<u64>, Vec<u64>)> = Vec::new();
    let mut visited: HashSet<u64> = HashSet::with_capacity(blocks.len());
    let mut stack: Vec<u64> = Vec::new();
    let mut emit = |start: u64, stack: &mut Vec<u64>, visited: &mut HashSet<u64>| {
        stack.push(start);
        while let Some(h) = stack.pop() {
            if !visited.insert(h) {
                continue;
            }
            let parent = parent_of.get(&h).copied().flatten();
            match out.last_mut() {
                Some((_, chain)) if parent.is_some() && chain.last().copied() == parent => {
                    chain.push(h)
                }
                _ => out.push((parent, vec![h])),
            }
            if let Some(kids) = children.get(&h) {
                // Reverse so that the first child is popped (and chained) first.
                stack.extend(kids.iter().rev().copied());
            }
        }
    };
    for root in roots {
        emit(root, &mut stack, &mut visited);
    }
    // Blocks only reachable through a cycle (never from real hashes).
    for &(hash, _) in blocks {
        if !visited.contains(&hash) {
            emit(hash, &mut stack, &mut visited);
        }
    }
    out
}

/// What a worker event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerStep<'a> {
    /// Blocks became resident: `hashes` chain on `parent`.
    Stored {
        /// Parent of the first block.
        parent: Option<u64>,
        /// Sequence hashes in prefix order.
        hashes: &'a [u64],
    },
    /// Blocks left the worker's HBM.
    Removed(&'a [u64]),
    /// The worker's HBM was cleared.
    Cleared,
    /// Replace the worker's blocks with these chains (from a SNAPSHOT).
    Replace(Vec<(Option<u64>, Vec<u64>)>),
    /// Nothing to do (a duplicate, or a kind this router does not know).
    Skip,
    /// Resubscribe from 0; apply nothing more from this stream.
    Resync(ResyncReason),
    /// The event names another worker than the configured one: apply nothing,
    /// drop the stream.
    Refuse(String),
}

/// The worker's event-stream position: epoch and last applied id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSync {
    worker_id: String,
    epoch: Option<u64>,
    last_id: u64,
}

impl WorkerSync {
    /// No position yet, for the worker configured as `worker_id`.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            epoch: None,
            last_id: 0,
        }
    }

    /// Epoch of the events applied (None before the first snapshot).
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Id of the last event applied.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// The `from_event_id` to subscribe with: the next id when a position is
    /// known (the agent answers with the missed events, or a snapshot when they
    /// are gone or it restarted), else 0 (a snapshot).
    pub fn resume_from(&self) -> u64 {
        match self.epoch {
            Some(_) => self.last_id + 1,
            None => 0,
        }
    }

    /// Forgets the position: the next subscription starts from a snapshot.
    pub fn reset(&mut self) {
        self.epoch = None;
        self.last_id = 0;
    }

    /// Decides what `event` does, advancing the position when it applies.
    /// A resync resets the position.
    pub fn on_event<'a>(&mut self, event: &'a WorkerEvent) -> WorkerStep<'a> {
        if event.worker_id != self.worker_id {
            return WorkerStep::Refuse(format!(
                "the agent reports worker id {:?} but this worker is configured as {:?}",
                event.worker_id, self.worker_id
            ));
        }
        let kind = WorkerEventKind::try_from(event.kind).ok();
        if kind == Some(WorkerEventKind::Snapshot) {
            self.epoch = Some(event.epoch);
            self.last_id = event.event_id;
            let pairs: Vec<(u64, Option<u64>)> = event
                .hashes
                .iter()
                .enumerate()
                .map(|(i, &h)| {
                    let parent = event.parents.get(i).copied().filter(|&p| p != 0);
                    (h, parent)
                })
                .collect();
            return WorkerStep::Replace(chains_parents_first(&pairs));
        }
        let Some(epoch) = self.epoch else {
            return WorkerStep::Resync(ResyncReason::NoBaseline(event.event_id));
        };
        if event.epoch != epoch {
            self.reset();
            return WorkerStep::Resync(ResyncReason::EpochChanged {
                old: epoch,
                new: event.epoch,
            });
        }
        if event.event_id <= self.last_id {
            return WorkerStep::Skip;
        }
        if event.event_id != self.last_id + 1 {
            let expected = self.last_id + 1;
            self.reset();
            return WorkerStep::Resync(ResyncReason::Gap {
                expected,
                got: event.event_id,
            });
        }
        self.last_id = event.event_id;
        match kind {
            Some(WorkerEventKind::Stored) => WorkerStep::Stored {
                parent: event.parent_hash,
                hashes: &event.hashes,
            },
            Some(WorkerEventKind::Removed) => WorkerStep::Removed(&event.hashes),
            Some(WorkerEventKind::Cleared) => WorkerStep::Cleared,
            _ => WorkerStep::Skip,
        }
    }
}

/// Applies a worker step to the index; returns true when it changed anything.
pub fn apply_worker_step(
    index: &mut impl UpdateIndex,
    slot: WorkerSlot,
    step: &WorkerStep,
) -> bool {
    match step {
        WorkerStep::Stored { parent, hashes } => {
            if !hashes.is_empty() {
                index.worker_stored(slot, *parent, hashes);
            }
        }
        WorkerStep::Removed(hashes) => index.worker_removed(slot, hashes),
        WorkerStep::Cleared => index.worker_cleared(slot),
        WorkerStep::Replace(chains) => {
            index.worker_cleared(slot);
            for (parent, hashes) in chains {
                index.worker_stored(slot, *parent, hashes);
            }
        }
        WorkerStep::Skip | WorkerStep::Resync(_) | WorkerStep::Refuse(_) => return false,
    }
    true
}

/// One block of the cache server's view: hash, parent, tier.
pub type CacheBlock = (u64, Option<u64>, Tier);

/// What a cache event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStep {
    /// Set a block's tier (`Tier::None` removes it).
    Set(CacheBlock),
    /// Replace the cache-server view with these blocks (parents first); the
    /// snapshot ended with SYNCED.
    Replace(Vec<CacheBlock>),
    /// Nothing to do now (a snapshot block buffered, a duplicate, another
    /// namespace, an unknown kind).
    Skip,
    /// Resubscribe with a snapshot; apply nothing more from this stream.
    Resync(ResyncReason),
}

/// A cache watch's position: epoch, last applied id, and the snapshot being
/// received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSync {
    namespace: String,
    epoch: Option<u64>,
    last_id: u64,
    pending: Option<Vec<CacheBlock>>,
}

impl CacheSync {
    /// No position yet, for events of `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            epoch: None,
            last_id: 0,
            pending: None,
        }
    }

    /// Epoch of the events applied (None before the first snapshot).
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Id of the last event applied.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// A new watch with `snapshot` begins: buffer its snapshot until SYNCED.
    pub fn begin_snapshot(&mut self) {
        self.pending = Some(Vec::new());
    }

    /// Decides what `event` does, advancing the position when it applies.
    pub fn on_event(&mut self, event: &CacheEvent) -> CacheStep {
        if !event.namespace.is_empty() && event.namespace != self.namespace {
            return CacheStep::Skip;
        }
        let kind = EventKind::try_from(event.kind).ok();
        let tier = Tier::try_from(event.tier).unwrap_or(Tier::None);
        if let Some(pending) = self.pending.as_mut() {
            return match kind {
                Some(EventKind::Stored) | Some(EventKind::Moved) => {
                    if tier != Tier::None {
                        pending.push((event.hash, event.parent_hash, tier));
                    }
                    CacheStep::Skip
                }
                Some(EventKind::Synced) => {
                    self.epoch = Some(event.epoch);
                    self.last_id = event.event_id;
                    let blocks = self.pending.take().unwrap_or_default();
                    CacheStep::Replace(order_cache_blocks(blocks))
                }
                Some(EventKind::Removed) => {
                    self.pending = None;
                    CacheStep::Resync(ResyncReason::BrokenSnapshot("REMOVED"))
                }
                _ => CacheStep::Skip,
            };
        }
        let Some(epoch) = self.epoch else {
            return CacheStep::Resync(ResyncReason::NoBaseline(event.event_id));
        };
        if event.epoch != epoch {
            self.epoch = None;
            return CacheStep::Resync(ResyncReason::EpochChanged {
                old: epoch,
                new: event.epoch,
            });
        }
        if event.event_id <= self.last_id {
            return CacheStep::Skip;
        }
        if event.event_id != self.last_id + 1 {
            let expected = self.last_id + 1;
            self.epoch = None;
            return CacheStep::Resync(ResyncReason::Gap {
                expected,
                got: event.event_id,
            });
        }
        self.last_id = event.event_id;
        match kind {
            Some(EventKind::Stored) | Some(EventKind::Moved) if tier != Tier::None => {
                CacheStep::Set((event.hash, event.parent_hash, tier))
            }
            Some(EventKind::Removed) => CacheStep::Set((event.hash, event.parent_hash, Tier::None)),
            _ => CacheStep::Skip,
        }
    }
}

/// Cache blocks with parents before children.
fn order_cache_blocks(blocks: Vec<CacheBlock>) -> Vec<CacheBlock> {
    let tiers: HashMap<u64, Tier> = blocks.iter().map(|&(h, _, t)| (h, t)).collect();
    let pairs: Vec<(u64, Option<u64>)> = blocks.iter().map(|&(h, p, _)| (h, p)).collect();
    let mut out = Vec::with_capacity(blocks.len());
    for (parent, chain) in chains_parents_first(&pairs) {
        let mut prev = parent;
        for h in chain {
            out.push((h, prev, tiers.get(&h).copied().unwrap_or(Tier::None)));
            prev = Some(h);
        }
    }
    out
}

/// Applies a cache step to the index; returns true when it changed anything.
pub fn apply_cache_step(index: &mut impl UpdateIndex, step: &CacheStep) -> bool {
    match step {
        CacheStep::Set((hash, parent, tier)) => index.cache_set(*hash, *parent, *tier),
        CacheStep::Replace(blocks) => {
            index.cache_cleared();
            for &(hash, parent, tier) in blocks {
                index.cache_set(hash, parent, tier);
            }
        }
        CacheStep::Skip | CacheStep::Resync(_) => return false,
    }
    true
}

#[cfg(test)]
mod tests;
