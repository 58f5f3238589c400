//! `kvtier-bench replay`: policy-level trace replay against LRU and Belady.
//!
//! The kvtier column runs [`kvtier_policy::ValuePolicy`] through the same
//! [`kvtier_policy::EvictionPolicy`] calls the cache server makes; the replay
//! gives it only what a live server would know at that moment (calls as they
//! arrive, each call's stop reason once answered, sub-agent parents, the end
//! of an agent at its last call).
//!
//! # Layout
//! - [`trace`]: the in-memory trace; [`kvct`] and [`mooncake`] read the formats.
//! - [`sim`]: the replay loop and bounded-load affinity routing.
//! - [`feed`]: what the policies learn about agents (calls, answers, ends).
//! - [`tiered`]: host + disk tiers, hits by tier, modeled TTFT, prefetch.
//! - [`belady`]: the offline optimum.
//! - [`report`]: table, JSON and SVG.
//! - [`speed`]: the policy eviction-rate microbenchmark.

pub mod belady;
pub mod feed;
pub mod kvct;
pub mod mooncake;
pub mod report;
pub mod sim;
pub mod speed;
pub mod tiered;
pub mod trace;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use kvtier_policy::{Lru, ValueConfig, ValuePolicy};

use report::{Report, Row};
use trace::Trace;

/// A policy the replay can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyName {
    /// Least recently used (baseline).
    Lru,
    /// kvtier's value- and lifecycle-aware policy.
    Kvtier,
    /// Belady's offline optimum (ceiling).
    Belady,
}

/// Flags of `kvtier-bench replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A kv-cache-tester directory (trace_NNNN.json.gz files) or a Mooncake .jsonl file.
    pub trace: PathBuf,
    /// Cache capacities as fractions of the trace's unique blocks (all workers together).
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.05, 0.10, 0.25])]
    pub capacity: Vec<f64>,
    /// Session k starts at k·S seconds (kv-cache-tester only).
    #[arg(long, default_value_t = 0.0)]
    pub stagger: f64,
    /// Workers, each with capacity/W blocks, with bounded-load prefix-affinity routing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Policies to run.
    #[arg(long, value_delimiter = ',', default_value = "lru,kvtier,belady")]
    pub policies: Vec<PolicyName>,
    /// Replay only the first N sessions (kv-cache-tester).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG plot of hit rate vs capacity here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Replays run in parallel.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// kvtier: mean eviction clock of the hit density (ms); the start value when adaptive.
    #[arg(long, default_value_t = ValueConfig::default().horizon_ms)]
    pub horizon_ms: u64,
    /// kvtier: adaptive horizon factor (0 = fixed --horizon-ms).
    #[arg(long, default_value_t = ValueConfig::default().adaptive_horizon)]
    pub adaptive_horizon: f64,
    /// kvtier: fading of an agent's older gaps per new gap.
    #[arg(long, default_value_t = ValueConfig::default().agent_memory)]
    pub agent_memory: f32,
    /// kvtier: weight of the population gap distribution against an agent's own gaps.
    #[arg(long, default_value_t = ValueConfig::default().prior_weight)]
    pub prior_weight: f64,
    /// How kvtier learns that an agent ended: `harness` sends EndAgent at each
    /// agent's last answer (only a harness that knows the session is over can);
    /// `lease` sends no end signal, so agents end when silent for --lease-ms,
    /// as behind the router's HTTP front.
    #[arg(long, default_value = "harness", value_parser = ["harness", "lease"])]
    pub end_signal: String,
    /// Agents' lease for `--end-signal lease` (ms); default the server's.
    #[arg(long, default_value_t = kvtier_policy::AgentSpec::DEFAULT_LEASE_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_ms: u64,
    /// kvtier: un-hinted blocks' reuse horizon, in resident blocks' worth of
    /// inserts (0 = plain LRU for blocks no hint covers).
    #[arg(long, default_value_t = ValueConfig::default().reuse_horizon)]
    pub reuse_horizon: f64,
    /// Tiered replay: `--capacity` is the host tier, a disk tier sits below
    /// it; reports hits by tier and modeled TTFT for LRU (promote on hit),
    /// kvtier without and with prefetch, and an oracle prefetch (W = 1).
    #[arg(long)]
    pub tiered: bool,
    /// Tiered: disk capacity as a fraction of unique blocks (default unlimited).
    #[arg(long)]
    pub disk_capacity: Option<f64>,
    /// Tiered: cost of a block loaded from host (ms).
    #[arg(long, default_value_t = tiered::HOST_MS)]
    pub host_ms: f64,
    /// Tiered: cost of a block loaded from disk (ms); also the prefetch link's time per block.
    #[arg(long, default_value_t = tiered::DISK_MS)]
    pub disk_ms: f64,
    /// Tiered: cost of a block recomputed (ms).
    #[arg(long, default_value_t = tiered::RECOMPUTE_MS)]
    pub recompute_ms: f64,
    /// Tiered: time between prefetch rounds (ms).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub prefetch_interval_ms: u64,
    /// Tiered: blocks a prefetch round may move up (default: what one disk
    /// stream reads in an interval, interval ÷ --disk-ms).
    #[arg(long)]
    pub prefetch_budget: Option<usize>,
    /// Tiered: a prefetch round values agents by their hit density with an
    /// eviction clock of this mean (ms): how soon a call must come to be
    /// worth moving for. 0 = the policy's own ranking.
    #[arg(long, default_value_t = 2_000)]
    pub prefetch_horizon_ms: u64,
}

