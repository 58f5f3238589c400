//! Unit tests, and a randomized comparison against a naive model.

use std::collections::{HashMap, HashSet};

use kvtier_proto::v1::Tier;

use super::*;

/// Deterministic xorshift64* generator.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn overlap(slot: u32, hbm: u32, host: u32, disk: u32) -> WorkerOverlap {
    WorkerOverlap {
        slot,
        hbm_blocks: hbm,
        host_blocks: host,
        disk_blocks: disk,
    }
}

#[test]
fn empty_index_answers_zeros() {
    let mut index = LocalityIndex::new();
    let a = index.add_worker("a");
    assert_eq!(index.add_worker("a"), a);
    assert_eq!(index.worker_slot("a"), Some(a));
    assert_eq!(index.worker_slot("b"), None);
    let matches = index.find_matches(&[1, 2, 3]);
    assert_eq!(matches.query_blocks, 3);
    assert_eq!(matches.cache_prefix_blocks, 0);
    assert_eq!(matches.workers, vec![overlap(a, 0, 0, 0)]);
    assert_eq!(index.find_matches(&[]).query_blocks, 0);
}

#[test]
fn hbm_then_host_then_disk() {
    let mut index = LocalityIndex::new();
    let a = index.add_worker("a");
    let b = index.add_worker("b");
    let chain: Vec<u64> = (10..20).collect();
    index.worker_stored(a, None, &chain[..4]);
    index.worker_stored(b, None, &chain[..1]);
    let mut parent = None;
    for (i, &hash) in chain.iter().enumerate().take(8) {
        let tier = if i < 6 { Tier::Host } else { Tier::Disk };
        index.cache_set(hash, parent, tier);
        parent = Some(hash);
    }
    let matches = index.find_matches(&chain);
    assert_eq!(matches.cache_prefix_blocks, 8);
    assert_eq!(
        matches.workers,
        vec![overlap(a, 4, 2, 2), overlap(b, 1, 5, 2)]
    );
    assert_eq!(index.worker_blocks(a), 4);
    assert_eq!(index.stats().worker_entries, 5);
}

#[test]
fn middle_block_removed_is_exact() {
    let mut index = LocalityIndex::new();
    let a = index.add_worker("a");
    let chain: Vec<u64> = (100..110).collect();
    index.worker_stored(a, None, &chain);
    index.worker_removed(a, &[chain[3]]);
    assert_eq!(index.stats().workers_detached, 1);
    assert_eq!(index.find_matches(&chain).workers[0].hbm_blocks, 3);
    // Storing the middle block back makes the set prefix-closed again.
    index.worker_stored(a, Some(chain[2]), &[chain[3]]);
    assert_eq!(index.stats().workers_detached, 0);
    assert_eq!(index.find_matches(&chain).workers[0].hbm_blocks, 10);
    index.worker_cleared(a);
    assert_eq!(index.worker_blocks(a), 0);
    assert_eq!(index.stats().blocks, 0);
}

#[test]
fn children_stored_before_parents() {
    let mut index = LocalityIndex::new();
    let a = index.add_worker("a");
    let chain: Vec<u64> = (1..=6).collect();
    index.worker_stored(a, Some(chain[2]), &chain[3..]);
    assert_eq!(index.find_matches(&chain).workers[0].hbm_blocks, 0);
    index.worker_stored(a, None, &chain[..3]);
    assert_eq!(index.stats().workers_detached, 0);
    assert_eq!(index.find_matches(&chain).workers[0].hbm_blocks, 6);
}

#[test]
fn more_than_64_workers() {
    let mut index = LocalityIndex::new();
    let chain: Vec<u64> = (1000..1100).collect();
    let slots: Vec<WorkerSlot> = (0..150)
        .map(|i| index.add_worker(&format!("w{i}")))
        .collect();
    for (i, &slot) in slots.iter().enumerate() {
        index.worker_stored(slot, None, &chain[..(i % 101)]);
    }
    let matches = index.find_matches(&chain);
    for (i, worker) in matches.workers.iter().enumerate() {
        assert_eq!(worker.hbm_blocks as usize, i % 101, "slot {i}");
    }
}

