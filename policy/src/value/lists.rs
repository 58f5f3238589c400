//! Intrusive doubly linked lists over one slab of block nodes.
//!
//! Every resident block is one node; every node sits in exactly one list (its
//! class: ended, stale, one of the un-hinted classes, or an agent's context) of exactly
//! one tier. All operations are O(1) and allocate nothing once the slab is warm.

use smallvec::SmallVec;

use crate::Tier;

pub(crate) const NIL: u32 = u32::MAX;

/// A live agent whose latest context holds the block, and that call's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ref {
    pub agent: u32,
    pub seq: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Node<K> {
    pub key: K,
    prev: u32,
    next: u32,
    pub tier: Tier,
    pub list: u32,
    /// Live agents whose latest context holds this block (usually one).
    pub refs: SmallVec<[Ref; 1]>,
    /// Reads since insertion (saturating), for the learned un-hinted order.
    pub hits: u8,
    /// Children seen in the prefix tree (saturating).
    pub children: u8,
    /// The reuse model's clock at the last insert or read.
    pub stamp: u64,
    /// Order of the last insert or read among all blocks (ties of density
    /// go to the least recent, so an untrained model is exactly LRU).
    pub touch: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    head: u32,
    tail: u32,
    pub len: usize,
}

const EMPTY: Ends = Ends {
    head: NIL,
    tail: NIL,
    len: 0,
};

/// Slab of nodes plus list heads, indexed `[list][tier]`.
#[derive(Debug)]
pub(crate) struct Lists<K> {
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    ends: Vec<[Ends; 3]>,
    tier_len: [usize; 3],
}

impl<K: Copy> Lists<K> {
    pub fn new(fixed_lists: usize) -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            ends: vec![[EMPTY; 3]; fixed_lists],
            tier_len: [0; 3],
        }
    }

    pub fn node(&self, slot: u32) -> &Node<K> {
        &self.nodes[slot as usize]
    }

    pub fn node_mut(&mut self, slot: u32) -> &mut Node<K> {
        &mut self.nodes[slot as usize]
    }

    /// Makes sure list ids up to `list` exist.
    pub fn ensure_list(&mut self, list: u32) {
        let need = list as usize + 1;
        if self.ends.len() < need {
            self.ends.resize(need, [EMPTY; 3]);
        }
    }

    pub fn tier_len(&self, tier: Tier) -> usize {
        self.tier_len[tier.index()]
    }

    /// Least valuable end of a list (evicted first).
    pub fn back(&self, list: u32, tier: Tier) -> Option<u32> {
        let t = self.ends.get(list as usize)?[tier.index()].tail;
        (t != NIL).then_some(t)
    }

    /// Most valuable end of a list (evicted last).
    pub fn front(&self, list: u32, tier: Tier) -> Option<u32> {
        let h = self.ends.get(list as usize)?[tier.index()].head;
        (h != NIL).then_some(h)
    }

    /// The node after `slot` toward the back of its list (evicted sooner).
    pub fn toward_back(&self, slot: u32) -> Option<u32> {
        let n = self.nodes[slot as usize].next;
        (n != NIL).then_some(n)
    }

    /// The node before `slot` toward the front of its list (evicted later).
    pub fn toward_front(&self, slot: u32) -> Option<u32> {
        let p = self.nodes[slot as usize].prev;
        (p != NIL).then_some(p)
    }

    /// A new node at the front of `list` in `tier`.
    pub fn alloc(&mut self, key: K, tier: Tier, list: u32) -> u32 {
        let node = Node {
            key,
            prev: NIL,
            next: NIL,
            tier,
            list,
            refs: SmallVec::new(),
            hits: 0,
            children: 0,
            stamp: 0,
            touch: 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.link_front(slot);
        slot
    }

    /// Unlinks and frees a node; returns its key.
    pub fn release(&mut self, slot: u32) -> K {
        self.unlink(slot);
        let n = &mut self.nodes[slot as usize];
        n.refs = SmallVec::new();
        self.free.push(slot);
        n.key
    }

    /// Moves a node to the front of `list` in `tier`.
    pub fn move_front(&mut self, slot: u32, list: u32, tier: Tier) {
        self.unlink(slot);
        let n = &mut self.nodes[slot as usize];
        n.list = list;
        n.tier = tier;
        self.link_front(slot);
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next, list, tier) = {
            let n = &self.nodes[slot as usize];
            (n.prev, n.next, n.list, n.tier)
        };
        let e = &mut self.ends[list as usize][tier.index()];
        if prev == NIL {
            e.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            e.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        e.len -= 1;
        self.tier_len[tier.index()] -= 1;
    }

    fn link_front(&mut self, slot: u32) {
        let (list, tier) = {
            let n = &self.nodes[slot as usize];
            (n.list, n.tier)
        };
        let e = &mut self.ends[list as usize][tier.index()];
        let old = e.head;
        e.head = slot;
        if old == NIL {
            e.tail = slot;
        } else {
            self.nodes[old as usize].prev = slot;
        }
        e.len += 1;
        self.tier_len[tier.index()] += 1;
        let n = &mut self.nodes[slot as usize];
        n.prev = NIL;
        n.next = old;
    }
}
