//! `kvtier-bench policy-speed`: eviction throughput of the value policy (and
//! LRU for reference) with a large resident set, on one thread.

use std::time::Instant;

use anyhow::Result;
use kvtier_policy::{
    Answer, BlockInfo, CallEnd, EvictionPolicy, Lru, Tier, ValueConfig, ValuePolicy,
};

/// Flags of `kvtier-bench policy-speed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resident blocks kept in the cache.
    #[arg(long, default_value_t = 1_000_000)]
    pub resident: u64,
    /// Live agents the resident blocks belong to.
    #[arg(long, default_value_t = 1_000)]
    pub agents: u64,
    /// Agent calls in the mixed phase; each adds `--call-blocks` new blocks.
    #[arg(long, default_value_t = 20_000)]
    pub calls: u64,
    /// New blocks per call in the mixed phase.
    #[arg(long, default_value_t = 32)]
    pub call_blocks: u64,
}

const INFO: BlockInfo<u64> = BlockInfo {
    parent: None,
    bytes: 1,
};

fn ending(agent: u64) -> Answer {
    let ended = if agent.is_multiple_of(3) {
        CallEnd::EndOfTurn
    } else {
        CallEnd::ToolCall
    };
    Answer {
        ended,
        ..Answer::default()
    }
}

/// Fills `resident` blocks, spread over `agents` contexts; returns the contexts and the clock.
fn fill<P: EvictionPolicy<u64>>(p: &mut P, args: &Args) -> (Vec<Vec<u64>>, u64) {
    let per_agent = args.resident.div_ceil(args.agents.max(1));
    let mut contexts = Vec::new();
    let mut key = 0u64;
    let mut now = 0u64;
    for agent in 0..args.agents {
        let ctx: Vec<u64> = (key..(key + per_agent).min(args.resident)).collect();
        key += ctx.len() as u64;
        for &k in ctx.iter().rev() {
            p.on_insert(k, Tier::Host, INFO, now);
        }
        p.on_agent_call(agent, &ctx, now);
        p.on_agent_answered(agent, &ending(agent), now + 5);
        contexts.push(ctx);
        now += 10;
    }
    (contexts, now)
}

struct Rates {
    drain: f64,
    mixed_refs: f64,
    mixed_calls: f64,
    mixed_evictions: u64,
}

fn measure<P: EvictionPolicy<u64>>(make: impl Fn() -> P, args: &Args) -> Rates {
    // Phase 1: evict half the resident set, the clock moving 1 ms per
    // eviction (so agent ranks are refreshed as they would be).
    let mut p = make();
    let (_, mut now) = fill(&mut p, args);
    let drain = args.resident / 2;
    let t = Instant::now();
    for _ in 0..drain {
        now += 1;
        match p.victim(Tier::Host, now) {
            Some(v) => p.on_remove(v),
            None => break,
        }
    }
    let drain_rate = drain as f64 / t.elapsed().as_secs_f64();

    // Phase 2: agent calls that extend their contexts, each followed by the
    // evictions that bring the cache back to `resident` blocks.
    let mut p = make();
    let (mut contexts, mut now) = fill(&mut p, args);
    let mut key = args.resident;
    let mut evictions = 0u64;
    let mut refs = 0u64;
    let t = Instant::now();
    for i in 0..args.calls {
        let agent = (i * 7919) % args.agents;
        let ctx = &mut contexts[agent as usize];
        if ctx.len() > 4_000 {
            ctx.clear();
        }
        let new: Vec<u64> = (key..key + args.call_blocks).collect();
        key += args.call_blocks;
        for &k in new.iter().rev() {
            p.on_insert(k, Tier::Host, INFO, now);
        }
        for &k in ctx.iter().rev() {
            p.on_hit(k, now);
        }
        ctx.extend_from_slice(&new);
        refs += ctx.len() as u64;
        p.on_agent_call(agent, ctx, now);
        p.on_agent_answered(agent, &ending(agent), now + 3);
        while p.len(Tier::Host) as u64 > args.resident {
            match p.victim(Tier::Host, now) {
                Some(v) => p.on_remove(v),
                None => break,
            }
            evictions += 1;
        }
        now += 7;
    }
    let secs = t.elapsed().as_secs_f64();
    Rates {
        drain: drain_rate,
        mixed_refs: refs as f64 / secs,
        mixed_calls: args.calls as f64 / secs,
        mixed_evictions: evictions,
    }
}

/// Runs the microbenchmark and prints the rates.
pub fn run(args: Args) -> Result<()> {
    println!(
        "{} resident blocks, {} live agents, one thread",
        args.resident, args.agents
    );
    let incremental = ValueConfig {
        full_rerank_on_change: false,
        ..ValueConfig::default()
    };
    for (name, r) in [
        ("kvtier", measure(ValuePolicy::<u64>::default, &args)),
        (
            "kvtier (incremental ranks)",
            measure(|| ValuePolicy::<u64>::new(incremental.clone()), &args),
        ),
        ("lru", measure(Lru::<u64>::new, &args)),
    ] {
        println!(
            "{name:>26}: {:.2} M evictions/s (victim + remove); mixed: {:.0} calls/s \
             ({} new blocks each, whole context hit and re-ranked: {:.1} M block refs/s, \
             {} evictions)",
            r.drain / 1e6,
            r.mixed_calls,
            args.call_blocks,
            r.mixed_refs / 1e6,
            r.mixed_evictions
        );
    }
    Ok(())
}
