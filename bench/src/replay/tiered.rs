//! `kvtier-bench replay --tiered`: a host tier of a given share of the
//! unique blocks above a disk tier (unlimited unless `--disk-capacity`), with
//! per-block fetch costs, so that each policy reports where its hits came
//! from and a modeled time to first token.
//!
//! # Model
//! One cache (W = 1). A call's prefix hit is its leading blocks resident in
//! either tier; each is served from where it is. Its modeled TTFT is
//! `host hits × host_ms + disk hits × disk_ms + misses × recompute_ms`
//! (no queueing, no fixed cost). Then all its blocks are in host: disk hits
//! are promoted, misses inserted; host overflow is demoted to disk (the
//! policy's host victim), disk overflow dropped (its disk victim).
//!
//! # Variants, same run, same trace
//! - `lru`: LRU in each tier, promote on hit;
//! - `kvtier`: the value policy, promote on hit, no prefetch;
//! - `kvtier+prefetch`: the same plus a prefetch round every
//!   `interval_ms`: [`kvtier_policy::prefetch::plan`] over the policy's
//!   promotion and eviction candidates (agents valued with an eviction
//!   clock of mean `prefetch_horizon_ms`, how soon a call must come to be
//!   worth moving for), at most `budget` blocks a round. The
//!   round's demotions happen at once; its promotions land at the next round
//!   (a disk read takes time): a call arriving meanwhile is served from disk
//!   and promotes what it reads, and a landing block that is no longer on
//!   disk is skipped;
//! - `oracle`: `kvtier` without prefetch, except that just before each call
//!   exactly its disk-resident prefix blocks were moved up (for free), so
//!   every hit is a host hit. It peeks at the future; no other variant does.
//!
//! The policies learn of agents exactly as in the hit-rate replay
//! ([`super::feed`]): what a live server would know.

use std::sync::atomic::{AtomicU64, Ordering};

use kvtier_policy::{BlockInfo, EvictionPolicy, Lru, Plan, Tier, ValueConfig, ValuePolicy};
use serde::Serialize;

use super::feed::{AgentFeed, Lifecycle};
use super::trace::{Event, Trace};

/// Default costs per 64-token block (the kv-cache-tester block), from the
/// project's own measurement "Real vLLM engine: time to first token through
/// the kvtier connector" in `bench/RESULTS.md` (8 layers, 2,048-token
/// prompt, one run): a cold prefill took 505.9 ms (0.247 ms a token), a hit
/// waited 69 ms for its load from the host tier and 127 ms from the disk
/// tier. Per 64 tokens: 15.81 / 2.16 / 3.97 ms.
pub const RECOMPUTE_MS: f64 = 505.9 / 32.0;
/// See [`RECOMPUTE_MS`].
pub const HOST_MS: f64 = 69.0 / 32.0;
/// See [`RECOMPUTE_MS`].
pub const DISK_MS: f64 = 127.0 / 32.0;

/// Modeled cost of one block by where it comes from (ms).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Costs {
    /// Loaded from the host tier.
    pub host_ms: f64,
    /// Loaded from the disk tier.
    pub disk_ms: f64,
    /// Recomputed (prefill).
    pub recompute_ms: f64,
}

/// The tiers and the prefetcher's link.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Host capacity (blocks).
    pub host_blocks: usize,
    /// Disk capacity (blocks); `None` = unlimited.
    pub disk_blocks: Option<usize>,
    /// Per-block costs.
    pub costs: Costs,
    /// Time between prefetch rounds (ms).
    pub interval_ms: u64,
    /// Blocks a prefetch round may move up (what the disk reads in one interval).
    pub budget: usize,
    /// Mean eviction clock (ms) with which a prefetch round values agents:
    /// how soon a call must come to be worth moving for. `None`: the
    /// policy's own ranking (the host tier's turnover).
    pub prefetch_horizon_ms: Option<u64>,
}

/// Which policy and prefetch a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Variant {
    /// LRU, promote on hit.
    Lru,
    /// Value policy, promote on hit.
    Kvtier,
    /// Value policy with forecast-driven prefetch.
    KvtierPrefetch,
    /// Value policy, each call's disk prefix moved up just before it (ceiling).
    Oracle,
}

impl Variant {
    /// All variants, in report order.
    pub const ALL: [Variant; 4] = [
        Variant::Lru,
        Variant::Kvtier,
        Variant::KvtierPrefetch,
        Variant::Oracle,
    ];

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Lru => "lru (promote on hit)",
            Variant::Kvtier => "kvtier, no prefetch",
            Variant::KvtierPrefetch => "kvtier + prefetch",
            Variant::Oracle => "oracle prefetch",
        }
    }
}

