//! The simulated worker's own prefix cache: which sequence hashes are resident
//! in which pool block, with reference counts for the blocks running requests
//! use and an LRU order over the others. Plain bookkeeping, no I/O: the caller
//! reports evictions (REMOVED) and new residents (STORED) to the agent.
//!
//! A pool block is in exactly one of three states: free, reserved by a
//! request (allocated, being filled by an onboard or a prefill), or resident
//! (mapped from a hash). Resident blocks with no references are evictable, the
//! least recently released first; within one release the deepest block of the
//! prefix goes first, so a prefix shrinks from its tail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
struct Entry {
    block: u64,
    parent: Option<u64>,
    refs: u32,
    /// Position in the LRU order (meaningful when `refs == 0`).
    tick: u64,
}

/// Blocks handed out by [`PrefixCache::allocate`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The blocks, now reserved by the caller (possibly fewer than asked for
    /// when every other block is in use).
    pub blocks: Vec<u64>,
    /// Hashes evicted to make room: report them REMOVED.
    pub evicted: Vec<u64>,
}

/// A resident block, for re-reporting the whole set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// Sequence hash.
    pub hash: u64,
    /// Parent hash (None for a root).
    pub parent: Option<u64>,
    /// Pool block holding it.
    pub block: u64,
}

/// Bounded LRU prefix cache over a pool of `capacity` blocks.
#[derive(Debug)]
pub struct PrefixCache {
    capacity: u64,
    entries: HashMap<u64, Entry>,
    /// tick → hash, for resident entries with no references.
    lru: BTreeMap<u64, u64>,
    free: Vec<u64>,
    reserved: usize,
    tick: u64,
}

impl PrefixCache {
    /// An empty cache over blocks `0..capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            free: (0..capacity).rev().collect(),
            reserved: 0,
            tick: 0,
        }
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Resident blocks.
    pub fn resident(&self) -> usize {
        self.entries.len()
    }

    /// Resident blocks that at least one request uses.
    pub fn referenced(&self) -> usize {
        self.entries.len() - self.lru.len()
    }

    /// Blocks reserved by requests (allocated, not yet resident or given back).
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Free blocks.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// The block holding `hash`, if resident.
    pub fn block_of(&self, hash: u64) -> Option<u64> {
        self.entries.get(&hash).map(|e| e.block)
    }

    /// References to `hash` (0 when not resident or unused).
    pub fn refs(&self, hash: u64) -> u32 {
        self.entries.get(&hash).map_or(0, |e| e.refs)
    }

    fn take_ref(&mut self, hash: u64) -> Option<u64> {
        let e = self.entries.get_mut(&hash)?;
        if e.refs == 0 {
            self.lru.remove(&e.tick);
        }
        e.refs += 1;
        Some(e.block)
    }

    /// The longest resident prefix of `hashes`: takes a reference on each of
    /// its blocks and returns their block ids (in order).
    pub fn pin_prefix(&mut self, hashes: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for &h in hashes {
            match self.take_ref(h) {
                Some(b) => out.push(b),
                None => break,
            }
        }
        out
    }

    /// Takes a reference on `hash` if it is resident; returns its block.
    pub fn pin(&mut self, hash: u64) -> Option<u64> {
        self.take_ref(hash)
    }

    /// Drops one reference on each of `hashes` (given in prefix order). Blocks
    /// left unreferenced become evictable as the most recently used, deepest
    /// first in eviction order.
    pub fn unpin(&mut self, hashes: &[u64]) {
        for &h in hashes.iter().rev() {
            let Some(e) = self.entries.get_mut(&h) else {
                continue;
            };
            if e.refs == 0 {
                continue;
            }
            e.refs -= 1;
            if e.refs == 0 {
                self.tick += 1;
                e.tick = self.tick;
                self.lru.insert(self.tick, h);
            }
        }
    }

    /// Reserves up to `n` blocks: free ones first, then by evicting the least
    /// recently used unreferenced blocks.
    pub fn allocate(&mut self, n: usize) -> Allocation {
        let mut out = Allocation::default();
        while out.blocks.len() < n {
            if let Some(b) = self.free.pop() {
                out.blocks.push(b);
                continue;
            }
            let Some((_, hash)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&hash) {
                out.blocks.push(e.block);
                out.evicted.push(hash);
            }
        }
        self.reserved += out.blocks.len();
        out
    }

    /// Returns reserved blocks that were not used.
    pub fn give_back(&mut self, blocks: &[u64]) {
        self.reserved = self.reserved.saturating_sub(blocks.len());
        self.free.extend(blocks.iter().rev());
    }

    /// Makes `hash` (child of `parent`) resident in the
    /// reserved block `block`, with one reference taken. When `hash` is
    /// already resident (another request made it so meanwhile), `block` goes
    /// back to the free list and the existing block is referenced instead.
    /// Returns the block holding `hash` and whether it is new.
    pub fn insert(&mut self, hash: u64, parent: Option<u64>, block: u64) -> (u64, bool) {
        self.reserved = self.reserved.saturating_sub(1);
        if let Some(existing) = self.take_ref(hash) {
            self.free.push(block);
            return (existing, false);
        }
        self.entries.insert(
            hash,
            Entry {
                block,
                parent,
                refs: 1,
                tick: 0,
            },
        );
        (block, true)
    }

    /// Every resident block, parents before children, depth first (so that
    /// consecutive entries chain: one STORED report per branch when the
    /// whole set is re-reported after the agent restarts).
    pub fn residents(&self) -> Vec<Resident> {
        let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut roots = Vec::new();
        for (&hash, e) in &self.entries {
            match e.parent.filter(|p| self.entries.contains_key(p)) {
                Some(p) => children.entry(p).or_default().push(hash),
                None => roots.push(hash),
            }
        }
        roots.sort_unstable();
        let mut out = Vec::with_capacity(self.entries.len());
        let mut stack: Vec<u64> = roots.into_iter().rev().collect();
        while let Some(hash) = stack.pop() {
            let e = &self.entries[&hash];
            out.push(Resident {
                hash,
                parent: e.parent,
                block: e.block,
            });
            if let Some(kids) = children.get_mut(&hash) {
                kids.sort_unstable();
                stack.extend(kids.iter().rev());
            }
        }
        out
    }
}

