//! `kvtier-bench index`: the router's block-locality index under a realistic
//! agentic shape, against a per-block walk and (optionally, `--dynamo-peer`)
//! Dynamo's indexers in Rust on the same tree and queries.
//!
//! Shape: `--workers` workers; a shared root chain of `--root-blocks` blocks (a
//! system prompt and tool definitions) held by every worker; sessions, each a
//! chain that extends the root to a depth drawn uniformly from
//! `--min-depth..=--max-depth`, pinned to one worker (sticky routing); one in
//! four sessions forks from another session's chain at a random depth (a
//! sub-agent or a retried turn) and shares that prefix. Sessions are added
//! until the workers hold `--entries` (block, worker) entries. The cache
//! server holds every session's chain up to a random depth, blocks shallower
//! than `--host-depth` in host memory and deeper ones on disk (prefix-closed,
//! host before disk: the index's bisection path; `--cache-inversions` demotes
//! random shallow blocks to disk instead, which sends the host/disk split to
//! the walk path).
//!
//! Queries: `--query-blocks` sequence hashes: a random session's first `k`
//! blocks (`k` uniform in `0..=query-blocks`) followed by blocks nobody holds,
//! so hits land at every depth and every worker answers (root-only, partial,
//! full). 4,096 distinct queries (64 MiB of hashes) are cycled; each is read
//! once before its clock starts, as the router queries right after hashing the
//! prompt or decoding the request (one row measures queries left in memory).
//!
//! Writer: a second thread grows chains of its own sessions by stored events
//! of `--event-blocks` blocks and removes the same number of blocks from the
//! tail of another (the index size stays flat), one write (one swap of the
//! shared index's two copies) per event.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use kvtier_proto::hashing::BlockHasher;
use kvtier_proto::v1::Tier;
use kvtier_router::cost::CostWeights;
use kvtier_router::index::{LocalityIndex, SharedIndex, WorkerSlot};
use kvtier_router::load::LoadBook;
use kvtier_router::routing::{ModelRouter, RouteHints, WorkerEndpoint, WorkerHealth};

/// Flags of `kvtier-bench index`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Workers.
    #[arg(long, default_value_t = 64)]
    workers: u32,
    /// (block, worker) entries to index before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Blocks of the root chain every session shares.
    #[arg(long, default_value_t = 64)]
    root_blocks: usize,
    /// Shallowest session chain (blocks, root included).
    #[arg(long, default_value_t = 256)]
    min_depth: usize,
    /// Deepest session chain (blocks, root included).
    #[arg(long, default_value_t = 2_600)]
    max_depth: usize,
    /// Cached blocks shallower than this are in host memory, deeper ones on disk.
    #[arg(long, default_value_t = 1_024)]
    host_depth: usize,
    /// Also demote this many random cached host blocks to disk (host under disk: walk path).
    #[arg(long, default_value_t = 0)]
    cache_inversions: usize,
    /// Blocks per query.
    #[arg(long, default_value_t = 2_050)]
    query_blocks: usize,
    /// Queries per measurement.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Blocks per stored / removed event of the writer thread.
    #[arg(long, default_value_t = 16)]
    event_blocks: usize,
    /// Paced writer rate, blocks per second (a fleet of 64 workers each
    /// prefilling 20k tokens/s stores 80k blocks/s of 16 tokens); the
    /// saturating writer (as fast as it can) is measured too.
    #[arg(long, default_value_t = 250_000)]
    writer_blocks_per_s: u64,
    /// Dynamo's index in Rust: the binary built from bench/dynamo-index
    /// (`dynamo-kv-router` 1.6.1), run on this run's tree and queries (passed
    /// in a file); its timings are printed beside kvtier's with the ratio.
    #[arg(long, value_name = "BIN")]
    dynamo_peer: Option<std::path::PathBuf>,
    /// RNG seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// A session: its chain of sequence hashes and its worker.
struct Session {
    chain: Vec<u64>,
    slot: WorkerSlot,
}

/// The generated workload.
struct Shape {
    sessions: Vec<Session>,
}

fn build_shape(args: &Args, rng: &mut Rng) -> Shape {
    let root: Vec<u64> = (0..args.root_blocks).map(|_| rng.next()).collect();
    let mut entries = u64::from(args.workers) * root.len() as u64;
    let mut sessions: Vec<Session> = Vec::new();
    while entries < args.entries {
        let depth = args.min_depth + rng.below(args.max_depth - args.min_depth + 1);
        let slot = rng.below(args.workers as usize) as WorkerSlot;
        let mut chain = if !sessions.is_empty() && rng.below(4) == 0 {
            let from = &sessions[rng.below(sessions.len())].chain;
            from[..root.len() + rng.below(from.len() - root.len())].to_vec()
        } else {
            root.clone()
        };
        let shared = chain.len();
        while chain.len() < depth.max(shared + 1) {
            chain.push(rng.next());
        }
        entries += (chain.len() - root.len()) as u64;
        sessions.push(Session { chain, slot });
    }
    Shape { sessions }
}

