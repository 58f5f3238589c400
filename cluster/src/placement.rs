//! Weighted rendezvous (highest random weight) placement of blocks on
//! cache servers. Pure: no I/O, no clock, no randomness beyond the hashes.
//!
//! For a block with sequence hash `k` and a member `i` with weight `w_i`:
//!
//! ```text
//! h_i   = XXH3-64(seed = XXH3-64(id_i), LE u64 k)
//! u_i   = (top 53 bits of h_i + 0.5) / 2^53          in (0, 1)
//! score = w_i / -ln(u_i)
//! owner = the member with the highest score; the ranking orders all by score
//! ```
//!
//! `-ln(u_i) / w_i` is exponentially distributed with rate `w_i`, so the
//! member with the smallest one (highest score) wins with probability
//! `w_i / Σ w`: shares follow the weights. A member that joins takes only
//! the blocks where it now scores highest (≈ `w_new / Σ w`, `1/(N+1)` for
//! equal weights) and every moved block moves *to* it; a member that leaves
//! hands only its own blocks on, each to its second in the ranking. No
//! other block changes owner, and every client computes the same owner from
//! the same membership without asking anyone.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::member::Member;

/// The score of a member (`node_seed` = XXH3-64 of its id) for a block.
pub fn score(node_seed: u64, weight: f64, block_hash: u64) -> f64 {
    let h = xxh3_64_with_seed(&block_hash.to_le_bytes(), node_seed);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

/// The seed a member's scores are computed with.
pub fn node_seed(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

#[derive(Debug, Clone)]
struct Candidate {
    seed: u64,
    weight: f64,
}

/// Placement over a fixed set of members (build a new one when membership
/// changes). Members are ordered by id, so the input order never matters.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    members: Vec<Member>,
    candidates: Vec<Candidate>,
}

impl Placement {
    /// Placement over the *active* members of `members` (draining ones take
    /// no new blocks; see [`Placement::over_all`] for reads).
    pub fn new<'a>(members: impl IntoIterator<Item = &'a Member>) -> Self {
        Self::over_all(members.into_iter().filter(|m| m.is_active()))
    }

    /// Placement over every member given, whatever its state.
    pub fn over_all<'a>(members: impl IntoIterator<Item = &'a Member>) -> Self {
        let mut members: Vec<Member> = members.into_iter().cloned().collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        let candidates = members
            .iter()
            .map(|m| Candidate {
                seed: node_seed(&m.id),
                weight: m.weight,
            })
            .collect();
        Self {
            members,
            candidates,
        }
    }

    /// The members placed over, by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is no member (every block then has no owner).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Index (into [`Placement::members`]) of the owner of `block_hash`.
    pub fn owner_index(&self, block_hash: u64) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in self.candidates.iter().enumerate() {
            let s = score(c.seed, c.weight, block_hash);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The owner of `block_hash`; `None` when there is no member.
    pub fn owner(&self, block_hash: u64) -> Option<&Member> {
        self.owner_index(block_hash).map(|i| &self.members[i])
    }

    /// Indices of all members, best first, for `block_hash`: the owner, then
    /// who would own it without the owner (its previous owner after a join,
    /// its next after a leave), and so on.
    pub fn ranking_indices(&self, block_hash: u64) -> Vec<usize> {
        let mut scored: Vec<(usize, f64)> = self
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (i, score(c.seed, c.weight, block_hash)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().map(|(i, _)| i).collect()
    }

    /// All members, best first, for `block_hash`.
    pub fn ranking(&self, block_hash: u64) -> Vec<&Member> {
        self.ranking_indices(block_hash)
            .into_iter()
            .map(|i| &self.members[i])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberState;

    fn members(n: usize) -> Vec<Member> {
        (0..n).map(|i| member(&format!("cache-{i}"), 1.0)).collect()
    }

    fn member(id: &str, weight: f64) -> Member {
        Member {
            id: id.into(),
            grpc: format!("{id}:50051"),
            data: None,
            weight,
            epoch: 1,
            state: MemberState::Active,
        }
    }

    /// Seeded block hashes (splitmix64), as random as real sequence hashes.
    fn hashes(n: usize, seed: u64) -> Vec<u64> {
        let mut rng = kvtier_testkit::rng::SplitMix64::new(seed);
        (0..n).map(|_| rng.next_u64()).collect()
    }

    fn counts(p: &Placement, keys: &[u64]) -> Vec<usize> {
        let mut c = vec![0usize; p.len()];
        for &k in keys {
            c[p.owner_index(k).expect("owner")] += 1;
        }
        c
    }

    fn max_over_mean(c: &[usize]) -> f64 {
        let mean = c.iter().sum::<usize>() as f64 / c.len() as f64;
        *c.iter().max().expect("nonempty") as f64 / mean
    }

    #[test]
    fn owner_is_the_top_of_the_ranking_and_order_free() {
        let ms = members(5);
        let p = Placement::new(&ms);
        let mut reversed = ms.clone();
        reversed.reverse();
        let q = Placement::new(&reversed);
        for k in hashes(2_000, 1) {
            let ranking = p.ranking(k);
            assert_eq!(ranking.len(), 5);
            assert_eq!(p.owner(k).map(|m| &m.id), Some(&ranking[0].id));
            assert_eq!(p.owner(k), q.owner(k));
            // The brute-force maximum over the scores.
            let best = ms
                .iter()
                .max_by(|a, b| {
                    score(node_seed(&a.id), a.weight, k).total_cmp(&score(
                        node_seed(&b.id),
                        b.weight,
                        k,
                    ))
                })
                .expect("members");
            assert_eq!(p.owner(k).map(|m| &m.id), Some(&best.id));
        }
        assert!(Placement::new(&[]).owner(1).is_none());
    }

    #[test]
    fn draining_members_take_no_blocks() {
        let mut ms = members(3);
        ms[1].state = MemberState::Draining;
        let p = Placement::new(&ms);
        assert_eq!(p.len(), 2);
        assert!(hashes(1_000, 2)
            .iter()
            .all(|&k| p.owner(k).is_some_and(|m| m.id != "cache-1")));
        assert_eq!(Placement::over_all(&ms).len(), 3);
    }

    #[test]
    fn balance_at_one_million_blocks() {
        let keys = hashes(1_000_000, 3);
        for n in [4, 16] {
            let c = counts(&Placement::new(&members(n)), &keys);
            let ratio = max_over_mean(&c);
            // Binomial spread at 1M blocks: sigma/mean is 0.2% (4) and 0.4% (16).
            assert!(ratio <= 1.02, "{n} nodes: max/mean {ratio:.4} ({c:?})");
        }
    }

    #[test]
    fn shares_follow_the_weights() {
        let ms = vec![
            member("a", 1.0),
            member("b", 2.0),
            member("c", 1.0),
            member("d", 0.5),
        ];
        let keys = hashes(400_000, 4);
        let c = counts(&Placement::new(&ms), &keys);
        let total_weight = 4.5;
        for (m, got) in Placement::new(&ms).members().iter().zip(&c) {
            let want = keys.len() as f64 * m.weight / total_weight;
            let off = (*got as f64 / want - 1.0).abs();
            assert!(off < 0.02, "{}: {got} vs {want:.0}", m.id);
        }
    }

    #[test]
    fn a_join_moves_about_one_in_n_plus_one_and_only_to_the_new_node() {
        let keys = hashes(100_000, 5);
        for n in [3, 4, 15] {
            let before = Placement::new(&members(n));
            let after = Placement::new(&members(n + 1));
            let new_id = format!("cache-{n}");
            let mut moved = 0;
            for &k in &keys {
                let (a, b) = (before.owner(k).expect("a"), after.owner(k).expect("b"));
                if a.id != b.id {
                    assert_eq!(b.id, new_id, "a block moved between old nodes");
                    moved += 1;
                    // The previous owner is second in the new ranking.
                    assert_eq!(after.ranking(k)[1].id, a.id);
                }
            }
            let fraction = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (fraction - ideal).abs() < 0.01,
                "join {n}->{}: moved {fraction:.4}, ideal {ideal:.4}",
                n + 1
            );
        }
    }

    #[test]
    fn a_leave_moves_only_the_leavers_blocks() {
        let keys = hashes(100_000, 6);
        let all = members(4);
        let before = Placement::new(&all);
        let after = Placement::new(&all[..3]);
        let mut moved = 0;
        for &k in &keys {
            let (a, b) = (before.owner(k).expect("a"), after.owner(k).expect("b"));
            if a.id != b.id {
                assert_eq!(a.id, "cache-3");
                assert_eq!(before.ranking(k)[1].id, b.id);
                moved += 1;
            } else {
                assert_ne!(a.id, "cache-3");
            }
        }
        let fraction = moved as f64 / keys.len() as f64;
        assert!((fraction - 0.25).abs() < 0.01, "moved {fraction:.4}");
    }
}
