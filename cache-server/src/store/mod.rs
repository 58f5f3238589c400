//! The tiered store: places blocks in the highest tier with room, demotes under
//! pressure in the order the policy decides, promotes on hits, and publishes
//! events.
//!
//! # Layout (lowest first; each module uses only those before it)
//! - `types` — the values the API hands out ([`StoreError`], [`PutOutcome`], …).
//! - `tiers` — tier I/O: opens T0/T1/T2, fixes their capacities, reads,
//!   writes and removes. Holds no store state.
//! - `index` — key → (tier, bytes, parent), and each tier's byte and block
//!   counts. Plain data.
//! - `publish` — block events (ids in change order) with their counters, and
//!   the tier gauges.
//! - `placement` — put in the highest tier with room, demote on pressure,
//!   promote on hit, drop from the bottom tier: the code that changes the
//!   index, the policy and the events together.
//! - `prefetch` — disk → host moves ahead of forecast calls: a round planned
//!   under the lock, each move read outside it and landed under it.
//! - this file — [`TieredStore`]: the lock, the clock, recovery at open, the
//!   read path and the public API.
//!
//! # The lock
//! One mutex guards `placement::State`: the index with its byte counts, the eviction
//! policy and the event publisher. Under it today: every index read and
//! change (so a tier's count can never pass its capacity), every policy call,
//! every event (so ids follow the order of the changes, and a watcher's
//! snapshot and subscription meet exactly), and the tier I/O that placement
//! does: a put's write, the demotions that make room for it (a disk write
//! each), a promotion's write, removals, the memory-tier reads of
//! [`TieredStore::get`], and the demotions [`TieredStore::receive_buffer`]
//! makes when the host arena is full. Outside it: [`TieredStore::lookup`]
//! (it reads `presence`, a sharded key → tier mirror the index keeps under
//! the lock, so a router's presence check never waits for a disk write),
//! disk reads in `get` and in prefetch moves (verify, then re-check the
//! index; a prefetch plan takes the lock for policy calls only), a host-arena slot
//! taken while the arena has one free (its own small lock), opening and
//! flushing.
//!
//! # Where it would split further
//! - Index: `index::Index` changes only through `insert`, `remove` and
//!   `relocate`, which keep `presence` equal to it; per-tier counts as
//!   atomics would let `usage` and `blocks_per_namespace` stop taking the
//!   lock too.
//! - I/O: placement reaches storage only through `tiers::Tiers`. Taking
//!   disk and GPU I/O out of the lock means reserving the bytes in the index
//!   under the lock, writing outside it, then committing (or undoing) under
//!   it again — a change inside `placement` only, as `get` already does for
//!   disk reads.
//! - Policy: the policy is called from `placement` and from the hit paths
//!   here; batching its updates means queueing hits/inserts/moves and
//!   draining the queue before `victim`, behind its own lock.
//! - Events: ids are taken in `publish`; with the index split, the publisher
//!   gets its own small lock, taken right after the change it reports.

mod index;
mod placement;
mod prefetch;
mod presence;
mod publish;
mod tiers;
mod types;

pub use prefetch::{Landing, PrefetchReport, PrefetchRound, MAX_ROUND_BLOCKS};
pub use types::{
    Hit, PutOutcome, ResidentBlock, SpillReport, StoreError, StoreSnapshot, TierUsage,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use kvtier_policy::{BlockInfo, EvictionPolicy};

use crate::block::{Block, BlockKey};
use crate::config::StoreConfig;
use crate::events::StoreEvent;
use crate::metrics as m;
use crate::tier::arena::{ArenaUsage, SlotMut};
use crate::tier::disk::DiskTier;
use crate::tier::{BlockTier, ReadOutcome, Tier};
use index::{Entry, Index};
use placement::State;
use presence::Presence;
use publish::Publisher;
use tiers::Tiers;

/// The tiered block store. Cheap to share behind an `Arc`.
pub struct TieredStore {
    state: Mutex<State>,
    /// Key → tier, kept by the index; read by [`TieredStore::lookup`]
    /// without the lock.
    presence: Arc<Presence>,
    /// Internally synchronised; needs no lock of the store's.
    tiers: Tiers,
    promote_on_hit: bool,
    clock: Instant,
    checksum_failures: AtomicU64,
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore")
            .field("capacity", self.tiers.capacities())
            .finish()
    }
}