/// Resident set size of this process, bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn fill(index: &mut LocalityIndex, args: &Args, shape: &Shape, rng: &mut Rng) -> Duration {
    for w in 0..args.workers {
        index.add_worker(&format!("worker-{w}"));
    }
    let started = Instant::now();
    for session in &shape.sessions {
        // Stored events as an engine sends them: chunks chained to their parent.
        let mut parent = None;
        for chunk in session.chain.chunks(args.event_blocks) {
            index.worker_stored(session.slot, parent, chunk);
            parent = chunk.last().copied();
        }
    }
    let elapsed = started.elapsed();
    for session in &shape.sessions {
        let cached = rng.below(session.chain.len() + 1);
        let mut parent = None;
        for (i, &hash) in session.chain[..cached].iter().enumerate() {
            let tier = if i < args.host_depth {
                Tier::Host
            } else {
                Tier::Disk
            };
            index.cache_set(hash, parent, tier);
            parent = Some(hash);
        }
    }
    for _ in 0..args.cache_inversions {
        let session = &shape.sessions[rng.below(shape.sessions.len())];
        let position = rng.below(session.chain.len().min(args.host_depth));
        index.cache_set(session.chain[position], None, Tier::Disk);
    }
    elapsed
}

fn make_queries(args: &Args, shape: &Shape, rng: &mut Rng) -> Vec<Vec<u64>> {
    (0..args.queries.min(4_096))
        .map(|_| {
            let session = &shape.sessions[rng.below(shape.sessions.len())];
            let hits = rng.below(args.query_blocks + 1).min(session.chain.len());
            let mut query = session.chain[..hits].to_vec();
            while query.len() < args.query_blocks {
                query.push(rng.next());
            }
            query
        })
        .collect()
}

/// Latency percentiles, nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    mean: f64,
}

/// Every worker takes traffic (the decision's cost, not availability, is measured).
struct AllAvailable;

impl WorkerHealth for AllAvailable {
    fn is_available(&self, _: &str) -> bool {
        true
    }
    fn mark_unreachable(&self, _: &str, _: &str) {}
}

/// Latency of a whole routing decision (`ModelRouter::route`: index query,
/// every worker's load and availability, the cost model, the ranking) on the
/// same index and queries.
fn measure_decisions(shared: &SharedIndex, args: &Args, queries: &[Vec<u64>]) -> Percentiles {
    let workers = (0..args.workers)
        .map(|w| WorkerEndpoint {
            worker_id: format!("worker-{w}"),
            http_base: format!("http://worker-{w}"),
            agent_url: String::new(),
        })
        .collect();
    let router = ModelRouter::new(
        "bench",
        BlockHasher::new(16, kvtier_proto::hashing::DEFAULT_SEED),
        shared.clone(),
        workers,
        Arc::new(AllAvailable),
        LoadBook::new(Duration::from_secs(2)),
        CostWeights::default(),
    );
    let hints = RouteHints {
        agent_id: Some("bench-agent".into()),
        priority: 2,
        latency_sensitivity: 0.5,
        osl: Some(256),
    };
    measure(queries, args.queries, QueryIn::Cache, |q| {
        router
            .route(q, q.len() as u64 * 16, &hints)
            .map_or(0, |r| r.worker as u64)
    })
}

fn percentiles(mut samples: Vec<u64>) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64;
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        mean: samples.iter().sum::<u64>() as f64 / samples.len() as f64,
    }
}

/// Where a query's hashes are when its clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryIn {
    /// Read just before (as in the router, which queries right after hashing
    /// the prompt or decoding the request): in the CPU's caches.
    Cache,
    /// Not touched since the previous use of the same query, 4,095 queries
    /// (64 MiB of hashes) earlier: in memory only.
    Memory,
}

fn measure(
    queries: &[Vec<u64>],
    count: usize,
    query_in: QueryIn,
    mut query: impl FnMut(&[u64]) -> u64,
) -> Percentiles {
    let mut samples = Vec::with_capacity(count);
    let mut sink = 0u64;
    for i in 0..count {
        let q = &queries[i % queries.len()];
        if query_in == QueryIn::Cache {
            sink = sink.wrapping_add(q.iter().fold(0, |a, &b| a ^ b));
        }
        let started = Instant::now();
        sink = sink.wrapping_add(query(q));
        samples.push(started.elapsed().as_nanos() as u64);
    }
    std::hint::black_box(sink);
    percentiles(samples)
}

