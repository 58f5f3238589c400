//! T1: host memory. Payloads are reference-counted `Bytes`, so a hit hands out
//! the block without copying it. (With CUDA present, the store still keeps T1
//! here: pinned staging for device copies lives in the GPU tier.)

use std::collections::HashMap;

use parking_lot::RwLock;

use super::{BlockTier, ReadOutcome, Tier, TierError};
use crate::block::{Block, BlockKey};

/// Host-memory tier. Byte accounting is done by the store, which never lets
/// the sum of resident payloads pass the configured capacity.
#[derive(Debug, Default)]
pub struct HostTier {
    blocks: RwLock<HashMap<BlockKey, Block>>,
}

impl HostTier {
    /// An empty host tier.
    pub fn new() -> Self {
        Self::default()
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
        self.blocks.write().insert(key, block.clone());
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
