//! [`NodeTable`]: sequence hash -> [`Node`], an open-addressed table with one
//! cache line per slot.
//!
//! Why not `std::collections::HashMap`: a query is a handful of rounds of a
//! few dozen independent lookups each, and at a million blocks every lookup
//! is a cache miss (and a TLB miss). The standard map gives no way to start a
//! lookup's memory access early, and its probe loop branches on the loaded
//! control bytes, so the misses of one round do not overlap. Here the slot a
//! key lives in (or starts probing from) is computed from the key alone, so a
//! query [`NodeTable::prefetch`]es every slot of a round before reading any,
//! and each slot is one aligned 64-byte line holding key and node together.
//!
//! Linear probing, at most 3/4 full, deletion by backward shift (no
//! tombstones). Key 0 marks an empty slot; a node for the (legal, if
//! unlikely) sequence hash 0 lives beside the slots.

use super::node::Node;

/// One slot: a key and its node, one cache line. `key == 0`: empty.
#[derive(Debug, Default, Clone)]
#[repr(C, align(64))]
struct Slot {
    key: u64,
    node: Node,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// Fibonacci hashing: the high bits of the product spread any key over the table.
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Fewest slots a table has (a power of two).
const MIN_SLOTS: usize = 16;

/// Sequence hash -> node. See the module docs.
#[derive(Debug)]
pub(crate) struct NodeTable {
    /// A power of two of slots, at most 3/4 occupied.
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: a key's home slot is `key * MULTIPLIER >> shift`.
    shift: u32,
    /// Occupied slots.
    occupied: usize,
    /// The node of key 0, which cannot live in a slot.
    zero: Option<Box<Node>>,
}

impl Default for NodeTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Clone for NodeTable {
    fn clone(&self) -> Self {
        let mut slots: Vec<Slot> = Vec::with_capacity(self.slots.len());
        advise_huge_pages(slots.as_ptr().cast(), self.slot_bytes());
        slots.extend(self.slots.iter().cloned());
        Self {
            slots,
            shift: self.shift,
            occupied: self.occupied,
            zero: self.zero.clone(),
        }
    }
}

impl NodeTable {
    /// A table that holds `capacity` nodes before it grows.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let slots = (capacity.saturating_mul(4) / 3 + 1)
            .next_power_of_two()
            .max(MIN_SLOTS);
        Self {
            slots: new_slots(slots),
            shift: 64 - slots.trailing_zeros(),
            occupied: 0,
            zero: None,
        }
    }

    /// Nodes held.
    pub(crate) fn len(&self) -> usize {
        self.occupied + usize::from(self.zero.is_some())
    }

    /// Bytes of the slot array.
    pub(crate) fn slot_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(MULTIPLIER) >> self.shift) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Starts loading the line `key`'s lookup reads first, so that lookups of
    /// many keys overlap their cache misses. A hint only: no effect on results.
    #[inline]
    pub(crate) fn prefetch(&self, key: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot: *const Slot = &self.slots[self.home(key)];
            // SAFETY: prefetching has no architectural effect, and `slot`
            // points into the live slot array.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    slot.cast::<i8>(),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// `Ok(slot)` holding `key` (nonzero), or `Err(empty slot)` where it would go.
    #[inline]
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mask = self.mask();
        let mut at = self.home(key);
        loop {
            let found = self.slots[at].key;
            if found == key {
                return Ok(at);
            }
            if found == 0 {
                return Err(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// The node of `key`.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&Node> {
        if key == 0 {
            return self.zero.as_deref();
        }
        self.find(key).ok().map(|at| &self.slots[at].node)
    }

    /// The node of `key`, mutably.
    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut Node> {
        if key == 0 {
            return self.zero.as_deref_mut();
        }
        match self.find(key) {
            Ok(at) => Some(&mut self.slots[at].node),
            Err(_) => None,
        }
    }

    /// Whether `key` has a node.
    pub(crate) fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// The node of `key`, created from `make` when missing.
    pub(crate) fn get_or_insert_with(
        &mut self,
        key: u64,
        make: impl FnOnce() -> Node,
    ) -> &mut Node {
        if key == 0 {
            return self.zero.get_or_insert_with(|| Box::new(make()));
        }
        let at = match self.find(key) {
            Ok(at) => at,
            Err(at) => {
                let at = if (self.occupied + 1) * 4 > self.slots.len() * 3 {
                    self.grow();
                    self.find(key).unwrap_err()
                } else {
                    at
                };
                self.slots[at] = Slot { key, node: make() };
                self.occupied += 1;
                at
            }
        };
        &mut self.slots[at].node
    }

    /// The node of `key`, created empty when missing.
    pub(crate) fn get_or_insert_default(&mut self, key: u64) -> &mut Node {
        self.get_or_insert_with(key, Node::default)
    }

    /// Removes `key`'s node and returns it.
    pub(crate) fn remove(&mut self, key: u64) -> Option<Node> {
        if key == 0 {
            return self.zero.take().map(|node| *node);
        }
        let at = self.find(key).ok()?;
        let removed = std::mem::take(&mut self.slots[at]);
        self.occupied -= 1;
        // Backward shift: move later entries of the run into the hole when
        // the hole lies on their probe path, so that lookups need no tombstones.
        let mask = self.mask();
        let mut hole = at;
        let mut next = (at + 1) & mask;
        loop {
            let key = self.slots[next].key;
            if key == 0 {
                break;
            }
            let home = self.home(key);
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots.swap(hole, next);
                hole = next;
            }
            next = (next + 1) & mask;
        }
        Some(removed.node)
    }

    /// Keeps the nodes for which `keep` returns true (it may change them).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64, &mut Node) -> bool) {
        let mut doomed = Vec::new();
        for slot in self.slots.iter_mut().filter(|slot| slot.key != 0) {
            if !keep(slot.key, &mut slot.node) {
                doomed.push(slot.key);
            }
        }
        if let Some(zero) = self.zero.as_deref_mut() {
            if !keep(0, zero) {
                self.zero = None;
            }
        }
        for key in doomed {
            self.remove(key);
        }
    }

    /// Every node.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Node> {
        self.slots
            .iter()
            .filter(|slot| slot.key != 0)
            .map(|slot| &slot.node)
            .chain(self.zero.as_deref())
    }

    /// Doubles the slots and re-places every node.
    fn grow(&mut self) {
        let slots = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, new_slots(slots));
        self.shift = 64 - slots.trailing_zeros();
        for slot in old.into_iter().filter(|slot| slot.key != 0) {
            let at = self.find(slot.key).unwrap_err();
            self.slots[at] = slot;
        }
    }
}

