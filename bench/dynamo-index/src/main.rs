//! Dynamo's KV-router index, timed in Rust on the tree and queries that
//! `kvtier-bench index --dynamo-peer` writes to a file (its first argument).
//!
//! Two of Dynamo's indexers, both from `dynamo-kv-router` 1.6.1:
//! - `RadixTree`: the single-threaded tree behind Dynamo's `KvIndexer`;
//! - `ConcurrentRadixTreeCompressed` behind a `ThreadPoolIndexer` (one event
//!   thread), the backend Dynamo's docs name for throughput; queries call the
//!   backend inline on the caller's thread, as `ThreadPoolIndexer` does.
//!
//! Every session's chain is stored on its worker from the root in stored
//! events of `event_blocks` blocks chained to their parent, as kvtier's fill
//! does. Dynamo navigates by local block hashes and names blocks by sequence
//! hashes; the bench's chains are random 64-bit values unique per position,
//! so each value serves as both. Queries are timed as kvtier's are: each is
//! read (for `RadixTree`, moved into the owned `Vec` its API takes) just
//! before its clock starts, one `Instant` pair around one `find_matches`.
//!
//! Prints a `RESULT impl=... p50_ns=... p99_ns=... p999_ns=... mean_ns=...
//! apply_blocks_per_s=... checksum=...` line per indexer; `checksum` is the
//! sum over the distinct queries of every worker's matched depth, which the
//! bench checks against its own per-block walk.

use std::fs::File;
use std::io::{BufReader, Read};
use std::time::{Duration, Instant};

use dynamo_kv_router::indexer::{KvIndexerInterface, SyncIndexer, ThreadPoolIndexer};
use dynamo_kv_router::protocols::{
    ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheStoreData,
    KvCacheStoredBlockData, LocalBlockHash, OverlapScores, RouterEvent,
};
use dynamo_kv_router::{ConcurrentRadixTreeCompressed, RadixTree};

const MAGIC: &[u8; 8] = b"KVTIDX01";

struct Session {
    worker: u64,
    chain: Vec<u64>,
}

