//! The queries both services are asked: the next call of a session (its
//! context at some turn plus the next turn's new blocks and a partial block),
//! and a few unrelated prompts, each in both services' encodings (token ids,
//! kvtier's sequence hashes, Dynamo's local hashes) with its expected
//! per-worker overlap from the workload's ground truth.

use kvtier_proto::hashing::BlockHasher;
use kvtier_testkit::rng::SplitMix64;

use super::workload::{token, Workload};
use super::Args;

/// One query, in both services' encodings, with its expected answer.
pub struct Query {
    pub tokens: Vec<u32>,
    pub seq: Vec<u64>,
    pub local: Vec<u64>,
    /// Expected overlap (leading run of blocks) on each worker.
    pub truth: Vec<u32>,
}

/// `--queries` queries on `wl`, drawn from a seed derived from `--seed`.
pub fn make_queries(args: &Args, wl: &Workload, hasher: &BlockHasher) -> Vec<Query> {
    let bs = args.block_tokens;
    let mut rng = SplitMix64::new(args.seed ^ 0xA11CE);
    (0..args.queries)
        .map(|_| {
            let mut tokens: Vec<u32> = if rng.chance(0.05) {
                // an unrelated prompt
                let n = rng.range(64, args.max_blocks.max(64)) * bs;
                (0..n).map(|_| token(&mut rng)).collect()
            } else {
                // the next call of a session: its context at turn t, the new
                // blocks of turn t + 1
                let sess = &wl.sessions[rng.below(wl.sessions.len())];
                let t = rng.below(sess.cum.len());
                let n = sess.cum[(t + 1).min(sess.cum.len() - 1)];
                sess.tokens[..n * bs].to_vec()
            };
            // and a partial block at the end
            let extra = rng.below(bs);
            tokens.extend((0..extra).map(|_| token(&mut rng)));
            let seq = hasher.sequence_hashes(&tokens);
            let local = hasher.local_hashes(&tokens);
            let truth = wl
                .present
                .iter()
                .map(|set| seq.iter().take_while(|h| set.contains(h)).count() as u32)
                .collect();
            Query {
                tokens,
                seq,
                local,
                truth,
            }
        })
        .collect()
}
