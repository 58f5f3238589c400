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
//! is monotone in `i`, and its depth can be searched for instead of walked.
//! [`LocalityIndex::find_matches`] searches all such workers (and the cache
//! server's presence and host predicates) together, several ways at once:
//! each round probes up to 15 evenly spaced positions of every open interval
//! (24 probes per round in all),
//! reading one 64-bit holder mask per probe, and splits the workers by where
//! each stops holding. A 2,050-block query takes three or four rounds
//! (2,050 -> 128 -> 8 -> exact for one interval; more intervals share the 24). The probes of a round are independent, so the table
//! ([`table`]) prefetches all their slots before reading any: a round costs
//! about one memory latency instead of one per probe.
//!
//! Sets are not always prefix-closed (an engine may evict a middle block and
//! keep its descendants; events may arrive children first). For every worker
//! the index counts its *detached* blocks: blocks it holds whose parent it does
//! not hold. That needs each block's parent and, per (block, worker), the
//! number of the block's children the worker holds, kept up to date on every
//! event in O(1) per block. Workers with detached blocks are answered by a
//! walk over the query (one lookup per position, shared by all such workers,
//! stopping when the last of them misses); the others by the search.
//!
//! The cache server is handled the same way: its detached count decides
//! whether its leading run is found by the search. The host/disk split of the
//! run that follows each worker's depth is found by the search too while no
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
//! - Memory: one 64-byte table slot per block (key and [`node::Node`], one
//!   cache line; the table is kept at most 3/4 full, so 1.33-2.67 slots per
//!   block) and 8 bytes per (block, worker) link; [`LocalityIndex::heap_bytes`]
//!   adds it up. A [`SharedIndex`] holds two copies (see [`IndexLock`]).
//!   `kvtier-bench index` reports the measured bytes per (block, worker) entry.

mod node;
mod query;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use kvtier_proto::v1::Tier;