/// The naive model: plain sets and a block-by-block walk.
#[derive(Default)]
struct Model {
    held: Vec<HashSet<u64>>,
    cache: HashMap<u64, CacheTier>,
}

impl Model {
    fn find_matches(&self, query: &[u64]) -> PrefixMatches {
        let run = |from: usize| -> (u32, u32) {
            let mut host = 0;
            let mut disk = 0;
            for hash in &query[from..] {
                match self.cache.get(hash) {
                    Some(CacheTier::Host) => host += 1,
                    Some(CacheTier::Disk) => disk += 1,
                    _ => break,
                }
            }
            (host, disk)
        };
        let (host0, disk0) = run(0);
        let workers = self
            .held
            .iter()
            .enumerate()
            .map(|(slot, set)| {
                let hbm = query.iter().take_while(|h| set.contains(h)).count();
                let (host, disk) = run(hbm);
                overlap(slot as u32, hbm as u32, host, disk)
            })
            .collect();
        PrefixMatches {
            query_blocks: query.len() as u32,
            cache_prefix_blocks: host0 + disk0,
            workers,
        }
    }
}

/// A forest of sequence hashes: parent of every block is fixed, as with real
/// sequence hashes. Chains are read back as root-to-block paths.
struct Forest {
    parent: Vec<Option<usize>>,
}

