//! Placement: where a block goes and when it moves. A put lands in the
//! highest tier with room; making room demotes the policy's victims one tier
//! down (dropping them from the bottom tier); a disk hit is promoted to the
//! highest tier with a place for it.
//!
//! This is the one module that changes the index, tells the policy and
//! publishes the event of the same change, in that order, so the three never
//! disagree. It runs under the store's lock today ([`State`] is what the lock
//! covers) and does its tier I/O there too, through [`Tiers`]; see the
//! store's module doc for how that would split.

use std::time::Instant;

use kvtier_policy::{BlockInfo, EvictionPolicy};

use super::index::{Entry, Index};
use super::publish::{self, Publisher};
use super::tiers::Tiers;
use super::types::{PutOutcome, SpillReport, StoreError};
use crate::block::{Block, BlockKey};
use crate::tier::arena::SlotMut;
use crate::tier::{Tier, TierError};

/// Most blocks demoted beyond what the index's byte counts ask for, to find
/// a host-arena slot (when slots of other sizes, or slots still held by
/// reads in flight, fragment the arena); then the put goes to the next tier.
const MAX_EXTRA_VICTIMS: usize = 64;

/// What the store's lock covers: the index, the policy and the event
/// publisher, which must change together.
pub(super) struct State {
    /// Key → tier, and each tier's counts.
    pub index: Index,
    /// Eviction order; also reached by [`super::TieredStore::with_policy`].
    pub policy: Box<dyn EvictionPolicy<BlockKey>>,
    /// Block events, ids in the order of the changes.
    pub publisher: Publisher,
}

impl State {
    /// Stores `block` under `key` unless already present (write-once): in
    /// the highest tier that can hold it after making room, falling back to
    /// the next one when a write fails. `owned`: the payload is an
    /// allocation the caller gives up ([`crate::tier::BlockTier::put_owned`]).
    pub(super) fn put(
        &mut self,
        tiers: &Tiers,
        key: BlockKey,
        block: Block,
        owned: bool,
        now: u64,
    ) -> Result<PutOutcome, StoreError> {
        let bytes = block.len();
        if let Some(entry) = self.index.get(&key) {
            self.policy.on_hit(key, now);
            return Ok(PutOutcome {
                tier: entry.tier,
                already_present: true,
            });
        }
        let mut last_err = None;
        let candidates: Vec<Tier> = tiers.at_or_below(Tier::Gpu, bytes).collect();
        if candidates.is_empty() {
            return Err(StoreError::TooLarge {
                bytes,
                largest: tiers.largest(),
            });
        }
        for tier in candidates {
            self.make_room(tiers, tier, bytes, now);
            if self.index.used(tier) + bytes > tiers.capacity(tier) {
                continue;
            }
            let Some(t) = tiers.get(tier) else { continue };
            let write = || {
                if owned {
                    // (A cheap clone: the payload is reference-counted.)
                    t.put_owned(key, block.clone())
                } else {
                    t.put(key, &block)
                }
            };
            let mut written = write();
            // The host arena can lack a slot although the index has room
            // (slots of other sizes, or held by reads in flight): free more.
            let mut extra = 0;
            while matches!(written, Err(TierError::NoSlot(_))) && extra < MAX_EXTRA_VICTIMS {
                let Some(victim) = self.policy.victim(tier, now) else {
                    break;
                };
                self.demote(tiers, victim, now);
                extra += 1;
                written = write();
            }
            match written {
                Ok(()) => {
                    self.admit(key, tier, bytes, block.parent, now);
                    publish::tier_gauges(&self.index);
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
                largest: tiers.largest(),
            },
        })
    }

    /// A host-arena slot of `len` bytes to receive a payload into, made by
    /// demoting the host tier's victims in the policy's order (at most
    /// [`MAX_EXTRA_VICTIMS`]): what the put of that payload would do anyway.
    pub(super) fn free_host_slot(
        &mut self,
        tiers: &Tiers,
        len: usize,
        now: u64,
    ) -> Option<SlotMut> {
        let mut slot = None;
        for _ in 0..MAX_EXTRA_VICTIMS {
            let Some(victim) = self.policy.victim(Tier::Host, now) else {
                break;
            };
            self.demote(tiers, victim, now);
            slot = tiers.host().receive_buffer(len);
            if slot.is_some() {
                break;
            }
        }
        publish::tier_gauges(&self.index);
        slot
    }

    /// Bookkeeping of a new block already written to `tier`.
    fn admit(&mut self, key: BlockKey, tier: Tier, bytes: u64, parent: Option<u64>, now: u64) {
        self.index.insert(
            key,
            Entry {
                tier,
                bytes,
                parent,
            },
        );
        self.policy.on_insert(
            key,
            tier,
            BlockInfo {
                parent: parent.map(|p| BlockKey::new(key.namespace, p)),
                bytes: bytes.min(u32::MAX as u64) as u32,
            },
            now,
        );
        self.publisher.stored(key, tier, parent);
    }

    /// Frees room in `tier` until `bytes` more fit, demoting the policy's
    /// victims one tier down (or dropping them from the bottom tier).
    pub(super) fn make_room(&mut self, tiers: &Tiers, tier: Tier, bytes: u64, now: u64) {
        let cap = tiers.capacity(tier);
        while self.index.used(tier) + bytes > cap {
            let Some(victim) = self.policy.victim(tier, now) else {
                break;
            };
            self.demote(tiers, victim, now);
        }
    }

