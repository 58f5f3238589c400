//! What the store tells the outside world about its blocks: block events to
//! watchers (through the [`EventBus`]) with the counters that go with them,
//! and the per-tier gauges.
//!
//! Event ids are taken here, in the order the changes happen: today that
//! order is the store's lock. Keeping every publication in this one place is
//! what lets a split lock give the publisher a small lock of its own, taken
//! right after the index change it reports.

use tokio::sync::broadcast;

use super::index::Index;
use super::tiers::Tiers;
use crate::block::BlockKey;
use crate::events::{EventBus, StoreEvent, StoreEventKind};
use crate::metrics as m;
use crate::tier::Tier;

/// Undelivered events a watcher may fall behind by before it sees a gap.
const EVENT_BUFFER: usize = 65_536;

/// The store's event publisher.
#[derive(Debug)]
pub(super) struct Publisher {
    bus: EventBus,
}

impl Publisher {
    /// A publisher with no subscribers yet.
    pub fn new() -> Self {
        Self {
            bus: EventBus::new(EVENT_BUFFER),
        }
    }

    /// A new block, written to `tier`.
    pub fn stored(&mut self, key: BlockKey, tier: Tier, parent: Option<u64>) {
        self.bus
            .publish(StoreEventKind::Stored, key, Some(tier), parent);
        metrics::counter!(m::BLOCKS_STORED, "tier" => tier.as_str()).increment(1);
    }

    /// A block moved from `from` to `to`: a demotion when `to` is lower
    /// ([`Tier`] orders highest first), else a promotion.
    pub fn moved(&mut self, key: BlockKey, from: Tier, to: Tier, parent: Option<u64>) {
        self.bus
            .publish(StoreEventKind::Moved, key, Some(to), parent);
        let counter = if to > from {
            m::DEMOTIONS
        } else {
            m::PROMOTIONS
        };
        metrics::counter!(counter, "from" => from.as_str(), "to" => to.as_str()).increment(1);
    }

    /// A block left the store from `tier`, for `reason` (`capacity`, `error`
    /// or `corrupt`).
    pub fn removed(
        &mut self,
        key: BlockKey,
        tier: Tier,
        parent: Option<u64>,
        reason: &'static str,
    ) {
        self.bus.publish(StoreEventKind::Removed, key, None, parent);
        metrics::counter!(m::EVICTIONS, "tier" => tier.as_str(), "reason" => reason).increment(1);
    }

    /// A subscription, starting with the next event.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.bus.subscribe()
    }

    /// Id of the last event of every namespace that had one.
    pub fn last_ids(&self) -> std::collections::HashMap<u32, u64> {
        self.bus.last_ids()
    }
}

/// Sets each tier's byte and block gauges from the index.
pub(super) fn tier_gauges(index: &Index) {
    for tier in Tier::ALL {
        metrics::gauge!(m::TIER_BYTES, "tier" => tier.as_str()).set(index.used(tier) as f64);
        metrics::gauge!(m::TIER_BLOCKS, "tier" => tier.as_str()).set(index.blocks(tier) as f64);
    }
}

/// Sets each tier's capacity gauge (once, at open).
pub(super) fn capacity_gauges(tiers: &Tiers) {
    for tier in Tier::ALL {
        metrics::gauge!(m::TIER_CAPACITY_BYTES, "tier" => tier.as_str())
            .set(tiers.capacity(tier) as f64);
    }
}