impl Forest {
    fn generate(rng: &mut XorShift, blocks: usize) -> Self {
        let mut parent = Vec::with_capacity(blocks);
        for i in 0..blocks {
            // Mostly extend a recent block (long chains), sometimes branch, sometimes a new root.
            let p = if i == 0 || rng.chance(3) {
                None
            } else if rng.chance(80) {
                Some(i - 1)
            } else {
                Some(rng.below(i))
            };
            parent.push(p);
        }
        Self { parent }
    }
    fn hash(block: usize) -> u64 {
        (block as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
    }
    fn path(&self, block: usize) -> Vec<usize> {
        let mut path = vec![block];
        let mut at = block;
        while let Some(p) = self.parent[at] {
            path.push(p);
            at = p;
        }
        path.reverse();
        path
    }
}

/// `closed`: stores start at a root and removals take leaves (of the
/// worker's set, of the cache), as an LRU engine evicts; sets then stay
/// prefix-closed and the bisection paths answer most queries.
fn run_randomized(seed: u64, worker_count: usize, blocks: usize, ops: usize, closed: bool) {
    let mut rng = XorShift(seed);
    let forest = Forest::generate(&mut rng, blocks);
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); blocks];
    for (block, parent) in forest.parent.iter().enumerate() {
        if let Some(parent) = parent {
            children[*parent].push(block);
        }
    }
    let is_leaf_of = |set: &dyn Fn(u64) -> bool, block: usize| {
        set(Forest::hash(block)) && !children[block].iter().any(|&c| set(Forest::hash(c)))
    };
    let mut index = LocalityIndex::new();
    let mut model = Model::default();
    for w in 0..worker_count {
        let slot = index.add_worker(&format!("worker-{w}"));
        assert_eq!(slot as usize, w);
        model.held.push(HashSet::new());
    }
    let mut compared = 0u64;
    let (mut fast_workers, mut fast_cache, mut fast_tiers) = (0u64, 0u64, 0u64);
    for op in 0..ops {
        let slot = rng.below(worker_count);
        if closed && rng.chance(98) {
            match rng.below(4) {
                0 => {
                    let path = forest.path(rng.below(blocks));
                    let to = 1 + rng.below(path.len());
                    let hashes: Vec<u64> = path[..to].iter().map(|&b| Forest::hash(b)).collect();
                    index.worker_stored(slot as u32, None, &hashes);
                    model.held[slot].extend(hashes);
                }
                1 => {
                    let block = rng.below(blocks);
                    let set = &model.held[slot];
                    if is_leaf_of(&|h| set.contains(&h), block) {
                        index.worker_removed(slot as u32, &[Forest::hash(block)]);
                        model.held[slot].remove(&Forest::hash(block));
                    }
                }
                2 => {
                    let path = forest.path(rng.below(blocks));
                    let split = rng.below(path.len() + 1);
                    for (i, &block) in path.iter().enumerate() {
                        let (tier, model_tier) = if i < split {
                            (Tier::Host, CacheTier::Host)
                        } else {
                            (Tier::Disk, CacheTier::Disk)
                        };
                        let hash = Forest::hash(block);
                        index.cache_set(hash, forest.parent[block].map(Forest::hash), tier);
                        model.cache.insert(hash, model_tier);
                    }
                }
                _ => {
                    let block = rng.below(blocks);
                    let cache = &model.cache;
                    if is_leaf_of(&|h| cache.contains_key(&h), block) {
                        index.cache_set(Forest::hash(block), None, Tier::None);
                        model.cache.remove(&Forest::hash(block));
                    }
                }
            }
        } else {
            match rng.below(100) {
                0..=34 => {
                    // Store a sub-chain of a path (maybe not starting at the root:
                    // a child before its parent).
                    let path = forest.path(rng.below(blocks));
                    let from = if rng.chance(70) {
                        0
                    } else {
                        rng.below(path.len())
                    };
                    let to = from + 1 + rng.below(path.len() - from);
                    let hashes: Vec<u64> =
                        path[from..to].iter().map(|&b| Forest::hash(b)).collect();
                    let parent = forest.parent[path[from]].map(Forest::hash);
                    index.worker_stored(slot as u32, parent, &hashes);
                    model.held[slot].extend(hashes);
                }
                35..=54 => {
                    // Remove: a tail, a middle block, or unknown blocks.
                    let path = forest.path(rng.below(blocks));
                    let hashes: Vec<u64> = if rng.chance(50) {
                        let from = rng.below(path.len());
                        path[from..].iter().map(|&b| Forest::hash(b)).collect()
                    } else if rng.chance(90) {
                        vec![Forest::hash(path[rng.below(path.len())])]
                    } else {
                        vec![u64::MAX - rng.below(10) as u64]
                    };
                    index.worker_removed(slot as u32, &hashes);
                    for hash in hashes {
                        model.held[slot].remove(&hash);
                    }
                }
                55 => {
                    index.worker_cleared(slot as u32);
                    model.held[slot].clear();
                }
                56..=79 => {
                    let block = rng.below(blocks);
                    let hash = Forest::hash(block);
                    let parent = forest.parent[block].map(Forest::hash);
                    let (tier, model_tier) = match rng.below(7) {
                        0 => (Tier::Gpu, CacheTier::Host),
                        1 | 2 => (Tier::Host, CacheTier::Host),
                        3 | 4 => (Tier::Disk, CacheTier::Disk),
                        _ => (Tier::None, CacheTier::Absent),
                    };
                    // Removals often come without a parent.
                    let parent = if tier == Tier::None && rng.chance(50) {
                        None
                    } else {
                        parent
                    };
                    index.cache_set(hash, parent, tier);
                    if model_tier == CacheTier::Absent {
                        model.cache.remove(&hash);
                    } else {
                        model.cache.insert(hash, model_tier);
                    }
                }
                80 => {
                    if rng.chance(20) {
                        index.cache_cleared();
                        model.cache.clear();
                    }
                }
                _ => {
                    // Store a whole chain in the cache: host near the root, disk deeper,
                    // so the fast paths are exercised too.
                    let path = forest.path(rng.below(blocks));
                    let split = rng.below(path.len() + 1);
                    for (i, &block) in path.iter().enumerate() {
                        let (tier, model_tier) = if i < split {
                            (Tier::Host, CacheTier::Host)
                        } else {
                            (Tier::Disk, CacheTier::Disk)
                        };
                        index.cache_set(
                            Forest::hash(block),
                            forest.parent[block].map(Forest::hash),
                            tier,
                        );
                        model.cache.insert(Forest::hash(block), model_tier);
                    }
                }
            }
        }
        if op % 3 == 0 {
            for _ in 0..3 {
                let path = forest.path(rng.below(blocks));
                let mut query: Vec<u64> = path.iter().map(|&b| Forest::hash(b)).collect();
                if rng.chance(20) {
                    query.truncate(rng.below(query.len() + 1));
                }
                let stats = index.stats();
                fast_workers += (worker_count as u32 - stats.workers_detached) as u64;
                fast_cache += u64::from(stats.cache_detached == 0);
                fast_tiers +=
                    u64::from(stats.cache_detached == 0 && stats.cache_tier_inversions == 0);
                let expected = model.find_matches(&query);
                let got = index.find_matches(&query);
                assert_eq!(got, expected, "seed {seed} op {op} query {query:?}");
                compared += 1;
            }
        }
        if op % 97 == 0 {
            for (slot, set) in model.held.iter().enumerate() {
                assert_eq!(index.worker_blocks(slot as u32), set.len() as u64);
            }
            assert_eq!(index.stats().cache_blocks, model.cache.len() as u64);
        }
    }
    eprintln!("seed {seed}: {compared} queries; prefix-closed workers per query {:.2}, closed cache {fast_cache}, closed+ordered cache {fast_tiers}", fast_workers as f64 / compared as f64);
    assert!(compared > 0);
    // Everything removed: the index is empty again.
    for slot in 0..worker_count {
        index.worker_cleared(slot as u32);
    }
    index.cache_cleared();
    assert_eq!(index.stats(), IndexStats::default());
}

