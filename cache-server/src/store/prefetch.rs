//! Prefetch: moving the policy's most valuable disk blocks up to the host
//! tier ahead of their agents' forecast calls (the server's background task
//! is [`crate::prefetch`]; the rule is [`kvtier_policy::prefetch::plan`]).
//!
//! A round is planned under the store's lock (two lists from the policy and
//! a pure plan: no I/O), then each planned block is moved on its own: its
//! disk read (with check-sum verification) happens outside the lock; then,
//! under the lock, the move lands only if the block is still on disk (a
//! client that read it meanwhile promoted it or the disk dropped it: the move
//! is cancelled) and the policy still wants it (its agent did not end). Room
//! is made by demoting only the round's planned victims, each of a strictly
//! lower forecast value than the block that displaces it; with no planned
//! victim left and no room, the move is skipped. Under the lock a landing does
//! what a put does at most (a host write and the demotions that make room).

use std::collections::VecDeque;
use std::time::Instant;

use kvtier_policy::prefetch::{free_slots, plan};

use super::{publish, TieredStore};
use crate::block::{Block, BlockKey};
use crate::metrics as m;
use crate::tier::{ReadOutcome, Tier, TierError};

/// Most blocks one round plans, whatever its budget (bounds the work done
/// under the lock while planning).
pub const MAX_ROUND_BLOCKS: usize = 4096;

/// One planned round (see [`TieredStore::plan_prefetch`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrefetchRound {
    /// Disk blocks to move up, in the order to move them (each context tail
    /// first, so that its head is the last of it to leave the host again).
    pub promote: Vec<BlockKey>,
    /// Host blocks that may move down to make room for them, first first.
    pub victims: VecDeque<BlockKey>,
}

/// What became of one planned move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// The block is in the host tier now; `displaced` host blocks moved down for it.
    Promoted {
        /// Payload bytes moved.
        bytes: u64,
        /// Planned victims demoted to make room.
        displaced: u64,
    },
    /// No longer on disk when the move would land (a client read it, or it
    /// was dropped): nothing done.
    Fetched,
    /// The policy no longer wants it up (its agent ended or dropped it).
    NotWanted,
    /// No free room and no planned victim left.
    NoRoom,
    /// The disk copy failed verification: dropped, as a read would.
    Corrupt,
    /// A tier failed (logged); the block stays where it was.
    Failed,
}

/// What one round did (see [`TieredStore::prefetch_round`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Blocks the round planned to move up.
    pub planned: u64,
    /// Blocks moved up.
    pub promoted: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Host blocks moved down to make room.
    pub displaced: u64,
    /// Moves cancelled: the block had been read (promoted) or dropped meanwhile.
    pub fetched: u64,
    /// Moves cancelled: the policy no longer wanted the block.
    pub not_wanted: u64,
    /// Moves skipped for want of room.
    pub no_room: u64,
    /// Blocks whose disk copy failed verification (dropped, never promoted).
    pub corrupt: u64,
    /// Moves that failed on a tier error.
    pub failed: u64,
    /// Planned moves left when the round's bytes or time ran out.
    pub left: u64,
}

impl PrefetchReport {
    fn count(&mut self, landing: Landing) {
        match landing {
            Landing::Promoted { bytes, displaced } => {
                self.promoted += 1;
                self.bytes += bytes;
                self.displaced += displaced;
            }
            Landing::Fetched => self.fetched += 1,
            Landing::NotWanted => self.not_wanted += 1,
            Landing::NoRoom => self.no_room += 1,
            Landing::Corrupt => self.corrupt += 1,
            Landing::Failed => self.failed += 1,
        }
    }
}

impl TieredStore {
    /// Mean payload size of `tier`'s blocks (0 when it holds none).
    pub fn mean_block_bytes(&self, tier: Tier) -> u64 {
        let state = self.state.lock();
        state
            .index
            .used(tier)
            .checked_div(state.index.blocks(tier))
            .unwrap_or(0)
    }

    /// Plans one prefetch round of at most `budget` blocks (and
    /// [`MAX_ROUND_BLOCKS`]) from disk to host, under the store's lock but
    /// with no I/O: the policy's promotion candidates (on disk), its host
    /// victims, the host's free room, [`plan`]. `horizon_ms`: how the policy
    /// values agents (see [`kvtier_policy::EvictionPolicy::promotion_candidates`]).
    /// Empty without a disk or host tier, or with a policy that forecasts nothing.
    pub fn plan_prefetch(&self, budget: usize, horizon_ms: Option<u64>) -> PrefetchRound {
        let budget = budget.min(MAX_ROUND_BLOCKS);
        let host_cap = self.tiers.capacity(Tier::Host);
        if budget == 0 || host_cap == 0 || self.tiers.disk().is_none() {
            return PrefetchRound::default();
        }
        let now = self.now_ms();
        let mut state = self.state.lock();
        let mut cand = state
            .policy
            .promotion_candidates(Tier::Disk, budget, horizon_ms, now);
        cand.retain(|(k, _)| state.index.get(k).is_some_and(|e| e.tier == Tier::Disk));
        if cand.is_empty() {
            return PrefetchRound::default();
        }
        let free_bytes = host_cap.saturating_sub(state.index.used(Tier::Host));
        let sizes = cand
            .iter()
            .map(|(k, _)| state.index.get(k).map_or(u64::MAX, |e| e.bytes));
        let free = free_slots(free_bytes, sizes);
        let need = budget.min(cand.len()).saturating_sub(free);
        let victims = if need > 0 {
            state
                .policy
                .eviction_candidates(Tier::Host, need, horizon_ms, now)
        } else {
            Vec::new()
        };
        let round = plan(&cand, &victims, free, budget);
        PrefetchRound {
            promote: round.promote.into_iter().rev().collect(),
            victims: round.demote.into(),
        }
    }

