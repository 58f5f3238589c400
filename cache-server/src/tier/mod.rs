//! Storage tiers behind one seam.
//!
//! A tier stores and returns block payloads and knows its own byte usage; it
//! knows nothing of the other tiers, of eviction order, or of agents. The
//! [`crate::store::TieredStore`] moves blocks between tiers by reading from one
//! and writing to the next.

pub mod arena;
pub mod disk;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod host;
#[cfg(feature = "cuda")]
pub mod pinned;

use crate::block::{Block, BlockKey};
pub use kvtier_policy::Tier;

/// Errors a tier can report.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The underlying RocksDB database failed.
    #[error("disk tier: {0}")]
    Disk(#[from] rocksdb::Error),
    /// A stored record could not be decoded.
    #[error("disk tier: malformed record for {key}: {reason}")]
    Malformed {
        /// Which block.
        key: BlockKey,
        /// What was wrong.
        reason: String,
    },
    /// The GPU tier failed.
    #[error("gpu tier: {0}")]
    Gpu(String),
    /// The host tier's memory could not be reserved.
    #[error("host tier: {0}")]
    Memory(String),
    /// The host arena has no free slot for a payload of this many bytes
    /// now (its blocks, or payloads still being read, hold it all).
    #[error("host tier: no free slot for {0} bytes")]
    NoSlot(u64),
}

/// The outcome of reading one block from a tier.
#[derive(Debug)]
pub enum ReadOutcome {
    /// The block, verified.
    Found(Block),
    /// The tier does not hold the block.
    Missing,
    /// The tier held the block but its bytes failed verification; it was dropped.
    Corrupt,
}

/// One storage tier. Implementations are internally synchronised.
pub trait BlockTier: Send + Sync {
    /// Which tier this is.
    fn level(&self) -> Tier;
    /// Stores a block (overwriting any previous copy).
    fn put(&self, key: BlockKey, block: &Block) -> Result<(), TierError>;
    /// Stores a block whose payload the caller hands over as an allocation
    /// of exactly its length (see [`crate::store::TieredStore::put_owned`]):
    /// a tier whose memory already holds it (the host tier, for a payload
    /// received into one of its arena's slots) may keep it without copying.
    /// Default: [`BlockTier::put`].
    fn put_owned(&self, key: BlockKey, block: Block) -> Result<(), TierError> {
        self.put(key, &block)
    }
    /// Reads and verifies a block.
    fn get(&self, key: BlockKey) -> Result<ReadOutcome, TierError>;
    /// Removes a block; removing an absent block is not an error.
    fn remove(&self, key: BlockKey) -> Result<(), TierError>;
}
