//! T1: host memory. Every payload lives in a slot of the tier's
//! [`HostArena`]: memory reserved (and pre-faulted) at start within the host
//! capacity, pinned as a whole when CUDA is present, recycled on eviction.
//! A payload that arrives in one of the arena's slots (the data plane
//! receives PUTs straight into one, [`HostTier::receive_buffer`]) is kept as
//! it is; any other is copied into a slot. Payloads are reference-counted
//! `Bytes`: a hit hands them out without copying, and a slot returns to the
//! arena only when the last view of it drops.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::RwLock;

use super::arena::{HostArena, SlotMut};
use super::{BlockTier, ReadOutcome, Tier, TierError};
use crate::block::{Block, BlockKey};

/// Host-memory tier. Byte accounting is done by the store, which never lets
/// the sum of resident payloads pass the configured capacity; the arena
/// itself cannot hold more than it reserved.
#[derive(Debug)]
pub struct HostTier {
    blocks: RwLock<HashMap<BlockKey, Block>>,
    arena: HostArena,
}

impl HostTier {
    /// An empty host tier whose blocks live in `arena`.
    pub fn new(arena: HostArena) -> Self {
        Self {
            blocks: RwLock::new(HashMap::new()),
            arena,
        }
    }

    /// The arena that backs the tier.
    pub fn arena(&self) -> &HostArena {
        &self.arena
    }

    /// A slot to receive a payload of `len` bytes into (then frozen and
    /// handed to [`BlockTier::put_owned`], which keeps it without copying);
    /// `None` when the arena has no room now.
    pub fn receive_buffer(&self, len: usize) -> Option<SlotMut> {
        self.arena.alloc(len)
    }

    /// Sum of the payload bytes held now (measured, for tests and stats).
    pub fn resident_bytes(&self) -> u64 {
        self.blocks.read().values().map(Block::len).sum()
    }

    /// `payload` in the arena: as it is when it already lies in a slot, else
    /// copied into one.
    fn in_arena(&self, payload: &Bytes) -> Result<Bytes, TierError> {
        if payload.is_empty() || self.arena.owns(payload) {
            return Ok(payload.clone());
        }
        self.arena
            .copy_in(payload)
            .ok_or(TierError::NoSlot(payload.len() as u64))
    }
}

impl BlockTier for HostTier {
    fn level(&self) -> Tier {
        Tier::Host
    }

    fn put(&self, key: BlockKey, block: &Block) -> Result<(), TierError> {
        let owned = Block {
            parent: block.parent,
            payload: self.in_arena(&block.payload)?,
        };
        self.blocks.write().insert(key, owned);
        Ok(())
    }

    fn get(&self, key: BlockKey) -> Result<ReadOutcome, TierError> {
        Ok(match self.blocks.read().get(&key) {
            Some(block) => ReadOutcome::Found(block.clone()),
            None => ReadOutcome::Missing,
        })
    }

    fn remove(&self, key: BlockKey) -> Result<(), TierError> {
        self.blocks.write().remove(&key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(bytes: u64) -> HostTier {
        HostTier::new(HostArena::reserve(bytes, false).expect("arena"))
    }

    #[test]
    fn copies_foreign_payloads_into_the_arena() {
        let tier = tier(1 << 20);
        let big = Bytes::from(vec![7u8; 10_000]);
        let key = BlockKey::new(1, 1);
        tier.put(
            key,
            &Block {
                parent: None,
                payload: big.slice(0..4096),
            },
        )
        .expect("put");
        match tier.get(key).expect("get") {
            ReadOutcome::Found(b) => {
                assert_eq!(b.payload.len(), 4096);
                // not a view into the caller's larger buffer, but a slot
                assert_ne!(b.payload.as_ptr(), big.as_ptr());
                assert!(tier.arena().owns(&b.payload));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tier.resident_bytes(), 4096);
        assert_eq!(tier.arena().usage().live, 4096);
    }

    #[test]
    fn keeps_a_received_slot_without_copying_and_recycles_it_on_remove() {
        let tier = tier(8192);
        let mut slot = tier.receive_buffer(8192).expect("room");
        slot.fill(3);
        let payload = slot.freeze();
        let ptr = payload.as_ptr();
        let key = BlockKey::new(1, 2);
        tier.put_owned(
            key,
            Block {
                parent: None,
                payload,
            },
        )
        .expect("put");
        let ReadOutcome::Found(b) = tier.get(key).expect("get") else {
            panic!("missing");
        };
        assert_eq!(b.payload.as_ptr(), ptr, "kept in place");
        drop(b);
        // Full: a second block has no slot until the first is removed.
        let other = Block {
            parent: None,
            payload: Bytes::from(vec![4u8; 8192]),
        };
        assert!(matches!(
            tier.put(BlockKey::new(1, 3), &other),
            Err(TierError::NoSlot(8192))
        ));
        tier.remove(key).expect("remove");
        tier.put(BlockKey::new(1, 3), &other).expect("room again");
    }
}
