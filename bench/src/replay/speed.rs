//! `kvtier-bench policy-speed`: eviction throughput of the value policy with
//! a large resident set, single-threaded.

use std::time::Instant;

use anyhow::Result;
use kvtier_policy::{Answer, BlockInfo, CallEnd, EvictionPolicy, Lru, Tier, ValuePolicy};

/// Flags of `kvtier-bench policy-speed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resident blocks kept in the cache.
    #[arg(long, default_value_t = 1_000_000)]
    pub resident: u64,
    /// Evictions to time.
    #[arg(long, default_value_t = 5_000_000)]
    pub evictions: u64,
    /// Live agents the resident blocks belong to.
    #[arg(long, default_value_t = 1_000)]
    pub agents: u64,
    /// Blocks per agent call (context length).
    #[arg(long, default_value_t = 1_000)]
    pub call_blocks: u64,
}

fn fill<P: EvictionPolicy<u64>>(p: &mut P, args: &Args) -> u64 {
    let info = BlockInfo {
        parent: None,
        bytes: 1,
    };
    let mut key = 0u64;
    let mut now = 0u64;
    while key < args.resident {
        let agent = (key / args.call_blocks) % args.agents;
        let first = key;
        for _ in 0..args.call_blocks.min(args.resident - key) {
            p.on_insert(key, Tier::Host, info, now);
            key += 1;
        }
        let ctx: Vec<u64> = (first..key).collect();
        p.on_agent_call(agent, &ctx, now);
        let ended = if agent % 2 == 0 {
            CallEnd::ToolCall
        } else {
            CallEnd::EndOfTurn
        };
        p.on_agent_answered(
            agent,
            &Answer {
                ended,
                ..Answer::default()
            },
            now + 5,
        );
        now += 10;
    }
    now
}

/// Times `evictions` victim+remove pairs, each followed by an insert that keeps
/// the resident set full, with an agent call every `call_blocks` inserts.
fn time<P: EvictionPolicy<u64>>(mut p: P, args: &Args) -> (f64, f64) {
    let mut now = fill(&mut p, args);
    let info = BlockInfo {
        parent: None,
        bytes: 1,
    };
    let mut key = args.resident;
    // Pure evictions: drain half the resident set.
    let drain = (args.resident / 2).min(args.evictions);
    let t = Instant::now();
    for _ in 0..drain {
        if let Some(v) = p.victim(Tier::Host, now) {
            p.on_remove(v);
        }
    }
    let pure = drain as f64 / t.elapsed().as_secs_f64();
    // Steady state: insert + evict, with agent calls interleaved.
    let mut ctx = Vec::with_capacity(args.call_blocks as usize);
    let t = Instant::now();
    for i in 0..args.evictions {
        p.on_insert(key, Tier::Host, info, now);
        ctx.push(key);
        key += 1;
        if ctx.len() as u64 == args.call_blocks {
            p.on_agent_call(i % args.agents, &ctx, now);
            ctx.clear();
            now += 1;
        }
        if let Some(v) = p.victim(Tier::Host, now) {
            p.on_remove(v);
        }
    }
    let steady = args.evictions as f64 / t.elapsed().as_secs_f64();
    (pure, steady)
}

/// Runs the microbenchmark and prints evictions per second.
pub fn run(args: Args) -> Result<()> {
    let (pure, steady) = time(ValuePolicy::<u64>::default(), &args);
    println!(
        "kvtier value policy: {} resident blocks, {} agents: {:.2} M evictions/s (victim+remove), {:.2} M/s steady (insert+call+victim+remove)",
        args.resident,
        args.agents,
        pure / 1e6,
        steady / 1e6
    );
    let (pure, steady) = time(Lru::<u64>::new(), &args);
    println!(
        "lru:                 {} resident blocks: {:.2} M evictions/s (victim+remove), {:.2} M/s steady",
        args.resident,
        pure / 1e6,
        steady / 1e6
    );
    Ok(())
}
