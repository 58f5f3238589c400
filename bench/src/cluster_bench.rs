//! `kvtier-bench cluster`: placement of blocks on cache servers by weighted
//! rendezvous hashing (`kvtier-cluster`), in process.
//!
//! - **Balance**: `--blocks` block sequence hashes (seeded splitmix64, as
//!   random as real sequence hashes) over `--shards` equal servers; blocks and
//!   bytes per shard, max/mean. Bytes: each block belongs to one of three
//!   namespaces with 64 KiB, 256 KiB and 1 MiB blocks (drawn from the hash),
//!   so the byte spread includes the spread of sizes.
//! - **Movement**: the fraction of `--movement-blocks` hashes whose owner
//!   changes when one server joins (N → N+1) or leaves (N → N−1), against
//!   the ideal (1/(N+1) on a join, 1/N on a leave) and against the baseline
//!   measured in the same run: `hash mod N`, what a naive client would do.
//! - **Speed**: nanoseconds per owner computation (one score per server).
//! - With `--live`, then real processes ([`crate::cluster_live`]): the
//!   fan-out overhead of a 2,000-block Lookup, Put/Get throughput with 1 vs
//!   3 shards, and failover after `kill -9`.

use std::time::Instant;

use anyhow::Result;
use clap::Args as ClapArgs;
use kvtier_cluster::{Member, MemberState, Placement};

/// Flags of `kvtier-bench cluster`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Blocks placed for the balance table.
    #[arg(long, default_value_t = 1_000_000)]
    blocks: usize,
    /// Blocks placed for the movement table.
    #[arg(long, default_value_t = 100_000)]
    movement_blocks: usize,
    /// Shard counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    shards: Vec<usize>,
    /// Seed of the block hashes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also run real processes on loopback (etcd, three clustered servers, one
    /// plain server, a router): fan-out overhead and failover after kill -9.
    #[arg(long, default_value_t = false)]
    live: bool,
    /// Lookups timed per client with --live.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Put/Get throughput rounds per cluster size with --live (128 MiB each).
    #[arg(long, default_value_t = 5)]
    throughput_rounds: usize,
    /// kvtier-server binary for --live (default: next to this binary).
    #[arg(long, env = "KVTIER_SERVER_BIN")]
    server_bin: Option<std::path::PathBuf>,
    /// kvtier-router binary for --live (default: next to this binary).
    #[arg(long, env = "KVTIER_ROUTER_BIN")]
    router_bin: Option<std::path::PathBuf>,
}

/// Block sizes of the three namespaces the bytes column mixes.
const BLOCK_SIZES: [u64; 3] = [64 << 10, 256 << 10, 1 << 20];

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: format!("cache-{i}"),
            grpc: format!("10.0.0.{i}:50051"),
            data: None,
            weight: 1.0,
            epoch: 1,
            state: MemberState::Active,
        })
        .collect()
}

fn hashes(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = kvtier_testkit::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.next_u64()).collect()
}

fn max_over_mean(values: &[u64]) -> f64 {
    let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
    values.iter().copied().max().unwrap_or(0) as f64 / mean
}

/// Runs the benchmark and prints its tables.
pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.shards.iter().all(|&n| n >= 2),
        "--shards: every count must be >= 2 (a leave needs one left)"
    );
    println!(
        "# kvtier-bench cluster: weighted rendezvous placement, {} blocks (balance), {} blocks (movement), seed {}\n",
        args.blocks, args.movement_blocks, args.seed
    );
    let keys = hashes(args.blocks, args.seed);
    println!("## Balance\n");
    println!("| shards | blocks/shard min–max | blocks max/mean | bytes max/mean | `hash mod N` blocks max/mean | ns per owner |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &args.shards {
        let placement = Placement::new(&members(n));
        let mut blocks = vec![0u64; n];
        let mut bytes = vec![0u64; n];
        let mut modulo = vec![0u64; n];
        let started = Instant::now();
        for &k in &keys {
            let i = placement.owner_index(k).unwrap_or(0);
            blocks[i] += 1;
            bytes[i] += BLOCK_SIZES[(k >> 62) as usize % BLOCK_SIZES.len()];
        }
        let per_owner_ns = started.elapsed().as_nanos() as f64 / keys.len() as f64;
        for &k in &keys {
            modulo[(k % n as u64) as usize] += 1;
        }
        println!(
            "| {n} | {}–{} | {:.4} | {:.4} | {:.4} | {per_owner_ns:.0} |",
            blocks.iter().min().unwrap_or(&0),
            blocks.iter().max().unwrap_or(&0),
            max_over_mean(&blocks),
            max_over_mean(&bytes),
            max_over_mean(&modulo),
        );
    }

    let keys = hashes(args.movement_blocks, args.seed ^ 0x5eed);
    println!("\n## Movement\n");
    println!("| change | moved (rendezvous) | ideal | rendezvous ÷ ideal | moved to/from other nodes | `hash mod N` moved | mod N ÷ ideal |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &n in &args.shards {
        for join in [true, false] {
            let (from, to) = if join { (n, n + 1) } else { (n, n - 1) };
            let before = Placement::new(&members(from));
            let after = Placement::new(&members(to));
            // The node that joins or leaves is the last one.
            let changed = format!("cache-{}", from.max(to) - 1);
            let mut moved = 0usize;
            let mut collateral = 0usize;
            let mut moved_modulo = 0usize;
            for &k in &keys {
                let (a, b) = (
                    before.owner(k).map(|m| m.id.as_str()),
                    after.owner(k).map(|m| m.id.as_str()),
                );
                if a != b {
                    moved += 1;
                    let involved = if join { b } else { a };
                    if involved != Some(changed.as_str()) {
                        collateral += 1;
                    }
                }
                if k % from as u64 != k % to as u64 {
                    moved_modulo += 1;
                }
            }
            let total = keys.len() as f64;
            let ideal = 1.0 / from.max(to) as f64;
            let fraction = moved as f64 / total;
            let fraction_modulo = moved_modulo as f64 / total;
            println!(
                "| {} {from} → {to} | {:.2}% | {:.2}% | {:.3} | {collateral} | {:.2}% | {:.2} |",
                if join { "join" } else { "leave" },
                fraction * 100.0,
                ideal * 100.0,
                fraction / ideal,
                fraction_modulo * 100.0,
                fraction_modulo / ideal,
            );
        }
    }
    if args.live {
        tokio::runtime::Runtime::new()?.block_on(crate::cluster_live::run(
            args.server_bin.as_deref(),
            args.router_bin.as_deref(),
            args.rounds.max(1),
            args.throughput_rounds.max(1),
        ))?;
    }
    Ok(())
}
