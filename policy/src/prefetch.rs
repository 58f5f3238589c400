//! Prefetch planning: which lower-tier blocks to move up ahead of their
//! agents' forecast calls, and which upper-tier blocks make room for them.
//!
//! Pure and store-agnostic: the caller hands in two lists it got from its
//! policy (for [`crate::ValuePolicy`]: [`crate::ValuePolicy::promotion_candidates`]
//! and [`crate::ValuePolicy::eviction_candidates`]), the free room of the
//! upper tier and the round's budget; [`plan`] answers which blocks to move.
//! The caller does the moves (a cache server in a background task with a
//! bounded queue; `kvtier-bench replay --tiered` at once) and reports them to
//! the policy as usual (`on_move`).
//!
//! # Rule
//! Candidates come most valuable first, victims least valuable first. Each
//! candidate, in order, takes a free slot if there is one; otherwise it
//! displaces the next victim only if that victim's own forecast value is
//! strictly lower. The first candidate that cannot displace ends the round
//! (every later candidate is worth no more, every later victim no less), and
//! so does the budget: at most `budget` blocks are promoted per round. With
//! both lists sorted, this is the largest gain in total value held by the
//! upper tier that `budget` promotions can buy.

use std::cmp::Ordering;

/// A block's forecast value for placement, comparable across classes:
/// a higher class always outranks a lower one, and within a class the larger
/// density wins. Classes of [`crate::ValuePolicy`], lowest first: 0 blocks
/// only ended agents held, 1 stale branches, 2 un-hinted blocks (density =
/// learned hit density), 3 live agents' contexts (density = the agent's
/// weighted hit density), 4 kept warm, 5 pinned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockValue {
    /// Eviction class, lowest evicted first.
    pub class: u8,
    /// Value within the class (larger = keep).
    pub density: f64,
}

impl BlockValue {
    /// Total order: class first, then density.
    pub fn cmp_value(&self, other: &Self) -> Ordering {
        self.class
            .cmp(&other.class)
            .then(self.density.total_cmp(&other.density))
    }
}

/// What one planning round decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    /// Blocks to move up, in the order given.
    pub promote: Vec<K>,
    /// Upper-tier blocks to move down first, to make room.
    pub demote: Vec<K>,
}

impl<K> Default for Plan<K> {
    fn default() -> Self {
        Self {
            promote: Vec::new(),
            demote: Vec::new(),
        }
    }
}

/// Plans one round (see the module docs for the rule): `candidates` are
/// lower-tier blocks, most valuable first; `victims` upper-tier blocks in
/// eviction order; `free` the upper tier's free slots; `budget` the most
/// blocks the round may promote (what the link moves in one interval).
pub fn plan<K: Copy>(
    candidates: &[(K, BlockValue)],
    victims: &[(K, BlockValue)],
    free: usize,
    budget: usize,
) -> Plan<K> {
    let mut out = Plan::default();
    let mut free = free;
    let mut victims = victims.iter();
    for &(key, value) in candidates.iter().take(budget) {
        if free > 0 {
            free -= 1;
            out.promote.push(key);
            continue;
        }
        match victims.next() {
            Some(&(v, vv)) if vv.cmp_value(&value).is_lt() => {
                out.demote.push(v);
                out.promote.push(key);
            }
            _ => break,
        }
    }
    out
}

/// How many blocks a link that moves one block in `block_ms` carries in
/// `interval_ms` (at least one when the interval is not empty).
pub fn budget_blocks(interval_ms: u64, block_ms: f64) -> usize {
    if interval_ms == 0 {
        return 0;
    }
    if block_ms <= 0.0 {
        return usize::MAX;
    }
    ((interval_ms as f64 / block_ms).floor() as usize).max(1)
}

/// How many of the candidates, whose sizes come in `sizes` in plan order,
/// fit one after another into `free_bytes` of the upper tier: the `free`
/// slots [`plan`] may fill without displacing anything.
pub fn free_slots(free_bytes: u64, sizes: impl IntoIterator<Item = u64>) -> usize {
    let mut left = free_bytes;
    let mut n = 0;
    for bytes in sizes {
        match left.checked_sub(bytes) {
            Some(rest) => {
                left = rest;
                n += 1;
            }
            None => break,
        }
    }
    n
}