impl TieredStore {
    /// Opens the store: the disk tier in `config.data_dir` (when its capacity is
    /// non-zero), its index rebuilt from the disk tier's meta records, so that
    /// every block acknowledged on disk before a restart is served again.
    pub fn open(
        config: &StoreConfig,
        policy: Box<dyn EvictionPolicy<BlockKey>>,
    ) -> Result<Arc<Self>, StoreError> {
        let index = Index::default();
        let store = Self {
            tiers: Tiers::open(config)?,
            presence: index.presence(),
            state: Mutex::new(State {
                index,
                policy,
                publisher: Publisher::new(),
            }),
            promote_on_hit: config.promote_on_hit,
            clock: Instant::now(),
            checksum_failures: AtomicU64::new(0),
        };
        store.recover()?;
        publish::capacity_gauges(&store.tiers);
        publish::tier_gauges(&store.state.lock().index);
        Ok(Arc::new(store))
    }

    /// Rebuilds the index from the disk tier's meta records, then trims the
    /// disk tier to its capacity (which may have been lowered since the last run).
    fn recover(&self) -> Result<(), StoreError> {
        let Some(disk) = self.tiers.disk() else {
            return Ok(());
        };
        let started = Instant::now();
        let records = disk.scan()?;
        let now = self.now_ms();
        let mut state = self.state.lock();
        for (key, meta) in &records {
            let entry = Entry {
                tier: Tier::Disk,
                bytes: meta.len,
                parent: meta.parent,
            };
            state.index.insert(*key, entry);
            let info = BlockInfo {
                parent: meta.parent.map(|p| BlockKey::new(key.namespace, p)),
                bytes: meta.len as u32,
            };
            state.policy.on_insert(*key, Tier::Disk, info, now);
        }
        state.make_room(&self.tiers, Tier::Disk, 0, now);
        tracing::info!(
            blocks = records.len(),
            bytes = state.index.used(Tier::Disk),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "disk tier recovered"
        );
        Ok(())
    }

    /// Milliseconds on the store's monotonic clock (the time its policy sees).
    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Runs `f` on the eviction policy under the store's lock, with the
    /// current time. The hook through which agent lifecycle changes reach the
    /// policy; the store itself stays unaware of agents.
    pub fn with_policy<R>(&self, f: impl FnOnce(&mut dyn EvictionPolicy<BlockKey>, u64) -> R) -> R {
        let now = self.now_ms();
        let mut state = self.state.lock();
        f(state.policy.as_mut(), now)
    }