    /// Moves `key` one enabled tier down, or drops it when there is none.
    pub(super) fn demote(&mut self, tiers: &Tiers, key: BlockKey, now: u64) {
        let Some(entry) = self.index.get(&key) else {
            // The policy tracked a block the index does not: resync it.
            self.policy.on_remove(key);
            return;
        };
        let from = entry.tier;
        let target = from
            .below()
            .and_then(|below| tiers.at_or_below(below, entry.bytes).next());
        if let Some(to) = target {
            let moved = tiers
                .read_for_move(key, from)
                .and_then(|block| self.make_room_then_write(tiers, to, key, &block, now));
            match moved {
                Ok(()) => {
                    self.relocate(tiers, key, entry, to, now);
                    return;
                }
                Err(e) => {
                    tracing::warn!(%key, from = from.as_str(), to = to.as_str(), error = %e, "demotion failed; dropping the block");
                    self.drop_block(tiers, key, "error");
                    return;
                }
            }
        }
        self.drop_block(tiers, key, "capacity");
    }

    fn make_room_then_write(
        &mut self,
        tiers: &Tiers,
        to: Tier,
        key: BlockKey,
        block: &Block,
        now: u64,
    ) -> Result<(), TierError> {
        self.make_room(tiers, to, block.len(), now);
        tiers.write(to, key, block)
    }

    /// Moves a block just read from a lower tier up to the highest tier with
    /// a place for it (making room there first); gives up quietly when there
    /// is none or the write fails: the block stays where it was.
    pub(super) fn promote(&mut self, tiers: &Tiers, key: BlockKey, block: &Block, now: u64) {
        let Some(entry) = self.index.get(&key) else {
            return;
        };
        let Some(to) = tiers.at_or_below(Tier::Gpu, entry.bytes).next() else {
            return;
        };
        if to >= entry.tier {
            return;
        }
        self.make_room(tiers, to, entry.bytes, now);
        if self.index.used(to) + entry.bytes > tiers.capacity(to) {
            return;
        }
        // Making room may have pushed this very block further down or out.
        let Some(entry) = self.index.get(&key) else {
            return;
        };
        let Some(t) = tiers.get(to) else { return };
        if let Err(e) = t.put(key, block) {
            tracing::warn!(%key, error = %e, "promotion failed");
            return;
        }
        self.relocate(tiers, key, entry, to, now);
        publish::tier_gauges(&self.index);
    }

    /// Copies the memory tiers' blocks (GPU, then host) to the disk tier,
    /// hottest first by the policy's order, into the disk's free room only
    /// (the disk's own blocks stay), until `deadline`. For a graceful
    /// shutdown: memory tiers do not survive a restart, the disk tier does.
    /// Leaves the policy believing every memory block is on disk: call it
    /// last.
    pub(super) fn spill_to_disk(
        &mut self,
        tiers: &Tiers,
        deadline: Instant,
        now: u64,
    ) -> SpillReport {
        let mut report = SpillReport::default();
        if tiers.disk().is_none() {
            return report;
        }
        for from in [Tier::Gpu, Tier::Host] {
            // The policy's eviction order, coldest first: take each victim and
            // tell the policy it left, so the next call names the next one.
            let mut order = Vec::with_capacity(self.index.blocks(from) as usize);
            while let Some(key) = self.policy.victim(from, now) {
                self.policy.on_move(key, Tier::Disk, now);
                order.push(key);
            }
            for key in order.into_iter().rev() {
                let Some(entry) = self.index.get(&key).filter(|e| e.tier == from) else {
                    continue;
                };
                if Instant::now() >= deadline {
                    report.left += 1;
                    continue;
                }
                if self.index.used(Tier::Disk) + entry.bytes > tiers.capacity(Tier::Disk) {
                    report.no_room += 1;
                    continue;
                }
                match tiers
                    .read_for_move(key, from)
                    .and_then(|block| tiers.write(Tier::Disk, key, &block))
                {
                    Ok(()) => {
                        self.relocate(tiers, key, entry, Tier::Disk, now);
                        report.kept += 1;
                        report.kept_bytes += entry.bytes;
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "spill to disk failed");
                        report.failed += 1;
                    }
                }
            }
        }
        publish::tier_gauges(&self.index);
        report
    }

    /// Bookkeeping of a block already written to `to`: leave its old tier,
    /// account it in the new one, tell the policy and the subscribers.
    pub(super) fn relocate(
        &mut self,
        tiers: &Tiers,
        key: BlockKey,
        entry: Entry,
        to: Tier,
        now: u64,
    ) {
        tiers.remove(key, entry.tier);
        self.index.relocate(key, entry, to);
        self.policy.on_move(key, to, now);
        self.publisher.moved(key, entry.tier, to, entry.parent);
    }

    /// Removes `key` from its tier's storage, then forgets it.
    fn drop_block(&mut self, tiers: &Tiers, key: BlockKey, reason: &'static str) {
        let Some(entry) = self.index.get(&key) else {
            return;
        };
        tiers.remove(key, entry.tier);
        self.forget(key, reason);
    }

    /// Forgets `key` (index, policy) and publishes its removal; its storage
    /// is already gone or left to the caller.
    pub(super) fn forget(&mut self, key: BlockKey, reason: &'static str) {
        let Some(entry) = self.index.remove(&key) else {
            return;
        };
        self.policy.on_remove(key);
        self.publisher
            .removed(key, entry.tier, entry.parent, reason);
    }
}