struct Input {
    event_blocks: usize,
    count: usize,
    sessions: Vec<Session>,
    queries: Vec<Vec<LocalBlockHash>>,
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u64s(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u64>> {
    let mut bytes = vec![0u8; n * 8];
    r.read_exact(&mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn read_input(path: &str) -> std::io::Result<Input> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(std::io::Error::other("not a kvtier index-peer file"));
    }
    let event_blocks = read_u64(&mut r)? as usize;
    let count = read_u64(&mut r)? as usize;
    let n_sessions = read_u64(&mut r)? as usize;
    let mut sessions = Vec::with_capacity(n_sessions);
    for _ in 0..n_sessions {
        let worker = read_u64(&mut r)?;
        let len = read_u64(&mut r)? as usize;
        sessions.push(Session {
            worker,
            chain: read_u64s(&mut r, len)?,
        });
    }
    let n_queries = read_u64(&mut r)? as usize;
    let query_len = read_u64(&mut r)? as usize;
    let mut queries = Vec::with_capacity(n_queries);
    for _ in 0..n_queries {
        queries.push(
            read_u64s(&mut r, query_len)?
                .into_iter()
                .map(LocalBlockHash)
                .collect(),
        );
    }
    Ok(Input {
        event_blocks: event_blocks.max(1),
        count,
        sessions,
        queries,
    })
}

/// Stored events as an engine sends them: chunks chained to their parent.
fn events(input: &Input) -> Vec<RouterEvent> {
    let mut out = Vec::new();
    let mut id = 0u64;
    for s in &input.sessions {
        let mut parent = None;
        for chunk in s.chain.chunks(input.event_blocks) {
            id += 1;
            let blocks = chunk
                .iter()
                .map(|&h| KvCacheStoredBlockData {
                    block_hash: ExternalSequenceBlockHash(h),
                    tokens_hash: LocalBlockHash(h),
                    mm_extra_info: None,
                })
                .collect();
            out.push(RouterEvent::new(
                s.worker,
                KvCacheEvent {
                    event_id: id,
                    data: KvCacheEventData::Stored(KvCacheStoreData {
                        parent_hash: parent.map(ExternalSequenceBlockHash),
                        start_position: None,
                        blocks,
                    }),
                    dp_rank: 0,
                },
            ));
            parent = chunk.last().copied();
        }
    }
    out
}

fn depth_sum(scores: &OverlapScores) -> u64 {
    scores.scores.values().map(|&d| u64::from(d)).sum()
}

struct Timing {
    p50: f64,
    p99: f64,
    p999: f64,
    mean: f64,
}

fn percentiles(mut samples: Vec<u64>) -> Timing {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64;
    Timing {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        mean: samples.iter().sum::<u64>() as f64 / samples.len() as f64,
    }
}

/// Times `count` queries (cycling), each prepared by `prepare` (which reads
/// it) before its clock starts; a warm-up pass over every query first.
fn measure<'a, P>(
    queries: &'a [Vec<LocalBlockHash>],
    count: usize,
    prepare: impl Fn(&'a [LocalBlockHash]) -> P,
    query: impl Fn(P) -> u64,
) -> Timing {
    let mut sink = 0u64;
    for q in queries {
        sink = sink.wrapping_add(query(prepare(q)));
    }
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let prepared = prepare(&queries[i % queries.len()]);
        let started = Instant::now();
        sink = sink.wrapping_add(query(prepared));
        samples.push(started.elapsed().as_nanos() as u64);
    }
    std::hint::black_box(sink);
    percentiles(samples)
}

/// Resident set size of this process, bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn report(name: &str, t: &Timing, blocks: usize, apply: Duration, checksum: u64, rss: u64) {
    println!(
        "dynamo {name}: find_matches p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, mean {:.2} µs; \
         apply {:.2} M blocks/s (stored events, one thread); RSS growth {:.1} MiB",
        t.p50 / 1e3,
        t.p99 / 1e3,
        t.p999 / 1e3,
        t.mean / 1e3,
        blocks as f64 / apply.as_secs_f64() / 1e6,
        rss as f64 / (1 << 20) as f64
    );
    println!(
        "RESULT impl={name} p50_ns={} p99_ns={} p999_ns={} mean_ns={:.0} apply_blocks_per_s={:.0} checksum={checksum} rss_bytes={rss}",
        t.p50,
        t.p99,
        t.p999,
        t.mean,
        blocks as f64 / apply.as_secs_f64()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: dynamo-index-peer FILE (written by kvtier-bench index --dynamo-peer)")?;
    let input = read_input(&path)?;
    let blocks: usize = input.sessions.iter().map(|s| s.chain.len()).sum();
    println!(
        "dynamo-kv-router 1.6.1: {} sessions, {} stored blocks, {} distinct {}-block queries, {} timed",
        input.sessions.len(),
        blocks,
        input.queries.len(),
        input.queries.first().map_or(0, Vec::len),
        input.count
    );

    // RadixTree, single-threaded.
    {
        let evs = events(&input);
        let before = rss_bytes();
        let mut tree = RadixTree::new();
        let started = Instant::now();
        for e in evs {
            tree.apply_event(e)?;
        }
        let apply = started.elapsed();
        let rss = rss_bytes().saturating_sub(before);
        let checksum = input
            .queries
            .iter()
            .map(|q| depth_sum(&tree.find_matches(q.clone(), false)))
            .sum();
        let t = measure(
            &input.queries,
            input.count,
            |q| q.to_vec(),
            |q| depth_sum(&tree.find_matches(q, false)),
        );
        report("RadixTree", &t, blocks, apply, checksum, rss);
    }

    // ConcurrentRadixTreeCompressed behind a ThreadPoolIndexer.
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let evs = events(&input);
        let before = rss_bytes();
        let indexer = ThreadPoolIndexer::new(ConcurrentRadixTreeCompressed::new(), 1, 16);
        let started = Instant::now();
        runtime.block_on(async {
            for e in evs {
                indexer.apply_event(e).await;
            }
            indexer.flush_and_wait().await
        })?;
        let apply = started.elapsed();
        let rss = rss_bytes().saturating_sub(before);
        let backend = indexer.backend();
        let checksum = input
            .queries
            .iter()
            .map(|q| depth_sum(&backend.find_matches(q, false)))
            .sum();
        let t = measure(
            &input.queries,
            input.count,
            |q| {
                std::hint::black_box(q.iter().fold(0u64, |a, b| a ^ b.0));
                q
            },
            |q| depth_sum(&backend.find_matches(q, false)),
        );
        report(
            "ConcurrentRadixTreeCompressed",
            &t,
            blocks,
            apply,
            checksum,
            rss,
        );
        drop(indexer);
    }
    Ok(())
}