/// The hash function of the index's table (`router/src/index/table.rs`):
/// Fibonacci hashing of the 64-bit sequence hash, so that the walk and the
/// index differ by their algorithm, not by the hasher (the standard map's
/// SipHash would slow the walk for reasons of its own).
#[derive(Default)]
struct FibonacciHasher(u64);

impl Hasher for FibonacciHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The per-block walk the index avoids: block -> holder mask, one lookup per
/// position until no worker (and not the cache) still matches.
struct WalkBaseline {
    holders: HashMap<u64, u64, BuildHasherDefault<FibonacciHasher>>,
}

impl WalkBaseline {
    fn build(shape: &Shape) -> Self {
        let mut holders: HashMap<u64, u64, BuildHasherDefault<FibonacciHasher>> =
            HashMap::default();
        for session in &shape.sessions {
            for &hash in &session.chain {
                *holders.entry(hash).or_default() |= 1u64 << (session.slot % 64);
            }
        }
        Self { holders }
    }
    fn depth_sum(&self, query: &[u64]) -> u64 {
        let mut running = u64::MAX;
        let mut sum = 0u64;
        for hash in query {
            running &= self.holders.get(hash).copied().unwrap_or(0);
            if running == 0 {
                break;
            }
            sum += u64::from(running.count_ones());
        }
        sum
    }
}