/// Block-weighted outcome of one tiered run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Prefix blocks served from host.
    pub host_hits: u64,
    /// Prefix blocks served from disk.
    pub disk_hits: u64,
    /// Σ len(hash_ids).
    pub total: u64,
    /// Modeled TTFT of each call (ms), in replay order.
    pub ttft_ms: Vec<f32>,
    /// Blocks the prefetcher moved up (landed).
    pub prefetched: u64,
    /// Host blocks a prefetch round moved down to make room.
    pub displaced: u64,
}

const ABSENT: u8 = 0;
const HOST: u8 = 1;
const DISK: u8 = 2;

/// The two tiers' residency and sizes.
struct Tiers {
    at: Vec<u8>,
    host: usize,
    disk: usize,
}

impl Tiers {
    fn set(&mut self, id: u32, to: u8) {
        let from = std::mem::replace(&mut self.at[id as usize], to);
        for (t, d) in [(from, -1isize), (to, 1)] {
            match t {
                HOST => self.host = self.host.wrapping_add_signed(d),
                DISK => self.disk = self.disk.wrapping_add_signed(d),
                _ => {}
            }
        }
    }
}

/// Demotes host overflow to disk and drops disk overflow, as the policy orders.
fn settle<P: EvictionPolicy<u32>>(p: &mut P, tiers: &mut Tiers, setup: &Setup, now: u64) {
    while tiers.host > setup.host_blocks {
        let Some(v) = p.victim(Tier::Host, now) else {
            break;
        };
        p.on_move(v, Tier::Disk, now);
        tiers.set(v, DISK);
    }
    while setup.disk_blocks.is_some_and(|cap| tiers.disk > cap) {
        let Some(v) = p.victim(Tier::Disk, now) else {
            break;
        };
        p.on_remove(v);
        tiers.set(v, ABSENT);
    }
}

/// One prefetch round of the value policy: candidates, victims, plan;
/// agents valued with an eviction clock of mean `horizon` (ms; `None`: the
/// policy's own ranking).
fn plan_round(
    p: &mut ValuePolicy<u32>,
    free: usize,
    budget: usize,
    horizon: Option<u64>,
    now: u64,
) -> Plan<u32> {
    let cand = p.promotion_candidates(Tier::Disk, budget, horizon, now);
    if cand.is_empty() {
        return Plan::default();
    }
    let need = budget.min(cand.len()).saturating_sub(free);
    let vict = p.eviction_candidates(Tier::Host, need, horizon, now);
    kvtier_policy::prefetch::plan(&cand, &vict, free, budget)
}

/// Replays `trace` once through `variant`.
pub fn simulate(
    trace: &Trace,
    setup: &Setup,
    lifecycle: Lifecycle,
    variant: Variant,
    cfg: &ValueConfig,
    progress: &AtomicU64,
) -> Outcome {
    match variant {
        Variant::Lru => run(trace, setup, lifecycle, Lru::new(), None, false, progress),
        Variant::Kvtier | Variant::Oracle => run(
            trace,
            setup,
            lifecycle,
            ValuePolicy::new(cfg.clone()),
            None,
            variant == Variant::Oracle,
            progress,
        ),
        Variant::KvtierPrefetch => run(
            trace,
            setup,
            lifecycle,
            ValuePolicy::new(cfg.clone()),
            Some(plan_round),
            false,
            progress,
        ),
    }
}

type Planner<P> = fn(&mut P, usize, usize, Option<u64>, u64) -> Plan<u32>;

