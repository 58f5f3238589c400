//! The cost weights as the flags give them, checked.

use crate::cost::CostWeights;

/// A weight the cost model cannot use.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A weight that is negative or not a finite number (`name` is its flag).
    #[error("--{name} must be a finite number ≥ 0, got {value}")]
    Weight {
        /// The flag, without its dashes.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A bounded-load factor below 1 (other than 0, which disables the bound).
    #[error("--load-factor must be ≥ 1.0 (or 0 to disable), got {0}")]
    LoadFactor(f64),
}

/// The weights to route with, from `flags` as the command line gives them:
/// a `load_factor` ≤ 0 disables the bounded-load rule (infinity); every other
/// weight must be finite and ≥ 0, the load factor ≥ 1.
pub fn weights_from_flags(flags: CostWeights) -> Result<CostWeights, WeightsError> {
    let w = CostWeights {
        load_factor: if flags.load_factor <= 0.0 {
            f64::INFINITY
        } else {
            flags.load_factor
        },
        ..flags
    };
    for (name, value) in [
        ("host-fetch-weight", w.host_fetch_weight),
        ("disk-fetch-weight", w.disk_fetch_weight),
        ("queue-weight", w.queue_weight),
        ("latency-queue-boost", w.latency_queue_boost),
        ("priority-doubling", w.priority_doubling),
        ("decode-weight", w.decode_weight),
        ("affinity-fraction", w.affinity_fraction),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(WeightsError::Weight { name, value });
        }
    }
    if w.load_factor < 1.0 {
        return Err(WeightsError::LoadFactor(w.load_factor));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_load_factor_disables_the_bound_and_bad_weights_are_named() {
        let w = weights_from_flags(CostWeights {
            load_factor: 0.0,
            ..CostWeights::default()
        })
        .expect("valid");
        assert_eq!(w.load_factor, f64::INFINITY);
        assert_eq!(
            weights_from_flags(CostWeights::default())
                .expect("defaults are valid")
                .queue_weight,
            CostWeights::default().queue_weight
        );
        let error = weights_from_flags(CostWeights {
            decode_weight: -1.0,
            ..CostWeights::default()
        })
        .expect_err("negative");
        assert_eq!(
            error.to_string(),
            "--decode-weight must be a finite number ≥ 0, got -1"
        );
        let error = weights_from_flags(CostWeights {
            load_factor: 0.5,
            ..CostWeights::default()
        })
        .expect_err("below 1");
        assert!(error.to_string().starts_with("--load-factor must be ≥ 1.0"));
    }
}
