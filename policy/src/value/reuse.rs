//! Learned order of blocks no agent hint covers (plain API traffic).
//!
//! Without hints a block still shows two things a live store sees: how often
//! it was read (`hits`) and how many children it has in the prefix tree
//! (`children`: fan-out; a leaf nothing extends — typically a request's
//! partial last block — is almost never read again, a branch point many
//! requests share almost always is). Blocks are kept in one LRU list per
//! class (never read / read again × leaf / inner node), and the model learns, per
//! class, how likely a block of a given age is to be read again and how much
//! cache time it costs until then: LHD's *hit density* (Beckmann et al.,
//! NSDI '18), hits per block of cache per unit of time. The victim is the
//! class tail (its oldest block) whose density at its age is lowest.
//!
//! Age is counted in inserts (new blocks), not milliseconds, so the model
//! needs no clock and scales with the cache. Reuse is learned independently
//! of the policy's own evictions: an evicted block stays in a bounded ghost
//! table for `horizon × resident` inserts, and a re-insert within that time
//! counts as a reuse at that age. (Counting only reads of resident blocks
//! would teach the model that whatever it evicts young is never read again.)
//!
//! Cost model: every block of a namespace has the same size, and a hit saves
//! the same recompute per block, so value per byte is hit density per block.
//! A deeper block costs more to recompute (attention over a longer prefix),
//! but it is only usable when all its ancestors are resident, and ancestors
//! are read at least as often; the fan-out and hit classes already keep
//! ancestors longer than descendants, so no depth weight is applied.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use foldhash::fast::RandomState;

/// Hit-count classes: never read since insertion, read at least once. (Finer
/// splits, 0/1/2/3+ reads or 0/1/2+ children, did worse on the first half of
/// the Mooncake conversation trace: each class learns from fewer blocks.)
pub(crate) const HIT_CLASSES: u32 = 2;
/// Fan-out classes: a leaf (no child seen), an inner node.
pub(crate) const CHILD_CLASSES: u32 = 2;
/// Number of classes.
pub(crate) const CLASSES: u32 = HIT_CLASSES * CHILD_CLASSES;
/// Age bins: four per doubling of the age.
const BINS: usize = 120;

/// Age bin of an age in inserts (four bins per doubling).
fn bin(age: u64) -> usize {
    ((4.0 * (age.saturating_add(1) as f64).log2()) as usize).min(BINS - 1)
}

/// Lowest age of bin `b`.
fn bin_start(b: usize) -> f64 {
    (b as f64 / 4.0).exp2() - 1.0
}

/// The class of a block read `hits` times with `children` children.
pub(crate) fn class(hits: u8, children: u8) -> u32 {
    u32::from(hits).min(HIT_CLASSES - 1) * CHILD_CLASSES
        + u32::from(children).min(CHILD_CLASSES - 1)
}

/// Knobs of the reuse model (see [`crate::ValueConfig`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ReuseKnobs {
    /// Ghost horizon and the life of a block never read again, in multiples
    /// of the resident block count (in inserts).
    pub horizon: f64,
    /// Counts fade by this factor at each refresh.
    pub decay: f64,
    /// Densities are refreshed every this many inserts.
    pub period: u64,
    /// At most this many ghost entries.
    pub max_ghosts: usize,
}

#[derive(Debug, Clone, Copy)]
struct Ghost {
    class: u8,
    hits: u8,
    stamp: u64,
}

/// What the model says a new block starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fresh {
    pub hits: u8,
    pub children: u8,
}

/// Online per-class reuse statistics and the hit densities they give.
#[derive(Debug)]
pub(crate) struct ReuseModel<K> {
    knobs: ReuseKnobs,
    /// Inserts so far: the age clock.
    clock: u64,
    /// Reuses per class and age bin (faded).
    reuses: Vec<[f64; BINS]>,
    /// Lifetimes started per class (faded).
    starts: Vec<f64>,
    /// Hit density per class and age bin, as of the last refresh.
    density: Vec<[f64; BINS]>,
    ghosts: HashMap<K, Ghost, RandomState>,
    ghost_queue: VecDeque<(K, u64)>,
    /// Children seen for a parent that was not resident yet (a request's
    /// blocks may arrive tail first).
    pending: HashMap<K, u8, RandomState>,
}

impl<K: Copy + Eq + Hash> ReuseModel<K> {
    pub fn new(knobs: ReuseKnobs) -> Self {
        Self {
            knobs,
            clock: 0,
            reuses: vec![[0.0; BINS]; CLASSES as usize],
            starts: vec![0.0; CLASSES as usize],
            density: vec![[1.0; BINS]; CLASSES as usize],
            ghosts: HashMap::default(),
            ghost_queue: VecDeque::new(),
            pending: HashMap::default(),
        }
    }

    /// The age clock (inserts so far).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// A new block `key` arrives with `resident` blocks in the store (before
    /// it). Returns its starting hits and children; the caller then starts its
    /// lifetime with [`Self::start`].
    pub fn insert(&mut self, key: K, resident: usize) -> Fresh {
        self.clock += 1;
        let horizon = self.horizon(resident);
        let mut hits = 0;
        if let Some(g) = self.ghosts.remove(&key) {
            let age = self.clock - g.stamp;
            if (age as f64) < horizon {
                self.reuses[g.class as usize][bin(age)] += 1.0;
            }
            hits = g.hits.saturating_add(1);
        }
        let children = self.pending.remove(&key).unwrap_or(0);
        while let Some(&(k, stamp)) = self.ghost_queue.front() {
            if ((self.clock - stamp) as f64) < horizon
                && self.ghost_queue.len() <= self.knobs.max_ghosts
            {
                break;
            }
            self.ghost_queue.pop_front();
            if self.ghosts.get(&k).is_some_and(|g| g.stamp == stamp) {
                self.ghosts.remove(&k);
            }
        }
        if self.clock.is_multiple_of(self.knobs.period.max(1)) {
            self.refresh(horizon);
        }
        Fresh { hits, children }
    }