fn run<P: EvictionPolicy<u32>>(
    trace: &Trace,
    setup: &Setup,
    lifecycle: Lifecycle,
    policy: P,
    prefetch: Option<Planner<P>>,
    oracle: bool,
    progress: &AtomicU64,
) -> Outcome {
    let mut policies = [policy];
    let mut tiers = Tiers {
        at: vec![ABSENT; trace.unique_blocks],
        host: 0,
        disk: 0,
    };
    let mut out = Outcome::default();
    let mut feed = AgentFeed::new(trace, lifecycle);
    let c = setup.costs;
    let mut next_round = setup.interval_ms;
    // Promotions of the last round, landing at the next.
    let mut landing: Vec<u32> = Vec::new();
    let mut done = 0u64;
    for ev in feed.events(trace) {
        let now = match ev {
            Event::Request(i) => trace.requests[i as usize].time_ms,
            Event::Answer(i) => trace.requests[i as usize].answered_ms,
        };
        if let Some(planner) = prefetch.filter(|_| setup.interval_ms > 0) {
            while next_round <= now {
                let t = next_round;
                next_round += setup.interval_ms;
                let p = &mut policies[0];
                // Tail first within each context, as planned head first.
                for &k in landing.iter().rev() {
                    if tiers.at[k as usize] == DISK {
                        p.on_move(k, Tier::Host, t);
                        tiers.set(k, HOST);
                        out.prefetched += 1;
                    }
                }
                let landed = !landing.is_empty();
                landing.clear();
                settle(p, &mut tiers, setup, t);
                let free = setup.host_blocks.saturating_sub(tiers.host);
                let round = planner(p, free, setup.budget, setup.prefetch_horizon_ms, t);
                for &v in &round.demote {
                    p.on_move(v, Tier::Disk, t);
                    tiers.set(v, DISK);
                    out.displaced += 1;
                }
                landing = round.promote;
                // Nothing in flight and nothing planned: skip the idle
                // rounds up to the next event (ranks change only then or
                // with time, which the next round after it sees).
                if landing.is_empty() && !landed && next_round <= now {
                    next_round += (now - next_round) / setup.interval_ms * setup.interval_ms;
                }
            }
        }
        feed.before(trace, ev, &mut policies);
        match ev {
            Event::Request(i) => {
                let i = i as usize;
                let ids = trace.blocks_of(i);
                let (mut host, mut disk) = (0u64, 0u64);
                for &id in ids {
                    match tiers.at[id as usize] {
                        HOST => host += 1,
                        DISK if oracle => host += 1,
                        DISK => disk += 1,
                        _ => break,
                    }
                }
                let miss = ids.len() as u64 - host - disk;
                out.host_hits += host;
                out.disk_hits += disk;
                out.total += ids.len() as u64;
                let ttft = host as f64 * c.host_ms
                    + disk as f64 * c.disk_ms
                    + miss as f64 * c.recompute_ms;
                out.ttft_ms.push(ttft as f32);
                let p = &mut policies[0];
                for (j, &id) in ids.iter().enumerate().rev() {
                    match tiers.at[id as usize] {
                        HOST => p.on_hit(id, now),
                        DISK => {
                            p.on_move(id, Tier::Host, now);
                            p.on_hit(id, now);
                            tiers.set(id, HOST);
                        }
                        _ => {
                            let info = BlockInfo {
                                parent: j.checked_sub(1).map(|q| ids[q]),
                                bytes: 1,
                            };
                            p.on_insert(id, Tier::Host, info, now);
                            tiers.set(id, HOST);
                        }
                    }
                }
                feed.call(trace, i, 0, &mut policies);
                settle(&mut policies[0], &mut tiers, setup, now);
                done += 1;
                if done.is_multiple_of(256) {
                    progress.fetch_add(256, Ordering::Relaxed);
                }
            }
            Event::Answer(i) => feed.answer(trace, i as usize, 0, &mut policies),
        }
    }
    progress.fetch_add(done % 256, Ordering::Relaxed);
    out
}

/// One variant's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct VariantRow {
    /// Which variant.
    pub variant: Variant,
    /// Share of all requested blocks served from host / disk, and missed (percent).
    pub host_pct: f64,
    /// See `host_pct`.
    pub disk_pct: f64,
    /// See `host_pct`.
    pub miss_pct: f64,
    /// Share of hit blocks served from host (percent).
    pub host_share_of_hits: f64,
    /// Modeled TTFT over calls (ms).
    pub ttft_mean_ms: f64,
    /// Median.
    pub ttft_p50_ms: f64,
    /// 99th percentile.
    pub ttft_p99_ms: f64,
    /// Blocks prefetched (landed) and host blocks displaced for them.
    pub prefetched: u64,
    /// See `prefetched`.
    pub displaced: u64,
}

impl VariantRow {
    /// Summarises one outcome.
    pub fn new(variant: Variant, o: &Outcome) -> Self {
        let pct = |x: u64| 100.0 * x as f64 / o.total.max(1) as f64;
        let mut t: Vec<f32> = o.ttft_ms.clone();
        t.sort_by(f32::total_cmp);
        let q = |f: f64| {
            if t.is_empty() {
                0.0
            } else {
                f64::from(t[((t.len() - 1) as f64 * f).round() as usize])
            }
        };
        let hits = o.host_hits + o.disk_hits;
        Self {
            variant,
            host_pct: pct(o.host_hits),
            disk_pct: pct(o.disk_hits),
            miss_pct: pct(o.total - hits),
            host_share_of_hits: 100.0 * o.host_hits as f64 / hits.max(1) as f64,
            ttft_mean_ms: t.iter().map(|&x| f64::from(x)).sum::<f64>() / t.len().max(1) as f64,
            ttft_p50_ms: q(0.5),
            ttft_p99_ms: q(0.99),
            prefetched: o.prefetched,
            displaced: o.displaced,
        }
    }
}

