//! Belady's offline optimum for prefix-chained block ids.
//!
//! After a request's blocks are inserted, evict the cached block whose next use
//! (index of the next request containing it) is farthest; never-used-again
//! blocks first; ties go to the larger position within the request that last
//! inserted it (tail first). A block just inserted may go at once. With chained
//! ids this keeps the cache prefix-closed and is the exact optimum of the
//! prefix hit rate.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::trace::Trace;

const NEVER: u32 = u32::MAX;

/// Hits of Belady with `capacity` blocks over the requests `seq` (indices into
/// `trace`, in arrival order).
pub fn hits(trace: &Trace, seq: &[u32], capacity: usize, progress: &AtomicU64) -> u64 {
    // Next use of each (request, position): backward pass.
    let mut next_seen = vec![NEVER; trace.unique_blocks];
    let mut next_use: Vec<Vec<u32>> = vec![Vec::new(); seq.len()];
    for (p, &i) in seq.iter().enumerate().rev() {
        let ids = trace.blocks_of(i as usize);
        next_use[p] = ids.iter().map(|&id| next_seen[id as usize]).collect();
        for &id in ids {
            next_seen[id as usize] = p as u32;
        }
    }
    drop(next_seen);

    let mut version = vec![0u32; trace.unique_blocks];
    let mut resident = vec![false; trace.unique_blocks];
    let mut size = 0usize;
    // (next use, position, id, version): the max is evicted first.
    let mut heap: BinaryHeap<(u32, u32, u32, u32)> = BinaryHeap::new();
    let mut live: Vec<(u32, u32)> = vec![(0, 0); trace.unique_blocks];
    let mut total_hits = 0u64;
    for (p, &i) in seq.iter().enumerate() {
        let ids = trace.blocks_of(i as usize);
        total_hits += ids.iter().take_while(|&&id| resident[id as usize]).count() as u64;
        // An id repeated within a request counts once, at its first position;
        // its next use is after this request either way.
        for (pos, &id) in ids.iter().enumerate().rev() {
            let u = id as usize;
            if !resident[u] {
                resident[u] = true;
                size += 1;
            }
            version[u] = version[u].wrapping_add(1);
            let key = next_use[p][pos];
            live[u] = (key, pos as u32);
            heap.push((key, pos as u32, id, version[u]));
        }
        while size > capacity {
            let Some((_, _, id, ver)) = heap.pop() else {
                break;
            };
            let u = id as usize;
            if resident[u] && version[u] == ver {
                resident[u] = false;
                size -= 1;
            }
        }
        if heap.len() > 4 * capacity + 1_000_000 {
            heap = (0..trace.unique_blocks)
                .filter(|&u| resident[u])
                .map(|u| (live[u].0, live[u].1, u as u32, version[u]))
                .collect();
        }
        if p % 256 == 255 {
            progress.fetch_add(256, Ordering::Relaxed);
        }
    }
    progress.fetch_add(seq.len() as u64 % 256, Ordering::Relaxed);
    total_hits
}
