//! The block-locality index: sequence hash -> where the block lives.
//!
//! Sources are the workers (their HBM, from their agents' events) and the
//! cache server (its host and disk tiers, from `WatchEvents`). Answers are
//! exact: for each worker, the leading run of a query's blocks it holds.
//!
//! # How a query stays fast and exact
//!
//! A sequence hash names its whole prefix, so a query is a chain: block `i`
//! is the parent of block `i + 1`. If a worker holds the parent of every block
//! it holds (its set is *prefix-closed*), "the worker holds query block `i`"
//! is monotone in `i`, and its depth is found by bisection. [`LocalityIndex::find_matches`]
//! bisects all such workers together: it probes the middle block of an
//! interval, splits the workers into those that hold it (depth in the upper
//! half) and those that do not (lower half), and recurses. A probe is one hash
//! lookup and reads a 64-bit holder mask, so the cost is about
//! `log2(n)` lookups per group of workers that end at the same depth (a
//! 2,050-block query: 12 per group), not `n`.
//!
//! Sets are not always prefix-closed (an engine may evict a middle block and
//! keep its descendants; events may arrive children first). For every worker
//! the index counts its *detached* blocks: blocks it holds whose parent it does
//! not hold. That needs each block's parent and, per (block, worker), the
//! number of the block's children the worker holds, kept up to date on every
//! event in O(1) per block. Workers with detached blocks are answered by a
//! walk over the query (one lookup per position, shared by all such workers,
//! stopping when the last of them misses); the others by bisection.
//!
//! The cache server is handled the same way: its detached count decides
//! whether its leading run is found by bisection. The host/disk split of the
//! run that follows each worker's depth is found by bisection too while no
//! cached host block has a cached disk parent (then every chain is
//! `host* disk*`); otherwise by a walk over positions
//! `[min worker depth, cache run end)` (one lookup per position), and with
//! detached cache blocks over `[0, first miss at or after the max worker depth]`.
//! Counters [`IndexStats`] tell which path queries take.
//!
//! Exactness assumes what sequence hashes guarantee: the parent an event names
//! for a block is the block before it in every query that contains it (a
//! different parent for the same hash means a 64-bit collision). An event that
//! names a new parent for a known block re-parents it, with all counts updated.
//!
//! # Cost
//!
//! - Events: O(1) hash lookups per block (the block, its parent); clearing a
//!   worker or the cache scans the whole map (O(blocks), a few ms per million).
//! - Memory: one map entry per block (64 bytes: key and [`node::Node`], plus
//!   hashbrown's control byte and load-factor slack) and 8 bytes per
//!   (block, worker) link; [`LocalityIndex::heap_bytes`] adds it up.
//!   `kvtier-bench index` reports the measured bytes per (block, worker) entry.

mod node;
mod query;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use kvtier_proto::v1::Tier;

use node::{CacheTier, Node, NodeMap, SeqHasherBuilder};

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

/// Shape of the index, for metrics and for choosing how to read answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Distinct blocks with any state (held, cached, or parent of one).
    pub blocks: u64,
    /// (block, worker) pairs: blocks held in some worker's HBM, counted per worker.
    pub worker_entries: u64,
    /// Blocks present in the cache server.
    pub cache_blocks: u64,
    /// Workers whose HBM set is not prefix-closed (queried by a walk).
    pub workers_detached: u32,
    /// Cached blocks whose parent is not cached (cache runs found by a walk while > 0).
    pub cache_detached: u64,
    /// Cached host blocks whose parent is cached on disk (the host/disk split
    /// is found by a walk while > 0).
    pub cache_tier_inversions: u64,
}

/// Per-worker state.
#[derive(Debug, Clone)]
struct WorkerState {
    name: String,
    /// Blocks held.
    blocks: u64,
    /// Held blocks whose parent the worker does not hold.
    detached: u64,
}

/// Cache-server state.
#[derive(Debug, Clone, Copy, Default)]
struct CacheState {
    blocks: u64,
    /// Cached blocks whose (known) parent is not cached.
    detached: u64,
    /// Cached host blocks whose parent is cached on disk.
    inversions: u64,
}

/// The index. Not synchronised: wrap it (see [`SharedIndex`]).
#[derive(Debug, Default)]
pub struct LocalityIndex {
    nodes: NodeMap,
    workers: Vec<WorkerState>,
    slots_by_name: HashMap<String, WorkerSlot>,
    cache: CacheState,
}

fn cache_tier(tier: Tier) -> CacheTier {
    match tier {
        Tier::None => CacheTier::Absent,
        Tier::Gpu | Tier::Host => CacheTier::Host,
        Tier::Disk => CacheTier::Disk,
    }
}