/// What one round of `interval_ms` may move over a link of `bytes_per_sec`,
/// with blocks of `mean_block_bytes` on average: `(blocks, bytes)`. Blocks
/// as [`budget_blocks`] counts them (at least one a round when the link
/// moves anything); nothing at all when the link or the interval is zero.
pub fn round_budget(interval_ms: u64, bytes_per_sec: u64, mean_block_bytes: u64) -> (usize, u64) {
    let bytes = (u128::from(bytes_per_sec) * u128::from(interval_ms) / 1000) as u64;
    if bytes == 0 {
        return (0, 0);
    }
    let block_ms = mean_block_bytes as f64 * 1000.0 / bytes_per_sec as f64;
    (budget_blocks(interval_ms, block_ms), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(class: u8, density: f64) -> BlockValue {
        BlockValue { class, density }
    }

    #[test]
    fn free_room_is_used_first_then_only_lower_values_are_displaced() {
        let cand = [(1, v(3, 5.0)), (2, v(3, 4.0)), (3, v(3, 1.0))];
        let vict = [(10, v(0, 9.0)), (11, v(3, 2.0)), (12, v(3, 3.0))];
        // One free slot for 1; 2 displaces the ended block 10 (lower class,
        // whatever its density); 3 is worth less than 11 and ends the round.
        let p = plan(&cand, &vict, 1, 10);
        assert_eq!(p.promote, vec![1, 2]);
        assert_eq!(p.demote, vec![10]);
    }

    #[test]
    fn nothing_moves_when_the_budget_is_spent_or_values_tie() {
        let cand = [(1, v(3, 5.0)), (2, v(3, 4.0))];
        let vict = [(10, v(1, 0.0)), (11, v(1, 0.0))];
        let p = plan(&cand, &vict, 0, 1);
        assert_eq!((p.promote, p.demote), (vec![1], vec![10]));
        assert_eq!(plan(&cand, &vict, 5, 0), Plan::default());
        // A victim of equal value is never displaced (no churn).
        let tie = [(10, v(3, 4.0))];
        assert_eq!(plan(&cand[1..], &tie, 0, 5), Plan::default());
    }

    /// Against brute force: over all subsets of swaps within the budget, no
    /// plan holds more total value in the upper tier than the greedy one.
    #[test]
    fn greedy_plan_is_the_best_total_value_within_the_budget() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..300 {
            let mut cand: Vec<(u32, BlockValue)> = (0..rnd(5))
                .map(|i| (i as u32, v(rnd(3) as u8 + 2, rnd(4) as f64)))
                .collect();
            let mut vict: Vec<(u32, BlockValue)> = (0..rnd(5))
                .map(|i| (100 + i as u32, v(rnd(4) as u8 + 1, rnd(4) as f64)))
                .collect();
            cand.sort_by(|a, b| b.1.cmp_value(&a.1));
            vict.sort_by(|a, b| a.1.cmp_value(&b.1));
            let (free, budget) = (rnd(2) as usize, rnd(5) as usize);
            let p = plan(&cand, &vict, free, budget);
            // Gain: value of what came up minus value of what went down,
            // scored with class weight 100 (classes dominate densities < 4).
            let score = |b: &BlockValue| f64::from(b.class) * 100.0 + b.density;
            let gain = |promote: &[usize], demote: &[usize]| {
                promote.iter().map(|&i| score(&cand[i].1)).sum::<f64>()
                    - demote.iter().map(|&j| score(&vict[j].1)).sum::<f64>()
            };
            let idx = |k: u32, list: &[(u32, BlockValue)]| {
                list.iter()
                    .position(|e| e.0 == k)
                    .expect("planned key is listed")
            };
            let got_p: Vec<usize> = p.promote.iter().map(|&k| idx(k, &cand)).collect();
            let got_d: Vec<usize> = p.demote.iter().map(|&k| idx(k, &vict)).collect();
            assert!(got_p.len() <= budget);
            assert_eq!(got_p.len(), got_d.len() + got_p.len().min(free));
            let got = gain(&got_p, &got_d);
            // Brute force over subsets of candidates and victims.
            let best = (0..1u32 << cand.len())
                .flat_map(|cm| (0..1u32 << vict.len()).map(move |vm| (cm, vm)))
                .filter_map(|(cm, vm)| {
                    let (np, nd) = (cm.count_ones() as usize, vm.count_ones() as usize);
                    (np <= budget && np <= free + nd && nd <= np).then(|| {
                        let ps: Vec<usize> = (0..cand.len()).filter(|i| cm >> i & 1 == 1).collect();
                        let ds: Vec<usize> = (0..vict.len()).filter(|j| vm >> j & 1 == 1).collect();
                        gain(&ps, &ds)
                    })
                })
                .fold(0.0f64, f64::max);
            assert!((got - best).abs() < 1e-9, "greedy {got} vs best {best}");
        }
    }

    #[test]
    fn free_slots_count_the_leading_candidates_that_fit() {
        assert_eq!(free_slots(3_000, [1_000, 1_000, 1_000, 1_000]), 3);
        assert_eq!(free_slots(2_500, [1_000, 2_000, 100]), 1);
        assert_eq!(free_slots(0, [1]), 0);
        assert_eq!(free_slots(10, []), 0);
    }

    #[test]
    fn round_budget_follows_the_link_and_the_interval() {
        // 1 MB/s, 100 ms rounds, 10 kB blocks: 100 kB = 10 blocks a round.
        assert_eq!(round_budget(100, 1_000_000, 10_000), (10, 100_000));
        // A block larger than a round's bytes still moves, one a round.
        assert_eq!(round_budget(100, 1_000_000, 1_000_000), (1, 100_000));
        assert_eq!(round_budget(100, 0, 10_000), (0, 0));
        assert_eq!(round_budget(0, 1_000_000, 10_000), (0, 0));
        // No block size known yet: the bytes alone bound the round.
        assert_eq!(round_budget(100, 1_000_000, 0).0, usize::MAX);
    }

    #[test]
    fn budget_follows_the_link() {
        assert_eq!(budget_blocks(1_000, 4.0), 250);
        assert_eq!(budget_blocks(100, 400.0), 1);
        assert_eq!(budget_blocks(0, 4.0), 0);
    }
}
