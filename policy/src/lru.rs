//! Least recently used first: the baseline every other policy is measured against.

use std::collections::HashMap;
use std::hash::Hash;

use crate::{BlockInfo, EvictionPolicy, Tier};

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    prev: u32,
    next: u32,
    tier: Tier,
}

/// An intrusive doubly linked list per tier over a slab, so that every
/// operation is O(1) and nothing allocates per block once the slab is warm.
#[derive(Debug)]
pub struct Lru<K> {
    slab: Vec<Node<K>>,
    free: Vec<u32>,
    index: HashMap<K, u32>,
    /// Per tier: (head = most recent, tail = least recent, len).
    lists: [(u32, u32, usize); 3],
}

impl<K: Copy + Eq + Hash> Default for Lru<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash> Lru<K> {
    /// An empty LRU order.
    pub fn new() -> Self {
        Self {
            slab: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            lists: [(NIL, NIL, 0); 3],
        }
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next, tier) = {
            let n = &self.slab[slot as usize];
            (n.prev, n.next, n.tier)
        };
        let list = &mut self.lists[tier.index()];
        if prev == NIL {
            list.0 = next;
        } else {
            self.slab[prev as usize].next = next;
        }
        if next == NIL {
            list.1 = prev;
        } else {
            self.slab[next as usize].prev = prev;
        }
        list.2 -= 1;
    }

    fn push_front(&mut self, slot: u32, tier: Tier) {
        let list = &mut self.lists[tier.index()];
        let old_head = list.0;
        {
            let n = &mut self.slab[slot as usize];
            n.prev = NIL;
            n.next = old_head;
            n.tier = tier;
        }
        if old_head == NIL {
            list.1 = slot;
        } else {
            self.slab[old_head as usize].prev = slot;
        }
        list.0 = slot;
        list.2 += 1;
    }
}

impl<K: Copy + Eq + Hash + Send> EvictionPolicy<K> for Lru<K> {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn on_insert(&mut self, key: K, tier: Tier, _info: BlockInfo<K>, _now_ms: u64) {
        if let Some(&slot) = self.index.get(&key) {
            self.unlink(slot);
            self.push_front(slot, tier);
            return;
        }
        let node = Node {
            key,
            prev: NIL,
            next: NIL,
            tier,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = node;
                slot
            }
            None => {
                self.slab.push(node);
                (self.slab.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        self.push_front(slot, tier);
    }

    fn on_hit(&mut self, key: K, _now_ms: u64) {
        if let Some(&slot) = self.index.get(&key) {
            let tier = self.slab[slot as usize].tier;
            self.unlink(slot);
            self.push_front(slot, tier);
        }
    }

    fn on_move(&mut self, key: K, to: Tier, _now_ms: u64) {
        if let Some(&slot) = self.index.get(&key) {
            self.unlink(slot);
            self.push_front(slot, to);
        }
    }

    fn on_remove(&mut self, key: K) {
        if let Some(slot) = self.index.remove(&key) {
            self.unlink(slot);
            self.free.push(slot);
        }
    }

    fn victim(&mut self, tier: Tier, _now_ms: u64) -> Option<K> {
        let tail = self.lists[tier.index()].1;
        (tail != NIL).then(|| self.slab[tail as usize].key)
    }

    fn len(&self, tier: Tier) -> usize {
        self.lists[tier.index()].2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BlockInfo<u64> {
        BlockInfo {
            parent: None,
            bytes: 1,
        }
    }

    #[test]
    fn evicts_least_recent_first_per_tier() {
        let mut lru = Lru::new();
        for k in 1..=3u64 {
            lru.on_insert(k, Tier::Host, info(), k);
        }
        lru.on_insert(10, Tier::Disk, info(), 4);
        lru.on_hit(1, 5);
        assert_eq!(lru.victim(Tier::Host, 6), Some(2));
        assert_eq!(lru.victim(Tier::Disk, 6), Some(10));
        lru.on_move(2, Tier::Disk, 7);
        assert_eq!(lru.victim(Tier::Host, 8), Some(3));
        assert_eq!(lru.victim(Tier::Disk, 8), Some(10));
        assert_eq!(lru.len(Tier::Disk), 2);
        lru.on_remove(10);
        lru.on_remove(2);
        assert!(lru.is_empty(Tier::Disk));
        assert_eq!(lru.victim(Tier::Gpu, 9), None);
    }

    /// Compare against a brute-force recency list over a pseudo-random op mix.
    #[test]
    fn matches_brute_force() {
        let mut lru = Lru::new();
        let mut reference: Vec<u64> = Vec::new(); // front = least recent
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 64;
            match x % 4 {
                0 | 1 => {
                    reference.retain(|&k| k != key);
                    reference.push(key);
                    lru.on_insert(key, Tier::Host, info(), step);
                }
                2 => {
                    if let Some(pos) = reference.iter().position(|&k| k == key) {
                        reference.remove(pos);
                        reference.push(key);
                    }
                    lru.on_hit(key, step);
                }
                _ => {
                    reference.retain(|&k| k != key);
                    lru.on_remove(key);
                }
            }
            assert_eq!(lru.victim(Tier::Host, step), reference.first().copied());
            assert_eq!(lru.len(Tier::Host), reference.len());
        }
    }
}
