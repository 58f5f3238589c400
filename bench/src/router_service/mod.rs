//! `kvtier-bench router-service`: the router as a service, gRPC `FindMatches`
//! against Dynamo's standalone KV indexer (`python -m dynamo.indexer`, from
//! PyPI `ai-dynamo-runtime`), both fed the same vLLM-format ZMQ event stream,
//! measured in the same run with the same queries and client concurrency.
//!
//! Set-up, all on loopback:
//! - a Python publisher (`bench/scripts/vllm_event_publisher.py`, pyzmq +
//!   msgspec, vLLM's wire format) with one PUB socket per simulated vLLM
//!   worker; each socket is subscribed to by that worker's `kvtier-agent
//!   --vllm-events` and by Dynamo's indexer (`--workers ID=tcp://...`), so
//!   both indexes ingest the identical byte stream;
//! - `kvtier-server` (temp data dir), W `kvtier-agent`s, `kvtier-router`
//!   (`--worker worker-I=<dummy HTTP base>@<agent>`; only gRPC is queried);
//! - Dynamo's indexer (`bench/scripts/dynamo_indexer_peer.py`, which documents
//!   its flags and HTTP API).
//!
//! Workload (synthetic, agentic): sessions that start from one of a few
//! shared system-prompt roots (or fork a sub-agent off another session's
//! context), grow turn by turn to up to `--max-blocks` blocks, sometimes move
//! to another worker (which then stores the part of the context it lacks),
//! and at the end some sessions lose their tail on their last worker
//! (leaf-first `BlockRemoved`, as vLLM evicts). The events are computed here,
//! with the ground truth (per-worker block sets), and written as a plan for
//! the publisher.
//!
//! Queries: the next call of a session (its context at some turn plus the
//! next turn's new blocks and a partial block), and a few unrelated prompts.
//! Both services are asked for the per-worker overlap of each query: by token
//! ids (each service hashes the blocks itself) and by hashes (kvtier: chained
//! sequence hashes; Dynamo's `/query_by_hash`: per-block local hashes, which
//! kvtier's `local_block_hash` computes identically). Before timing, the
//! answers of a sample are checked against each other and the ground truth.
//!
//! Clients: a tonic client for `FindMatches`, a hyper HTTP/1.1 client for
//! Dynamo's JSON API; one connection per in-flight slot on both sides. While
//! timing, both send request bodies encoded beforehand (protobuf bytes through
//! a pass-through tonic codec; JSON bytes) and read each answer in full without
//! decoding it, so the client does the same work for both services (it shares
//! the machine with them). The cross-check decodes both answers. With `--pin`
//! the client's threads keep to the first half of the CPUs and every service
//! process to the other half, so that the rates compare the services' own
//! capacity rather than services plus client.
//!
//! # Layout
//! - [`workload`]: the sessions, the publisher's plan of events, the ground truth.
//! - [`queries`]: the queries, in both services' encodings, with expected answers.
//! - [`python`]: a Python with Dynamo, pyzmq and msgspec (or why there is none).
//! - [`fleet`]: the publisher, kvtier's services and Dynamo's indexer (started
//!   with `kvtier-testkit`'s ready-line processes, killed on drop).
//! - [`pinning`]: `--pin`, the client's and the services' CPUs.
//! - [`client`]: both services' requests, clients and decoded answers.
//! - [`codec`]: the pass-through gRPC codec of the timed kvtier client.
//! - [`crosscheck`]: waiting for both indexes, answers against the ground truth.
//! - [`measure`]: the timed closed loops, CPU time, the rounds and their summary.
//! - [`report`]: the table and the JSON object.

mod client;
mod codec;
mod crosscheck;
mod fleet;
mod measure;
mod pinning;
mod python;
mod queries;
mod report;
mod workload;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use kvtier_proto::hashing::{BlockHasher, DEFAULT_SEED};
use kvtier_testkit::free_port;

use client::kv_client;
use crosscheck::{catch_up, cross_check};
use fleet::{Bins, Fleet, Spec};
use measure::{median, summarize};
use pinning::Pinning;
use python::{find_python, PythonStatus, DYNAMO_PIN};
use queries::make_queries;
use report::{ModeResult, Setup};
use workload::generate;

const PUBLISHER_PY: &str = include_str!("../../scripts/vllm_event_publisher.py");
const DYNAMO_PY: &str = include_str!("../../scripts/dynamo_indexer_peer.py");
/// The model name every worker, query and index uses.
const MODEL: &str = "bench-model";

