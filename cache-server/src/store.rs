//! The tiered store: places blocks in the highest tier with room, demotes under
//! pressure in the order the policy decides, promotes on hits, and publishes
//! events.
//!
//! One mutex guards the index, the per-tier byte counts and the policy; the
//! tiers themselves are internally synchronised. Disk reads run outside the
//! lock (verify, then re-check the index); writes that make room (demotions)
//! run under it, so the byte accounting can never pass a tier's capacity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use kvtier_policy::{BlockInfo, EvictionPolicy};

use crate::block::{Block, BlockKey};
use crate::config::StoreConfig;
use crate::events::{EventBus, StoreEvent, StoreEventKind};
use crate::metrics as m;
use crate::tier::disk::DiskTier;
use crate::tier::host::HostTier;
use crate::tier::{BlockTier, ReadOutcome, Tier, TierError};

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No enabled tier can hold a block that large.
    #[error("block of {bytes} bytes is larger than every tier (largest capacity {largest} bytes)")]
    TooLarge {
        /// The block's size.
        bytes: u64,
        /// The largest tier capacity.
        largest: u64,
    },
    /// A tier failed.
    #[error(transparent)]
    Tier(#[from] TierError),
}

/// Where a `put` left the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Tier the block is in now.
    pub tier: Tier,
    /// The block was already present; nothing was written.
    pub already_present: bool,
}

/// A block read from the store.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The block.
    pub block: Block,
    /// Tier it was served from.
    pub tier: Tier,
}

/// A block resident in the store, as listed by a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentBlock {
    /// Which block.
    pub key: BlockKey,
    /// Tier it is in.
    pub tier: Tier,
    /// Parent sequence hash, when known.
    pub parent: Option<u64>,
}

/// A watcher's consistent starting point (see [`TieredStore::subscribe_with_snapshot`]).
#[derive(Debug)]
pub struct StoreSnapshot {
    /// Events after the snapshot, starting with the next one.
    pub events: broadcast::Receiver<StoreEvent>,
    /// Blocks resident when the snapshot was taken, in no particular order.
    pub blocks: Vec<ResidentBlock>,
    /// Id of the last event each namespace had published by then (namespaces
    /// that never published one are absent: their last id is 0).
    pub last_ids: HashMap<u32, u64>,
}

/// Occupancy of one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierUsage {
    /// Which tier.
    pub tier: Tier,
    /// Configured capacity (0: disabled).
    pub capacity_bytes: u64,
    /// Payload bytes held.
    pub used_bytes: u64,
    /// Blocks held.
    pub blocks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    tier: Tier,
    bytes: u64,
    parent: Option<u64>,
}

struct Inner {
    index: HashMap<BlockKey, Entry>,
    used: [u64; 3],
    blocks: [u64; 3],
    policy: Box<dyn EvictionPolicy<BlockKey>>,
    events: EventBus,
}

