//! Belady's offline optimum for prefix-chained block ids.
//!
//! After a request's blocks are inserted, evict the cached block whose next use
//! (index of the next request containing it) is farthest; never-used-again
//! blocks first; ties go to the larger position within the request that last
//! inserted it (tail first). A block just inserted may go at once. With chained
//! ids this keeps the cache prefix-closed and is the exact optimum of the
//! prefix hit rate.
//!
//! With several workers, each worker is such a cache and requests are routed
//! by the same bounded-load prefix affinity as the online policies, looking at
//! the Belady caches; next use is the next request containing the block,
//! whichever worker it goes to (with session-sticky routing, nearly always
//! the same one).

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::sim::{route, Residency};
use super::trace::Trace;

const NEVER: u32 = u32::MAX;

/// One worker's cache: resident count and a lazy max-heap of
/// `(next use, position, id, version)`.
struct Cache {
    size: usize,
    heap: BinaryHeap<(u32, u32, u32, u32)>,
}

/// Hits of Belady with `workers` caches of `capacity` blocks each.
///
/// With several workers, a first pass routes on the Belady caches with next
/// use taken over all workers; a second pass keeps that routing and replays
/// each worker's own request sequence with its own next uses, the exact
/// optimum for that routing. The better of the two is reported.
pub fn hits(trace: &Trace, capacity: usize, workers: usize, progress: &AtomicU64) -> u64 {
    let (first, routes) = pass(trace, capacity, workers, None, progress);
    if workers == 1 {
        return first;
    }
    let (second, _) = pass(trace, capacity, workers, Some(&routes), progress);
    first.max(second)
}

/// One Belady replay; with `fixed`, requests go to those workers and next use
/// is counted within each worker's sequence. Returns hits and the routing.
fn pass(
    trace: &Trace,
    capacity: usize,
    workers: usize,
    fixed: Option<&[u8]>,
    progress: &AtomicU64,
) -> (u64, Vec<u8>) {
    let n = trace.requests.len();
    // Next use of each (request, position): backward pass, per worker when
    // the routing is fixed.
    let lanes = if fixed.is_some() { workers } else { 1 };
    let mut next_seen = vec![NEVER; trace.unique_blocks * lanes];
    let mut next_use: Vec<Vec<u32>> = vec![Vec::new(); n];
    for p in (0..n).rev() {
        let ids = trace.blocks_of(p);
        let lane = fixed.map_or(0, |r| r[p] as usize) * trace.unique_blocks;
        next_use[p] = ids
            .iter()
            .map(|&id| next_seen[lane + id as usize])
            .collect();
        for &id in ids {
            next_seen[lane + id as usize] = p as u32;
        }
    }
    drop(next_seen);
    let mut routes = vec![0u8; n];

    let mut version = vec![0u32; trace.unique_blocks];
    let mut key = vec![(0u32, 0u32); trace.unique_blocks];
    let mut res = Residency::new(trace.unique_blocks);
    let mut caches: Vec<Cache> = (0..workers)
        .map(|_| Cache {
            size: 0,
            heap: BinaryHeap::new(),
        })
        .collect();
    let mut served = vec![0u64; workers];
    let mut total_hits = 0u64;
    for (p, uses) in next_use.iter().enumerate() {
        let ids = trace.blocks_of(p);
        let w = match fixed {
            Some(r) => r[p] as usize,
            None => route(&res, ids, &served, p),
        };
        served[w] += 1;
        routes[p] = w as u8;
        total_hits += res.prefix(ids, w) as u64;
        let c = &mut caches[w];
        // An id repeated within a request counts once, at its first position.
        for (pos, &id) in ids.iter().enumerate().rev() {
            let u = id as usize;
            if !res.has(id, w) {
                res.set(id, w, true);
                c.size += 1;
            }
            version[u] = version[u].wrapping_add(1);
            key[u] = (uses[pos], pos as u32);
            c.heap.push((key[u].0, key[u].1, id, version[u]));
        }
        while c.size > capacity {
            let Some((_, _, id, ver)) = c.heap.pop() else {
                break;
            };
            if res.has(id, w) && version[id as usize] == ver {
                res.set(id, w, false);
                c.size -= 1;
            }
        }
        if c.heap.len() > 4 * capacity + 1_000_000 {
            // Drop stale entries: keep the current one of each resident id.
            let live: Vec<_> = c
                .heap
                .drain()
                .filter(|&(_, _, id, ver)| res.has(id, w) && version[id as usize] == ver)
                .collect();
            c.heap = live.into();
        }
        if p % 256 == 255 {
            progress.fetch_add(256, Ordering::Relaxed);
        }
    }
    progress.fetch_add(n as u64 % 256, Ordering::Relaxed);
    (total_hits, routes)
}