/// Share of the gap between `from` and `to` that `by` closes (percent).
pub fn gap_closed(from: f64, by: f64, to: f64) -> Option<f64> {
    ((from - to).abs() > 1e-9).then(|| 100.0 * (from - by) / (from - to))
}

/// All variants at one host capacity.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityRows {
    /// Host capacity as a fraction of unique blocks.
    pub fraction: f64,
    /// Host capacity in blocks.
    pub host_blocks: usize,
    /// One row per variant run, in [`Variant::ALL`] order.
    pub rows: Vec<VariantRow>,
}

impl CapacityRows {
    fn row(&self, v: Variant) -> Option<&VariantRow> {
        self.rows.iter().find(|r| r.variant == v)
    }

    /// Share of the modeled TTFT gap between no prefetch and the oracle that
    /// prefetch closes: (mean, p50, p99), percent.
    pub fn prefetch_gap_closed(&self) -> Option<(Option<f64>, Option<f64>, Option<f64>)> {
        let (k, p, o) = (
            self.row(Variant::Kvtier)?,
            self.row(Variant::KvtierPrefetch)?,
            self.row(Variant::Oracle)?,
        );
        Some((
            gap_closed(k.ttft_mean_ms, p.ttft_mean_ms, o.ttft_mean_ms),
            gap_closed(k.ttft_p50_ms, p.ttft_p50_ms, o.ttft_p50_ms),
            gap_closed(k.ttft_p99_ms, p.ttft_p99_ms, o.ttft_p99_ms),
        ))
    }
}

/// Everything one tiered replay reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was replayed.
    pub trace: String,
    /// Requests replayed.
    pub requests: usize,
    /// Distinct blocks.
    pub unique_blocks: usize,
    /// How the policies learned of agents' ends.
    pub end_signal: String,
    /// Per-block costs.
    pub costs: Costs,
    /// Disk capacity in blocks (`None`: unlimited).
    pub disk_blocks: Option<usize>,
    /// Time between prefetch rounds (ms).
    pub interval_ms: u64,
    /// Blocks a prefetch round may move up.
    pub budget: usize,
    /// One entry per host capacity.
    pub capacities: Vec<CapacityRows>,
    /// Wall time (s).
    pub seconds: f64,
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} %"))
}

impl Report {
    /// A markdown table per host capacity.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let disk = self
            .disk_blocks
            .map_or_else(|| "unlimited".into(), |d| d.to_string());
        let _ = writeln!(
            s,
            "{}: {} requests, {} unique blocks; agents' ends: {}; disk {disk} blocks; \
             cost per block host {} ms, disk {} ms, recompute {} ms; prefetch every {} ms, \
             at most {} blocks a round",
            self.trace,
            self.requests,
            self.unique_blocks,
            self.end_signal,
            self.costs.host_ms,
            self.costs.disk_ms,
            self.costs.recompute_ms,
            self.interval_ms,
            self.budget
        );
        for c in &self.capacities {
            let _ = writeln!(
                s,
                "\nhost = {} of unique blocks ({} blocks)\n\
                 | policy | host hits | disk hits | misses | host share of hits | TTFT mean ms | p50 ms | p99 ms | prefetched | displaced |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                c.fraction, c.host_blocks
            );
            for r in &c.rows {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {:.1} | {:.1} | {:.1} | {} | {} |",
                    r.variant.name(),
                    r.host_pct,
                    r.disk_pct,
                    r.miss_pct,
                    r.host_share_of_hits,
                    r.ttft_mean_ms,
                    r.ttft_p50_ms,
                    r.ttft_p99_ms,
                    r.prefetched,
                    r.displaced
                );
            }
            if let Some((m, p50, p99)) = c.prefetch_gap_closed() {
                let _ = writeln!(
                    s,
                    "prefetch closes of the TTFT gap no prefetch → oracle: mean {}, p50 {}, p99 {}",
                    pct(m),
                    pct(p50),
                    pct(p99)
                );
            }
        }
        s
    }
}
