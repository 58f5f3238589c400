//! Replays a trace through any [`EvictionPolicy`], one cache per worker, with
//! bounded-load prefix-affinity routing across workers.

use std::sync::atomic::{AtomicU64, Ordering};

use kvtier_policy::{BlockInfo, EvictionPolicy, Tier};

use super::feed::AgentFeed;
pub use super::feed::Lifecycle;
use super::trace::{Event, Trace};

/// Block-weighted outcome of one replay.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Σ leading hits.
    pub hits: u64,
    /// Σ len(hash_ids).
    pub total: u64,
    /// Worker each request went to.
    pub routes: Vec<u8>,
}

impl Outcome {
    /// Hit rate in percent.
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.total as f64
        }
    }
}

/// Per-block residency, one bit per worker.
pub struct Residency {
    bits: Vec<u64>,
}

impl Residency {
    /// No block resident anywhere.
    pub fn new(blocks: usize) -> Self {
        Self {
            bits: vec![0; blocks],
        }
    }

    /// Whether `id` is resident on worker `w`.
    pub fn has(&self, id: u32, w: usize) -> bool {
        self.bits[id as usize] >> w & 1 == 1
    }

    /// Marks `id` resident (or not) on worker `w`.
    pub fn set(&mut self, id: u32, w: usize, on: bool) {
        let b = &mut self.bits[id as usize];
        if on {
            *b |= 1 << w;
        } else {
            *b &= !(1 << w);
        }
    }

    /// Number of leading ids resident on worker `w`.
    pub fn prefix(&self, ids: &[u32], w: usize) -> usize {
        ids.iter().take_while(|&&id| self.has(id, w)).count()
    }
}

/// Bounded-load affinity: among workers whose request count after this one
/// stays ≤ ceil(1.25·(i+1)/W), the longest resident prefix wins; ties go to
/// the least loaded, then the lowest index.
pub fn route(res: &Residency, ids: &[u32], served: &[u64], i: usize) -> usize {
    let w = served.len();
    if w == 1 {
        return 0;
    }
    let bound = (1.25 * (i + 1) as f64 / w as f64).ceil() as u64;
    let mut best: Option<(usize, u64, usize)> = None;
    for (k, &s) in served.iter().enumerate() {
        if s + 1 > bound {
            continue;
        }
        let p = res.prefix(ids, k);
        let better = match best {
            None => true,
            Some((bp, bs, _)) => p > bp || (p == bp && s < bs),
        };
        if better {
            best = Some((p, s, k));
        }
    }
    best.map_or(0, |(_, _, k)| k)
}

/// Replays `trace` through `workers` instances from `make`, each holding at
/// most `capacity` blocks. With a `lifecycle`, the policy also gets what a live
/// server would learn about agents (registration with parent, each call's
/// context, the stop reason once answered, and their ends as `lifecycle` says).
pub fn simulate<P: EvictionPolicy<u32>>(
    trace: &Trace,
    capacity: usize,
    workers: usize,
    lifecycle: Lifecycle,
    make: impl Fn() -> P,
    progress: &AtomicU64,
) -> Outcome {
    let mut policies: Vec<P> = (0..workers).map(|_| make()).collect();
    let mut res = Residency::new(trace.unique_blocks);
    let mut served = vec![0u64; workers];
    let mut resident = vec![0usize; workers];
    let mut out = Outcome {
        routes: vec![0; trace.requests.len()],
        ..Outcome::default()
    };
    let mut feed = AgentFeed::new(trace, lifecycle);
    let mut done = 0u64;
    for ev in feed.events(trace) {
        feed.before(trace, ev, &mut policies);
        match ev {
            Event::Request(i) => {
                let i = i as usize;
                let r = &trace.requests[i];
                let now = r.time_ms;
                let ids = trace.blocks_of(i);
                let w = route(&res, ids, &served, i);
                served[w] += 1;
                out.routes[i] = w as u8;
                out.hits += res.prefix(ids, w) as u64;
                out.total += ids.len() as u64;
                let p = &mut policies[w];
                // Tail first, so that the head ends up most recent. Each block's
                // parent is the one before it, as the server learns it on a put.
                for (j, &id) in ids.iter().enumerate().rev() {
                    if res.has(id, w) {
                        p.on_hit(id, now);
                    } else {
                        let info = BlockInfo {
                            parent: j.checked_sub(1).map(|q| ids[q]),
                            bytes: 1,
                        };
                        p.on_insert(id, Tier::Host, info, now);
                        res.set(id, w, true);
                        resident[w] += 1;
                    }
                }
                feed.call(trace, i, w, &mut policies);
                let p = &mut policies[w];
                while resident[w] > capacity {
                    let Some(v) = p.victim(Tier::Host, now) else {
                        break;
                    };
                    p.on_remove(v);
                    res.set(v, w, false);
                    resident[w] -= 1;
                }
                done += 1;
                if done.is_multiple_of(256) {
                    progress.fetch_add(256, Ordering::Relaxed);
                }
            }
            Event::Answer(i) => {
                let w = out.routes[i as usize] as usize;
                feed.answer(trace, i as usize, w, &mut policies);
            }
        }
    }
    progress.fetch_add(done % 256, Ordering::Relaxed);
    out
}
