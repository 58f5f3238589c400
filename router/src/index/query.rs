//! [`LocalityIndex::find_matches`]: a multi-way search for prefix-closed sources, a
//! shared walk for the others (see the module docs of [`super`]).

use super::node::{CacheTier, Node};
use super::{LocalityIndex, PrefixMatches, WorkerOverlap, WorkerSlot};

/// Probes per round of the search, over all its open segments. A round costs
/// about one memory latency while its misses fit in the core's miss buffers;
/// beyond that each probe adds again. Measured (`kvtier-bench index`, p99 with
/// a writer running): 24 beat 12, 16, 32, 48, 64 and 96.
const PROBES_PER_ROUND: usize = 24;

/// Most probes per segment per round (one segment of 2,050 blocks takes three
/// rounds at 15: 2,050 -> 128 -> 8 -> exact).
const MAX_FANOUT: usize = 15;

/// Positions a walk looks ahead with [`NodeTable::prefetch`](super::table::NodeTable::prefetch).
const WALK_PREFETCH: usize = 8;

/// Answers one query.
pub(super) fn find_matches(index: &LocalityIndex, hashes: &[u64]) -> PrefixMatches {
    let query = Query { index, hashes };
    let mut depths = vec![0u32; index.workers.len()];
    let cache = index.cache;
    // Monotone sources go to the search together: prefix-closed workers, and
    // the cache's presence (no detached cached block) and host run (no host
    // block under a disk block either).
    let search_cache = cache.blocks > 0 && cache.detached == 0;
    let cache_mask = match (search_cache, cache.inversions == 0) {
        (false, _) => 0,
        (true, false) => CACHE_PRESENT,
        (true, true) => CACHE_PRESENT | CACHE_HOST,
    };
    let cache_ends = query.search(&mut depths, cache_mask);
    query.walk_detached_workers(&mut depths);

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
    let cache_prefix_blocks = query.cache_runs(&mut workers, cache_ends);
    PrefixMatches {
        query_blocks: hashes.len() as u32,
        cache_prefix_blocks,
        workers,
    }
}

/// Bit of group 0's mask: "the block is in the cache server".
const CACHE_PRESENT: u128 = 1 << 64;
/// Bit of group 0's mask: "the block is in the cache server's host tier".
const CACHE_HOST: u128 = 1 << 65;

/// Predicates each true on a prefix of the query and false after: bits
/// `0..64` are workers `64 * group ..` (bit = slot % 64), and in group 0 bits
/// [`CACHE_PRESENT`] and [`CACHE_HOST`] are the cache's. Each predicate's
/// end, the first position where it is false (or the query's length), lies
/// in `lo..=hi`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    lo: u32,
    hi: u32,
    group: u32,
    mask: u128,
}

/// Ends the search found for the cache's predicates.
#[derive(Debug, Clone, Copy, Default)]
struct CacheEnds {
    present: Option<u32>,
    host: Option<u32>,
}

struct Query<'a> {
    index: &'a LocalityIndex,
    hashes: &'a [u64],
}

