//! The block-locality index: sequence hash -> where the block lives.
//!
//! Sources are the workers (their HBM, from their agents' events) and the
//! cache server (its host and disk tiers, from `WatchEvents`). Answers are
//! exact: for each worker, the leading run of a query's blocks it holds.
//!
//! API CONTRACT (implementation in progress; signatures are fixed):

use kvtier_proto::v1::Tier;

/// Dense id of a worker inside the index.
pub type WorkerSlot = u32;

/// One worker's overlap with a queried prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerOverlap {
    /// The worker.
    pub slot: WorkerSlot,
    /// Leading run of the query's blocks in the worker's HBM.
    pub hbm_blocks: u32,
    /// After those, blocks present in the cache server's host tier (GPU tier counts as host).
    pub host_blocks: u32,
    /// After those, blocks present in the cache server's disk tier.
    pub disk_blocks: u32,
}

/// Answer to a prefix query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixMatches {
    /// Blocks in the query.
    pub query_blocks: u32,
    /// Leading run of the query present in the cache server (any tier).
    pub cache_prefix_blocks: u32,
    /// One entry per registered worker, in slot order.
    pub workers: Vec<WorkerOverlap>,
}

/// The index. Not synchronised: wrap it (see [`SharedIndex`]).
#[derive(Debug, Default)]
pub struct LocalityIndex {}

impl LocalityIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a worker (idempotent by name) and returns its slot.
    pub fn add_worker(&mut self, _worker_id: &str) -> WorkerSlot {
        todo!()
    }
    /// Slot of a registered worker.
    pub fn worker_slot(&self, _worker_id: &str) -> Option<WorkerSlot> {
        todo!()
    }
    /// Blocks `hashes` (a chain: hashes[i] is the parent of hashes[i+1], and
    /// `parent` the parent of hashes[0], None for a root) became resident in the worker's HBM.
    pub fn worker_stored(&mut self, _slot: WorkerSlot, _parent: Option<u64>, _hashes: &[u64]) {
        todo!()
    }
    /// Blocks left the worker's HBM (unknown ones are ignored).
    pub fn worker_removed(&mut self, _slot: WorkerSlot, _hashes: &[u64]) {
        todo!()
    }
    /// Forgets everything about the worker's HBM (cleared, resync, expiry).
    pub fn worker_cleared(&mut self, _slot: WorkerSlot) {
        todo!()
    }
    /// Blocks indexed for the worker.
    pub fn worker_blocks(&self, _slot: WorkerSlot) -> u64 {
        todo!()
    }
    /// The cache server stored (or moved) a block into `tier`; TIER_NONE removes it.
    pub fn cache_set(&mut self, _hash: u64, _parent: Option<u64>, _tier: Tier) {
        todo!()
    }
    /// Forgets everything about the cache server (resync).
    pub fn cache_cleared(&mut self) {
        todo!()
    }
    /// Exact overlap of a prefix (sequence hashes in order) with every worker.
    pub fn find_matches(&self, _hashes: &[u64]) -> PrefixMatches {
        todo!()
    }
}

/// The index shared by event sources (writers) and queries (readers).
pub type SharedIndex = std::sync::Arc<parking_lot::RwLock<LocalityIndex>>;
