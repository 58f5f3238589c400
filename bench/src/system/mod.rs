//! `kvtier-bench system`: system-level trace replay through real processes.
//!
//! For each configuration it starts a `kvtier-server`, N simulated workers
//! (`kvtier-sim-worker`, each with its `kvtier-agent`) and a `kvtier-router`
//! on loopback, replays the plan through the router's HTTP front (OpenAI
//! chat completions, streamed) with the trace's call order, think times and
//! sub-agents (time-compressed by `--speed`, at most `--concurrency` calls in
//! flight), then reads the hit rate from the workers' Prometheus counters
//! (cross-checked against the client's `usage.cached_tokens`), TTFT from the
//! client, prefill tokens computed, and the bytes the cache server moved.
//!
//! Configurations (same workers, same trace, one after the other, each with
//! fresh processes):
//! - (a) round-robin routing, each worker's local LRU prefix cache only;
//! - (b) prefix-affinity (cost) routing on worker KV events, local LRU only:
//!   a KV-aware router without a cache tier;
//! - (c) kvtier with the cache server's LRU policy;
//! - (d) full kvtier (value policy, lifecycle hints).
//!
//! (a) and (b) run the workers with `--tier-io off` (they still report their
//! blocks, so the router gets KV events) and the router without a cache
//! server; the server still runs because agents attach to it.
//!
//! - [`workload`]: the plan (from the policy replay's trace readers, or synthetic).
//! - [`prompt`]: trace block ids → prompt text (bench tokenizer, 1 block = 16 tokens).
//! - [`fleet`]: the processes.
//! - [`runner`]: the HTTP client and the timing.
//! - [`report`]: table, JSON, SVG.
//! - [`overload`]: `--overload F`, the router's admission queue on vs off
//!   under F × capacity from latency-sensitive main agents and bulk sub-agents.

pub mod fleet;
pub mod overload;
pub mod prompt;
pub mod report;
pub mod runner;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use fleet::{metric_sum, Fleet, FleetSpec};
use report::{quantile, Report, Row};
use runner::RunOpts;
use workload::{Plan, Shape};

/// A configuration of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Config {
    /// Round-robin routing, local LRU only.
    A,
    /// Prefix-affinity routing, local LRU only.
    B,
    /// kvtier with an LRU tier policy.
    C,
    /// Full kvtier.
    D,
    /// Full kvtier with the server's prefetcher on (`kvtier-server --prefetch`).
    E,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::A => "a",
            Config::B => "b",
            Config::C => "c",
            Config::D => "d",
            Config::E => "e",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Config::A => "round-robin, local LRU",
            Config::B => "prefix affinity, local LRU",
            Config::C => "kvtier, LRU tier",
            Config::D => "kvtier (value policy)",
            Config::E => "kvtier (value policy) + prefetch",
        }
    }
}