/// What one request holds in a shared [`PrefixCache`]: references on
/// resident blocks and reserved blocks. Dropping it (request finished,
/// failed or cancelled) releases everything.
#[derive(Debug)]
pub struct Held {
    cache: Arc<Mutex<PrefixCache>>,
    pinned: Vec<u64>,
    reserved: Vec<u64>,
}

impl Held {
    /// Holds nothing yet.
    pub fn new(cache: Arc<Mutex<PrefixCache>>) -> Self {
        Self {
            cache,
            pinned: Vec::new(),
            reserved: Vec::new(),
        }
    }

    /// [`PrefixCache::pin_prefix`], held.
    pub fn pin_prefix(&mut self, hashes: &[u64]) -> Vec<u64> {
        let blocks = self.cache.lock().pin_prefix(hashes);
        self.pinned.extend_from_slice(&hashes[..blocks.len()]);
        blocks
    }

    /// [`PrefixCache::pin`] on each of `hashes`, held; returns the pinned
    /// (hash, block) pairs (hashes no longer resident are skipped).
    pub fn pin_each(&mut self, hashes: &[u64]) -> Vec<(u64, u64)> {
        let mut cache = self.cache.lock();
        let mut out = Vec::new();
        for &h in hashes {
            if let Some(b) = cache.pin(h) {
                self.pinned.push(h);
                out.push((h, b));
            }
        }
        out
    }

    /// [`PrefixCache::allocate`], held.
    pub fn allocate(&mut self, n: usize) -> Allocation {
        let a = self.cache.lock().allocate(n);
        self.reserved.extend_from_slice(&a.blocks);
        a
    }

    /// [`PrefixCache::give_back`] of blocks this request reserved.
    pub fn give_back(&mut self, blocks: &[u64]) {
        let blocks: Vec<u64> = blocks
            .iter()
            .copied()
            .filter(|b| self.reserved.contains(b))
            .collect();
        self.reserved.retain(|b| !blocks.contains(b));
        self.cache.lock().give_back(&blocks);
    }

    /// [`PrefixCache::insert`] of a block this request reserved (the
    /// reference is held). None when `block` is not reserved by this request.
    pub fn commit(&mut self, hash: u64, parent: Option<u64>, block: u64) -> Option<(u64, bool)> {
        let i = self.reserved.iter().position(|&b| b == block)?;
        self.reserved.swap_remove(i);
        let out = self.cache.lock().insert(hash, parent, block);
        self.pinned.push(hash);
        Some(out)
    }