impl Args {
    fn value_config(&self) -> ValueConfig {
        ValueConfig {
            horizon_ms: self.horizon_ms,
            adaptive_horizon: self.adaptive_horizon,
            prior_weight: self.prior_weight,
            agent_memory: self.agent_memory,
            reuse_horizon: self.reuse_horizon,
            ..ValueConfig::default()
        }
    }
}

fn load(args: &Args, bar: &ProgressBar) -> Result<Trace> {
    if args.trace.is_dir() {
        let n = kvct::session_files(&args.trace)?.len();
        bar.set_length(args.sessions.map_or(n, |s| s.min(n)) as u64);
        bar.set_message("reading sessions");
        kvct::load(
            &args.trace,
            args.stagger,
            args.sessions,
            args.threads,
            &|| bar.inc(1),
        )
    } else {
        bar.set_message("reading jsonl");
        mooncake::load(&args.trace)
    }
}

fn ideal(trace: &Trace) -> f64 {
    let mut seen = vec![false; trace.unique_blocks];
    let mut hits = 0u64;
    for i in 0..trace.requests.len() {
        let ids = trace.blocks_of(i);
        hits += ids.iter().take_while(|&&id| seen[id as usize]).count() as u64;
        for &id in ids {
            seen[id as usize] = true;
        }
    }
    100.0 * hits as f64 / trace.total_blocks().max(1) as f64
}

type Job = (usize, PolicyName);

fn run_job(
    trace: &Trace,
    args: &Args,
    cap: usize,
    policy: PolicyName,
    progress: &AtomicU64,
) -> f64 {
    let w = args.workers as usize;
    let per_worker = cap / w;
    match policy {
        PolicyName::Lru => sim::simulate(
            trace,
            per_worker,
            w,
            sim::Lifecycle::Off,
            Lru::new,
            progress,
        )
        .rate(),
        PolicyName::Kvtier => {
            let cfg = args.value_config();
            let lifecycle = lifecycle(args);
            sim::simulate(
                trace,
                per_worker,
                w,
                lifecycle,
                || ValuePolicy::new(cfg.clone()),
                progress,
            )
            .rate()
        }
        PolicyName::Belady => {
            let hits = belady::hits(trace, per_worker, w, progress);
            100.0 * hits as f64 / trace.total_blocks().max(1) as f64
        }
    }
}