/// `count` empty slots. Large arrays ask for transparent huge pages before
/// their first touch: a query's lookups land on random lines of a table of
/// a hundred megabytes or more, and with 4 KiB pages nearly every one of them
/// would also miss the TLB.
fn new_slots(count: usize) -> Vec<Slot> {
    let mut slots: Vec<Slot> = Vec::with_capacity(count);
    advise_huge_pages(slots.as_ptr().cast(), count * std::mem::size_of::<Slot>());
    slots.extend(std::iter::repeat_with(Slot::default).take(count));
    slots
}

/// `madvise(MADV_HUGEPAGE)` on the whole 2 MiB pages inside `len` bytes from
/// `start` (Linux; a hint: errors and other systems are ignored).
fn advise_huge_pages(start: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let first = (start as usize).next_multiple_of(HUGE_PAGE);
        let end = (start as usize + len) / HUGE_PAGE * HUGE_PAGE;
        if end > first {
            // SAFETY: advice only; the range lies inside the caller's allocation.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn node_with(mask: u64) -> Node {
        let mut node = Node::default();
        node.low_mask = mask;
        node
    }

    /// Random inserts and removals, with keys clustered to force long probe
    /// runs and wrap-around, checked against a `HashMap` after every step.
    #[test]
    fn matches_a_hash_map_through_growth_and_backward_shifts() {
        let mut table = NodeTable::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step in 0..20_000u64 {
            // Few distinct keys (so removals hit), key 0 included.
            let key = next() % 600;
            if next() % 3 == 0 {
                assert_eq!(
                    table.remove(key).map(|n| n.low_mask),
                    model.remove(&key),
                    "remove {key} at step {step}"
                );
            } else {
                table.get_or_insert_with(key, || node_with(0)).low_mask = step;
                model.insert(key, step);
            }
            if step % 97 == 0 {
                for probe in 0..600 {
                    assert_eq!(
                        table.get(probe).map(|n| n.low_mask),
                        model.get(&probe).copied(),
                        "get {probe} at step {step}"
                    );
                }
                assert_eq!(table.len(), model.len());
            }
        }
        table.retain(|key, node| {
            node.low_mask += 1;
            key % 2 == 0
        });
        model.retain(|key, _| key % 2 == 0);
        for probe in 0..600 {
            assert_eq!(
                table.get(probe).map(|n| n.low_mask - 1),
                model.get(&probe).copied()
            );
        }
        assert_eq!(table.values().count(), model.len());
        assert!(table.occupied * 4 <= table.slots.len() * 3);
    }

    /// Keys that all share a home slot: one long run, removed from the middle.
    #[test]
    fn colliding_keys_stay_reachable_after_removals() {
        let mut table = NodeTable::with_capacity(8);
        let shift = table.shift;
        // Keys whose products share the top bits: multiples of 2^shift / MULTIPLIER are
        // hard to build, so search for them.
        let target = table.home(1);
        let keys: Vec<u64> = (1..u64::MAX)
            .filter(|&k| (k.wrapping_mul(MULTIPLIER) >> shift) as usize == target)
            .take(6)
            .collect();
        for &key in &keys {
            table.get_or_insert_with(key, || node_with(key));
        }
        table.remove(keys[1]);
        table.remove(keys[3]);
        for (i, &key) in keys.iter().enumerate() {
            let expect = (i != 1 && i != 3).then_some(key);
            assert_eq!(table.get(key).map(|n| n.low_mask), expect);
        }
    }
}
