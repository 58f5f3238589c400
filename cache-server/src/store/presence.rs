//! Which tier holds each block, readable without the store's lock: a
//! sharded map that mirrors the index's key → tier, changed only by
//! [`super::index::Index`] (under the store's lock, so the changes to one key
//! arrive in order) and read by [`super::TieredStore::lookup`], which then
//! never waits for a put's disk writes, a demotion or the policy.
//!
//! A reader sees each key as of the last change made before its read of that
//! key's shard: a lookup racing a demotion may name the tier the block is
//! leaving, which a lookup that ran just before it would have named too (a
//! lookup's answer is advisory: the block may move or go before the get).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use parking_lot::RwLock;

use crate::block::BlockKey;
use crate::tier::Tier;

/// Shards: enough that readers on every core and the one writer (who holds
/// the store's lock) rarely meet on one.
const SHARDS: usize = 64;

/// Hashes a [`BlockKey`] by its sequence hash, which is already uniform
/// (xxh3 of the block's tokens and its parent), mixed with its namespace.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shard = HashMap<BlockKey, Tier, BuildHasherDefault<KeyHasher>>;

/// Key → tier, in [`SHARDS`] independently locked shards.
pub(super) struct Presence {
    shards: Box<[RwLock<Shard>]>,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("shards", &SHARDS).finish()
    }
}

impl Presence {
    fn shard(&self, key: &BlockKey) -> &RwLock<Shard> {
        // High bits: the map inside the shard uses the low ones.
        let mixed = (key.hash ^ u64::from(key.namespace).rotate_left(32))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(mixed >> 58) as usize % SHARDS]
    }

    /// Records that `key` is in `tier` (new, or moved there).
    pub fn set(&self, key: BlockKey, tier: Tier) {
        self.shard(&key).write().insert(key, tier);
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &BlockKey) {
        self.shard(key).write().remove(key);
    }

    /// The tier of `key`, when present.
    pub fn tier(&self, key: &BlockKey) -> Option<Tier> {
        self.shard(key).read().get(key).copied()
    }

    /// Tier of each key (`None` when absent), one shard lock at a time.
    pub fn lookup(&self, keys: &[BlockKey]) -> Vec<Option<Tier>> {
        keys.iter().map(|k| self.tier(k)).collect()
    }

    /// Keys held (summed over the shards).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_move_remove() {
        let p = Presence::default();
        let keys: Vec<BlockKey> = (0..1000u64)
            .map(|i| BlockKey::new((i % 3) as u32, i.wrapping_mul(0x2545_F491_4F6C_DD1D)))
            .collect();
        for k in &keys {
            p.set(*k, Tier::Host);
        }
        assert_eq!(p.len(), 1000);
        p.set(keys[7], Tier::Disk);
        p.remove(&keys[8]);
        let got = p.lookup(&keys[6..10]);
        assert_eq!(
            got,
            vec![Some(Tier::Host), Some(Tier::Disk), None, Some(Tier::Host)]
        );
        assert_eq!(p.len(), 999);
        // The keys spread over the shards.
        let used = p.shards.iter().filter(|s| !s.read().is_empty()).count();
        assert!(used > SHARDS / 2, "{used} of {SHARDS} shards used");
    }
}