fn spawn_writer(
    index: SharedIndex,
    args: &Args,
    stop: Arc<AtomicBool>,
    applied_blocks: Arc<AtomicU64>,
    seed: u64,
    blocks_per_s: Option<u64>,
) -> std::thread::JoinHandle<()> {
    let workers = args.workers;
    let event_blocks = args.event_blocks;
    std::thread::spawn(move || {
        let mut rng = Rng(seed | 1);
        // The writer's own sessions: chains it grows at the head and trims at the tail.
        let mut chains: Vec<(WorkerSlot, Vec<u64>)> =
            (0..256).map(|i| (i % workers, Vec::new())).collect();
        let mut applied = 0u64;
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(rate) = blocks_per_s {
                let due = Duration::from_secs_f64(applied as f64 / rate.max(1) as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
            let grow = rng.below(chains.len());
            let (slot, chain) = &mut chains[grow];
            let parent = chain.last().copied();
            let blocks: Vec<u64> = (0..event_blocks).map(|_| rng.next()).collect();
            index.write().worker_stored(*slot, parent, &blocks);
            chain.extend_from_slice(&blocks);
            applied += blocks.len() as u64;
            let trim = rng.below(chains.len());
            let (slot, chain) = &mut chains[trim];
            let keep = chain.len().saturating_sub(event_blocks);
            if keep < chain.len() {
                index.write().worker_removed(*slot, &chain[keep..]);
                applied += (chain.len() - keep) as u64;
                chain.truncate(keep);
            }
            applied_blocks.store(applied, Ordering::Relaxed);
        }
    })
}

/// One of Dynamo's indexers, from a `RESULT` line of the peer.
#[derive(Debug, Clone)]
struct DynamoResult {
    name: String,
    timing: Percentiles,
    apply_blocks_per_s: f64,
    checksum: u64,
}

/// Writes this run's tree (every session's worker and chain, stored in events
/// of `--event-blocks`) and distinct queries for the Dynamo peer: little-endian
/// u64s after the magic `KVTIDX01` (see bench/dynamo-index/src/main.rs).
fn write_peer_input(
    path: &std::path::Path,
    args: &Args,
    shape: &Shape,
    queries: &[Vec<u64>],
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut put = |v: u64| out.write_all(&v.to_le_bytes());
    put(u64::from_le_bytes(*b"KVTIDX01"))?;
    put(args.event_blocks as u64)?;
    put(args.queries as u64)?;
    put(shape.sessions.len() as u64)?;
    for s in &shape.sessions {
        put(u64::from(s.slot))?;
        put(s.chain.len() as u64)?;
        for &h in &s.chain {
            put(h)?;
        }
    }
    put(queries.len() as u64)?;
    put(args.query_blocks as u64)?;
    for q in queries {
        for &h in q {
            put(h)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs the Dynamo peer binary on this run's tree and queries.
fn run_dynamo_peer(
    bin: &std::path::Path,
    args: &Args,
    shape: &Shape,
    queries: &[Vec<u64>],
) -> Result<Vec<DynamoResult>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("index-peer.bin");
    write_peer_input(&input, args, shape, queries)?;
    let output = std::process::Command::new(bin)
        .arg(&input)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(
        output.status.success(),
        "{} exited with {}",
        bin.display(),
        output.status
    );
    let mut results = Vec::new();
    for line in stdout.lines() {
        let Some(fields) = line.strip_prefix("RESULT ") else {
            println!("{line}");
            continue;
        };
        let field = |name: &str| -> Result<&str> {
            fields
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .with_context(|| format!("{name} missing in the peer's RESULT line"))
        };
        let num = |name: &str| -> Result<f64> {
            field(name)?
                .parse::<f64>()
                .with_context(|| format!("bad {name} in the peer's RESULT line"))
        };
        results.push(DynamoResult {
            name: field("impl")?.to_owned(),
            timing: Percentiles {
                p50: num("p50_ns")?,
                p99: num("p99_ns")?,
                p999: num("p999_ns")?,
                mean: num("mean_ns")?,
            },
            apply_blocks_per_s: num("apply_blocks_per_s")?,
            checksum: field("checksum")?.parse()?,
        });
    }
    anyhow::ensure!(
        !results.is_empty(),
        "the Dynamo peer printed no RESULT line"
    );
    Ok(results)
}

/// Runs the benchmark and prints the table.
pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.workers > 0, "--workers must be positive");
    anyhow::ensure!(
        args.root_blocks < args.min_depth && args.min_depth <= args.max_depth,
        "need --root-blocks < --min-depth <= --max-depth"
    );
    anyhow::ensure!(
        args.queries > 0 && args.event_blocks > 0,
        "--queries and --event-blocks must be positive"
    );
    let mut rng = Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let shape = build_shape(&args, &mut rng);

    let rss_before = rss_bytes();
    let mut index = LocalityIndex::with_capacity(0);
    let fill_time = fill(&mut index, &args, &shape, &mut rng);
    let stats = index.stats();
    let one_copy = index.heap_bytes() as f64;
    // The router's shared index keeps two copies (queries never wait for events).
    let shared: SharedIndex = kvtier_router::index::shared(index);
    let rss_after = rss_bytes();
    let heap = shared.heap_bytes() as f64;
    let per_entry = heap / (stats.worker_entries + stats.cache_blocks) as f64;
    let rss_per_entry = rss_after.saturating_sub(rss_before) as f64
        / (stats.worker_entries + stats.cache_blocks) as f64;
    let apply_rate = stats.worker_entries as f64 / fill_time.as_secs_f64();

    println!(
        "shape: {} workers, {} sessions (root {} blocks, depth {}..={}), {} (block, worker) entries, {} distinct blocks, {} cached (host+disk)",
        args.workers, shape.sessions.len(), args.root_blocks, args.min_depth, args.max_depth,
        stats.worker_entries, stats.blocks, stats.cache_blocks
    );
    println!(
        "index paths: {} workers not prefix-closed, {} detached cached blocks, {} host-under-disk cached blocks",
        stats.workers_detached, stats.cache_detached, stats.cache_tier_inversions
    );
    println!(
        "apply (one thread, stored events of {} blocks, empty index): {:.2} M blocks/s",
        args.event_blocks,
        apply_rate / 1e6
    );
    println!(
        "memory (shared index, two copies): {:.1} MiB counted from capacities = {:.1} B per entry ((block, worker) + cached block), {:.1} B per copy; RSS growth {:.1} B per entry",
        heap / (1 << 20) as f64,
        per_entry,
        one_copy / (stats.worker_entries + stats.cache_blocks) as f64,
        rss_per_entry
    );

    let queries = make_queries(&args, &shape, &mut rng);
    let walk = WalkBaseline::build(&shape);

    // Warm up, then single-threaded.
    let _ = measure(&queries, queries.len(), QueryIn::Cache, |q| {
        shared.read().find_matches(q).cache_prefix_blocks.into()
    });
    let alone = measure(&queries, args.queries, QueryIn::Cache, |q| {
        u64::from(shared.read().find_matches(q).cache_prefix_blocks)
    });
    let alone_cold = measure(&queries, args.queries, QueryIn::Memory, |q| {
        u64::from(shared.read().find_matches(q).cache_prefix_blocks)
    });
    let walk_alone = measure(&queries, args.queries, QueryIn::Cache, |q| {
        walk.depth_sum(q)
    });
    let decisions = measure_decisions(&shared, &args, &queries);

    // With a writer thread: paced, then saturating.
    let mut walked = 0usize;
    let mut contended_run = |rate: Option<u64>| -> Result<(Percentiles, f64)> {
        let stop = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let writer = spawn_writer(
            shared.clone(),
            &args,
            stop.clone(),
            applied.clone(),
            args.seed,
            rate,
        );
        std::thread::sleep(Duration::from_millis(50));
        let start_applied = applied.load(Ordering::Relaxed);
        let started = Instant::now();
        let contended = measure(&queries, args.queries, QueryIn::Cache, |q| {
            let index = shared.read();
            walked += usize::from(index.walks());
            u64::from(index.find_matches(q).cache_prefix_blocks)
        });
        let window = started.elapsed();
        let end_applied = applied.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
        let event_rate = end_applied.saturating_sub(start_applied) as f64 / window.as_secs_f64();
        Ok((contended, event_rate))
    };
    let (contended, event_rate) = contended_run(Some(args.writer_blocks_per_s))?;
    let (saturated, saturated_rate) = contended_run(None)?;

    let dynamo = match &args.dynamo_peer {
        Some(bin) => {
            println!();
            let results = run_dynamo_peer(bin, &args, &shape, &queries)?;
            // Both answer the same question: every worker's matched depth
            // (the walk's holder masks have room for 64 workers).
            let expected: u64 = queries.iter().map(|q| walk.depth_sum(q)).sum();
            for r in results.iter().filter(|_| args.workers <= 64) {
                anyhow::ensure!(
                    r.checksum == expected,
                    "Dynamo {} matched {} (block, worker) depths over the queries, the walk {expected}",
                    r.name,
                    r.checksum
                );
            }
            results
        }
        None => Vec::new(),
    };

    println!();
    println!(
        "find_matches, {}-block queries, {} queries per row, µs",
        args.query_blocks, args.queries
    );
    println!("| run | p50 | p99 | p99.9 | mean | p50 vs walk | p99 vs walk |");
    println!("|---|---|---|---|---|---|---|");
    let us = |ns: f64| ns / 1000.0;
    let row = |name: &str, p: Percentiles, base: Option<Percentiles>| {
        let ratio =
            |a: f64, b: Option<f64>| b.map_or("–".to_owned(), |b| format!("{:.2}×", b / a));
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            us(p.p50),
            us(p.p99),
            us(p.p999),
            us(p.mean),
            ratio(p.p50, base.map(|b| b.p50)),
            ratio(p.p99, base.map(|b| b.p99))
        );
    };
    row("index, one thread", alone, Some(walk_alone));
    row(
        "index, one thread, query hashes not in the CPU caches",
        alone_cold,
        Some(walk_alone),
    );
    row(
        &format!(
            "index, paced writer applying {:.2} M blocks/s",
            event_rate / 1e6
        ),
        contended,
        Some(walk_alone),
    );
    row(
        &format!(
            "index, saturating writer applying {:.2} M blocks/s",
            saturated_rate / 1e6
        ),
        saturated,
        Some(walk_alone),
    );
    row(
        "per-block walk (hash map of holder masks, early exit)",
        walk_alone,
        None,
    );
    row(
        "routing decision (index + load + cost model over every worker)",
        decisions,
        Some(walk_alone),
    );
    for d in &dynamo {
        row(
            &format!("Dynamo {} (dynamo-kv-router 1.6.1, Rust)", d.name),
            d.timing,
            Some(walk_alone),
        );
    }
    if !dynamo.is_empty() {
        println!();
        for d in &dynamo {
            println!(
                "Dynamo {} / kvtier index (one thread, same tree and queries): p50 {:.2}×, p99 {:.2}×, mean {:.2}×; apply {:.2} M blocks/s vs kvtier {:.2} M blocks/s",
                d.name,
                d.timing.p50 / alone.p50,
                d.timing.p99 / alone.p99,
                d.timing.mean / alone.mean,
                d.apply_blocks_per_s / 1e6,
                apply_rate / 1e6
            );
        }
    }
    println!();
    println!(
        "routing decisions: {:.0} per second on one thread (mean {:.2} µs)",
        1e9 / decisions.mean,
        us(decisions.mean)
    );
    println!();
    println!(
        "exact-walk fallback (some source not prefix-closed / host under disk): {:.2}% of queries with the writer running ({walked} of {})",
        100.0 * walked as f64 / (2 * args.queries) as f64,
        2 * args.queries
    );
    println!();
    println!(
        "(\"vs walk\": how many times faster than the per-block walk; writer: stored/removed events of {} blocks, one write per event; every row but the one marked reads the query's hashes just before timing it, as the router queries right after hashing the prompt or decoding the request)",
        args.event_blocks
    );
    Ok(())
}