use node::{CacheTier, Node};
use table::NodeTable;

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
#[derive(Debug, Default, Clone)]
pub struct LocalityIndex {
    nodes: NodeTable,
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
        Self::default()
    }
    /// An empty index with room for `blocks` blocks before it grows.
    pub fn with_capacity(blocks: usize) -> Self {
        Self {
            nodes: NodeTable::with_capacity(blocks),
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
            if self.nodes.contains_key(hash) {
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
            if self.nodes.contains_key(hash) {
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
    /// only searching.
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
        self.nodes.slot_bytes() + self.nodes.values().map(Node::heap_bytes).sum::<usize>()
    }

    /// Creates the node if missing; sets or changes its parent when `parent` is Some.
    fn ensure_node(&mut self, hash: u64, parent: Option<u64>) {
        let known = match self.nodes.get(hash) {
            None => {
                self.nodes
                    .get_or_insert_with(hash, || Node::with_parent(parent));
                return;
            }
            Some(node) => node.parent(),
        };
        if parent.is_some() && parent != known && parent != Some(hash) {
            self.reparent(hash, parent);
        }
    }

    /// Moves a block under a new parent: takes every holder and the cache out
    /// under the old parent, then puts them back under the new one.
    fn reparent(&mut self, hash: u64, parent: Option<u64>) {
        let Some(node) = self.nodes.get(hash) else {
            return;
        };
        let old_parent = node.parent();
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
        if let Some(node) = self.nodes.get_mut(hash) {
            node.set_parent(parent);
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
        if self.nodes.get(hash).is_some_and(Node::is_empty) {
            self.nodes.remove(hash);
        }
    }

    /// Sets whether `slot` holds `hash` (whose node exists), keeping the
    /// worker's block and detached counts and the parent's child count exact.
    fn set_held(&mut self, hash: u64, slot: WorkerSlot, held: bool) {
        let Some(node) = self.nodes.get_mut(hash) else {
            return;
        };
        let was_held = node.held_by(slot);
        if was_held == held {
            return;
        }
        let children = i64::from(node.held_children(slot));
        let parent = node.parent().filter(|&p| p != hash);
        node.set_held(slot, held);
        let parent_held = parent
            .and_then(|p| self.nodes.get(p))
            .is_some_and(|p| p.held_by(slot));
        let orphan = parent.is_some() && !parent_held;
        let (sign, delta_blocks) = if held { (1, 1) } else { (-1, -1) };
        // The block itself is detached while held under a parent the worker lacks;
        // its held children are detached while it is not held.
        let mut detached_delta = if orphan { sign } else { 0 };
        detached_delta -= sign * children;
        if let Some(parent) = parent {
            self.nodes
                .get_or_insert_default(parent)
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
        let Some(node) = self.nodes.get_mut(hash) else {
            return;
        };
        let old = node.tier;
        if old == tier {
            return;
        }
        node.tier = tier;
        let children = i64::from(node.cache_children);
        let host_children = i64::from(node.cache_host_children);
        let parent = node.parent().filter(|&p| p != hash);
        let parent_tier = parent
            .and_then(|p| self.nodes.get(p))
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
                let parent_node = self.nodes.get_or_insert_default(parent);
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

/// The changes an event source makes to the index: implemented by
/// [`LocalityIndex`] itself and by the write guard of a [`SharedIndex`], so
/// that code applying events works on either.
pub trait UpdateIndex {
    /// See [`LocalityIndex::add_worker`].
    fn add_worker(&mut self, worker_id: &str) -> WorkerSlot;
    /// See [`LocalityIndex::worker_stored`].
    fn worker_stored(&mut self, slot: WorkerSlot, parent: Option<u64>, hashes: &[u64]);
    /// See [`LocalityIndex::worker_removed`].
    fn worker_removed(&mut self, slot: WorkerSlot, hashes: &[u64]);
    /// See [`LocalityIndex::worker_cleared`].
    fn worker_cleared(&mut self, slot: WorkerSlot);
    /// See [`LocalityIndex::cache_set`].
    fn cache_set(&mut self, hash: u64, parent: Option<u64>, tier: Tier);
    /// See [`LocalityIndex::cache_cleared`].
    fn cache_cleared(&mut self);
}

impl UpdateIndex for LocalityIndex {
    fn add_worker(&mut self, worker_id: &str) -> WorkerSlot {
        LocalityIndex::add_worker(self, worker_id)
    }
    fn worker_stored(&mut self, slot: WorkerSlot, parent: Option<u64>, hashes: &[u64]) {
        LocalityIndex::worker_stored(self, slot, parent, hashes);
    }
    fn worker_removed(&mut self, slot: WorkerSlot, hashes: &[u64]) {
        LocalityIndex::worker_removed(self, slot, hashes);
    }
    fn worker_cleared(&mut self, slot: WorkerSlot) {
        LocalityIndex::worker_cleared(self, slot);
    }
    fn cache_set(&mut self, hash: u64, parent: Option<u64>, tier: Tier) {
        LocalityIndex::cache_set(self, hash, parent, tier);
    }
    fn cache_cleared(&mut self) {
        LocalityIndex::cache_cleared(self);
    }
}

/// One change, kept by the write side of a [`SharedIndex`] until both
/// copies have it.
#[derive(Debug, Clone)]
enum IndexOp {
    AddWorker(String),
    WorkerStored {
        slot: WorkerSlot,
        parent: Option<u64>,
        hashes: Vec<u64>,
    },
    WorkerRemoved {
        slot: WorkerSlot,
        hashes: Vec<u64>,
    },
    WorkerCleared(WorkerSlot),
    CacheSet {
        hash: u64,
        parent: Option<u64>,
        tier: Tier,
    },
    CacheCleared,
}

impl IndexOp {
    fn apply(&self, index: &mut LocalityIndex) {
        match self {
            IndexOp::AddWorker(name) => {
                index.add_worker(name);
            }
            IndexOp::WorkerStored {
                slot,
                parent,
                hashes,
            } => index.worker_stored(*slot, *parent, hashes),
            IndexOp::WorkerRemoved { slot, hashes } => index.worker_removed(*slot, hashes),
            IndexOp::WorkerCleared(slot) => index.worker_cleared(*slot),
            IndexOp::CacheSet { hash, parent, tier } => index.cache_set(*hash, *parent, *tier),
            IndexOp::CacheCleared => index.cache_cleared(),
        }
    }
}

/// The index shared by event sources (writers) and queries (readers):
/// `Arc<IndexLock>`, made by [`shared`].
///
/// Readers never wait for writers: see [`IndexLock`].
pub type SharedIndex = std::sync::Arc<IndexLock>;

/// A new [`SharedIndex`] around `index`.
pub fn shared(index: LocalityIndex) -> SharedIndex {
    std::sync::Arc::new(IndexLock {
        copies: [
            std::cell::UnsafeCell::new(index.clone()),
            std::cell::UnsafeCell::new(index),
        ],
        live: AtomicUsize::new(0),
        readers: [ReaderCount::default(), ReaderCount::default()],
        writer: parking_lot::Mutex::new(Vec::new()),
    })
}

/// Readers inside one copy, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct ReaderCount(AtomicUsize);

/// Two copies of the index ("left-right"): queries read the *live* copy
/// while a writer changes the other one, then the two swap roles. A query
/// never waits for a writer, however long its event: a write applies to the
/// standby copy, which no query reads, and becomes visible all at once when
/// the guard drops. The writer pays instead: it waits for queries that were
/// still reading the standby copy when it was last live (they entered before
/// the previous swap, so the wait is bounded by one query), and applies every
/// change twice (the second time at the start of the next write, to catch
/// the other copy up). Memory: two copies.
///
/// Protocol (all `SeqCst`): a reader loads `live`, increments that copy's
/// count, and re-checks `live`; if it changed, it backs out and retries, so it
/// never reads a copy that became standby before its increment. A writer,
/// holding the writer mutex, waits for the standby copy's count to reach zero
/// after the swap that made it standby: from then on no reader can be inside
/// it. Readers must not call [`IndexLock::write`] while holding a read guard.
pub struct IndexLock {
    copies: [std::cell::UnsafeCell<LocalityIndex>; 2],
    /// Which copy readers use.
    live: AtomicUsize,
    readers: [ReaderCount; 2],
    /// Serialises writers; holds the changes the standby copy still lacks.
    writer: parking_lot::Mutex<Vec<IndexOp>>,
}

// SAFETY: a copy is only mutated by the one writer holding `writer`, and only
// while no reader is inside it (see the protocol above); readers share `&`
// access. `LocalityIndex` is `Send + Sync`.
unsafe impl Sync for IndexLock {}

impl std::fmt::Debug for IndexLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexLock")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl IndexLock {
    /// Shared access for a query: the live copy. Never waits for a writer.
    pub fn read(&self) -> IndexReadGuard<'_> {
        loop {
            let copy = self.live.load(Ordering::SeqCst);
            self.readers[copy].0.fetch_add(1, Ordering::SeqCst);
            if self.live.load(Ordering::SeqCst) == copy {
                return IndexReadGuard { lock: self, copy };
            }
            // A writer swapped copies in between: this one may be written now.
            self.readers[copy].0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Exclusive access for events: changes go to the standby copy and become
    /// visible to queries together when the guard drops.
    pub fn write(&self) -> IndexWriteGuard<'_> {
        let mut pending = self.writer.lock();
        let standby = 1 - self.live.load(Ordering::SeqCst);
        let mut spins = 0u32;
        while self.readers[standby].0.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 128 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: no reader is inside the standby copy, none can enter it
        // (`live` points at the other), and other writers wait on the mutex.
        let copy = unsafe { &mut *self.copies[standby].get() };
        for op in pending.drain(..) {
            op.apply(copy);
        }
        IndexWriteGuard {
            lock: self,
            pending,
            standby,
            changed: false,
        }
    }

    /// Heap bytes of both copies (see [`LocalityIndex::heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        let _writer = self.writer.lock();
        // SAFETY: with the writer mutex held nobody mutates either copy.
        self.copies
            .iter()
            .map(|copy| unsafe { &*copy.get() }.heap_bytes())
            .sum()
    }
}

/// Read access to the live copy of the index; see [`IndexLock::read`].
pub struct IndexReadGuard<'a> {
    lock: &'a IndexLock,
    copy: usize,
}

impl std::ops::Deref for IndexReadGuard<'_> {
    type Target = LocalityIndex;

    fn deref(&self) -> &LocalityIndex {
        // SAFETY: the reader count of `copy` is held, so no writer mutates it.
        unsafe { &*self.lock.copies[self.copy].get() }
    }
}

impl Drop for IndexReadGuard<'_> {
    fn drop(&mut self) {
        self.lock.readers[self.copy]
            .0
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// Write access to the index; see [`IndexLock::write`]. Reads through it see
/// the changes made so far.
pub struct IndexWriteGuard<'a> {
    lock: &'a IndexLock,
    pending: parking_lot::MutexGuard<'a, Vec<IndexOp>>,
    standby: usize,
    changed: bool,
}

impl IndexWriteGuard<'_> {
    fn apply(&mut self, op: IndexOp) {
        // SAFETY: as in `IndexLock::write`; the guard holds the writer mutex.
        let copy = unsafe { &mut *self.lock.copies[self.standby].get() };
        op.apply(copy);
        self.pending.push(op);
        self.changed = true;
    }
}

impl IndexWriteGuard<'_> {
    /// See [`LocalityIndex::add_worker`].
    pub fn add_worker(&mut self, worker_id: &str) -> WorkerSlot {
        if let Some(slot) = self.worker_slot(worker_id) {
            return slot;
        }
        self.apply(IndexOp::AddWorker(worker_id.to_owned()));
        self.worker_count() - 1
    }
    /// See [`LocalityIndex::worker_stored`].
    pub fn worker_stored(&mut self, slot: WorkerSlot, parent: Option<u64>, hashes: &[u64]) {
        self.apply(IndexOp::WorkerStored {
            slot,
            parent,
            hashes: hashes.to_vec(),
        });
    }
    /// See [`LocalityIndex::worker_removed`].
    pub fn worker_removed(&mut self, slot: WorkerSlot, hashes: &[u64]) {
        self.apply(IndexOp::WorkerRemoved {
            slot,
            hashes: hashes.to_vec(),
        });
    }
    /// See [`LocalityIndex::worker_cleared`].
    pub fn worker_cleared(&mut self, slot: WorkerSlot) {
        self.apply(IndexOp::WorkerCleared(slot));
    }
    /// See [`LocalityIndex::cache_set`].
    pub fn cache_set(&mut self, hash: u64, parent: Option<u64>, tier: Tier) {
        self.apply(IndexOp::CacheSet { hash, parent, tier });
    }
    /// See [`LocalityIndex::cache_cleared`].
    pub fn cache_cleared(&mut self) {
        self.apply(IndexOp::CacheCleared);
    }
}

