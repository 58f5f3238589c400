//! The synthetic agentic workload: per-worker vLLM KV events for the
//! publisher's plan, with the ground truth (which blocks each worker holds at
//! the end) computed alongside, so that both indexes can be checked against it.
//!
//! Sessions start from one of a few shared system-prompt roots (or fork a
//! sub-agent off another session's context), grow turn by turn to up to
//! `--max-blocks` blocks, sometimes move to another worker (which then stores
//! the part of the context it lacks), and at the end some sessions lose their
//! tail on their last worker (leaf-first `BlockRemoved`, as vLLM evicts).
//! Everything is drawn from one seeded SplitMix64, so a seed names a workload.

use std::collections::{HashMap, HashSet};

use kvtier_proto::hashing::BlockHasher;
use kvtier_testkit::rng::{mix64, SplitMix64};
use serde::Serialize;

use super::Args;

/// A random token id (vLLM-sized vocabulary).
pub fn token(rng: &mut SplitMix64) -> u32 {
    (rng.next_u64() % 150_000) as u32
}

/// vLLM-like engine hash of a block: not kvtier's (the engine's hashes are
/// not portable), unique per prefix, positive 63-bit.
pub fn engine_hash(seq: u64) -> u64 {
    mix64(seq ^ 0x5EED_E1E6_0000_0001) >> 1
}

pub struct Session {
    /// Full-block tokens of the final context.
    pub tokens: Vec<u32>,
    /// Sequence hashes of those blocks.
    pub seq: Vec<u64>,
    /// Blocks at the end of each turn (increasing; the last is the final length).
    pub cum: Vec<usize>,
    /// Worker of each turn.
    pub worker: Vec<usize>,
    pub start_round: usize,
}

/// One event of the publisher's plan.
#[derive(Serialize)]
pub struct PlanEvent {
    /// "s" stored, "r" removed.
    pub t: &'static str,
    /// Engine block hashes.
    pub h: Vec<u64>,
    /// Parent's engine hash (stored).
    pub p: Option<u64>,
    /// Token ids (stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<Vec<u32>>,
}

#[derive(Serialize)]
pub struct PlanWorker {
    pub port: u16,
    pub batches: Vec<Vec<PlanEvent>>,
}

/// What `bench/scripts/vllm_event_publisher.py --plan` reads.
#[derive(Serialize)]
pub struct Plan {
    pub block_size: usize,
    pub workers: Vec<PlanWorker>,
}

pub struct Workload {
    pub plan: Plan,
    /// Ground truth: sequence hashes in each worker's pool at the end.
    pub present: Vec<HashSet<u64>>,
    pub sessions: Vec<Session>,
    pub stored_blocks: usize,
    pub removed_blocks: usize,
    pub events: usize,
}

