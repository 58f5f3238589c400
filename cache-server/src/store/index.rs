//! The block index: which tier holds each key, with its size and parent, and
//! how many bytes and blocks each tier holds (checked by placement against the
//! tier's capacity, [`super::tiers::Tiers::capacity`]).
//!
//! Plain data: no I/O, no policy, no events, no lock of its own. Every change
//! goes through [`Index::insert`], [`Index::remove`] or [`Index::relocate`],
//! which keep the per-tier counts equal to the sum over the entries and the
//! lock-free-read mirror of key → tier ([`Presence`]) equal to the entries.

use std::collections::HashMap;
use std::sync::Arc;

use super::presence::Presence;
use super::types::ResidentBlock;
use crate::block::BlockKey;
use crate::tier::Tier;

/// What the index knows of one block.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// Tier the block is in.
    pub tier: Tier,
    /// Payload bytes.
    pub bytes: u64,
    /// Parent sequence hash, when known.
    pub parent: Option<u64>,
}

/// Key → entry, and each tier's byte and block counts.
#[derive(Debug, Default)]
pub(super) struct Index {
    entries: HashMap<BlockKey, Entry>,
    used: [u64; 3],
    blocks: [u64; 3],
    /// Key → tier for readers that do not hold the store's lock.
    presence: Arc<Presence>,
}

impl Index {
    /// The mirror of key → tier that this index keeps up to date.
    pub fn presence(&self) -> Arc<Presence> {
        Arc::clone(&self.presence)
    }

    /// The entry of `key`, if present.
    pub fn get(&self, key: &BlockKey) -> Option<Entry> {
        self.entries.get(key).copied()
    }

    /// Payload bytes held in `tier`.
    pub fn used(&self, tier: Tier) -> u64 {
        self.used[tier.index()]
    }

    /// Blocks held in `tier`.
    pub fn blocks(&self, tier: Tier) -> u64 {
        self.blocks[tier.index()]
    }

    /// Records `key` in `entry.tier` and counts its bytes there. The caller
    /// makes sure the key is new (write-once) and that the bytes fit.
    pub fn insert(&mut self, key: BlockKey, entry: Entry) {
        self.entries.insert(key, entry);
        self.presence.set(key, entry.tier);
        self.used[entry.tier.index()] += entry.bytes;
        self.blocks[entry.tier.index()] += 1;
    }

    /// Forgets `key` and uncounts it from its tier.
    pub fn remove(&mut self, key: &BlockKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.presence.remove(key);
        self.used[entry.tier.index()] -= entry.bytes;
        self.blocks[entry.tier.index()] -= 1;
        Some(entry)
    }

    /// Moves `key`, last seen as `entry`, from `entry.tier` to `to`: uncounts
    /// the current entry from the old tier, then counts `entry` in the new one.
    pub fn relocate(&mut self, key: BlockKey, entry: Entry, to: Tier) {
        if let Some(current) = self.entries.get(&key) {
            self.used[entry.tier.index()] -= current.bytes;
            self.blocks[entry.tier.index()] -= 1;
        }
        self.entries.insert(key, Entry { tier: to, ..entry });
        self.presence.set(key, to);
        self.used[to.index()] += entry.bytes;
        self.blocks[to.index()] += 1;
    }

    /// Tier of each key (`None` when absent).
    #[cfg(test)]
    pub fn lookup(&self, keys: &[BlockKey]) -> Vec<Option<Tier>> {
        keys.iter()
            .map(|k| self.entries.get(k).map(|e| e.tier))
            .collect()
    }

    /// Blocks held per namespace id.
    pub fn blocks_per_namespace(&self) -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        for key in self.entries.keys() {
            *out.entry(key.namespace).or_insert(0) += 1;
        }
        out
    }

    /// The blocks of `namespace` (of every namespace when `None`), in no
    /// particular order.
    pub fn resident(&self, namespace: Option<u32>) -> Vec<ResidentBlock> {
        self.entries
            .iter()
            .filter(|(key, _)| namespace.is_none_or(|ns| ns == key.namespace))
            .map(|(&key, entry)| ResidentBlock {
                key,
                tier: entry.tier,
                parent: entry.parent,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tier: Tier, bytes: u64) -> Entry {
        Entry {
            tier,
            bytes,
            parent: None,
        }
    }

    #[test]
    fn counts_follow_inserts_moves_and_removals() {
        let mut index = Index::default();
        let (a, b) = (BlockKey::new(1, 1), BlockKey::new(2, 2));
        index.insert(a, entry(Tier::Host, 100));
        index.insert(b, entry(Tier::Host, 50));
        assert_eq!((index.used(Tier::Host), index.blocks(Tier::Host)), (150, 2));
        index.relocate(a, entry(Tier::Host, 100), Tier::Disk);
        assert_eq!((index.used(Tier::Host), index.blocks(Tier::Host)), (50, 1));
        assert_eq!((index.used(Tier::Disk), index.blocks(Tier::Disk)), (100, 1));
        assert_eq!(
            index.lookup(&[a, b]),
            vec![Some(Tier::Disk), Some(Tier::Host)]
        );
        assert_eq!(index.presence().lookup(&[a, b]), index.lookup(&[a, b]));
        assert_eq!(index.resident(Some(2)).len(), 1);
        assert_eq!(index.blocks_per_namespace().get(&1), Some(&1));
        assert_eq!(index.remove(&a).map(|e| e.tier), Some(Tier::Disk));
        assert!(index.remove(&a).is_none());
        assert_eq!(index.presence().tier(&a), None);
        assert_eq!((index.used(Tier::Disk), index.blocks(Tier::Disk)), (0, 0));
    }
}
