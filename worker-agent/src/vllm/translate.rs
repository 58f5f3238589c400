//! Engine events → kvtier block changes: recompute kvtier sequence hashes
//! from `token_ids`; use the engine's hashes only to find a child's parent.

use std::collections::HashMap;

use kvtier_proto::hashing::BlockHasher;

use super::decode::{EngineEvent, EngineHash};
use crate::events::BlockChange;

/// Why an engine event was not applied. Each is counted and logged, never
/// silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The event's `block_size` is not the agent's `block_tokens`.
    #[error("block_size {got} differs from the configured block_tokens {want}")]
    BlockSizeMismatch {
        /// From the event.
        got: u64,
        /// Configured.
        want: usize,
    },
    /// `len(token_ids)` is not `block_size × len(block_hashes)`.
    #[error("{tokens} token ids for {blocks} blocks of {block_size}")]
    TokenCountMismatch {
        /// Tokens in the event.
        tokens: usize,
        /// Blocks in the event.
        blocks: usize,
        /// Tokens per block.
        block_size: usize,
    },
    /// The parent's engine hash was never stored (lost events?).
    #[error("parent block {0:#x} is unknown (events lost?)")]
    UnknownParent(EngineHash),
    /// A removed block was never stored.
    #[error("removed block {0:#x} is unknown")]
    UnknownBlock(EngineHash),
    /// The event is about another medium than the worker's GPU pool.
    #[error("medium {0:?} is not the worker's GPU pool; ignored")]
    OtherMedium(String),
}

impl TranslateError {
    /// Short label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BlockSizeMismatch { .. } => "block_size_mismatch",
            Self::TokenCountMismatch { .. } => "token_count_mismatch",
            Self::UnknownParent(_) => "unknown_parent",
            Self::UnknownBlock(_) => "unknown_block",
            Self::OtherMedium(_) => "other_medium",
        }
    }
}

/// Most engine hashes remembered; more means removals were lost, and the map
/// is reset rather than grown without bound.
const MAX_TRACKED: usize = 1 << 22;

/// Translates one engine's event stream.
#[derive(Debug)]
pub struct Translator {
    hasher: BlockHasher,
    /// Engine hash → kvtier sequence hash of the blocks the engine holds.
    engine_to_kv: HashMap<EngineHash, u64>,
}

fn is_gpu(medium: &Option<String>) -> Result<(), TranslateError> {
    match medium.as_deref() {
        None | Some("GPU") | Some("gpu") => Ok(()),
        Some(other) => Err(TranslateError::OtherMedium(other.to_string())),
    }
}

impl Translator {
    /// A translator hashing with `hasher` (the namespace's block_tokens and salted seed).
    pub fn new(hasher: BlockHasher) -> Self {
        Self {
            hasher,
            engine_to_kv: HashMap::new(),
        }
    }

    /// Forgets every engine block (the engine restarted or cleared its cache).
    pub fn clear(&mut self) {
        self.engine_to_kv.clear();
    }

    /// Engine blocks currently tracked.
    pub fn tracked(&self) -> usize {
        self.engine_to_kv.len()
    }

    /// Translates one event. Partial results are not applied: an event is
    /// applied whole or rejected whole.
    pub fn apply(&mut self, event: EngineEvent) -> Result<BlockChange, TranslateError> {
        match event {
            EngineEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                medium,
                ..
            } => {
                is_gpu(&medium)?;
                let want = self.hasher.block_tokens();
                if block_size != want as u64 {
                    return Err(TranslateError::BlockSizeMismatch {
                        got: block_size,
                        want,
                    });
                }
                if token_ids.len() != want * block_hashes.len() {
                    return Err(TranslateError::TokenCountMismatch {
                        tokens: token_ids.len(),
                        blocks: block_hashes.len(),
                        block_size: want,
                    });
                }
                let parent = match parent_block_hash {
                    None => None,
                    Some(p) => Some(
                        *self
                            .engine_to_kv
                            .get(&p)
                            .ok_or(TranslateError::UnknownParent(p))?,
                    ),
                };
                let locals = self.hasher.local_hashes(&token_ids);
                let hashes = self.hasher.chain(parent, &locals);
                if self.engine_to_kv.len() + hashes.len() > MAX_TRACKED {
                    tracing::warn!("engine hash map full (removals lost?); resetting it");
                    self.engine_to_kv.clear();
                }
                for (e, &k) in block_hashes.iter().zip(&hashes) {
                    self.engine_to_kv.insert(*e, k);
                }
                Ok(BlockChange::Stored { parent, hashes })
            }
            EngineEvent::BlockRemoved {
                block_hashes,
                medium,
            } => {
                is_gpu(&medium)?;
                let mut hashes = Vec::with_capacity(block_hashes.len());
                let mut unknown = None;
                for e in block_hashes {
                    match self.engine_to_kv.remove(&e) {
                        Some(k) => hashes.push(k),
                        None => unknown = Some(e),
                    }
                }
                match unknown {
                    // the known ones are removed all the same; the unknown one is reported
                    Some(e) if hashes.is_empty() => Err(TranslateError::UnknownBlock(e)),
                    Some(e) => {
                        tracing::warn!(block = e, "removed block unknown; others applied");
                        Ok(BlockChange::Removed(hashes))
                    }
                    None => Ok(BlockChange::Removed(hashes)),
                }
            }
            EngineEvent::AllBlocksCleared { medium } => {
                is_gpu(&medium)?;
                self.engine_to_kv.clear();
                Ok(BlockChange::Cleared)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_proto::hashing::DEFAULT_SEED;

    #[test]
    fn recomputes_hashes_and_chains_by_engine_hash() {
        let hasher = BlockHasher::new(4, DEFAULT_SEED);
        let tokens: Vec<u32> = (0..12).collect();
        let expected = hasher.sequence_hashes(&tokens);
        let mut t = Translator::new(hasher);
        let first = t.apply(EngineEvent::BlockStored {
            block_hashes: vec![900, 901],
            parent_block_hash: None,
            token_ids: tokens[..8].to_vec(),
            block_size: 4,
            medium: Some("GPU".into()),
            lora_name: None,
        });
        assert_eq!(
            first,
            Ok(BlockChange::Stored {
                parent: None,
                hashes: expected[..2].to_vec()
            })
        );
        let second = t.apply(EngineEvent::BlockStored {
            block_hashes: vec![902],
            parent_block_hash: Some(901),
            token_ids: tokens[8..].to_vec(),
            block_size: 4,
            medium: None,
            lora_name: None,
        });
        assert_eq!(
            second,
            Ok(BlockChange::Stored {
                parent: Some(expected[1]),
                hashes: vec![expected[2]]
            })
        );
        let bad = t.apply(EngineEvent::BlockStored {
            block_hashes: vec![903],
            parent_block_hash: Some(777),
            token_ids: tokens[..4].to_vec(),
            block_size: 4,
            medium: None,
            lora_name: None,
        });
        assert_eq!(bad.map_err(|e| e.reason()), Err("unknown_parent"));
        let size = t.apply(EngineEvent::BlockStored {
            block_hashes: vec![904],
            parent_block_hash: None,
            token_ids: tokens[..8].to_vec(),
            block_size: 8,
            medium: None,
            lora_name: None,
        });
        assert_eq!(size.map_err(|e| e.reason()), Err("block_size_mismatch"));
        assert_eq!(
            t.apply(EngineEvent::BlockRemoved {
                block_hashes: vec![900],
                medium: None
            }),
            Ok(BlockChange::Removed(vec![expected[0]]))
        );
        assert_eq!(t.tracked(), 2);
    }
}
