//! Block identity: Dynamo-compatible XXH3-64 block and sequence hashes.
//!
//! A block is `block_tokens` consecutive token ids; only full blocks are hashed.
//! - local hash: `local_i = XXH3_64(seed, LE-u32 bytes of block i's tokens)`
//! - sequence hash: `seq_0 = local_0`,
//!   `seq_i = XXH3_64(seed, LE-u64 bytes of [seq_{i-1}, local_i])`
//! - namespace salt: `seed = XXH3_64(base_seed, UTF-8 bytes of salt)` when the
//!   salt is non-empty, else `base_seed` (default 1337, Dynamo's `XXH3_SEED`).
//!
//! With the default seed and no salt this is exactly Dynamo's
//! `compute_block_hash_for_seq` + `compute_seq_hash_for_block` (checked against
//! vectors computed by an independent implementation, Python's `xxhash`
//! package: `proto/testdata/gen_hash_vectors.py`). A sequence hash names the
//! whole prefix up to and including its block.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Dynamo's default XXH3 seed.
pub const DEFAULT_SEED: u64 = 1337;

/// Folds a namespace salt (model, KV layout, LoRA, tenant) into the base seed.
/// An empty salt leaves the seed unchanged, so that the default configuration
/// stays Dynamo-compatible.
pub fn effective_seed(base_seed: u64, salt: &str) -> u64 {
    if salt.is_empty() {
        base_seed
    } else {
        xxh3_64_with_seed(salt.as_bytes(), base_seed)
    }
}

/// Hash of one block's tokens on their own (Dynamo's `LocalBlockHash`).
pub fn local_block_hash(tokens: &[u32], seed: u64) -> u64 {
    /// Blocks up to this many tokens are laid out on the stack.
    const STACK_TOKENS: usize = 64;
    if tokens.len() <= STACK_TOKENS {
        let mut bytes = [0u8; STACK_TOKENS * 4];
        for (out, token) in bytes.chunks_exact_mut(4).zip(tokens) {
            out.copy_from_slice(&token.to_le_bytes());
        }
        return xxh3_64_with_seed(&bytes[..tokens.len() * 4], seed);
    }
    let mut bytes = Vec::with_capacity(tokens.len() * 4);
    for token in tokens {
        bytes.extend_from_slice(&token.to_le_bytes());
    }
    xxh3_64_with_seed(&bytes, seed)
}

/// Sequence hash of a block from its parent's sequence hash and its own local hash.
pub fn next_sequence_hash(parent: u64, local: u64, seed: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&parent.to_le_bytes());
    bytes[8..].copy_from_slice(&local.to_le_bytes());
    xxh3_64_with_seed(&bytes, seed)
}

/// Hashes token sequences into chained block hashes for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHasher {
    block_tokens: usize,
    seed: u64,
}

impl BlockHasher {
    /// A hasher for blocks of `block_tokens` tokens with `seed` already salted
    /// (see [`effective_seed`]). `block_tokens` must be > 0.
    pub fn new(block_tokens: usize, seed: u64) -> Self {
        assert!(block_tokens > 0, "block_tokens must be > 0");
        Self { block_tokens, seed }
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// The (salted) seed in use.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Local hashes of every full block of `tokens`; a trailing partial block is ignored.
    pub fn local_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        tokens
            .chunks_exact(self.block_tokens)
            .map(|block| local_block_hash(block, self.seed))
            .collect()
    }

    /// Sequence hashes of every full block of `tokens`.
    pub fn sequence_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        self.chain(None, &self.local_hashes(tokens))
    }

    /// Chains local hashes into sequence hashes, continuing from `parent`
    /// (the sequence hash of the block before the first one), if any.
    pub fn chain(&self, parent: Option<u64>, locals: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(locals.len());
        let mut prev = parent;
        for &local in locals {
            let seq = match prev {
                None => local,
                Some(p) => next_sequence_hash(p, local, self.seed),
            };
            out.push(seq);
            prev = Some(seq);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed by `testdata/gen_hash_vectors.py` with Python's `xxhash`.
    const VECTORS: &str = include_str!("../testdata/hash_vectors.txt");

    struct Case {
        block_tokens: usize,
        base_seed: u64,
        salt: String,
        tokens: Vec<u32>,
        effective_seed: u64,
        locals: Vec<u64>,
        sequence: Vec<u64>,
    }

    fn parse_list<T: std::str::FromStr>(s: &str) -> Vec<T>
    where
        T::Err: std::fmt::Debug,
    {
        if s.is_empty() {
            return Vec::new();
        }
        s.split(',').map(|v| v.parse().expect("number")).collect()
    }

    fn cases() -> Vec<Case> {
        VECTORS
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split('|').collect();
                assert_eq!(f.len(), 7, "bad vector line: {line}");
                Case {
                    block_tokens: f[0].parse().expect("block_tokens"),
                    base_seed: f[1].parse().expect("seed"),
                    salt: f[2].to_string(),
                    tokens: parse_list(f[3]),
                    effective_seed: f[4].parse().expect("effective seed"),
                    locals: parse_list(f[5]),
                    sequence: parse_list(f[6]),
                }
            })
            .collect()
    }

    #[test]
    fn matches_independent_vectors() {
        let cases = cases();
        assert!(cases.len() >= 6, "vector file too small");
        for case in cases {
            let seed = effective_seed(case.base_seed, &case.salt);
            assert_eq!(seed, case.effective_seed, "salt {:?}", case.salt);
            let hasher = BlockHasher::new(case.block_tokens, seed);
            assert_eq!(hasher.local_hashes(&case.tokens), case.locals);
            assert_eq!(hasher.sequence_hashes(&case.tokens), case.sequence);
        }
    }

    #[test]
    fn dynamo_block_zero_is_plain_xxh3_of_le_tokens() {
        // Block 0 of tokens 0..31 with block size 32 = XXH3-64(seed 1337) of the LE u32 bytes.
        let tokens: Vec<u32> = (0..32).collect();
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let hasher = BlockHasher::new(32, DEFAULT_SEED);
        assert_eq!(
            hasher.sequence_hashes(&tokens),
            vec![xxh3_64_with_seed(&bytes, 1337)]
        );
    }

    #[test]
    fn prefix_property_and_partial_block() {
        let hasher = BlockHasher::new(4, DEFAULT_SEED);
        let a: Vec<u32> = (0..14).collect();
        let mut b = a.clone();
        b[9] = 999; // differs inside block 2
        let ha = hasher.sequence_hashes(&a);
        let hb = hasher.sequence_hashes(&b);
        assert_eq!(ha.len(), 3, "partial trailing block is not hashed");
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        // chaining from a parent continues the same sequence
        let locals = hasher.local_hashes(&a);
        assert_eq!(hasher.chain(Some(ha[0]), &locals[1..]), ha[1..].to_vec());
    }

    #[test]
    fn salt_changes_every_hash() {
        let tokens: Vec<u32> = (0..64).collect();
        let plain = BlockHasher::new(16, effective_seed(DEFAULT_SEED, ""));
        let salted = BlockHasher::new(16, effective_seed(DEFAULT_SEED, "tenant-a"));
        let p = plain.sequence_hashes(&tokens);
        let s = salted.sequence_hashes(&tokens);
        assert!(p.iter().zip(&s).all(|(x, y)| x != y));
    }
}