impl UpdateIndex for IndexWriteGuard<'_> {
    fn add_worker(&mut self, worker_id: &str) -> WorkerSlot {
        IndexWriteGuard::add_worker(self, worker_id)
    }
    fn worker_stored(&mut self, slot: WorkerSlot, parent: Option<u64>, hashes: &[u64]) {
        IndexWriteGuard::worker_stored(self, slot, parent, hashes);
    }
    fn worker_removed(&mut self, slot: WorkerSlot, hashes: &[u64]) {
        IndexWriteGuard::worker_removed(self, slot, hashes);
    }
    fn worker_cleared(&mut self, slot: WorkerSlot) {
        IndexWriteGuard::worker_cleared(self, slot);
    }
    fn cache_set(&mut self, hash: u64, parent: Option<u64>, tier: Tier) {
        IndexWriteGuard::cache_set(self, hash, parent, tier);
    }
    fn cache_cleared(&mut self) {
        IndexWriteGuard::cache_cleared(self);
    }
}

impl std::ops::Deref for IndexWriteGuard<'_> {
    type Target = LocalityIndex;

    fn deref(&self) -> &LocalityIndex {
        // SAFETY: as in `IndexLock::write`.
        unsafe { &*self.lock.copies[self.standby].get() }
    }
}

impl Drop for IndexWriteGuard<'_> {
    fn drop(&mut self) {
        if self.changed {
            // Publish: queries from now on read the copy just written.
            self.lock.live.store(self.standby, Ordering::SeqCst);
        }
    }
}
