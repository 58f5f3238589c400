//! Seeded, reproducible pseudo-randomness for workloads and payloads: a
//! benchmark run or a failing test must replay the same data. Not for
//! anything secret.
//!
//! - [`splitmix64`] hashes one `u64` (Steele, Lea & Flood's SplitMix64: add
//!   the golden-ratio increment, then [`mix64`]); [`SplitMix64`] is the
//!   generator that steps it.
//! - [`xorshift_bytes`] are the payload bytes of a block derived from its hash
//!   (`x ^= x << 13; x ^= x >> 7; x ^= x << 17` from `hash | 1`, little-endian):
//!   `kvtier-sim-engine` writes the same bytes, so tests compare against them.

/// The SplitMix64 increment (2^64 / φ).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective mix of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One SplitMix64 step from state `x`: a well-spread hash of `x`.
pub fn splitmix64(x: u64) -> u64 {
    mix64(x.wrapping_add(GOLDEN))
}

/// The SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose first output is `splitmix64(seed)`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n > 0`; modulo bias is negligible for small `n`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// `len` bytes of the stream (8 per step, little-endian).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// `len` deterministic bytes derived from `seed` by xorshift64 (see the
/// module doc: the simulated engine's block payloads).
pub fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (the published vectors).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(GOLDEN), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn helpers_stay_in_range_and_replay() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let r = a.range(3, 5);
            assert!((3..=5).contains(&r));
            assert_eq!(r, b.range(3, 5));
        }
        assert!(!a.chance(0.0));
        assert!(a.chance(1.0));
        assert_eq!(a.bytes(13).len(), 13);
        assert_eq!(SplitMix64::new(1).bytes(16), SplitMix64::new(1).bytes(16));
    }

    #[test]
    fn xorshift_bytes_are_the_engines() {
        let b = xorshift_bytes(42, 20);
        assert_eq!(b.len(), 20);
        let mut x: u64 = 43;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert_eq!(b[..8], x.to_le_bytes());
        assert_eq!(xorshift_bytes(42, 8), xorshift_bytes(43, 8), "seed | 1");
    }
}
