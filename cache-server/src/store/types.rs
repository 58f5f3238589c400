//! The values the store's API hands out: its error, where a put left a block,
//! a hit, a snapshot for watchers and a tier's occupancy. Plain data, so that
//! the modules behind the facade can change without touching callers.

use std::collections::HashMap;

use tokio::sync::broadcast;

use crate::block::{Block, BlockKey};
use crate::events::StoreEvent;
use crate::tier::{Tier, TierError};

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No enabled tier can hold a block that large.
    #[error("block of {bytes} bytes is larger than every tier (largest capacity {largest} bytes)")]
    TooLarge {
        /// The block's size.
        bytes: u64,
        /// The largest tier capacity.
        largest: u64,
    },
    /// A tier failed.
    #[error(transparent)]
    Tier(#[from] TierError),
}

/// What a shutdown spill ([`super::TieredStore::spill_to_disk`]) kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillReport {
    /// Memory-tier blocks now on disk.
    pub kept: u64,
    /// Their payload bytes.
    pub kept_bytes: u64,
    /// Blocks the disk tier had no free room for (the coldest).
    pub no_room: u64,
    /// Blocks not reached by the deadline.
    pub left: u64,
    /// Blocks whose copy failed.
    pub failed: u64,
}

/// Where a `put` left the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Tier the block is in now.
    pub tier: Tier,
    /// The block was already present; nothing was written.
    pub already_present: bool,
}

/// A block read from the store.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The block.
    pub block: Block,
    /// Tier it was served from.
    pub tier: Tier,
}

/// A block resident in the store, as listed by a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentBlock {
    /// Which block.
    pub key: BlockKey,
    /// Tier it is in.
    pub tier: Tier,
    /// Parent sequence hash, when known.
    pub parent: Option<u64>,
}

/// A watcher's consistent starting point (see
/// [`super::TieredStore::subscribe_with_snapshot`]).
#[derive(Debug)]
pub struct StoreSnapshot {
    /// Events after the snapshot, starting with the next one.
    pub events: broadcast::Receiver<StoreEvent>,
    /// Blocks resident when the snapshot was taken, in no particular order.
    pub blocks: Vec<ResidentBlock>,
    /// Id of the last event each namespace had published by then (namespaces
    /// that never published one are absent: their last id is 0).
    pub last_ids: HashMap<u32, u64>,
}

/// Occupancy of one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierUsage {
    /// Which tier.
    pub tier: Tier,
    /// Configured capacity (0: disabled).
    pub capacity_bytes: u64,
    /// Payload bytes held.
    pub used_bytes: u64,
    /// Blocks held.
    pub blocks: u64,
}