impl LocalityIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            nodes: NodeMap::with_hasher(SeqHasherBuilder),
            ..Self::default()
        }
    }
    /// An empty index with room for `blocks` blocks before it grows.
    pub fn with_capacity(blocks: usize) -> Self {
        Self {
            nodes: NodeMap::with_capacity_and_hasher(blocks, SeqHasherBuilder),
            ..Self::default()
        }
    }
    /// Registers a worker (idempotent by name) and returns its slot.
    pub fn add_worker(&mut self, worker_id: &str) -> WorkerSlot {
        if let Some(&slot) = self.slots_by_name.get(worker_id) {
            return slot;
        }
        let slot = self.workers.len() as WorkerSlot;
        self.workers.push(WorkerState {
            name: worker_id.to_owned(),
            blocks: 0,
            detached: 0,
        });
        self.slots_by_name.insert(worker_id.to_owned(), slot);
        slot
    }
    /// Slot of a registered worker.
    pub fn worker_slot(&self, worker_id: &str) -> Option<WorkerSlot> {
        self.slots_by_name.get(worker_id).copied()
    }
    /// Name of the worker in `slot`.
    pub fn worker_name(&self, slot: WorkerSlot) -> Option<&str> {
        self.workers.get(slot as usize).map(|w| w.name.as_str())
    }
    /// Registered workers (slots are `0..worker_count()`).
    pub fn worker_count(&self) -> u32 {
        self.workers.len() as u32
    }
    /// Blocks `hashes` (a chain: hashes[i] is the parent of hashes[i+1], and
    /// `parent` the parent of hashes[0], None for a root) became resident in the worker's HBM.
    ///
    /// An unregistered slot is ignored. `None` leaves a parent learnt earlier unchanged.
    pub fn worker_stored(&mut self, slot: WorkerSlot, parent: Option<u64>, hashes: &[u64]) {
        if slot as usize >= self.workers.len() {
            return;
        }
        let mut parent = parent;
        for &hash in hashes {
            self.ensure_node(hash, parent);
            self.set_held(hash, slot, true);
            parent = Some(hash);
        }
    }
    /// Blocks left the worker's HBM (unknown ones are ignored).
    pub fn worker_removed(&mut self, slot: WorkerSlot, hashes: &[u64]) {
        if slot as usize >= self.workers.len() {
            return;
        }
        for &hash in hashes {
            if self.nodes.contains_key(&hash) {
                self.set_held(hash, slot, false);
                self.prune(hash);
            }
        }
    }
    /// Forgets everything about the worker's HBM (cleared, resync, expiry).
    ///
    /// Scans every block: O(blocks indexed), a few milliseconds per million.
    pub fn worker_cleared(&mut self, slot: WorkerSlot) {
        let Some(worker) = self.workers.get_mut(slot as usize) else {
            return;
        };
        if worker.blocks == 0 && worker.detached == 0 {
            // No held block means no link of this worker anywhere either.
            return;
        }
        worker.blocks = 0;
        worker.detached = 0;
        self.nodes.retain(|_, node| {
            node.forget_worker(slot);
            !node.is_empty()
        });
    }
    /// Blocks indexed for the worker.
    pub fn worker_blocks(&self, slot: WorkerSlot) -> u64 {
        self.workers.get(slot as usize).map_or(0, |w| w.blocks)
    }
    /// The cache server stored (or moved) a block into `tier`; TIER_NONE removes it.
    ///
    /// `parent` is the block's parent (None for a root, or not known; None
    /// leaves a parent learnt earlier unchanged).
    pub fn cache_set(&mut self, hash: u64, parent: Option<u64>, tier: Tier) {
        let tier = cache_tier(tier);
        if tier == CacheTier::Absent {
            if self.nodes.contains_key(&hash) {
                self.set_tier(hash, CacheTier::Absent);
                self.prune(hash);
            }
            return;
        }
        self.ensure_node(hash, parent);
        self.set_tier(hash, tier);
    }
    /// Forgets everything about the cache server (resync).
    ///
    /// Scans every block: O(blocks indexed).
    pub fn cache_cleared(&mut self) {
        if self.cache.blocks == 0 {
            return;
        }
        self.cache = CacheState::default();
        self.nodes.retain(|_, node| {
            node.forget_cache();
            !node.is_empty()
        });
    }
    /// Exact overlap of a prefix (sequence hashes in order) with every worker.
    pub fn find_matches(&self, hashes: &[u64]) -> PrefixMatches {
        query::find_matches(self, hashes)
    }
    /// Whether a query now walks position by position for some source (a
    /// worker whose set is not prefix-closed, detached cache blocks, or a
    /// host block under a disk block: the exact-walk fallback) instead of
    /// only bisecting.
    pub fn walks(&self) -> bool {
        self.cache.blocks > 0 && (self.cache.detached > 0 || self.cache.inversions > 0)
            || self.workers.iter().any(|w| w.blocks > 0 && w.detached > 0)
    }
    /// Counters describing the index.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            blocks: self.nodes.len() as u64,
            worker_entries: self.workers.iter().map(|w| w.blocks).sum(),
            cache_blocks: self.cache.blocks,
            workers_detached: self.workers.iter().filter(|w| w.detached > 0).count() as u32,
            cache_detached: self.cache.detached,
            cache_tier_inversions: self.cache.inversions,
        }
    }
    /// Bytes the index holds on the heap, counted from capacities: the map's
    /// buckets (key, node, one control byte each) and every node's links.
    pub fn heap_bytes(&self) -> usize {
        let bucket = std::mem::size_of::<(u64, Node)>() + 1;
        // hashbrown keeps buckets = capacity * 8 / 7 rounded up to a power of two.
        let buckets = (self.nodes.capacity() * 8 / 7).next_power_of_two();
        buckets * bucket + self.nodes.values().map(Node::heap_bytes).sum::<usize>()
    }

    /// Creates the node if missing; sets or changes its parent when `parent` is Some.
    fn ensure_node(&mut self, hash: u64, parent: Option<u64>) {
        let known = match self.nodes.get(&hash) {
            None => {
                self.nodes.insert(
                    hash,
                    Node {
                        parent,
                        ..Node::default()
                    },
                );
                return;
            }
            Some(node) => node.parent,
        };
        if parent.is_some() && parent != known && parent != Some(hash) {
            self.reparent(hash, parent);
        }
    }

    /// Moves a block under a new parent: takes every holder and the cache out
    /// under the old parent, then puts them back under the new one.
    fn reparent(&mut self, hash: u64, parent: Option<u64>) {
        let Some(node) = self.nodes.get(&hash) else {
            return;
        };
        let old_parent = node.parent;
        let tier = node.tier;
        let holders: Vec<WorkerSlot> = node
            .links
            .iter()
            .filter(|link| link.held())
            .map(|link| link.slot())
            .collect();
        for &slot in &holders {
            self.set_held(hash, slot, false);
        }
        self.set_tier(hash, CacheTier::Absent);
        if let Some(node) = self.nodes.get_mut(&hash) {
            node.parent = parent;
        }
        for &slot in &holders {
            self.set_held(hash, slot, true);
        }
        self.set_tier(hash, tier);
        if let Some(old_parent) = old_parent {
            self.prune(old_parent);
        }
    }

    /// Drops the node if it carries nothing.
    fn prune(&mut self, hash: u64) {
        if self.nodes.get(&hash).is_some_and(Node::is_empty) {
            self.nodes.remove(&hash);
        }
    }

    /// Sets whether `slot` holds `hash` (whose node exists), keeping the
    /// worker's block and detached counts and the parent's child count exact.
    fn set_held(&mut self, hash: u64, slot: WorkerSlot, held: bool) {
        let Some(node) = self.nodes.get_mut(&hash) else {
            return;
        };
        let was_held = node.held_by(slot);
        if was_held == held {
            return;
        }
        let children = i64::from(node.held_children(slot));
        let parent = node.parent.filter(|&p| p != hash);
        node.set_held(slot, held);
        let parent_held = parent
            .and_then(|p| self.nodes.get(&p))
            .is_some_and(|p| p.held_by(slot));
        let orphan = parent.is_some() && !parent_held;
        let (sign, delta_blocks) = if held { (1, 1) } else { (-1, -1) };
        // The block itself is detached while held under a parent the worker lacks;
        // its held children are detached while it is not held.
        let mut detached_delta = if orphan { sign } else { 0 };
        detached_delta -= sign * children;
        if let Some(parent) = parent {
            self.nodes
                .entry(parent)
                .or_default()
                .add_held_children(slot, sign as i32);
            if !held {
                self.prune(parent);
            }
        }
        if let Some(worker) = self.workers.get_mut(slot as usize) {
            worker.blocks = worker.blocks.saturating_add_signed(delta_blocks);
            worker.detached = worker.detached.saturating_add_signed(detached_delta);
        }
    }

    /// Sets the cache tier of `hash` (whose node exists), keeping the cache's
    /// block, detached and inversion counts and the parent's child counts exact.
    fn set_tier(&mut self, hash: u64, tier: CacheTier) {
        let Some(node) = self.nodes.get_mut(&hash) else {
            return;
        };
        let old = node.tier;
        if old == tier {
            return;
        }
        node.tier = tier;
        let children = i64::from(node.cache_children);
        let host_children = i64::from(node.cache_host_children);
        let parent = node.parent.filter(|&p| p != hash);
        let parent_tier = parent
            .and_then(|p| self.nodes.get(&p))
            .map_or(CacheTier::Absent, |p| p.tier);
        let present = |t: CacheTier| t != CacheTier::Absent;
        let detached_of = |t: CacheTier| -> i64 {
            let own = i64::from(present(t) && parent.is_some() && !present(parent_tier));
            let of_children = if present(t) { 0 } else { children };
            own + of_children
        };
        let inversions_of = |t: CacheTier| -> i64 {
            let own = i64::from(t == CacheTier::Host && parent_tier == CacheTier::Disk);
            let of_children = if t == CacheTier::Disk {
                host_children
            } else {
                0
            };
            own + of_children
        };
        self.cache.detached = self
            .cache
            .detached
            .saturating_add_signed(detached_of(tier) - detached_of(old));
        self.cache.inversions = self
            .cache
            .inversions
            .saturating_add_signed(inversions_of(tier) - inversions_of(old));
        let delta_present = i64::from(present(tier)) - i64::from(present(old));
        let delta_host = i64::from(tier == CacheTier::Host) - i64::from(old == CacheTier::Host);
        self.cache.blocks = self.cache.blocks.saturating_add_signed(delta_present);
        if let Some(parent) = parent {
            if delta_present != 0 || delta_host != 0 {
                let parent_node = self.nodes.entry(parent).or_default();
                parent_node.cache_children = parent_node
                    .cache_children
                    .saturating_add_signed(delta_present as i32);
                parent_node.cache_host_children = parent_node
                    .cache_host_children
                    .saturating_add_signed(delta_host as i32);
                self.prune(parent);
            }
        }
    }
}