    /// Resident blocks this request references.
    pub fn pinned(&self) -> usize {
        self.pinned.len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut cache = self.cache.lock();
        cache.unpin(&self.pinned);
        cache.give_back(&self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(cache: &mut PrefixCache, hashes: &[u64]) -> Vec<u64> {
        let a = cache.allocate(hashes.len());
        assert_eq!(a.blocks.len(), hashes.len());
        let mut out = Vec::new();
        for (i, (&h, &b)) in hashes.iter().zip(&a.blocks).enumerate() {
            let parent = i.checked_sub(1).map(|p| hashes[p]);
            out.push(cache.insert(h, parent, b).0);
        }
        out
    }

    #[test]
    fn longest_resident_prefix_is_pinned() {
        let mut c = PrefixCache::new(8);
        let blocks = fill(&mut c, &[1, 2, 3]);
        c.unpin(&[1, 2, 3]);
        assert_eq!(c.pin_prefix(&[1, 2, 9, 3]), blocks[..2].to_vec());
        assert_eq!(c.refs(1), 1);
        assert_eq!(c.refs(3), 0);
        assert!(c.pin_prefix(&[7, 1]).is_empty());
    }

    #[test]
    fn allocation_uses_free_blocks_then_evicts_lru_tail_first() {
        let mut c = PrefixCache::new(4);
        fill(&mut c, &[1, 2]);
        c.unpin(&[1, 2]);
        fill(&mut c, &[10, 11]);
        c.unpin(&[10, 11]);
        assert_eq!(c.free(), 0);
        // The older prefix goes first, its tail before its root.
        let a = c.allocate(1);
        assert_eq!(a.evicted, vec![2]);
        let b = c.allocate(2);
        assert_eq!(b.evicted, vec![1, 11]);
        assert_eq!(c.reserved(), 3);
        assert_eq!(c.resident(), 1);
    }

    #[test]
    fn referenced_blocks_are_never_evicted() {
        let mut c = PrefixCache::new(3);
        fill(&mut c, &[1, 2, 3]);
        c.unpin(&[3]);
        let a = c.allocate(3);
        assert_eq!(a.blocks.len(), 1, "only the unreferenced block");
        assert_eq!(a.evicted, vec![3]);
        assert!(c.block_of(1).is_some() && c.block_of(2).is_some());
        c.give_back(&a.blocks);
        assert_eq!(c.free(), 1);
        assert_eq!(c.reserved(), 0);
    }

    #[test]
    fn a_reused_block_becomes_most_recent() {
        let mut c = PrefixCache::new(2);
        fill(&mut c, &[1]);
        c.unpin(&[1]);
        fill(&mut c, &[2]);
        c.unpin(&[2]);
        c.pin_prefix(&[1]);
        c.unpin(&[1]);
        assert_eq!(c.allocate(1).evicted, vec![2]);
    }

    #[test]
    fn inserting_a_resident_hash_shares_the_existing_block() {
        let mut c = PrefixCache::new(4);
        let first = fill(&mut c, &[5]);
        let a = c.allocate(1);
        let (block, new) = c.insert(5, None, a.blocks[0]);
        assert!(!new);
        assert_eq!(block, first[0]);
        assert_eq!(c.refs(5), 2);
        assert_eq!(c.free(), 3);
        assert_eq!(c.reserved(), 0);
    }

    #[test]
    fn residents_list_parents_before_children_branch_by_branch() {
        let mut c = PrefixCache::new(8);
        fill(&mut c, &[30, 20, 10]);
        // A second branch off 30.
        let a = c.allocate(1);
        c.insert(25, Some(30), a.blocks[0]);
        let r = c.residents();
        assert_eq!(
            r.iter().map(|r| r.hash).collect::<Vec<_>>(),
            vec![30, 20, 10, 25]
        );
        assert_eq!(r[0].parent, None);
        assert_eq!(r[1].parent, Some(30));
        assert_eq!(r[3].parent, Some(30));
        // Orphans (their parent evicted) start branches of their own.
        c.unpin(&[30]);
        assert_eq!(c.allocate(5).evicted, vec![30]);
        let r = c.residents();
        assert_eq!(
            r.iter().map(|r| r.hash).collect::<Vec<_>>(),
            vec![20, 10, 25]
        );
        assert_eq!(r[0].parent, Some(30));
    }

    #[test]
    fn held_releases_everything_on_drop() {
        let cache = Arc::new(Mutex::new(PrefixCache::new(4)));
        {
            let mut held = Held::new(cache.clone());
            let a = held.allocate(3);
            assert_eq!(a.blocks.len(), 3);
            held.commit(1, None, a.blocks[0]).unwrap();
            held.commit(2, Some(1), a.blocks[1]).unwrap();
            assert!(held.commit(3, Some(2), 99).is_none(), "not reserved");
            assert_eq!(cache.lock().referenced(), 2);
            assert_eq!(cache.lock().reserved(), 1);
        }
        let c = cache.lock();
        assert_eq!(c.referenced(), 0);
        assert_eq!(c.reserved(), 0);
        assert_eq!(c.resident(), 2);
        assert_eq!(c.free(), 2);
    }

    #[test]
    fn held_give_back_only_returns_its_own_blocks() {
        let cache = Arc::new(Mutex::new(PrefixCache::new(4)));
        let mut held = Held::new(cache.clone());
        let a = held.allocate(2);
        held.give_back(&[a.blocks[0], 77]);
        assert_eq!(cache.lock().free(), 3);
        drop(held);
        assert_eq!(cache.lock().free(), 4);
    }
}