/// How queries name their prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Token ids: each service hashes the blocks itself.
    Tokens,
    /// Precomputed hashes (kvtier: sequence hashes; Dynamo: local hashes).
    Hashes,
    /// Both, one after the other.
    Both,
}

impl Mode {
    /// The mode as the table and the log lines name it.
    fn name(self) -> &'static str {
        match self {
            Mode::Tokens => "token ids",
            Mode::Hashes => "hashes",
            Mode::Both => "both",
        }
    }
}

/// Flags of `kvtier-bench router-service`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Simulated vLLM workers (one kvtier-agent and one ZMQ socket each).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Tokens per block (vLLM's block_size; kvtier's block_tokens).
    #[arg(long, default_value_t = 16)]
    block_tokens: usize,
    /// Agent sessions in the workload.
    #[arg(long, default_value_t = 48)]
    sessions: usize,
    /// Distinct shared system-prompt roots.
    #[arg(long, default_value_t = 2)]
    roots: usize,
    /// Blocks of each root.
    #[arg(long, default_value_t = 256)]
    root_blocks: usize,
    /// Longest session context, in blocks.
    #[arg(long, default_value_t = 2050)]
    max_blocks: usize,
    /// Most turns (model calls) of a session; each has 4 or more.
    #[arg(long, default_value_t = 24)]
    max_turns: usize,
    /// Chance that a turn runs on another worker than the previous one.
    #[arg(long, default_value_t = 0.1)]
    migrate: f64,
    /// Chance that a session is a sub-agent forked off another session's context.
    #[arg(long, default_value_t = 0.2)]
    fork: f64,
    /// Chance that a session's tail is evicted from its last worker at the end.
    #[arg(long, default_value_t = 0.25)]
    evict: f64,
    /// Distinct queries (cycled through while measuring).
    #[arg(long, default_value_t = 256)]
    queries: usize,
    /// Requests in flight (one connection each), on both sides.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds per service, mode and round.
    #[arg(long, default_value_t = 4.0)]
    duration_s: f64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 0.5)]
    warmup_s: f64,
    /// Rounds; each measures both services back to back (alternating which
    /// goes first), so that both see the same noise. Rates are medians over
    /// rounds, the ratio the median of the per-round ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Query by token ids, by hashes, or both.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Queries whose answers are cross-checked (both services and the ground truth).
    #[arg(long, default_value_t = 128)]
    check: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Python with ai-dynamo-runtime, pyzmq and msgspec (default: the venv below,
    /// created with pip when missing).
    #[arg(long, env = "KVTIER_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Virtual environment for Dynamo (default ~/.cache/kvtier-dynamo-venv).
    #[arg(long, env = "KVTIER_DYNAMO_VENV")]
    venv: Option<PathBuf>,
    /// Dynamo indexer threads (--threads; default: the indexer's own default, 4).
    #[arg(long)]
    dynamo_threads: Option<usize>,
    /// Longest wait for both indexes to apply every event.
    #[arg(long, default_value_t = 120)]
    catchup_timeout_s: u64,
    /// kvtier-server binary (default: next to this binary).
    #[arg(long, env = "KVTIER_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// kvtier-agent binary (default: next to this binary).
    #[arg(long, env = "KVTIER_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// kvtier-router binary (default: next to this binary).
    #[arg(long, env = "KVTIER_ROUTER_BIN")]
    router_bin: Option<PathBuf>,
    /// Also print the results as one JSON object (last line).
    #[arg(long)]
    json: bool,
    /// Keep the benchmark's client off the services' CPUs: the client's
    /// threads run on the first half of the machine's CPUs, every service
    /// process (cache server, agents, router, Dynamo's indexer, the event
    /// publisher) on the other half (`taskset`, Linux). Without it all share
    /// every CPU and the measured rates include the client's CPU cost.
    #[arg(long)]
    pin: bool,
}