    /// Moves one planned block up (see the module doc): reads it from disk
    /// outside the lock, then lands it under the lock if still wanted,
    /// demoting the round's next victims for room.
    pub fn prefetch_one(&self, round: &mut PrefetchRound, key: BlockKey) -> Landing {
        self.prefetch_one_with(round, key, || {})
    }

    /// [`TieredStore::prefetch_one`], calling `between` after the disk read
    /// and before the landing (tests use it to act while a move is in flight).
    pub(crate) fn prefetch_one_with(
        &self,
        round: &mut PrefetchRound,
        key: BlockKey,
        between: impl FnOnce(),
    ) -> Landing {
        let Some(disk) = self.tiers.disk() else {
            return Landing::Failed;
        };
        if self.presence.tier(&key) != Some(Tier::Disk) {
            return Landing::Fetched;
        }
        let block = match crate::tier::BlockTier::get(disk, key) {
            Ok(ReadOutcome::Found(block)) => block,
            Ok(ReadOutcome::Missing) => return Landing::Fetched,
            Ok(ReadOutcome::Corrupt) => {
                self.corrupt_on_disk(key);
                return Landing::Corrupt;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "prefetch read failed");
                return Landing::Failed;
            }
        };
        between();
        self.land(round, key, &block)
    }

    /// The landing of a block read from disk: under the lock, re-checked.
    fn land(&self, round: &mut PrefetchRound, key: BlockKey, block: &Block) -> Landing {
        let now = self.now_ms();
        let mut state = self.state.lock();
        let still_on_disk = |s: &super::State| s.index.get(&key).filter(|e| e.tier == Tier::Disk);
        let Some(entry) = still_on_disk(&state) else {
            return Landing::Fetched;
        };
        if !state.policy.wants_prefetch(key) {
            return Landing::NotWanted;
        }
        let cap = self.tiers.capacity(Tier::Host);
        let mut displaced = 0;
        let mut next_victim = |state: &mut super::State| -> bool {
            while let Some(v) = round.victims.pop_front() {
                if state.index.get(&v).is_some_and(|e| e.tier == Tier::Host) {
                    state.demote(&self.tiers, v, now);
                    displaced += 1;
                    return true;
                }
            }
            false
        };
        while state.index.used(Tier::Host) + entry.bytes > cap {
            if !next_victim(&mut state) {
                publish::tier_gauges(&state.index);
                return Landing::NoRoom;
            }
        }
        // A victim's demotion may have made room on a full disk by dropping
        // this very block.
        let Some(entry) = still_on_disk(&state) else {
            publish::tier_gauges(&state.index);
            return Landing::Fetched;
        };
        let mut written = self.tiers.write(Tier::Host, key, block);
        // The arena can lack a slot of this size although the bytes fit.
        while matches!(written, Err(TierError::NoSlot(_))) && next_victim(&mut state) {
            written = self.tiers.write(Tier::Host, key, block);
        }
        let landing = match written {
            Ok(()) => {
                state.relocate(&self.tiers, key, entry, Tier::Host, now);
                Landing::Promoted {
                    bytes: entry.bytes,
                    displaced,
                }
            }
            Err(TierError::NoSlot(_)) => Landing::NoRoom,
            Err(e) => {
                tracing::warn!(%key, error = %e, "prefetch write failed");
                Landing::Failed
            }
        };
        publish::tier_gauges(&state.index);
        landing
    }

    /// A disk block failed verification on read: count it and forget it
    /// (the disk tier already deleted its copy), as [`TieredStore::get`] does.
    pub(super) fn corrupt_on_disk(&self, key: BlockKey) {
        self.checksum_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(m::CHECKSUM_FAILURES, "tier" => Tier::Disk.as_str()).increment(1);
        let mut state = self.state.lock();
        if state.index.get(&key).map(|e| e.tier) == Some(Tier::Disk) {
            state.forget(key, "corrupt");
        }
        publish::tier_gauges(&state.index);
    }

    /// Plans and runs one round: at most `budget_blocks` blocks, stopping
    /// once `budget_bytes` are moved or at `deadline` (what is left is
    /// reported, not queued: the next round plans afresh). Blocking I/O:
    /// call it where blocking is allowed.
    pub fn prefetch_round(
        &self,
        budget_blocks: usize,
        budget_bytes: u64,
        horizon_ms: Option<u64>,
        deadline: Instant,
    ) -> PrefetchReport {
        let mut report = PrefetchReport::default();
        if budget_bytes == 0 {
            return report;
        }
        let mut round = self.plan_prefetch(budget_blocks, horizon_ms);
        let promote = std::mem::take(&mut round.promote);
        report.planned = promote.len() as u64;
        for (i, &key) in promote.iter().enumerate() {
            if report.bytes >= budget_bytes || Instant::now() >= deadline {
                report.left = (promote.len() - i) as u64;
                break;
            }
            report.count(self.prefetch_one(&mut round, key));
        }
        report
    }
}