/// The index shared by event sources (writers) and queries (readers):
/// `Arc<IndexLock>`, made by [`shared`].
///
/// Use: writers take `write()` per event (or per small batch: a query waits
/// for at most the batch in front of it), readers take `read()` around one
/// [`LocalityIndex::find_matches`]. `kvtier-bench index` measures query
/// latency with a writer thread applying events at the same time.
pub type SharedIndex = std::sync::Arc<IndexLock>;

/// A new [`SharedIndex`] around `index`.
pub fn shared(index: LocalityIndex) -> SharedIndex {
    std::sync::Arc::new(IndexLock {
        lock: parking_lot::RwLock::new(index),
    })
}

/// How long a reader spins for a writer to finish before it parks. A write
/// holds the lock for one event or a chunk of at most a few dozen blocks
/// (microseconds); parking and waking a thread through the kernel costs
/// tens of microseconds on a VM, more than the wait itself.
const READ_SPIN: std::time::Duration = std::time::Duration::from_micros(20);

/// A reader-writer lock whose readers spin briefly (then yield, then park)
/// while a short write is in progress, instead of parking at once.
#[derive(Debug)]
pub struct IndexLock {
    lock: parking_lot::RwLock<LocalityIndex>,
}

impl IndexLock {
    /// Shared access for a query.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, LocalityIndex> {
        if let Some(guard) = self.lock.try_read() {
            return guard;
        }
        let started = std::time::Instant::now();
        let mut spins = 0u32;
        loop {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if let Some(guard) = self.lock.try_read() {
                return guard;
            }
            spins += 1;
            if spins.is_multiple_of(16) {
                // On an oversubscribed machine the writer may be descheduled:
                // let it run.
                std::thread::yield_now();
            }
            if started.elapsed() > READ_SPIN {
                return self.lock.read();
            }
        }
    }

    /// Exclusive access for an event. Released fairly: queries parked behind
    /// it run before the next write, so a stream of events cannot starve them.
    pub fn write(&self) -> IndexWriteGuard<'_> {
        IndexWriteGuard {
            guard: Some(self.lock.write()),
        }
    }
}

/// Write access to the index; see [`IndexLock::write`].
#[derive(Debug)]
pub struct IndexWriteGuard<'a> {
    guard: Option<parking_lot::RwLockWriteGuard<'a, LocalityIndex>>,
}

impl std::ops::Deref for IndexWriteGuard<'_> {
    type Target = LocalityIndex;

    fn deref(&self) -> &LocalityIndex {
        // Some until drop.
        self.guard
            .as_deref()
            .expect("write guard used after release")
    }
}

impl std::ops::DerefMut for IndexWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut LocalityIndex {
        self.guard
            .as_deref_mut()
            .expect("write guard used after release")
    }
}

impl Drop for IndexWriteGuard<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            parking_lot::RwLockWriteGuard::unlock_fair(guard);
        }
    }
}