/// Runs the benchmark and prints the table.
pub async fn run(args: Args) -> Result<()> {
    if args.workers == 0 || args.concurrency == 0 || args.queries == 0 || args.sessions == 0 {
        bail!("--workers, --concurrency, --queries and --sessions must be > 0");
    }
    if args.block_tokens == 0 || args.root_blocks == 0 {
        bail!("--block-tokens and --root-blocks must be > 0");
    }
    let pinning = Pinning::new(args.pin)?;
    if let Some(pinning) = &pinning {
        println!(
            "pinned: client on CPUs {:?}, every service process on CPUs {}",
            pinning.client, pinning.services
        );
    }
    let dir = tempfile::tempdir()?;
    let peer_script = dir.path().join("dynamo_indexer_peer.py");
    let pub_script = dir.path().join("vllm_event_publisher.py");
    std::fs::write(&peer_script, DYNAMO_PY)?;
    std::fs::write(&pub_script, PUBLISHER_PY)?;
    let (python, versions) = match find_python(&args, &peer_script)? {
        PythonStatus::Ready(p, v) => (p, v),
        PythonStatus::Unavailable(why) => {
            println!(
                "SKIPPED: router-service needs python3 with pip (for {DYNAMO_PIN}, pyzmq, msgspec): {why}"
            );
            std::process::exit(2);
        }
    };
    let bins = Bins::find(&args)?;
    eprintln!("python {} ({versions})", python.display());

    // Workload, ground truth, queries, plan.
    let hasher = BlockHasher::new(args.block_tokens, DEFAULT_SEED);
    let ports = (0..args.workers)
        .map(|_| Ok(free_port()?))
        .collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    let wl = generate(&args, &ports, &hasher);
    let queries = make_queries(&args, &wl, &hasher);
    let plan_path = dir.path().join("plan.json");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&plan_path)?);
        serde_json::to_writer(&mut f, &wl.plan)?;
        f.flush()?;
    }
    let resident: usize = wl.present.iter().map(HashSet::len).sum();
    let q_blocks: Vec<usize> = queries.iter().map(|q| q.seq.len()).collect();
    let q_avg = q_blocks.iter().sum::<usize>() as f64 / q_blocks.len() as f64;
    let q_max = q_blocks.iter().copied().max().unwrap_or(0);
    eprintln!(
        "workload: {} sessions, {} events ({} blocks stored, {} removed), {} blocks resident \
         over {} workers; {} queries of {:.0} blocks on average (max {}); generated in {:.1}s",
        wl.sessions.len(),
        wl.events,
        wl.stored_blocks,
        wl.removed_blocks,
        resident,
        args.workers,
        queries.len(),
        q_avg,
        q_max,
        t.elapsed().as_secs_f64()
    );

    let (mut fleet, mut probe) = Fleet::start(Spec {
        args: &args,
        pinning: pinning.as_ref(),
        bins: &bins,
        python: &python,
        dir: dir.path(),
        publisher_script: &pub_script,
        peer_script: &peer_script,
        plan: &plan_path,
        ports: &ports,
    })
    .await?;
    // Publishing starts once all 2 × W subscriptions are in.
    eprintln!("{}", fleet.published().await?);
    let mut kv = kv_client(&fleet.endpoints.router).await?;
    let (kv_lag, dyn_lag) = catch_up(&args, &mut kv, &mut probe, &wl, &queries).await?;
    eprintln!(
        "caught up after publishing: kvtier {}, Dynamo {}",
        kv_lag.map_or("never".into(), |s| format!("{s:.2}s")),
        dyn_lag.map_or("never".into(), |s| format!("{s:.2}s"))
    );

    let modes: Vec<Mode> = match args.mode {
        Mode::Both => vec![Mode::Tokens, Mode::Hashes],
        m => vec![m],
    };
    let mut results = Vec::new();
    for mode in modes {
        let check = cross_check(&args, &mut kv, &mut probe, &queries, mode).await?;
        check.print(mode);
        let rounds = measure::rounds(&args, &fleet.endpoints, &queries, mode).await?;
        results.push(ModeResult {
            mode: mode.name(),
            qps_ratio: median(&rounds.ratios),
            round_ratios: rounds.ratios,
            kvtier: summarize(&rounds.kvtier),
            dynamo: summarize(&rounds.dynamo),
            check,
        });
    }

    report::print(
        &Setup {
            args: &args,
            sessions: wl.sessions.len(),
            events: wl.events,
            resident,
            queries: queries.len(),
            q_avg,
            q_max,
            versions: &versions,
            pinning: pinning.as_ref(),
            catch_up: (kv_lag, dyn_lag),
        },
        &results,
    );
    fleet.finish();
    Ok(())
}

/// For a synchronous `main`: runs [`run`] on a fresh tokio runtime.
pub fn run_blocking(args: Args) -> Result<()> {
    if let Some(pinning) = Pinning::new(args.pin)? {
        // Before the runtime starts: its threads inherit the binding.
        pinning.bind_client()?;
    }
    tokio::runtime::Runtime::new()?.block_on(run(args))
}