/// Flags of `kvtier-bench system`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A kv-cache-tester directory or a Mooncake .jsonl file; none: the
    /// built-in synthetic agentic workload.
    pub trace: Option<PathBuf>,
    /// Replay the first N sessions (kv-cache-tester; synthetic: sessions).
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// First N calls of each session (Mooncake: of the file; synthetic: calls per session).
    #[arg(long, default_value_t = 40)]
    pub max_calls: usize,
    /// Longest idle gap kept from the trace, trace seconds.
    #[arg(long, default_value_t = 120.0)]
    pub max_gap_s: f64,
    /// Session k starts k·S trace seconds after the first.
    #[arg(long, default_value_t = 0.0)]
    pub stagger: f64,
    /// Time compression: trace seconds per wall second.
    #[arg(long, default_value_t = 20.0)]
    pub speed: f64,
    /// Calls in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Workers.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Worker pool (HBM) capacity in blocks, per worker.
    #[arg(long, default_value_t = 4096)]
    pub pool_blocks: u64,
    /// Cache-server host tier capacity in blocks (0: twice the plan's unique blocks).
    #[arg(long, default_value_t = 0)]
    pub tier_blocks: u64,
    /// Cache-server disk tier capacity in blocks (0: no disk tier).
    #[arg(long, default_value_t = 0)]
    pub disk_blocks: u64,
    /// Bytes per block (the simulated KV of 16 tokens).
    #[arg(long, default_value_t = 2048)]
    pub block_bytes: u64,
    /// Simulated prefill rate of each worker, tokens/s (16 per trace block).
    #[arg(long, default_value_t = 20_000.0)]
    pub prefill_tps: f64,
    /// Simulated decode rate per stream, tokens/s.
    #[arg(long, default_value_t = 1000.0)]
    pub decode_tps: f64,
    /// Output tokens per call.
    #[arg(long, default_value_t = 4)]
    pub osl: u32,
    /// Configurations to run ((e): (d) with the server's prefetcher on; give
    /// it a disk tier and a host tier smaller than the working set, or it has
    /// nothing to move).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d")]
    pub configs: Vec<Config>,
    /// Synthetic workload: blocks of a session's first call.
    #[arg(long, default_value_t = 64)]
    pub synthetic_base_blocks: usize,
    /// Synthetic workload: blocks each later call adds.
    #[arg(long, default_value_t = 16)]
    pub synthetic_grow_blocks: usize,
    /// Synthetic workload: think time between a session's calls, ms.
    #[arg(long, default_value_t = 1000)]
    pub synthetic_think_ms: u64,
    /// Extra flags for the kvtier-server of every configuration (repeat, or
    /// separate with spaces inside one value: `--server-arg=--prefetch-horizon-ms=5000`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the hit-rate / TTFT plot (SVG) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Directory of the kvtier binaries (default: next to kvtier-bench).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Redraw the plot (--svg) and reprint the table from a --json report, and exit.
    #[arg(long)]
    pub replot: Option<PathBuf>,
    /// Print the plan's figures (calls, blocks, ideal) and exit.
    #[arg(long)]
    pub plan_only: bool,
    /// Run the overload phase instead of the configurations: agents offering
    /// this multiple of the fleet's prefill capacity, router queue on, then off.
    #[arg(long)]
    pub overload: Option<f64>,
    /// Overload: share of the offered calls from bulk sub-agents (the rest
    /// from latency-sensitive main agents).
    #[arg(long, default_value_t = 0.75)]
    pub bulk_share: f64,
    /// Overload: blocks of a main agent's prompt (fresh each call).
    #[arg(long, default_value_t = 32)]
    pub main_blocks: u32,
    /// Overload: blocks of a bulk sub-agent's prompt (fresh each call).
    #[arg(long, default_value_t = 64)]
    pub bulk_blocks: u32,
    /// Overload: mean think time between an answer and the agent's next call, ms.
    #[arg(long, default_value_t = 2000)]
    pub think_ms: u64,
    /// Overload: seconds each arm sends calls (warm-up included).
    #[arg(long, default_value_t = 90)]
    pub overload_seconds: u64,
    /// Overload: seconds at the start of each arm left out of the figures.
    #[arg(long, default_value_t = 15)]
    pub warmup_seconds: u64,
    /// Overload: the workers' --scheduling-policy in both arms.
    #[arg(long, default_value = "priority", value_parser = ["fcfs", "priority"])]
    pub worker_scheduling: String,
    /// Overload: the router's --queue-aging-ms in the queue-on arm (default: the router's).
    #[arg(long)]
    pub queue_aging_ms: Option<u64>,
    /// Overload: the router's --busy-target-wait-ms in the queue-on arm (default: the router's).
    #[arg(long)]
    pub busy_target_wait_ms: Option<u64>,
    /// Overload: seed of the think times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn plan(args: &Args) -> Result<Plan> {
    match &args.trace {
        Some(path) => workload::from_path(
            path,
            Shape {
                sessions: Some(args.sessions),
                max_calls: Some(args.max_calls),
                max_gap_s: args.max_gap_s,
                stagger_s: args.stagger,
            },
        ),
        None => {
            let (base, grow) = (args.synthetic_base_blocks, args.synthetic_grow_blocks);
            Ok(workload::synthetic(
                args.sessions,
                args.max_calls,
                base,
                grow,
                args.synthetic_think_ms,
                (args.stagger * 1000.0) as u64,
            ))
        }
    }
}

