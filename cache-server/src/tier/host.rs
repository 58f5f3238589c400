//! T1: host memory. The tier owns its memory: every block is copied into an
//! allocation of exactly its size (so the byte budget is what the process
//! holds, not a slice of a larger network buffer), and with CUDA present into
//! page-locked (pinned) memory, so that device copies run at full speed.
//! Payloads are reference-counted `Bytes`: a hit hands them out without copying.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::RwLock;

use super::{BlockTier, ReadOutcome, Tier, TierError};
use crate::block::{Block, BlockKey};

/// Where the host tier's bytes live.
pub trait HostMemory: Send + Sync + std::fmt::Debug {
    /// A copy of `payload` in this memory.
    fn copy_in(&self, payload: &[u8]) -> Result<Bytes, TierError>;
    /// `payload`, which the caller hands over as an allocation of exactly its
    /// length (not a view into a larger buffer), kept as it is when this
    /// memory can hold it directly, else copied in (the default).
    fn adopt(&self, payload: Bytes) -> Result<Bytes, TierError> {
        self.copy_in(&payload)
    }
    /// Short name for logs.
    fn name(&self) -> &'static str;
}

/// Ordinary heap memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapMemory;

impl HostMemory for HeapMemory {
    fn copy_in(&self, payload: &[u8]) -> Result<Bytes, TierError> {
        Ok(Bytes::copy_from_slice(payload))
    }

    /// Heap memory holds an exactly sized allocation as it is: no copy.
    fn adopt(&self, payload: Bytes) -> Result<Bytes, TierError> {
        Ok(payload)
    }

    fn name(&self) -> &'static str {
        "heap"
    }
}

/// Host-memory tier. Byte accounting is done by the store, which never lets
/// the sum of resident payloads pass the configured capacity.
#[derive(Debug)]
pub struct HostTier {
    blocks: RwLock<HashMap<BlockKey, Block>>,
    memory: Box<dyn HostMemory>,
}

impl Default for HostTier {
    fn default() -> Self {
        Self::new(Box::new(HeapMemory))
    }
}

impl HostTier {
    /// An empty host tier whose blocks live in `memory`.
    pub fn new(memory: Box<dyn HostMemory>) -> Self {
        Self {
            blocks: RwLock::new(HashMap::new()),
            memory,
        }
    }

    /// Which memory backs the tier.
    pub fn memory_name(&self) -> &'static str {
        self.memory.name()
    }

    /// Sum of the payload bytes held now (measured, for tests and stats).
    pub fn resident_bytes(&self) -> u64 {
        self.blocks.read().values().map(Block::len).sum()
    }
}

impl BlockTier for HostTier {
    fn level(&self) -> Tier {
        Tier::Host
    }

    fn put(&self, key: BlockKey, block: &Block) -> Result<(), TierError> {
        let owned = Block {
            parent: block.parent,
            payload: self.memory.copy_in(&block.payload)?,
        };
        self.blocks.write().insert(key, owned);
        Ok(())
    }

    fn put_owned(&self, key: BlockKey, block: Block) -> Result<(), TierError> {
        let owned = Block {
            parent: block.parent,
            payload: self.memory.adopt(block.payload)?,
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

    #[test]
    fn copies_into_exact_allocations() {
        let tier = HostTier::default();
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
                // not a view into the caller's larger buffer
                assert_ne!(b.payload.as_ptr(), big.as_ptr());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tier.resident_bytes(), 4096);
    }
}
