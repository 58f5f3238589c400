//! [`LocalityIndex::find_matches`]: bisection for prefix-closed sources, a
//! shared walk for the others (see the module docs of [`super`]).

use super::node::{CacheTier, Node};
use super::{LocalityIndex, PrefixMatches, WorkerOverlap, WorkerSlot};

/// Answers one query.
pub(super) fn find_matches(index: &LocalityIndex, hashes: &[u64]) -> PrefixMatches {
    let query = Query { index, hashes };
    let worker_count = index.workers.len();
    let mut depths = vec![0u32; worker_count];
    query.worker_depths(&mut depths);

    let mut workers: Vec<WorkerOverlap> = depths
        .iter()
        .enumerate()
        .map(|(slot, &depth)| WorkerOverlap {
            slot: slot as WorkerSlot,
            hbm_blocks: depth,
            host_blocks: 0,
            disk_blocks: 0,
        })
        .collect();
    let cache_prefix_blocks = query.cache_runs(&mut workers);
    PrefixMatches {
        query_blocks: hashes.len() as u32,
        cache_prefix_blocks,
        workers,
    }
}

struct Query<'a> {
    index: &'a LocalityIndex,
    hashes: &'a [u64],
}

impl Query<'_> {
    fn node(&self, position: usize) -> Option<&Node> {
        self.index.nodes.get(&self.hashes[position])
    }

    fn tier(&self, position: usize) -> CacheTier {
        self.node(position).map_or(CacheTier::Absent, |n| n.tier)
    }

    /// Fills each worker's HBM depth.
    fn worker_depths(&self, depths: &mut [u32]) {
        let n = self.hashes.len();
        let workers = &self.index.workers;
        // Prefix-closed workers: bisection, 64 slots at a time.
        for group in 0..workers.len().div_ceil(64) {
            let first = group * 64;
            let mut mask = 0u64;
            for (bit, worker) in workers[first..workers.len().min(first + 64)]
                .iter()
                .enumerate()
            {
                if worker.blocks > 0 && worker.detached == 0 {
                    mask |= 1u64 << bit;
                }
            }
            self.bisect(0, n, mask, group as u32, &mut depths[first..]);
        }
        // The others: one walk, one lookup per position for all of them,
        // until the last one misses.
        let mut walking: Vec<WorkerSlot> = workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.blocks > 0 && w.detached > 0)
            .map(|(slot, _)| slot as WorkerSlot)
            .collect();
        let mut position = 0;
        while !walking.is_empty() && position < n {
            let node = self.node(position);
            walking.retain(|&slot| {
                let held = node.is_some_and(|node| node.held_by(slot));
                if !held {
                    depths[slot as usize] = position as u32;
                }
                held
            });
            position += 1;
        }
        for slot in walking {
            depths[slot as usize] = n as u32;
        }
    }

    /// Every worker of `mask` (bits of `group`) holds positions `..lo` and
    /// ends at or before `hi`; finds where.
    fn bisect(&self, lo: usize, hi: usize, mask: u64, group: u32, depths: &mut [u32]) {
        if mask == 0 {
            return;
        }
        if lo == hi {
            let mut rest = mask;
            while rest != 0 {
                let bit = rest.trailing_zeros() as usize;
                depths[bit] = lo as u32;
                rest &= rest - 1;
            }
            return;
        }
        let middle = lo + (hi - lo) / 2;
        let holders = self.node(middle).map_or(0, |node| node.held_mask(group)) & mask;
        self.bisect(middle + 1, hi, holders, group, depths);
        self.bisect(lo, middle, mask & !holders, group, depths);
    }

    /// First position in `lo..hi` where `pred` is false, `pred` being true
    /// then false along the range.
    fn partition_point(&self, lo: usize, hi: usize, pred: impl Fn(CacheTier) -> bool) -> usize {
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let middle = lo + (hi - lo) / 2;
            if pred(self.tier(middle)) {
                lo = middle + 1;
            } else {
                hi = middle;
            }
        }
        lo
    }

    /// Fills host/disk blocks after each worker's depth; returns the cache's
    /// leading run from position 0.
    fn cache_runs(&self, workers: &mut [WorkerOverlap]) -> u32 {
        let cache = self.index.cache;
        let n = self.hashes.len();
        if cache.blocks == 0 || n == 0 {
            return 0;
        }
        let present = |t: CacheTier| t != CacheTier::Absent;
        if cache.detached == 0 {
            // Presence is monotone along the chain.
            let end = self.partition_point(0, n, present);
            if cache.inversions == 0 {
                // Tiers run host* disk* along the chain.
                let host_end = self.partition_point(0, end, |t| t == CacheTier::Host);
                for worker in workers.iter_mut() {
                    let depth = worker.hbm_blocks as usize;
                    if depth < end {
                        worker.host_blocks = host_end.saturating_sub(depth) as u32;
                        worker.disk_blocks = (end - depth.max(host_end)) as u32;
                    }
                }
            } else {
                // Walk [min depth, end) once; disk counts by prefix sums.
                let start = workers
                    .iter()
                    .map(|w| w.hbm_blocks as usize)
                    .min()
                    .unwrap_or(end)
                    .min(end);
                let mut disk_before = Vec::with_capacity(end - start + 1);
                let mut disks = 0u32;
                disk_before.push(0);
                for position in start..end {
                    disks += u32::from(self.tier(position) == CacheTier::Disk);
                    disk_before.push(disks);
                }
                for worker in workers.iter_mut() {
                    let depth = worker.hbm_blocks as usize;
                    if depth < end {
                        let disk = disks - disk_before[depth - start];
                        worker.disk_blocks = disk;
                        worker.host_blocks = (end - depth) as u32 - disk;
                    }
                }
            }
            return end as u32;
        }
        // Presence is not monotone: walk from 0 to the first miss at or after
        // the deepest worker (every run from a worker's depth ends by then).
        let deepest = workers
            .iter()
            .map(|w| w.hbm_blocks as usize)
            .max()
            .unwrap_or(0);
        let mut tiers = Vec::with_capacity(n.min(deepest + 64));
        for position in 0..n {
            let tier = self.tier(position);
            if tier == CacheTier::Absent && position >= deepest {
                break;
            }
            tiers.push(tier);
        }
        let walked = tiers.len();
        // next_miss[i]: first absent position at or after i; disk_before[i]: disks in ..i.
        let mut next_miss = vec![walked; walked + 1];
        for position in (0..walked).rev() {
            next_miss[position] = if present(tiers[position]) {
                next_miss[position + 1]
            } else {
                position
            };
        }
        let mut disk_before = Vec::with_capacity(walked + 1);
        let mut disks = 0u32;
        disk_before.push(0);
        for &tier in &tiers {
            disks += u32::from(tier == CacheTier::Disk);
            disk_before.push(disks);
        }
        for worker in workers.iter_mut() {
            let depth = worker.hbm_blocks as usize;
            if depth < walked {
                let end = next_miss[depth];
                let disk = disk_before[end] - disk_before[depth];
                worker.disk_blocks = disk;
                worker.host_blocks = (end - depth) as u32 - disk;
            }
        }
        next_miss[0] as u32
    }
}