    /// A child of `parent` arrived while `parent` is not resident.
    pub fn pending_child(&mut self, parent: K) {
        if self.pending.len() >= self.knobs.max_ghosts {
            self.pending.clear();
        }
        let c = self.pending.entry(parent).or_insert(0);
        *c = c.saturating_add(1);
    }

    /// A block of `class` starts a lifetime (inserted or read).
    pub fn start(&mut self, class: u32) {
        self.starts[class as usize] += 1.0;
    }

    /// A resident block of `class`, last touched at `stamp`, was read.
    pub fn reused(&mut self, class: u32, stamp: u64) {
        self.reuses[class as usize][bin(self.clock.saturating_sub(stamp))] += 1.0;
    }

    /// A block left the store; remember it for a while.
    pub fn evicted(&mut self, key: K, class: u32, hits: u8, stamp: u64) {
        if self.knobs.max_ghosts == 0 {
            return;
        }
        self.ghosts.insert(
            key,
            Ghost {
                class: class as u8,
                hits,
                stamp,
            },
        );
        self.ghost_queue.push_back((key, stamp));
    }

    /// Hit density of a block of `class` last touched at `stamp`.
    pub fn density(&self, class: u32, stamp: u64) -> f64 {
        self.density[class as usize][bin(self.clock.saturating_sub(stamp))]
    }

    fn horizon(&self, resident: usize) -> f64 {
        (self.knobs.horizon * resident.max(1) as f64).max(1.0)
    }

    /// Recomputes every class's density from the counts, then fades them.
    ///
    /// For a block of age `a`: the expected hits are the reuses seen at ages
    /// ≥ a (within the horizon); the expected cache time is, for each of
    /// those, the time until it came, plus, for the blocks that reached age
    /// `a` and were never read again, the time until the horizon.
    fn refresh(&mut self, horizon: f64) {
        let hb = bin(horizon as u64);
        for c in 0..CLASSES as usize {
            let r = &mut self.reuses[c];
            let mut before = [0.0; BINS + 1];
            for b in 0..BINS {
                before[b + 1] = before[b] + if b < hb { r[b] } else { 0.0 };
            }
            let (mut hits, mut weighted) = (0.0, 0.0);
            for b in (0..BINS).rev() {
                if b < hb {
                    hits += r[b];
                    weighted += r[b] * 0.5 * (bin_start(b) + bin_start(b + 1));
                }
                let a = bin_start(b);
                let alive = (self.starts[c] - before[b.min(hb)]).max(hits);
                let life = (weighted - hits * a) + (alive - hits) * (horizon - a).max(1.0);
                self.density[c][b] = (hits + 1e-6) / (life + 1.0);
            }
            for x in r.iter_mut() {
                *x *= self.knobs.decay;
            }
            self.starts[c] *= self.knobs.decay;
        }
    }

    /// Number of remembered evicted blocks.
    #[cfg(test)]
    pub fn ghosts(&self) -> usize {
        self.ghosts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> ReuseKnobs {
        ReuseKnobs {
            horizon: 8.0,
            decay: 1.0,
            period: 1,
            max_ghosts: 1 << 10,
        }
    }

    #[test]
    fn bins_grow_with_age_four_per_doubling() {
        assert_eq!(bin(0), 0);
        assert_eq!(bin(1), 4);
        assert_eq!(bin(3), 8);
        assert!(bin_start(bin(1000)) <= 1000.0 && 1000.0 < bin_start(bin(1000) + 1));
        assert_eq!(bin(u64::MAX), BINS - 1);
    }

    #[test]
    fn classes_are_distinct_and_saturate() {
        let mut seen = std::collections::HashSet::new();
        for h in 0..HIT_CLASSES as u8 {
            for c in 0..CHILD_CLASSES as u8 {
                assert!(seen.insert(class(h, c)));
            }
        }
        assert_eq!(class(200, 200), CLASSES - 1);
    }

    /// A class whose blocks are read again soon gets a higher density than
    /// one whose blocks never are, and a block past the usual reuse age
    /// loses density.
    #[test]
    fn density_follows_learned_reuse() {
        let mut m: ReuseModel<u64> = ReuseModel::new(knobs());
        let (reused, dead) = (class(0, 1), class(0, 0));
        for k in 0..200u64 {
            m.insert(k, 100);
            m.start(reused);
            m.start(dead);
            m.reused(reused, m.clock().saturating_sub(10));
        }
        m.insert(1_000, 100);
        let now = m.clock();
        assert!(m.density(reused, now) > 10.0 * m.density(dead, now));
        assert!(m.density(reused, now) > 10.0 * m.density(reused, now - 100));
    }

    #[test]
    fn ghost_reinsert_counts_a_reuse_and_pending_children_carry_over() {
        let mut m: ReuseModel<u64> = ReuseModel::new(knobs());
        m.insert(1, 10);
        m.pending_child(7);
        m.pending_child(7);
        m.evicted(1, class(2, 1), 2, m.clock());
        assert_eq!(
            m.insert(1, 10),
            Fresh {
                hits: 3,
                children: 0
            }
        );
        assert_eq!(
            m.insert(7, 10),
            Fresh {
                hits: 0,
                children: 2
            }
        );
        assert_eq!(m.reuses[class(2, 1) as usize][bin(1)], 1.0);
    }
}
