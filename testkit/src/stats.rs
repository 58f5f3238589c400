//! Order statistics of benchmark samples: the median of rounds (noise
//! tolerant) and latency percentiles.
//!
//! Nearest rank, no interpolation: the `p` percentile of `n` sorted samples
//! is the one at index `min(floor(n·p), n−1)`; the median (`p = 0.5`) of an
//! even count is the upper middle sample. Samples are reported as measured,
//! never averaged into values no run produced.

use std::cmp::Ordering;

/// The `p` percentile (`0.0..=1.0`) of `samples`; `None` when empty.
/// Incomparable values (NaN) sort as equal.
pub fn percentile<T: Copy + PartialOrd>(samples: &[T], p: f64) -> Option<T> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    percentile_of_sorted(&sorted, p)
}

/// Like [`percentile`] on samples already sorted ascending.
pub fn percentile_of_sorted<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (sorted.len() as f64 * p.clamp(0.0, 1.0)).floor() as usize;
    sorted.get(rank.min(last)).copied()
}

/// The median (upper middle for an even count); `None` when empty.
pub fn median<T: Copy + PartialOrd>(samples: &[T]) -> Option<T> {
    percentile(samples, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn median_is_the_middle_sample() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0), "upper middle");
        assert_eq!(median::<f64>(&[]), None);
        let d = [5, 1, 9].map(Duration::from_millis);
        assert_eq!(median(&d), Some(Duration::from_millis(5)));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(100));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile_of_sorted(&[7u8], 0.9), Some(7));
    }
}
