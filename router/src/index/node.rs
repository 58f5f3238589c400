//! Per-block state of the index.

use super::WorkerSlot;

/// Where the cache server holds a block, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum CacheTier {
    /// Not in the cache server.
    #[default]
    Absent,
    /// Host memory (the server's GPU tier counts as host).
    Host,
    /// Disk.
    Disk,
}

/// Top bit of [`Link::slot_and_held`]: the worker holds the block.
const HELD: u32 = 1 << 31;

/// One worker's relation to one block: whether it holds the block, and how
/// many of the block's children it holds. A link exists while either is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    slot_and_held: u32,
    /// Children of the block (blocks whose parent it is) the worker holds.
    pub(crate) held_children: u32,
}

impl Link {
    pub(crate) fn slot(self) -> WorkerSlot {
        self.slot_and_held & !HELD
    }
    pub(crate) fn held(self) -> bool {
        self.slot_and_held & HELD != 0
    }
}

/// Everything the index knows about one block (one sequence hash).
///
/// 56 bytes inline in the table (64 with the key: one cache line), plus 8
/// bytes per link on the heap once a block has links.
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    /// The block's parent, when `has_parent` (see [`Node::parent`]).
    parent: u64,
    /// Workers of slots 0..64 that hold the block (bit = slot): the probe of
    /// a query reads only this for the first 64 workers.
    pub(crate) low_mask: u64,
    /// One link per worker that holds the block or one of its children, by slot.
    pub(crate) links: Vec<Link>,
    /// Children of the block present in the cache server.
    pub(crate) cache_children: u32,
    /// Children of the block present in the cache server's host tier.
    pub(crate) cache_host_children: u32,
    /// The block's cache-server tier.
    pub(crate) tier: CacheTier,
    /// Whether an event named the block's parent.
    has_parent: bool,
}

impl Node {
    /// A node with no state but its parent.
    pub(crate) fn with_parent(parent: Option<u64>) -> Self {
        let mut node = Self::default();
        node.set_parent(parent);
        node
    }

    /// The block's parent, when an event named it (`None`: a root, or not known yet).
    pub(crate) fn parent(&self) -> Option<u64> {
        self.has_parent.then_some(self.parent)
    }

    /// Sets or forgets the block's parent.
    pub(crate) fn set_parent(&mut self, parent: Option<u64>) {
        self.has_parent = parent.is_some();
        self.parent = parent.unwrap_or(0);
    }

    fn link_index(&self, slot: WorkerSlot) -> Result<usize, usize> {
        self.links.binary_search_by_key(&slot, |link| link.slot())
    }

    /// Whether the worker holds the block.
    pub(crate) fn held_by(&self, slot: WorkerSlot) -> bool {
        if slot < 64 {
            return self.low_mask & (1u64 << slot) != 0;
        }
        self.link_index(slot)
            .map(|i| self.links[i].held())
            .unwrap_or(false)
    }

    /// Holders among slots `group * 64 .. group * 64 + 64`, bit = slot % 64.
    pub(crate) fn held_mask(&self, group: u32) -> u64 {
        if group == 0 {
            return self.low_mask;
        }
        let first = group * 64;
        let mut mask = 0u64;
        for link in &self.links {
            let slot = link.slot();
            if link.held() && slot >= first && slot < first + 64 {
                mask |= 1u64 << (slot - first);
            }
        }
        mask
    }

    /// Children of the block the worker holds.
    pub(crate) fn held_children(&self, slot: WorkerSlot) -> u32 {
        self.link_index(slot)
            .map(|i| self.links[i].held_children)
            .unwrap_or(0)
    }

    /// Sets whether the worker holds the block.
    pub(crate) fn set_held(&mut self, slot: WorkerSlot, held: bool) {
        if slot < 64 {
            if held {
                self.low_mask |= 1u64 << slot;
            } else {
                self.low_mask &= !(1u64 << slot);
            }
        }
        self.update_link(slot, |link| {
            if held {
                link.slot_and_held |= HELD;
            } else {
                link.slot_and_held &= !HELD;
            }
        });
    }

    /// Adds `delta` (+1 or -1) to the children of the block the worker holds.
    pub(crate) fn add_held_children(&mut self, slot: WorkerSlot, delta: i32) {
        self.update_link(slot, |link| {
            link.held_children = link.held_children.saturating_add_signed(delta);
        });
    }

    fn update_link(&mut self, slot: WorkerSlot, change: impl FnOnce(&mut Link)) {
        let index = match self.link_index(slot) {
            Ok(index) => index,
            Err(index) => {
                self.links.insert(
                    index,
                    Link {
                        slot_and_held: slot,
                        held_children: 0,
                    },
                );
                index
            }
        };
        let link = &mut self.links[index];
        change(link);
        if !link.held() && link.held_children == 0 {
            self.links.remove(index);
            if self.links.is_empty() {
                self.links = Vec::new();
            }
        }
    }

    /// Removes everything about one worker. Returns whether it held the block.
    pub(crate) fn forget_worker(&mut self, slot: WorkerSlot) -> bool {
        let held = self.held_by(slot);
        if slot < 64 {
            self.low_mask &= !(1u64 << slot);
        }
        if let Ok(index) = self.link_index(slot) {
            self.links.remove(index);
            if self.links.is_empty() {
                self.links = Vec::new();
            }
        }
        held
    }

    /// Removes everything about the cache server.
    pub(crate) fn forget_cache(&mut self) {
        self.tier = CacheTier::Absent;
        self.cache_children = 0;
        self.cache_host_children = 0;
    }

    /// Whether the node carries nothing and can be dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.links.is_empty() && self.tier == CacheTier::Absent && self.cache_children == 0
    }

    /// Heap bytes of the node's links.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
    }
}