impl Query<'_> {
    fn node(&self, position: usize) -> Option<&Node> {
        self.index.nodes.get(self.hashes[position])
    }

    fn tier(&self, position: usize) -> CacheTier {
        self.node(position).map_or(CacheTier::Absent, |n| n.tier)
    }

    fn prefetch(&self, position: usize) {
        if let Some(&hash) = self.hashes.get(position) {
            self.index.nodes.prefetch(hash);
        }
    }

    /// The predicates of `group` that hold for `node`.
    fn bits(node: Option<&Node>, group: u32) -> u128 {
        let Some(node) = node else {
            return 0;
        };
        let workers = u128::from(node.held_mask(group));
        if group != 0 {
            return workers;
        }
        workers
            | if node.tier != CacheTier::Absent {
                CACHE_PRESENT
            } else {
                0
            }
            | if node.tier == CacheTier::Host {
                CACHE_HOST
            } else {
                0
            }
    }

    /// Finds the depth of every prefix-closed worker, and the ends of the
    /// cache predicates in `cache_mask`, by a multi-way search: each round
    /// picks up to [`MAX_FANOUT`] evenly spaced positions in every open
    /// segment, prefetches all their slots, then reads them and narrows each
    /// predicate to the gap between the last probe where it holds and the
    /// first where it does not. A round costs about one memory latency, not
    /// one per probe.
    fn search(&self, depths: &mut [u32], cache_mask: u128) -> CacheEnds {
        let n = self.hashes.len() as u32;
        let workers = &self.index.workers;
        let mut open: Vec<Segment> = Vec::with_capacity(16);
        for group in 0..workers.len().div_ceil(64).max(1) {
            let first = group * 64;
            let mut mask = if group == 0 { cache_mask } else { 0 };
            for (bit, worker) in workers[first.min(workers.len())..workers.len().min(first + 64)]
                .iter()
                .enumerate()
            {
                if worker.blocks > 0 && worker.detached == 0 {
                    mask |= 1u128 << bit;
                }
            }
            if mask != 0 {
                open.push(Segment {
                    lo: 0,
                    hi: n,
                    group: group as u32,
                    mask,
                });
            }
        }
        let mut ends = CacheEnds::default();
        let mut settle = |segment: Segment, ends: &mut CacheEnds| {
            let mut rest = segment.mask;
            while rest != 0 {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                match 1u128 << bit {
                    CACHE_PRESENT => ends.present = Some(segment.lo),
                    CACHE_HOST => ends.host = Some(segment.lo),
                    _ => depths[(segment.group * 64 + bit) as usize] = segment.lo,
                }
            }
        };
        // Segments already narrowed to one position are settled, never probed.
        open.retain(|segment| {
            if segment.lo == segment.hi {
                settle(*segment, &mut ends);
                false
            } else {
                true
            }
        });
        let mut next: Vec<Segment> = Vec::with_capacity(16);
        let mut probes: Vec<u32> = Vec::with_capacity(PROBES_PER_ROUND + 2 * MAX_FANOUT);
        while !open.is_empty() {
            let fanout = (PROBES_PER_ROUND / open.len()).clamp(1, MAX_FANOUT) as u32;
            probes.clear();
            for segment in &open {
                let width = segment.hi - segment.lo;
                if width <= fanout {
                    probes.extend(segment.lo..segment.hi);
                } else {
                    // Strictly increasing, in lo..hi: the gaps are width / (fanout + 1) >= 1.
                    probes.extend((1..=fanout).map(|j| {
                        segment.lo
                            + (u64::from(width) * u64::from(j) / u64::from(fanout + 1)) as u32
                    }));
                }
            }
            for &position in &probes {
                self.prefetch(position as usize);
            }
            next.clear();
            let mut taken = 0;
            for segment in &open {
                let count = (segment.hi - segment.lo).min(fanout) as usize;
                let mut holding = segment.mask;
                let mut lo = segment.lo;
                for &position in &probes[taken..taken + count] {
                    let holds = Self::bits(self.node(position as usize), segment.group) & holding;
                    let stopped = holding & !holds;
                    if stopped != 0 {
                        next.push(Segment {
                            lo,
                            hi: position,
                            group: segment.group,
                            mask: stopped,
                        });
                    }
                    holding = holds;
                    lo = position + 1;
                    if holding == 0 {
                        break;
                    }
                }
                taken += count;
                if holding != 0 {
                    next.push(Segment {
                        lo,
                        hi: segment.hi,
                        group: segment.group,
                        mask: holding,
                    });
                }
            }
            open.clear();
            for segment in next.drain(..) {
                if segment.lo == segment.hi {
                    settle(segment, &mut ends);
                } else {
                    open.push(segment);
                }
            }
        }
        ends
    }

    /// Depths of the workers whose sets are not prefix-closed: one walk, one
    /// lookup per position for all of them, until the last one misses.
    fn walk_detached_workers(&self, depths: &mut [u32]) {
        let n = self.hashes.len();
        let mut walking: Vec<WorkerSlot> = self
            .index
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.blocks > 0 && w.detached > 0)
            .map(|(slot, _)| slot as WorkerSlot)
            .collect();
        if walking.is_empty() {
            return;
        }
        for position in 0..WALK_PREFETCH {
            self.prefetch(position);
        }
        let mut position = 0;
        while !walking.is_empty() && position < n {
            self.prefetch(position + WALK_PREFETCH);
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

    /// Fills host/disk blocks after each worker's depth; returns the cache's
    /// leading run from position 0.
    fn cache_runs(&self, workers: &mut [WorkerOverlap], ends: CacheEnds) -> u32 {
        let cache = self.index.cache;
        let n = self.hashes.len();
        if cache.blocks == 0 || n == 0 {
            return 0;
        }
        let present = |t: CacheTier| t != CacheTier::Absent;
        if cache.detached == 0 {
            // Presence is monotone along the chain.
            let end = ends
                .present
                .expect("the search settles the cache's presence when no cached block is detached")
                as usize;
            if cache.inversions == 0 {
                // Tiers run host* disk* along the chain.
                let host_end = ends.host.expect(
                    "the search settles the host run when no host block is under a disk block",
                ) as usize;
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
                    self.prefetch(position + WALK_PREFETCH);
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
            self.prefetch(position + WALK_PREFETCH);
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