/// Runs the replay and prints the table (or JSON); writes the SVG if asked.
pub fn run(args: Args) -> Result<()> {
    if args.capacity.iter().any(|&c| !(c > 0.0 && c <= 1.0)) {
        bail!("--capacity fractions must be in (0, 1]");
    }
    let started = Instant::now();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>18} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    let trace = load(&args, &bar)?;
    if args.tiered {
        return run_tiered(&args, &trace, &bar, started);
    }
    let n = trace.requests.len() as u64;
    let jobs: Vec<Job> = (0..args.capacity.len())
        .flat_map(|c| args.policies.iter().map(move |&p| (c, p)))
        .collect();
    let passes = |p: PolicyName| {
        if p == PolicyName::Belady && args.workers > 1 {
            2
        } else {
            1
        }
    };
    let work = jobs.iter().map(|&(_, p)| passes(p) * n).sum();
    bar.set_position(0);
    bar.set_length(work);
    bar.set_message("replaying");
    let caps: Vec<usize> = args
        .capacity
        .iter()
        .map(|&f| (f * trace.unique_blocks as f64).round() as usize)
        .collect();

    let results: Vec<(Job, f64)> = run_parallel(&jobs, args.threads, &bar, |&(c, p), progress| {
        run_job(&trace, &args, caps[c], p, progress)
    });
    bar.finish_and_clear();

    let mut rows: Vec<Row> = args
        .capacity
        .iter()
        .zip(&caps)
        .map(|(&fraction, &blocks)| Row {
            fraction,
            blocks,
            lru: None,
            kvtier: None,
            belady: None,
        })
        .collect();
    for ((c, p), rate) in results {
        let row = &mut rows[c];
        match p {
            PolicyName::Lru => row.lru = Some(rate),
            PolicyName::Kvtier => row.kvtier = Some(rate),
            PolicyName::Belady => row.belady = Some(rate),
        }
    }
    let report = Report {
        trace: trace.name.clone(),
        requests: trace.requests.len(),
        blocks: trace.total_blocks(),
        unique_blocks: trace.unique_blocks,
        ideal: ideal(&trace),
        stagger_s: args.stagger,
        workers: args.workers as usize,
        end_signal: end_signal(&args),
        rows,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        println!("({:.1} s)", report.seconds);
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn lifecycle(args: &Args) -> sim::Lifecycle {
    match args.end_signal.as_str() {
        "lease" => sim::Lifecycle::LeaseExpiry {
            lease_ms: args.lease_ms,
        },
        _ => sim::Lifecycle::HarnessEnds,
    }
}

fn end_signal(args: &Args) -> String {
    match args.end_signal.as_str() {
        "lease" => format!("lease expiry only ({} ms)", args.lease_ms),
        _ => "harness EndAgent at the last answer".into(),
    }
}

/// Runs `run` on every job over `threads` threads (each takes the next job
/// until none is left) while `bar` shows the shared progress counter that
/// the jobs advance; returns each job with its outcome.
fn run_parallel<J: Copy + Send + Sync, O: Send>(
    jobs: &[J],
    threads: usize,
    bar: &ProgressBar,
    run: impl Fn(&J, &AtomicU64) -> O + Sync,
) -> Vec<(J, O)> {
    let progress = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                        out.push((*job, run(job, &progress)));
                    }
                    out
                })
            })
            .collect();
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                bar.set_position(progress.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let all = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        finished.store(true, Ordering::Relaxed);
        all
    })
}

/// The tiered replay: every variant at every host capacity, in parallel.
fn run_tiered(args: &Args, trace: &Trace, bar: &ProgressBar, started: Instant) -> Result<()> {
    if args.workers != 1 {
        bail!("--tiered replays one cache (--workers 1)");
    }
    if let Some(d) = args.disk_capacity {
        if d.is_nan() || d <= 0.0 {
            bail!("--disk-capacity must be > 0 (omit it for an unlimited disk)");
        }
    }
    let costs = tiered::Costs {
        host_ms: args.host_ms,
        disk_ms: args.disk_ms,
        recompute_ms: args.recompute_ms,
    };
    let budget = args.prefetch_budget.unwrap_or_else(|| {
        kvtier_policy::prefetch::budget_blocks(args.prefetch_interval_ms, args.disk_ms)
    });
    let blocks = |f: f64| (f * trace.unique_blocks as f64).round() as usize;
    let disk_blocks = args.disk_capacity.map(blocks);
    let jobs: Vec<(usize, tiered::Variant)> = (0..args.capacity.len())
        .flat_map(|c| tiered::Variant::ALL.into_iter().map(move |v| (c, v)))
        .collect();
    bar.set_position(0);
    bar.set_length(jobs.len() as u64 * trace.requests.len() as u64);
    bar.set_message("replaying tiers");
    let cfg = args.value_config();
    let lifecycle = lifecycle(args);
    let results: Vec<((usize, tiered::Variant), tiered::Outcome)> =
        run_parallel(&jobs, args.threads, bar, |&(c, v), progress| {
            let setup = tiered::Setup {
                host_blocks: blocks(args.capacity[c]),
                disk_blocks,
                costs,
                interval_ms: args.prefetch_interval_ms,
                budget,
                prefetch_horizon_ms: (args.prefetch_horizon_ms > 0)
                    .then_some(args.prefetch_horizon_ms),
            };
            tiered::simulate(trace, &setup, lifecycle, v, &cfg, progress)
        });
    bar.finish_and_clear();
    let capacities = args
        .capacity
        .iter()
        .enumerate()
        .map(|(c, &fraction)| tiered::CapacityRows {
            fraction,
            host_blocks: blocks(fraction),
            rows: tiered::Variant::ALL
                .iter()
                .filter_map(|&v| {
                    results
                        .iter()
                        .find(|(job, _)| *job == (c, v))
                        .map(|(_, o)| tiered::VariantRow::new(v, o))
                })
                .collect(),
        })
        .collect();
    let report = tiered::Report {
        trace: trace.name.clone(),
        requests: trace.requests.len(),
        unique_blocks: trace.unique_blocks,
        end_signal: end_signal(args),
        costs,
        disk_blocks,
        interval_ms: args.prefetch_interval_ms,
        budget,
        capacities,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        println!("({:.1} s)", report.seconds);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