/// Peak number of sessions with a call sent and a later call still to come
/// (on the trace clock): how many contexts want to stay warm at once.
fn peak_live_sessions(plan: &Plan) -> usize {
    let mut span: std::collections::HashMap<u32, (u64, u64)> = Default::default();
    for c in &plan.calls {
        let e = span.entry(c.session).or_insert((c.at_ms, c.at_ms));
        e.0 = e.0.min(c.at_ms);
        e.1 = e.1.max(c.at_ms);
    }
    let mut ev: Vec<(u64, i32)> = Vec::new();
    for (_, (s, e)) in span {
        ev.push((s, 1));
        ev.push((e, -1));
    }
    ev.sort();
    let (mut cur, mut peak) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        peak = peak.max(cur);
    }
    peak as usize
}

async fn run_config(cfg: Config, spec: &FleetSpec, plan: &Arc<Plan>, opts: RunOpts) -> Result<Row> {
    let with_tier = matches!(cfg, Config::C | Config::D | Config::E);
    let mut server_args = spec.server_args.clone();
    if cfg == Config::E {
        server_args.push("--prefetch".into());
    }
    let spec = FleetSpec {
        policy: if cfg == Config::C { "lru" } else { "value" },
        tier_io: with_tier,
        routing: if cfg == Config::A {
            "round-robin"
        } else {
            "cost"
        },
        router_uses_cache: with_tier,
        server_args,
        ..spec.clone()
    };
    let fleet = Fleet::start(&spec, cfg.key())
        .await
        .with_context(|| format!("starting configuration ({})", cfg.key()))?;
    let started = Instant::now();
    let results = runner::replay(
        plan.clone(),
        fleet.router_http,
        fleet.router_grpc,
        RunOpts {
            end_agents: spec.router_uses_cache,
            ..opts
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    // Let background offloads land before reading the server's counters.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut prompt = 0.0;
    let mut hbm = 0.0;
    let mut tier = 0.0;
    let mut computed = 0.0;
    let mut offloaded = 0.0;
    let mut evicted = 0.0;
    for &w in &fleet.worker_http {
        let text = fleet::http_get(w, "/metrics")?;
        prompt += metric_sum(&text, "kvtier_sim_worker_prompt_tokens_total", &[]);
        hbm += metric_sum(
            &text,
            "kvtier_sim_worker_cached_tokens_total",
            &[("source", "hbm")],
        );
        tier += metric_sum(
            &text,
            "kvtier_sim_worker_cached_tokens_total",
            &[("source", "tier")],
        );
        computed += metric_sum(&text, "kvtier_sim_worker_computed_tokens_total", &[]);
        offloaded += metric_sum(
            &text,
            "kvtier_sim_worker_offload_blocks_total",
            &[("result", "stored")],
        );
        evicted += metric_sum(&text, "kvtier_sim_worker_evicted_blocks_total", &[]);
    }
    let server = fleet::http_get(fleet.server_metrics, "/metrics")?;
    let tier_resident_bytes = ["host", "disk"]
        .iter()
        .map(|t| {
            (
                t.to_string(),
                metric_sum(&server, "kvtier_tier_bytes", &[("tier", t)]) as u64,
            )
        })
        .collect();
    let tier_in = metric_sum(
        &server,
        "kvtier_transfer_bytes_total",
        &[("direction", "in")],
    );
    let tier_out = metric_sum(
        &server,
        "kvtier_transfer_bytes_total",
        &[("direction", "out")],
    );
    let tier_hits = |tier: &str| {
        metric_sum(
            &server,
            "kvtier_block_hits_total",
            &[("op", "get"), ("tier", tier)],
        ) as u64
    };
    let (tier_hits_host, tier_hits_disk) = (tier_hits("host"), tier_hits("disk"));
    let prefetched_blocks = metric_sum(&server, "kvtier_prefetch_blocks_total", &[]) as u64;
    fleet.stop();

    let ok: Vec<&runner::Outcome> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let failed = results.len() - ok.len();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("({}) {failed} calls failed; first error: {e}", cfg.key());
    }
    let ttft: Vec<f64> = ok.iter().map(|o| o.ttft_ms).collect();
    let client_prompt: u64 = ok.iter().map(|o| o.prompt_tokens).sum();
    let client_cached: u64 = ok.iter().map(|o| o.cached_tokens).sum();
    let ratio = |x: f64| if prompt > 0.0 { x / prompt } else { 0.0 };
    let mut workers_used: Vec<&str> = ok.iter().map(|o| o.worker.as_str()).collect();
    workers_used.sort_unstable();
    workers_used.dedup();
    Ok(Row {
        key: cfg.key().into(),
        name: cfg.name().into(),
        ok: ok.len(),
        failed,
        hit_rate: ratio(hbm + tier),
        hit_hbm: ratio(hbm),
        hit_tier: ratio(tier),
        client_hit_rate: if client_prompt > 0 {
            client_cached as f64 / client_prompt as f64
        } else {
            0.0
        },
        of_ideal: 0.0,
        ttft_p50_ms: quantile(&ttft, 0.5),
        ttft_p99_ms: quantile(&ttft, 0.99),
        ttft_mean_ms: ttft.iter().sum::<f64>() / ttft.len().max(1) as f64,
        computed_tokens: computed as u64,
        client_computed_tokens: ok.iter().map(|o| o.computed_tokens).sum(),
        client_hbm_blocks: ok.iter().map(|o| o.hbm_blocks).sum(),
        client_onboarded_blocks: ok.iter().map(|o| o.onboarded_blocks).sum(),
        queue_ms_mean: ok.iter().map(|o| o.queue_ms as f64).sum::<f64>() / ok.len().max(1) as f64,
        workers_used: workers_used.len(),
        prompt_tokens: prompt as u64,
        tier_in_bytes: tier_in as u64,
        tier_out_bytes: tier_out as u64,
        tier_resident_bytes,
        offloaded_blocks: offloaded as u64,
        hbm_evicted_blocks: evicted as u64,
        tier_hits_host,
        tier_hits_disk,
        prefetched_blocks,
        seconds,
    })
}

/// Runs the system replay and prints the table; writes JSON / SVG if asked.
pub fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.replot {
        let report: Report = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        print!("{}", report.table());
        if let Some(svg) = &args.svg {
            std::fs::write(svg, report.svg())?;
        }
        return Ok(());
    }
    if args.speed.is_nan() || args.speed <= 0.0 {
        bail!("--speed must be > 0");
    }
    if args.workers == 0 {
        bail!("--workers must be > 0");
    }
    if let Some(factor) = args.overload {
        // A small host tier: the overload phase's prompts are never reused.
        let (_dir, _shm, spec) = fleet_spec(&args, 4096)?;
        return run_overload(&args, factor, spec);
    }
    let plan = Arc::new(plan(&args)?);
    if plan.calls.is_empty() {
        bail!("the plan has no calls");
    }
    let unique = plan.unique_blocks();
    let ideal = plan.ideal();
    let trace_span_s = plan.calls.iter().map(|c| c.at_ms).max().unwrap_or(0) as f64 / 1e3;
    eprintln!(
        "plan: {}: {} sessions, {} agents, {} calls, {} blocks ({} unique), largest call {} blocks, \
         peak live sessions {}, trace span {:.0} s (≈{:.0} s at --speed {}), ideal {:.2}%",
        plan.name,
        plan.sessions,
        plan.agents(),
        plan.calls.len(),
        plan.total_blocks(),
        unique,
        plan.max_blocks(),
        peak_live_sessions(&plan),
        trace_span_s,
        trace_span_s / args.speed,
        args.speed,
        100.0 * ideal
    );
    if args.plan_only {
        return Ok(());
    }
    if (plan.max_blocks() as u64) > args.pool_blocks {
        eprintln!(
            "warning: the largest call ({} blocks) exceeds --pool-blocks {}: it can never be fully cached on a worker",
            plan.max_blocks(),
            args.pool_blocks
        );
    }
    let tier_blocks = if args.tier_blocks == 0 {
        2 * unique as u64
    } else {
        args.tier_blocks
    };
    let (_dir, _shm, spec) = fleet_spec(&args, tier_blocks)?;
    let opts = RunOpts {
        speed: args.speed,
        concurrency: args.concurrency,
        osl: args.osl,
        end_agents: true,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &cfg in &args.configs {
        eprintln!("running ({}) {} ...", cfg.key(), cfg.name());
        let mut row = rt.block_on(run_config(cfg, &spec, &plan, opts))?;
        row.of_ideal = if ideal > 0.0 {
            row.hit_rate / ideal
        } else {
            0.0
        };
        eprintln!(
            "  hit {:.2}% (client {:.2}%), TTFT p50 {:.1} ms p99 {:.1} ms, {:.1} s",
            100.0 * row.hit_rate,
            100.0 * row.client_hit_rate,
            row.ttft_p50_ms,
            row.ttft_p99_ms,
            row.seconds
        );
        rows.push(row);
    }
    let settings = vec![
        ("workers".to_string(), args.workers.to_string()),
        ("pool_blocks".into(), args.pool_blocks.to_string()),
        ("tier_blocks".into(), tier_blocks.to_string()),
        ("disk_blocks".into(), args.disk_blocks.to_string()),
        ("block_bytes".into(), args.block_bytes.to_string()),
        ("block_tokens".into(), prompt::BLOCK_TOKENS.to_string()),
        ("prefill_tps".into(), args.prefill_tps.to_string()),
        ("decode_tps".into(), args.decode_tps.to_string()),
        ("osl".into(), args.osl.to_string()),
        ("speed".into(), args.speed.to_string()),
        ("concurrency".into(), args.concurrency.to_string()),
        ("max_gap_s".into(), args.max_gap_s.to_string()),
        ("stagger_s".into(), args.stagger.to_string()),
    ];
    let report = Report {
        workload: plan.name.clone(),
        sessions: plan.sessions,
        agents: plan.agents(),
        calls: plan.calls.len(),
        blocks: plan.total_blocks(),
        unique_blocks: unique,
        ideal,
        settings,
        rows,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--overload F`: the router's admission queue on vs off (see [`overload`]).
fn run_overload(args: &Args, factor: f64, spec: FleetSpec) -> Result<()> {
    if !(factor.is_finite() && factor > 0.0 && (0.0..=1.0).contains(&args.bulk_share)) {
        bail!("--overload must be > 0 and --bulk-share in [0, 1]");
    }
    if args.warmup_seconds >= args.overload_seconds {
        bail!("--warmup-seconds must be shorter than --overload-seconds");
    }
    let o = overload::Overload {
        factor,
        bulk_share: args.bulk_share,
        main_blocks: args.main_blocks,
        bulk_blocks: args.bulk_blocks,
        think: std::time::Duration::from_millis(args.think_ms),
        duration: std::time::Duration::from_secs(args.overload_seconds),
        warmup: std::time::Duration::from_secs(args.warmup_seconds),
        osl: args.osl,
        prefill_tps: args.prefill_tps,
        decode_tps: args.decode_tps,
        workers: args.workers,
        seed: args.seed,
    };
    // Fresh prompts: no prefix reuse, so no cache tier in the way (the
    // router without the cache server, the workers without tier I/O).
    let spec = FleetSpec {
        tier_io: false,
        router_uses_cache: false,
        worker_args: vec!["--scheduling-policy".into(), args.worker_scheduling.clone()],
        ..spec
    };
    // Queue on: no call shed (ordering only), the router's other defaults.
    let mut on: Vec<String> = [
        "--admission-queue",
        "on",
        "--queue-max-len",
        "100000",
        "--queue-max-wait-ms",
        "600000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(ms) = args.queue_aging_ms {
        on.extend(["--queue-aging-ms".into(), ms.to_string()]);
    }
    if let Some(ms) = args.busy_target_wait_ms {
        on.extend(["--busy-target-wait-ms".into(), ms.to_string()]);
    }
    let off = vec!["--admission-queue".to_string(), "off".to_string()];
    let sizing = o.sizing();
    eprintln!(
        "overload: capacity {:.2} calls/s, {} main + {} bulk agents offering {:.2} calls/s",
        sizing.capacity_calls_per_s,
        sizing.main_agents,
        sizing.bulk_agents,
        sizing.offered_calls_per_s
    );
    let router_on = on.join(" ");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (sizing, arms) = rt.block_on(overload::run(&spec, &o, on, off))?;
    let settings = vec![
        ("workers".to_string(), args.workers.to_string()),
        ("prefill_tps".into(), args.prefill_tps.to_string()),
        ("decode_tps".into(), args.decode_tps.to_string()),
        ("osl".into(), args.osl.to_string()),
        ("overload".into(), factor.to_string()),
        ("bulk_share".into(), args.bulk_share.to_string()),
        ("main_blocks".into(), args.main_blocks.to_string()),
        ("bulk_blocks".into(), args.bulk_blocks.to_string()),
        ("think_ms".into(), args.think_ms.to_string()),
        ("seconds".into(), args.overload_seconds.to_string()),
        ("warmup_s".into(), args.warmup_seconds.to_string()),
        ("worker_scheduling".into(), args.worker_scheduling.clone()),
        ("router_on".into(), router_on),
    ];
    let report = overload::OverloadReport {
        sizing,
        settings,
        arms,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The run's scratch directories (kept while they live) and the fleet
/// settings common to every configuration, with a host tier of `tier_blocks`.
fn fleet_spec(
    args: &Args,
    tier_blocks: u64,
) -> Result<(tempfile::TempDir, tempfile::TempDir, FleetSpec)> {
    let dir = tempfile::Builder::new()
        .prefix("kvtier-system-")
        .tempdir()?;
    // Beneath the agents' default --pool-dir.
    let shm_base = if std::path::Path::new("/dev/shm").is_dir()
        && std::fs::create_dir_all(kvtier_testkit::dir::AGENT_POOL_DIR).is_ok()
    {
        PathBuf::from(kvtier_testkit::dir::AGENT_POOL_DIR)
    } else {
        std::env::temp_dir()
    };
    let shm = tempfile::Builder::new()
        .prefix("kvtier-system-")
        .tempdir_in(shm_base)?;
    let (tokenizer, template) = prompt::write_model(&dir.path().join("model"))?;
    let spec = FleetSpec {
        bin_dir: args.bin_dir.clone(),
        dir: dir.path().to_path_buf(),
        shm: shm.path().to_path_buf(),
        tokenizer,
        template,
        workers: args.workers,
        pool_blocks: args.pool_blocks,
        block_bytes: args.block_bytes,
        prefill_tps: args.prefill_tps,
        decode_tps: args.decode_tps,
        host_bytes: tier_blocks * args.block_bytes,
        disk_bytes: args.disk_blocks * args.block_bytes,
        policy: "value",
        tier_io: true,
        routing: "cost",
        router_uses_cache: true,
        worker_args: Vec::new(),
        router_args: Vec::new(),
        server_args: args.server_args.clone(),
    };
    Ok((dir, shm, spec))
}
