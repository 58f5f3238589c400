//! When a worker is busy, and the limits' hints: pure code, time passed in.
//!
//! A worker is **busy** when either bound is reached:
//!
//! ```text
//! queued prefill tokens ≥ prefill bound     prefill bound = busy_prefill_tokens, or when 0:
//!                                             measured prefill rate × target_wait
//!                                             (unmeasured_prefill_tokens until measured)
//! running calls         ≥ busy_running_calls  (0: no bound)
//! ```
//!
//! Load is what the router reads in its load book: the calls it booked, or a
//! fresher `ReportLoad` when that is higher. The prefill rate is measured by
//! [`PrefillMeter`] from the booked calls themselves: prefill tokens whose
//! first byte came back, over the time the worker had prefill queued. A
//! non-streamed answer's first byte comes after its decode too, so the rate
//! (and with it the bound) errs low, on the side of queueing at the router.

use std::time::{Duration, Instant};

use crate::load::Load;

/// The busy test's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdConfig {
    /// Busy at this many queued prefill tokens; 0 derives the bound from the
    /// worker's measured prefill rate × `target_wait`. Default 0.
    pub busy_prefill_tokens: u64,
    /// Busy at this many running calls (prefill or decode); 0: no bound. Default 0.
    pub busy_running_calls: u32,
    /// The queueing delay a worker may hold before it counts as busy, when
    /// the bound is derived. Default 250 ms (bench/RESULTS.md, "Overload": with
    /// 1 s the latency-sensitive p99 fell to 0.63x of no queue, with 250 ms to 0.27x).
    pub target_wait: Duration,
    /// The derived bound before a worker's rate is measured. Default 16,384
    /// tokens (about a second of a modest GPU's prefill).
    pub unmeasured_prefill_tokens: u64,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        Self {
            busy_prefill_tokens: 0,
            busy_running_calls: 0,
            target_wait: Duration::from_millis(250),
            unmeasured_prefill_tokens: 16_384,
        }
    }
}

/// The worker's prefill bound, given its measured rate (tokens/s).
pub fn prefill_bound(config: &ThresholdConfig, measured_rate: Option<f64>) -> u64 {
    if config.busy_prefill_tokens > 0 {
        return config.busy_prefill_tokens;
    }
    match measured_rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => {
            ((rate * config.target_wait.as_secs_f64()).ceil() as u64).max(1)
        }
        _ => config.unmeasured_prefill_tokens.max(1),
    }
}

/// Whether a worker with `load` (and measured prefill rate) is busy.
pub fn is_busy(config: &ThresholdConfig, load: &Load, measured_rate: Option<f64>) -> bool {
    let running_full =
        config.busy_running_calls > 0 && load.running_requests >= config.busy_running_calls;
    running_full || load.queued_prefill_tokens >= prefill_bound(config, measured_rate)
}

/// Whether a call may leave the queue now: some available worker is not
/// busy, or none is available at all (then routing answers "no worker" at
/// once rather than after the maximum wait).
pub fn has_room(
    config: &ThresholdConfig,
    loads: &[Load],
    rates: &[Option<f64>],
    available: &[bool],
) -> bool {
    let mut any_available = false;
    for ((load, rate), &up) in loads.iter().zip(rates).zip(available) {
        if up {
            any_available = true;
            if !is_busy(config, load, *rate) {
                return true;
            }
        }
    }
    !any_available
}

/// A worker's prefill rate, measured from the router's own bookings: tokens
/// of prefills that finished, over the time the worker had prefill queued,
/// both decayed with a half-life so the figure follows a changing worker.
#[derive(Debug, Clone, Default)]
pub struct PrefillMeter {
    tokens: f64,
    busy_secs: f64,
    /// Start of the interval not yet accounted (the worker has prefill queued).
    mark: Option<Instant>,
}

impl PrefillMeter {
    /// Half-life of the measurement.
    pub const HALF_LIFE: Duration = Duration::from_secs(30);
    /// Busy time needed before the rate counts as measured.
    pub const MIN_BUSY: Duration = Duration::from_millis(20);

    /// The worker's queued prefill went from none to some at `now`.
    pub fn busy_from(&mut self, now: Instant) {
        self.mark.get_or_insert(now);
    }