/// The workload of `args` for workers publishing on `ports`.
pub fn generate(args: &Args, ports: &[u16], hasher: &BlockHasher) -> Workload {
    let bs = args.block_tokens;
    let w_n = args.workers;
    let mut rng = SplitMix64::new(args.seed);
    let roots: Vec<Vec<u32>> = (0..args.roots.max(1))
        .map(|_| {
            (0..args.root_blocks * bs)
                .map(|_| token(&mut rng))
                .collect()
        })
        .collect();
    let mut sessions: Vec<Session> = Vec::with_capacity(args.sessions);
    for s in 0..args.sessions {
        let (mut tokens, start_round, first_worker) = if s >= 2 && rng.chance(args.fork) {
            let p = rng.below(s);
            let parent = &sessions[p];
            let t = rng.below(parent.cum.len());
            (
                parent.tokens[..parent.cum[t] * bs].to_vec(),
                parent.start_round + t + 1,
                if rng.chance(0.5) {
                    parent.worker[t]
                } else {
                    rng.below(w_n)
                },
            )
        } else {
            (roots[s % roots.len()].clone(), s % 4, s % w_n)
        };
        let base = tokens.len() / bs;
        let final_blocks = rng.range(base + 32, args.max_blocks.max(base + 32));
        tokens.extend((tokens.len()..final_blocks * bs).map(|_| token(&mut rng)));
        let turns = rng.range(4, args.max_turns.max(4)).min(final_blocks - base);
        let mut cuts: Vec<usize> = (0..turns - 1)
            .map(|_| rng.range(base + 1, final_blocks - 1))
            .collect();
        cuts.push(final_blocks);
        cuts.sort_unstable();
        cuts.dedup();
        let mut worker = Vec::with_capacity(cuts.len());
        let mut w = first_worker;
        for _ in 0..cuts.len() {
            if w_n > 1 && rng.chance(args.migrate) {
                w = (w + 1 + rng.below(w_n - 1)) % w_n;
            }
            worker.push(w);
        }
        let seq = hasher.sequence_hashes(&tokens);
        sessions.push(Session {
            tokens,
            seq,
            cum: cuts,
            worker,
            start_round,
        });
    }

    // Publish order: by round (a session's turn t happens in round start + t).
    let mut order: Vec<(usize, usize, usize)> = sessions
        .iter()
        .enumerate()
        .flat_map(|(s, sess)| (0..sess.cum.len()).map(move |t| (sess.start_round + t, s, t)))
        .collect();
    order.sort_unstable();
    let mut present: Vec<HashSet<u64>> = vec![HashSet::new(); w_n];
    let mut batches: Vec<Vec<Vec<PlanEvent>>> = (0..w_n).map(|_| Vec::new()).collect();
    // Longest context each session had on each worker.
    let mut held: Vec<HashMap<usize, usize>> = vec![HashMap::new(); w_n];
    let (mut stored_blocks, mut removed_blocks, mut events) = (0, 0, 0);
    for (_, s, t) in order {
        let sess = &sessions[s];
        let (w, n) = (sess.worker[t], sess.cum[t]);
        let i0 = sess.seq[..n]
            .iter()
            .take_while(|h| present[w].contains(h))
            .count();
        let e = held[w].entry(s).or_insert(0);
        *e = (*e).max(n);
        if i0 == n {
            continue;
        }
        present[w].extend(&sess.seq[i0..n]);
        stored_blocks += n - i0;
        events += 1;
        batches[w].push(vec![PlanEvent {
            t: "s",
            h: sess.seq[i0..n].iter().map(|&h| engine_hash(h)).collect(),
            p: (i0 > 0).then(|| engine_hash(sess.seq[i0 - 1])),
            k: Some(sess.tokens[i0 * bs..n * bs].to_vec()),
        }]);
    }
    // Evictions at the end, leaf-first, of blocks no other session on that
    // worker uses: a session's tail on its last worker.
    let mut refs: Vec<HashMap<u64, u32>> = vec![HashMap::new(); w_n];
    for (w, h) in held.iter().enumerate() {
        for (&s, &n) in h {
            for &hash in &sessions[s].seq[..n] {
                *refs[w].entry(hash).or_insert(0) += 1;
            }
        }
    }
    for (s, sess) in sessions.iter().enumerate() {
        if !rng.chance(args.evict) {
            continue;
        }
        let w = *sess.worker.last().unwrap_or(&0);
        let n = held[w].get(&s).copied().unwrap_or(0);
        let keep = rng.range(args.root_blocks.min(n), n);
        let victims: Vec<u64> = sess.seq[keep..n]
            .iter()
            .rev()
            .take_while(|h| refs[w].get(h) == Some(&1) && present[w].contains(h))
            .copied()
            .collect();
        if victims.is_empty() {
            continue;
        }
        for h in &victims {
            present[w].remove(h);
        }
        removed_blocks += victims.len();
        events += 1;
        batches[w].push(vec![PlanEvent {
            t: "r",
            h: victims.iter().map(|&h| engine_hash(h)).collect(),
            p: None,
            k: None,
        }]);
    }
    Workload {
        plan: Plan {
            block_size: bs,
            workers: ports
                .iter()
                .zip(batches)
                .map(|(&port, batches)| PlanWorker { port, batches })
                .collect(),
        },
        present,
        sessions,
        stored_blocks,
        removed_blocks,
        events,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use kvtier_proto::hashing::DEFAULT_SEED;

    use super::super::queries::make_queries;
    use super::*;

    #[test]
    fn workload_is_prefix_closed_and_truth_matches_a_replay() {
        let args = Args::parse_from([
            "router-service",
            "--workers",
            "3",
            "--sessions",
            "12",
            "--root-blocks",
            "8",
            "--max-blocks",
            "80",
            "--queries",
            "40",
            "--migrate",
            "0.3",
            "--fork",
            "0.4",
            "--evict",
            "0.5",
        ]);
        let hasher = BlockHasher::new(args.block_tokens, DEFAULT_SEED);
        let wl = generate(&args, &[1, 2, 3], &hasher);
        // Replaying the plan (engine hashes) must give the ground truth, and
        // every stored event's parent must be resident on that worker.
        let mut eng: Vec<HashSet<u64>> = vec![HashSet::new(); 3];
        for (w, pw) in wl.plan.workers.iter().enumerate() {
            for batch in &pw.batches {
                for ev in batch {
                    if ev.t == "s" {
                        if let Some(p) = ev.p {
                            assert!(eng[w].contains(&p), "unknown parent");
                        }
                        assert_eq!(ev.k.as_ref().map(Vec::len), Some(ev.h.len() * 16));
                        eng[w].extend(&ev.h);
                    } else {
                        for h in &ev.h {
                            assert!(eng[w].remove(h), "removed twice");
                        }
                    }
                }
            }
            let truth: HashSet<u64> = wl.present[w].iter().map(|&h| engine_hash(h)).collect();
            assert_eq!(eng[w], truth);
        }
        let queries = make_queries(&args, &wl, &hasher);
        assert!(queries.iter().any(|q| q.truth.iter().any(|&n| n > 0)));
        for q in &queries {
            assert_eq!(q.seq.len(), q.tokens.len() / 16);
            assert_eq!(q.local, hasher.local_hashes(&q.tokens));
        }
    }

    /// A seed names a workload: these are the figures `router-service` printed
    /// for this seed and shape before its split into modules (the old private
    /// generator), so a change of generator or RNG shows here.
    #[test]
    fn a_seed_still_names_the_same_workload() {
        let args = Args::parse_from([
            "router-service",
            "--workers",
            "2",
            "--sessions",
            "8",
            "--root-blocks",
            "32",
            "--max-blocks",
            "256",
            "--max-turns",
            "8",
            "--queries",
            "64",
        ]);
        let hasher = BlockHasher::new(args.block_tokens, DEFAULT_SEED);
        let wl = generate(&args, &[1, 2], &hasher);
        let resident: usize = wl.present.iter().map(HashSet::len).sum();
        assert_eq!(
            (wl.events, wl.stored_blocks, wl.removed_blocks, resident),
            (41, 1119, 110, 1009)
        );
        let queries = make_queries(&args, &wl, &hasher);
        let blocks: Vec<usize> = queries.iter().map(|q| q.seq.len()).collect();
        assert_eq!(blocks.iter().max(), Some(&240));
        assert_eq!((blocks.iter().sum::<usize>() as f64 / 64.0).round(), 133.0);
    }
}
