//! The bounded block-event bus behind `WatchEvents`.
//!
//! Events get an id from the store while it holds its lock, so ids follow the
//! order of the changes. Ids count per namespace (1, 2, 3, ... in each), so a
//! subscriber that watches one namespace can tell a gap from a filtered event. The bus is a bounded broadcast channel: a
//! subscriber that falls behind loses the oldest events and sees a gap in ids,
//! which tells it to resync (by `Lookup`) instead of trusting a partial view.

use std::collections::HashMap;

use tokio::sync::broadcast;

use crate::block::BlockKey;
use crate::tier::Tier;

/// What happened to a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEventKind {
    /// Newly stored in `tier`.
    Stored,
    /// Moved to `tier` (promotion or demotion).
    Moved,
    /// Left the store.
    Removed,
}

/// One block event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreEvent {
    /// Monotonic per namespace, starting at 1 in each process.
    pub id: u64,
    /// What happened.
    pub kind: StoreEventKind,
    /// Which block.
    pub key: BlockKey,
    /// Tier after the event; `None` for removals.
    pub tier: Option<Tier>,
    /// Parent sequence hash, when known.
    pub parent: Option<u64>,
}

/// Sender side; cheap to clone receivers from.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<StoreEvent>,
    next_id: HashMap<u32, u64>,
}

impl EventBus {
    /// A bus that keeps at most `capacity` undelivered events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            next_id: HashMap::new(),
        }
    }

    /// Publishes an event with the next id. Without subscribers this only bumps the id.
    pub fn publish(
        &mut self,
        kind: StoreEventKind,
        key: BlockKey,
        tier: Option<Tier>,
        parent: Option<u64>,
    ) {
        let next = self.next_id.entry(key.namespace).or_insert(1);
        let event = StoreEvent {
            id: *next,
            kind,
            key,
            tier,
            parent,
        };
        *next += 1;
        // An error only means nobody listens right now.
        let _ = self.sender.send(event);
    }

    /// A new subscription, starting with the next event.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.sender.subscribe()
    }

    /// Id of the last event of every namespace that had one.
    pub fn last_ids(&self) -> HashMap<u32, u64> {
        self.next_id
            .iter()
            .map(|(&namespace, &next)| (namespace, next - 1))
            .collect()
    }

    /// Id the next event of `namespace` will get.
    pub fn next_id(&self, namespace: u32) -> u64 {
        self.next_id.get(&namespace).copied().unwrap_or(1)
    }
}