/// The tiered block store. Cheap to share behind an `Arc`.
pub struct TieredStore {
    inner: Mutex<Inner>,
    capacity: [u64; 3],
    host: HostTier,
    disk: Option<DiskTier>,
    #[cfg(feature = "cuda")]
    gpu: Option<crate::tier::gpu::GpuTier>,
    promote_on_hit: bool,
    clock: Instant,
    checksum_failures: AtomicU64,
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore")
            .field("capacity", &self.capacity)
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
        let disk = if config.disk_capacity > 0 {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| TierError::Malformed {
                key: BlockKey::new(0, 0),
                reason: format!("cannot create {}: {e}", config.data_dir.display()),
            })?;
            Some(DiskTier::open(&config.data_dir, config.sync_writes)?)
        } else {
            None
        };
        #[cfg(feature = "cuda")]
        let gpu = crate::tier::gpu::GpuTier::open(config.gpu_device, config.gpu_capacity);
        #[cfg(feature = "cuda")]
        let gpu_capacity = if gpu.is_some() {
            config.gpu_capacity
        } else {
            0
        };
        #[cfg(not(feature = "cuda"))]
        let gpu_capacity = {
            if config.gpu_capacity > 0 {
                tracing::warn!("GPU tier requested but this build has no `cuda` feature; running host + disk only");
            }
            0
        };
        #[cfg(feature = "cuda")]
        let host = match crate::tier::pinned::PinnedMemory::open(config.gpu_device) {
            Some(pinned) => HostTier::new(Box::new(pinned)),
            None => HostTier::default(),
        };
        #[cfg(not(feature = "cuda"))]
        let host = HostTier::default();
        tracing::info!(memory = host.memory_name(), "host tier");
        let capacity = [
            gpu_capacity,
            config.host_capacity,
            if disk.is_some() {
                config.disk_capacity
            } else {
                0
            },
        ];
        let store = Self {
            inner: Mutex::new(Inner {
                index: HashMap::new(),
                used: [0; 3],
                blocks: [0; 3],
                policy,
                events: EventBus::new(65_536),
            }),
            capacity,
            host,
            disk,
            #[cfg(feature = "cuda")]
            gpu,
            promote_on_hit: config.promote_on_hit,
            clock: Instant::now(),
            checksum_failures: AtomicU64::new(0),
        };
        store.recover()?;
        for tier in Tier::ALL {
            metrics::gauge!(m::TIER_CAPACITY_BYTES, "tier" => tier.as_str())
                .set(store.capacity[tier.index()] as f64);
        }
        store.publish_gauges(&store.inner.lock());
        Ok(Arc::new(store))
    }

    fn recover(&self) -> Result<(), StoreError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let started = Instant::now();
        let records = disk.scan()?;
        let now = self.now_ms();
        let mut inner = self.inner.lock();
        for (key, meta) in &records {
            inner.index.insert(
                *key,
                Entry {
                    tier: Tier::Disk,
                    bytes: meta.len,
                    parent: meta.parent,
                },
            );
            inner.used[Tier::Disk.index()] += meta.len;
            inner.blocks[Tier::Disk.index()] += 1;
            inner.policy.on_insert(
                *key,
                Tier::Disk,
                BlockInfo {
                    parent: meta.parent.map(|p| BlockKey::new(key.namespace, p)),
                    bytes: meta.len as u32,
                },
                now,
            );
        }
        // The capacity may have been lowered since the last run.
        self.make_room(&mut inner, Tier::Disk, 0, now);
        tracing::info!(
            blocks = records.len(),
            bytes = inner.used[Tier::Disk.index()],
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
        let mut inner = self.inner.lock();
        f(inner.policy.as_mut(), now)
    }

    /// Name of the eviction policy in use.
    pub fn policy_name(&self) -> &'static str {
        self.inner.lock().policy.name()
    }

    fn tier(&self, tier: Tier) -> Option<&dyn BlockTier> {
        match tier {
            #[cfg(feature = "cuda")]
            Tier::Gpu => self.gpu.as_ref().map(|g| g as &dyn BlockTier),
            #[cfg(not(feature = "cuda"))]
            Tier::Gpu => None,
            Tier::Host => Some(&self.host),
            Tier::Disk => self.disk.as_ref().map(|d| d as &dyn BlockTier),
        }
    }

    /// Enabled tiers at or below `from`, highest first, that can hold `bytes`.
    fn tiers_for(&self, from: Tier, bytes: u64) -> impl Iterator<Item = Tier> + '_ {
        Tier::ALL.into_iter().filter(move |t| {
            *t >= from
                && self.capacity[t.index()] >= bytes
                && self.capacity[t.index()] > 0
                && self.tier(*t).is_some()
        })
    }

    /// Capacity and occupancy of every tier, highest first.
    pub fn usage(&self) -> Vec<TierUsage> {
        let inner = self.inner.lock();
        Tier::ALL
            .into_iter()
            .map(|t| TierUsage {
                tier: t,
                capacity_bytes: self.capacity[t.index()],
                used_bytes: inner.used[t.index()],
                blocks: inner.blocks[t.index()],
            })
            .collect()
    }

    /// Payload bytes really held by the host tier (summed over its blocks).
    pub fn host_resident_bytes(&self) -> u64 {
        self.host.resident_bytes()
    }

    /// Blocks held per namespace id.
    pub fn blocks_per_namespace(&self) -> HashMap<u32, u64> {
        let inner = self.inner.lock();
        let mut out = HashMap::new();
        for key in inner.index.keys() {
            *out.entry(key.namespace).or_insert(0) += 1;
        }
        out
    }

    /// Blocks that failed verification on read since the store opened.
    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.load(Ordering::Relaxed)
    }

    /// Subscribes to block events (starting with the next one).
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.lock().events.subscribe()
    }

    /// Subscribes to block events and, under the same lock (so that no event
    /// falls between the two), lists the resident blocks of `namespace` (of
    /// every namespace when `None`) and the last event id of each namespace:
    /// the snapshot reflects exactly the events up to those ids, and the
    /// subscription delivers the later ones. Holds the store's lock for one
    /// pass over its index.
    pub fn subscribe_with_snapshot(&self, namespace: Option<u32>) -> StoreSnapshot {
        let inner = self.inner.lock();
        let events = inner.events.subscribe();
        let blocks = inner
            .index
            .iter()
            .filter(|(key, _)| namespace.is_none_or(|ns| ns == key.namespace))
            .map(|(&key, entry)| ResidentBlock {
                key,
                tier: entry.tier,
                parent: entry.parent,
            })
            .collect();
        StoreSnapshot {
            events,
            blocks,
            last_ids: inner.events.last_ids(),
        }
    }

    /// Stores `block` under `key` unless already present (write-once).
    pub fn put(&self, key: BlockKey, block: Block) -> Result<PutOutcome, StoreError> {
        self.put_inner(key, block, false)
    }

    /// Like [`TieredStore::put`], for a payload that is an allocation of
    /// exactly its length which the caller gives up (the data plane reads
    /// each payload into one): the host tier keeps it as it is instead of
    /// copying it (unless its memory is pinned). A payload that is a view into
    /// a larger buffer must go through [`TieredStore::put`], or the host
    /// tier's byte budget would undercount what the process holds.
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
        let bytes = block.len();
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.index.get(&key).copied() {
            inner.policy.on_hit(key, now);
            return Ok(PutOutcome {
                tier: entry.tier,
                already_present: true,
            });
        }
        let mut last_err = None;
        let candidates: Vec<Tier> = self.tiers_for(Tier::Gpu, bytes).collect();
        if candidates.is_empty() {
            return Err(StoreError::TooLarge {
                bytes,
                largest: self.capacity.iter().copied().max().unwrap_or(0),
            });
        }
        for tier in candidates {
            self.make_room(&mut inner, tier, bytes, now);
            if inner.used[tier.index()] + bytes > self.capacity[tier.index()] {
                continue;
            }
            let Some(t) = self.tier(tier) else { continue };
            let written = if owned {
                // (A cheap clone: the payload is reference-counted.)
                t.put_owned(key, block.clone())
            } else {
                t.put(key, &block)
            };
            match written {
                Ok(()) => {
                    self.admit(&mut inner, key, tier, bytes, block.parent, now);
                    metrics::counter!(m::BLOCKS_STORED, "tier" => tier.as_str()).increment(1);
                    self.publish_gauges(&inner);
                    return Ok(PutOutcome {
                        tier,
                        already_present: false,
                    });
                }
                Err(e) => {
                    tracing::warn!(%key, tier = tier.as_str(), error = %e, "put failed; trying the next tier");
                    last_err = Some(e);
                }
            }
        }
        Err(match last_err {
            Some(e) => StoreError::Tier(e),
            None => StoreError::TooLarge {
                bytes,
                largest: self.capacity.iter().copied().max().unwrap_or(0),
            },
        })
    }

    fn admit(
        &self,
        inner: &mut Inner,
        key: BlockKey,
        tier: Tier,
        bytes: u64,
        parent: Option<u64>,
        now: u64,
    ) {
        inner.index.insert(
            key,
            Entry {
                tier,
                bytes,
                parent,
            },
        );
        inner.used[tier.index()] += bytes;
        inner.blocks[tier.index()] += 1;
        inner.policy.on_insert(
            key,
            tier,
            BlockInfo {
                parent: parent.map(|p| BlockKey::new(key.namespace, p)),
                bytes: bytes.min(u32::MAX as u64) as u32,
            },
            now,
        );
        inner
            .events
            .publish(StoreEventKind::Stored, key, Some(tier), parent);
    }

    /// Frees room in `tier` until `bytes` more fit, demoting the policy's
    /// victims one tier down (or dropping them from the bottom tier).
    fn make_room(&self, inner: &mut Inner, tier: Tier, bytes: u64, now: u64) {
        let cap = self.capacity[tier.index()];
        while inner.used[tier.index()] + bytes > cap {
            let Some(victim) = inner.policy.victim(tier, now) else {
                break;
            };
            self.demote(inner, victim, now);
        }
    }

    /// Moves `key` one enabled tier down, or drops it when there is none.
    fn demote(&self, inner: &mut Inner, key: BlockKey, now: u64) {
        let Some(entry) = inner.index.get(&key).copied() else {
            // The policy tracked a block the index does not: resync it.
            inner.policy.on_remove(key);
            return;
        };
        let from = entry.tier;
        let target = from
            .below()
            .and_then(|below| self.tiers_for(below, entry.bytes).next());
        if let Some(to) = target {
            let moved = self
                .read_for_move(key, from)
                .and_then(|block| self.make_room_then_write(inner, to, key, &block, now));
            match moved {
                Ok(()) => {
                    self.relocate(inner, key, entry, to, now);
                    metrics::counter!(m::DEMOTIONS, "from" => from.as_str(), "to" => to.as_str())
                        .increment(1);
                    return;
                }
                Err(e) => {
                    tracing::warn!(%key, from = from.as_str(), to = to.as_str(), error = %e, "demotion failed; dropping the block");
                    self.drop_block(inner, key, "error");
                    return;
                }
            }
        }
        self.drop_block(inner, key, "capacity");
    }

    fn make_room_then_write(
        &self,
        inner: &mut Inner,
        to: Tier,
        key: BlockKey,
        block: &Block,
        now: u64,
    ) -> Result<(), TierError> {
        self.make_room(inner, to, block.len(), now);
        let t = self.tier(to).ok_or_else(|| TierError::Malformed {
            key,
            reason: format!("tier {} disabled", to.as_str()),
        })?;
        t.put(key, block)
    }

    fn read_for_move(&self, key: BlockKey, from: Tier) -> Result<Block, TierError> {
        let t = self.tier(from).ok_or_else(|| TierError::Malformed {
            key,
            reason: format!("tier {} disabled", from.as_str()),
        })?;
        match t.get(key)? {
            ReadOutcome::Found(block) => Ok(block),
            ReadOutcome::Missing | ReadOutcome::Corrupt => Err(TierError::Malformed {
                key,
                reason: format!("block vanished from the {} tier", from.as_str()),
            }),
        }
    }

    /// Removes `key` from its tier's storage and accounting (not from the index).
    fn detach(&self, inner: &mut Inner, key: BlockKey, from: Tier) {
        if let Some(t) = self.tier(from) {
            if let Err(e) = t.remove(key) {
                tracing::warn!(%key, tier = from.as_str(), error = %e, "remove failed");
            }
        }
        if let Some(entry) = inner.index.get(&key) {
            inner.used[from.index()] -= entry.bytes;
            inner.blocks[from.index()] -= 1;
        }
    }

    fn drop_block(&self, inner: &mut Inner, key: BlockKey, reason: &'static str) {
        let Some(entry) = inner.index.get(&key).copied() else {
            return;
        };
        self.detach(inner, key, entry.tier);
        inner.index.remove(&key);
        inner.policy.on_remove(key);
        inner
            .events
            .publish(StoreEventKind::Removed, key, None, entry.parent);
        metrics::counter!(m::EVICTIONS, "tier" => entry.tier.as_str(), "reason" => reason)
            .increment(1);
    }

    /// Reads a block. A block whose bytes fail verification is dropped and
    /// reported as a miss (and counted), never returned.
    pub fn get(&self, key: BlockKey) -> Result<Option<Hit>, StoreError> {
        let now = self.now_ms();
        let tier = {
            let mut inner = self.inner.lock();
            let Some(entry) = inner.index.get(&key).copied() else {
                return Ok(None);
            };
            if entry.tier != Tier::Disk {
                // Memory tiers are read under the lock: cheap, and consistent.
                let outcome = self
                    .tier(entry.tier)
                    .map(|t| t.get(key))
                    .transpose()?
                    .unwrap_or(ReadOutcome::Missing);
                return Ok(match outcome {
                    ReadOutcome::Found(block) => {
                        inner.policy.on_hit(key, now);
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
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let outcome = disk.get(key)?;
        let mut inner = self.inner.lock();
        match outcome {
            ReadOutcome::Found(block) => {
                inner.policy.on_hit(key, now);
                if self.promote_on_hit {
                    self.promote(&mut inner, key, &block, now);
                }
                Ok(Some(Hit { block, tier }))
            }
            ReadOutcome::Corrupt => {
                self.checksum_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::CHECKSUM_FAILURES, "tier" => tier.as_str()).increment(1);
                if inner.index.get(&key).map(|e| e.tier) == Some(Tier::Disk) {
                    // The disk tier already deleted its copy; forget the block.
                    inner.used[Tier::Disk.index()] -= inner.index[&key].bytes;
                    inner.blocks[Tier::Disk.index()] -= 1;
                    let parent = inner.index.remove(&key).and_then(|e| e.parent);
                    inner.policy.on_remove(key);
                    inner
                        .events
                        .publish(StoreEventKind::Removed, key, None, parent);
                    metrics::counter!(m::EVICTIONS, "tier" => tier.as_str(), "reason" => "corrupt")
                        .increment(1);
                }
                self.publish_gauges(&inner);
                Ok(None)
            }
            ReadOutcome::Missing => Ok(None),
        }
    }

    fn promote(&self, inner: &mut Inner, key: BlockKey, block: &Block, now: u64) {
        let Some(entry) = inner.index.get(&key).copied() else {
            return;
        };
        let Some(to) = self.tiers_for(Tier::Gpu, entry.bytes).next() else {
            return;
        };
        if to >= entry.tier {
            return;
        }
        self.make_room(inner, to, entry.bytes, now);
        if inner.used[to.index()] + entry.bytes > self.capacity[to.index()] {
            return;
        }
        // Making room may have pushed this very block further down or out.
        let Some(entry) = inner.index.get(&key).copied() else {
            return;
        };
        let Some(t) = self.tier(to) else { return };
        if let Err(e) = t.put(key, block) {
            tracing::warn!(%key, error = %e, "promotion failed");
            return;
        }
        let from = entry.tier;
        self.relocate(inner, key, entry, to, now);
        metrics::counter!(m::PROMOTIONS, "from" => from.as_str(), "to" => to.as_str()).increment(1);
        self.publish_gauges(inner);
    }

    /// Bookkeeping of a block already written to `to`: leave its old tier,
    /// account it in the new one, tell the policy and the subscribers.
    fn relocate(&self, inner: &mut Inner, key: BlockKey, entry: Entry, to: Tier, now: u64) {
        self.detach(inner, key, entry.tier);
        inner.index.insert(key, Entry { tier: to, ..entry });
        inner.used[to.index()] += entry.bytes;
        inner.blocks[to.index()] += 1;
        inner.policy.on_move(key, to, now);
        inner
            .events
            .publish(StoreEventKind::Moved, key, Some(to), entry.parent);
    }

    /// Tier of each key (`None` when absent), without reading any payload.
    pub fn lookup(&self, keys: &[BlockKey]) -> Vec<Option<Tier>> {
        let inner = self.inner.lock();
        keys.iter()
            .map(|k| inner.index.get(k).map(|e| e.tier))
            .collect()
    }

    /// Flushes the disk tier (graceful shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(disk) = &self.disk {
            disk.flush()?;
        }
        Ok(())
    }

    /// The disk tier, for store-wide settings (namespace configurations).
    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
    }

    fn publish_gauges(&self, inner: &Inner) {
        for tier in Tier::ALL {
            metrics::gauge!(m::TIER_BYTES, "tier" => tier.as_str())
                .set(inner.used[tier.index()] as f64);
            metrics::gauge!(m::TIER_BLOCKS, "tier" => tier.as_str())
                .set(inner.blocks[tier.index()] as f64);
        }
    }
}

#[cfg(test)]
mod tests;