    /// A prefill of `tokens` finished at `now` (`tokens` = 0: one was
    /// abandoned, its time is not counted); `still_busy`: prefill remains queued.
    pub fn finished(&mut self, tokens: u64, now: Instant, still_busy: bool) {
        if let Some(mark) = self.mark {
            let dt = now.saturating_duration_since(mark).as_secs_f64();
            if tokens > 0 {
                let decay = 0.5f64.powf(dt / Self::HALF_LIFE.as_secs_f64());
                self.tokens = self.tokens * decay + tokens as f64;
                self.busy_secs = self.busy_secs * decay + dt;
            }
        }
        self.mark = still_busy.then_some(now);
    }

    /// Tokens per second, once measured.
    pub fn rate(&self) -> Option<f64> {
        (self.busy_secs >= Self::MIN_BUSY.as_secs_f64() && self.tokens > 0.0)
            .then(|| self.tokens / self.busy_secs)
    }
}

/// The Retry-After hint of a rejection, in whole seconds: the recent wait of
/// calls that left the queue (an average), at least 1 s and at most the
/// maximum wait.
pub fn retry_after_secs(recent_wait: Duration, max_wait: Duration) -> u64 {
    let ceiling = max_wait.as_secs_f64().ceil().max(1.0) as u64;
    (recent_wait.as_secs_f64().ceil() as u64).clamp(1, ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(tokens: u64, running: u32) -> Load {
        Load {
            queued_prefill_tokens: tokens,
            active_decode_blocks: 0,
            running_requests: running,
        }
    }

    #[test]
    fn a_worker_is_busy_at_either_bound() {
        let config = ThresholdConfig {
            busy_prefill_tokens: 1_000,
            busy_running_calls: 4,
            ..ThresholdConfig::default()
        };
        assert!(!is_busy(&config, &load(999, 3), None));
        assert!(is_busy(&config, &load(1_000, 0), None));
        assert!(is_busy(&config, &load(0, 4), None));
        let no_running_bound = ThresholdConfig {
            busy_running_calls: 0,
            ..config
        };
        assert!(!is_busy(&no_running_bound, &load(0, 10_000), None));
    }

    #[test]
    fn the_derived_bound_is_rate_times_target_wait() {
        let config = ThresholdConfig {
            target_wait: Duration::from_millis(500),
            ..ThresholdConfig::default()
        };
        assert_eq!(prefill_bound(&config, Some(20_000.0)), 10_000);
        assert_eq!(prefill_bound(&config, None), 16_384);
        assert_eq!(prefill_bound(&config, Some(f64::NAN)), 16_384);
        assert_eq!(prefill_bound(&config, Some(0.001)), 1);
        let fixed = ThresholdConfig {
            busy_prefill_tokens: 7,
            ..config
        };
        assert_eq!(prefill_bound(&fixed, Some(20_000.0)), 7);
    }

    #[test]
    fn room_means_one_available_worker_under_both_bounds_or_none_available() {
        let config = ThresholdConfig {
            busy_prefill_tokens: 100,
            ..ThresholdConfig::default()
        };
        let loads = [load(500, 1), load(50, 1)];
        let rates = [None, None];
        assert!(has_room(&config, &loads, &rates, &[true, true]));
        assert!(!has_room(&config, &loads, &rates, &[true, false]));
        assert!(has_room(&config, &loads, &rates, &[false, false]));
        assert!(!has_room(
            &config,
            &[load(100, 0); 2],
            &rates,
            &[true, true]
        ));
    }

    #[test]
    fn the_meter_measures_tokens_over_busy_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut meter = PrefillMeter::default();
        assert_eq!(meter.rate(), None);
        // Three 1,000-token prefills back to back, 100 ms each.
        meter.busy_from(ms(0));
        meter.busy_from(ms(50)); // already busy: no new mark
        meter.finished(1_000, ms(100), true);
        meter.finished(1_000, ms(200), true);
        meter.finished(1_000, ms(300), false);
        let rate = meter.rate().expect("measured");
        assert!((rate - 10_000.0).abs() < 50.0, "{rate}");
        // Idle time does not count; an abandoned prefill's time neither.
        meter.busy_from(ms(10_000));
        meter.finished(0, ms(10_400), true);
        meter.finished(1_000, ms(10_500), false);
        let rate = meter.rate().expect("measured");
        assert!((rate - 10_000.0).abs() < 200.0, "{rate}");
    }

    #[test]
    fn retry_after_is_the_recent_wait_within_one_second_and_the_max_wait() {
        let max = Duration::from_secs(30);
        assert_eq!(retry_after_secs(Duration::ZERO, max), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2_100), max), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(99), max), 30);
        assert_eq!(retry_after_secs(Duration::from_secs(99), Duration::ZERO), 1);
    }
}