    /// Name of the eviction policy in use.
    pub fn policy_name(&self) -> &'static str {
        self.state.lock().policy.name()
    }

    /// Capacity and occupancy of every tier, highest first.
    pub fn usage(&self) -> Vec<TierUsage> {
        let state = self.state.lock();
        Tier::ALL
            .into_iter()
            .map(|t| TierUsage {
                tier: t,
                capacity_bytes: self.tiers.capacity(t),
                used_bytes: state.index.used(t),
                blocks: state.index.blocks(t),
            })
            .collect()
    }

    /// Payload bytes really held by the host tier (summed over its blocks).
    pub fn host_resident_bytes(&self) -> u64 {
        self.tiers.host().resident_bytes()
    }

    /// Occupancy of the host tier's arena (slots leased and recycled).
    pub fn host_arena_usage(&self) -> ArenaUsage {
        self.tiers.host().arena().usage()
    }

    /// [`TieredStore::receive_buffer`] when the arena has a free slot now;
    /// never waits for the store's lock nor does I/O.
    pub fn try_receive_buffer(&self, len: u64) -> Option<SlotMut> {
        if len == 0 || len > self.tiers.capacity(Tier::Host) {
            return None;
        }
        self.tiers.host().receive_buffer(usize::try_from(len).ok()?)
    }

    /// A slot of the host tier's arena to receive the `len`-byte payload of
    /// a PUT of `key` into, so that [`TieredStore::put_owned`] keeps it with
    /// no copy at all. When the arena is full (the steady state of a full
    /// cache) the host tier's victims are demoted first, in the policy's
    /// order, as the put itself would do. `None` when the host tier cannot
    /// hold such a block, the block is already present, or no room can be
    /// made: the caller then reads the payload into memory of its own.
    /// May write to disk (demotions): call it where blocking is allowed.
    pub fn receive_buffer(&self, key: BlockKey, len: u64) -> Option<SlotMut> {
        if let Some(slot) = self.try_receive_buffer(len) {
            return Some(slot);
        }
        if len == 0 || len > self.tiers.capacity(Tier::Host) {
            return None;
        }
        let len = usize::try_from(len).ok()?;
        let now = self.now_ms();
        let mut state = self.state.lock();
        if state.index.get(&key).is_some() {
            return None;
        }
        state.free_host_slot(&self.tiers, len, now)
    }

    /// Blocks held per namespace id.
    pub fn blocks_per_namespace(&self) -> HashMap<u32, u64> {
        self.state.lock().index.blocks_per_namespace()
    }

    /// Blocks that failed verification on read since the store opened.
    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.load(Ordering::Relaxed)
    }

    /// Subscribes to block events (starting with the next one).
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.state.lock().publisher.subscribe()
    }

    /// Subscribes to block events and, under the same lock (so that no event
    /// falls between the two), lists the resident blocks of `namespace` (of
    /// every namespace when `None`) and the last event id of each namespace:
    /// the snapshot reflects exactly the events up to those ids, and the
    /// subscription delivers the later ones. Holds the store's lock for one
    /// pass over its index.
    pub fn subscribe_with_snapshot(&self, namespace: Option<u32>) -> StoreSnapshot {
        let state = self.state.lock();
        StoreSnapshot {
            events: state.publisher.subscribe(),
            blocks: state.index.resident(namespace),
            last_ids: state.publisher.last_ids(),
        }
    }

    /// Stores `block` under `key` unless already present (write-once).
    pub fn put(&self, key: BlockKey, block: Block) -> Result<PutOutcome, StoreError> {
        self.put_inner(key, block, false)
    }

    /// Like [`TieredStore::put`], for a payload that is an allocation of
    /// exactly its length which the caller gives up (the data plane reads
    /// each payload into a slot from [`TieredStore::receive_buffer`]): the
    /// host tier keeps a payload that lies in its arena as it is, and copies
    /// any other into a slot.
    pub fn put_owned(&self, key: BlockKey, block: Block) -> Result<PutOutcome, StoreError> {
        self.put_inner(key, block, true)
    }

    fn put_inner(
        &self,
        key: BlockKey,
        block: Block,
        owned: bool,
    ) -> Result<PutOutcome, StoreError> {
        let now = self.now_ms();
        self.state.lock().put(&self.tiers, key, block, owned, now)
    }

    /// Reads a block. A block whose bytes fail verification is dropped and
    /// reported as a miss (and counted), never returned.
    pub fn get(&self, key: BlockKey) -> Result<Option<Hit>, StoreError> {
        let now = self.now_ms();
        let tier = {
            let mut state = self.state.lock();
            let Some(entry) = state.index.get(&key) else {
                return Ok(None);
            };
            if entry.tier != Tier::Disk {
                // Memory tiers are read under the lock: cheap, and consistent.
                let outcome = self
                    .tiers
                    .get(entry.tier)
                    .map(|t| t.get(key))
                    .transpose()?
                    .unwrap_or(ReadOutcome::Missing);
                return Ok(match outcome {
                    ReadOutcome::Found(block) => {
                        state.policy.on_hit(key, now);
                        Some(Hit {
                            block,
                            tier: entry.tier,
                        })
                    }
                    _ => None,
                });
            }
            entry.tier
        };
        let Some(disk) = self.tiers.disk() else {
            return Ok(None);
        };
        let outcome = disk.get(key)?;
        let mut state = self.state.lock();
        match outcome {
            ReadOutcome::Found(block) => {
                state.policy.on_hit(key, now);
                if self.promote_on_hit {
                    state.promote(&self.tiers, key, &block, now);
                }
                Ok(Some(Hit { block, tier }))
            }
            ReadOutcome::Corrupt => {
                self.checksum_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::CHECKSUM_FAILURES, "tier" => tier.as_str()).increment(1);
                if state.index.get(&key).map(|e| e.tier) == Some(Tier::Disk) {
                    // The disk tier already deleted its copy; forget the block.
                    state.forget(key, "corrupt");
                }
                publish::tier_gauges(&state.index);
                Ok(None)
            }
            ReadOutcome::Missing => Ok(None),
        }
    }

    /// Tier of each key (`None` when absent), without reading any payload
    /// and without the store's lock: a lookup never waits for a put's disk
    /// writes, a demotion or the policy (see `presence`).
    pub fn lookup(&self, keys: &[BlockKey]) -> Vec<Option<Tier>> {
        self.presence.lookup(keys)
    }

    /// Copies the memory tiers' blocks to the disk tier, hottest first by the
    /// policy's order, into the disk's free room, for at most `budget`
    /// (graceful shutdown: a restart rebuilds the index from the disk tier
    /// alone). The store is for shutting down afterwards: the policy then
    /// believes every block is on disk.
    pub fn spill_to_disk(&self, budget: std::time::Duration) -> SpillReport {
        let deadline = Instant::now() + budget;
        let now = self.now_ms();
        self.state.lock().spill_to_disk(&self.tiers, deadline, now)
    }

    /// Flushes the disk tier (graceful shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(disk) = self.tiers.disk() {
            disk.flush()?;
        }
        Ok(())
    }

    /// The disk tier, for store-wide settings (namespace configurations).
    pub fn disk(&self) -> Option<&DiskTier> {
        self.tiers.disk()
    }
}

#[cfg(test)]
mod prefetch_tests;
#[cfg(test)]
mod tests;