#[test]
fn randomized_against_naive_model() {
    for seed in 1..=12u64 {
        run_randomized(seed * 0x1234_5678_9ABC_DEF1, 5, 300, 3_000, false);
        run_randomized(seed * 0x0F1E_2D3C_4B5A_6978, 5, 300, 3_000, true);
    }
}

#[test]
fn randomized_many_workers() {
    run_randomized(0xDEAD_BEEF, 70, 400, 4_000, false);
    run_randomized(0xFEED_FACE, 70, 400, 4_000, true);
}

#[test]
fn reparenting_keeps_counts_exact() {
    let mut index = LocalityIndex::new();
    let a = index.add_worker("a");
    index.worker_stored(a, None, &[1, 2, 3]);
    // Block 3 now claims parent 9 (which a does not hold): detached.
    index.worker_stored(a, Some(9), &[3]);
    assert_eq!(index.stats().workers_detached, 1);
    index.worker_stored(a, Some(2), &[3]);
    assert_eq!(index.stats().workers_detached, 0);
    assert_eq!(index.find_matches(&[1, 2, 3]).workers[0].hbm_blocks, 3);
}

/// The shared index under a writer and concurrent readers: a reader sees a
/// write whole or not at all, and after the writer stops both copies hold
/// every change (each is read in turn).
#[test]
fn shared_index_readers_see_whole_writes_and_copies_converge() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let index = shared(LocalityIndex::new());
    let slot = index.write().add_worker("a");
    let chain: Vec<u64> = (1..=64).map(|b| b * 0x9E37_79B9_7F4A_7C15).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let index = index.clone();
            let chain = chain.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut empty, mut full) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let matches = index.read().find_matches(&chain);
                    match matches.workers[slot as usize].hbm_blocks {
                        0 => empty += 1,
                        64 => full += 1,
                        torn => panic!("a reader saw {torn} of a 64-block write"),
                    }
                    assert_eq!(matches.cache_prefix_blocks, 0);
                }
                (empty, full)
            })
        })
        .collect();
    for round in 0..3_000u64 {
        let mut writer = index.write();
        if round % 2 == 0 {
            writer.worker_stored(slot, None, &chain);
        } else {
            writer.worker_removed(slot, &chain);
        }
        writer.cache_set(round + 1_000_000, None, Tier::Host);
        drop(writer);
        if round % 500 == 0 {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let (empty, full) = reader.join().expect("reader panicked");
        assert!(empty + full > 0);
    }
    index.write().worker_stored(slot, None, &chain);
    // One more write swaps copies: both must now answer the same.
    for _ in 0..2 {
        let read = index.read();
        assert_eq!(read.find_matches(&chain).workers[0].hbm_blocks, 64);
        assert_eq!(read.stats().cache_blocks, 3_000);
        drop(read);
        index.write().cache_set(42, None, Tier::Disk);
        index.write().cache_set(42, None, Tier::None);
    }
}
