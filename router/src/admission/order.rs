//! Who leaves the admission queue first: pure code, time passed in.
//!
//! ```text
//! effective priority = priority                       the hint, clamped to -8..=8
//!                    + latency_boost × sensitivity    the hint, clamped to 0..=1
//!                    + waited / aging                 one level per `aging` waited
//! ```
//!
//! The highest effective priority leaves first; ties go to the call that
//! arrived first (FIFO). Within one (priority, sensitivity) class the order
//! is therefore FIFO, and aging is what keeps low priority from starving:
//!
//! **Aging bound.** Two calls gain effective priority at the same rate while
//! both wait, so a call `x` is ordered before every call that arrived more
//! than `(16 + latency_boost) × aging` after it (16 + boost is the widest
//! possible gap of static priorities, -8 plainly against 8 fully
//! latency-sensitive). [`overtake_window`] gives that bound; `x` leaves the
//! queue once the calls ahead of it at its arrival and those arriving within
//! the window after it have left. Without aging (`aging = None`) there is no
//! such bound: only the queue's maximum wait ends a low-priority call's wait.

use std::time::{Duration, Instant};

/// Lowest priority a hint may carry.
pub const MIN_PRIORITY: i32 = -8;
/// Highest priority a hint may carry.
pub const MAX_PRIORITY: i32 = 8;

/// The ordering policy's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderConfig {
    /// Priority levels a fully latency-sensitive call (sensitivity 1.0)
    /// gains, linear in between. Default 4.
    pub latency_boost: f64,
    /// A waiting call gains one priority level per `aging` waited; `None`
    /// disables aging (pure static priority, FIFO within a level). Default 500 ms.
    pub aging: Option<Duration>,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            latency_boost: 4.0,
            aging: Some(Duration::from_millis(500)),
        }
    }
}

/// What the order reads of one queued call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueuedCall {
    /// Arrival number (strictly increasing): the FIFO tie-break.
    pub seq: u64,
    /// The agent hint's priority.
    pub priority: i32,
    /// The agent hint's latency sensitivity.
    pub latency_sensitivity: f32,
    /// When it joined the queue.
    pub enqueued: Instant,
}

/// The static part of a call's effective priority (priority + latency boost).
pub fn static_priority(config: &OrderConfig, priority: i32, latency_sensitivity: f32) -> f64 {
    let sensitivity = f64::from(latency_sensitivity.clamp(0.0, 1.0));
    f64::from(priority.clamp(MIN_PRIORITY, MAX_PRIORITY)) + config.latency_boost * sensitivity
}

/// The effective priority of `call` at `now`.
pub fn effective_priority(config: &OrderConfig, call: &QueuedCall, now: Instant) -> f64 {
    let aged = match config.aging {
        Some(step) if !step.is_zero() => {
            now.saturating_duration_since(call.enqueued).as_secs_f64() / step.as_secs_f64()
        }
        _ => 0.0,
    };
    static_priority(config, call.priority, call.latency_sensitivity) + aged
}

/// Whether `a` leaves before `b` at `now`.
pub fn goes_before(config: &OrderConfig, a: &QueuedCall, b: &QueuedCall, now: Instant) -> bool {
    let (pa, pb) = (
        effective_priority(config, a, now),
        effective_priority(config, b, now),
    );
    pa > pb || (pa == pb && a.seq < b.seq)
}

/// The position in `calls` of the call that leaves next at `now`.
pub fn next<'a>(
    config: &OrderConfig,
    calls: impl IntoIterator<Item = &'a QueuedCall>,
    now: Instant,
) -> Option<usize> {
    let mut best: Option<(usize, &QueuedCall)> = None;
    for (i, call) in calls.into_iter().enumerate() {
        match best {
            Some((_, b)) if !goes_before(config, call, b, now) => {}
            _ => best = Some((i, call)),
        }
    }
    best.map(|(i, _)| i)
}

/// The aging bound: a call is ordered before every call that arrived more
/// than this after it (None without aging).
pub fn overtake_window(config: &OrderConfig) -> Option<Duration> {
    let step = config.aging.filter(|s| !s.is_zero())?;
    let gap = f64::from(MAX_PRIORITY - MIN_PRIORITY) + config.latency_boost.max(0.0);
    Some(step.mul_f64(gap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(seq: u64, priority: i32, sensitivity: f32, at: Instant) -> QueuedCall {
        QueuedCall {
            seq,
            priority,
            latency_sensitivity: sensitivity,
            enqueued: at,
        }
    }

    #[test]
    fn priority_and_latency_sensitivity_overtake_and_ties_are_fifo() {
        let config = OrderConfig::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(10);
        let queue = [
            call(0, 0, 0.0, t0),
            call(1, 0, 0.0, t0),
            call(2, 2, 0.0, later),
            call(3, 2, 1.0, later),
        ];
        assert_eq!(next(&config, &queue, later), Some(3));
        assert_eq!(next(&config, &queue[..3], later), Some(2));
        assert_eq!(next(&config, &queue[..2], later), Some(0), "FIFO on a tie");
        assert_eq!(next(&config, &[], later), None);
        // Out-of-range hints are clamped, not trusted.
        assert_eq!(static_priority(&config, 99, 7.0), 12.0);
        assert_eq!(static_priority(&config, -99, -1.0), -8.0);
    }

    #[test]
    fn a_waiting_call_gains_one_level_per_aging_step() {
        let config = OrderConfig {
            latency_boost: 4.0,
            aging: Some(Duration::from_millis(100)),
        };
        let t0 = Instant::now();
        let low = call(0, -8, 0.0, t0);
        let t = t0 + Duration::from_millis(1_000);
        assert!((effective_priority(&config, &low, t) - 2.0).abs() < 1e-9);
        // At 2.0 it goes before a newcomer of priority 1, after one of 3.
        assert!(goes_before(&config, &low, &call(1, 1, 0.0, t), t));
        assert!(goes_before(&config, &call(2, 3, 0.0, t), &low, t));
        // At 11.0 (1.9 s) only a fully latency-sensitive top call (12.0) is
        // still ahead; at 12.0 (2 s) the tie goes to the older call.
        let t19 = t0 + Duration::from_millis(1_900);
        assert!(goes_before(&config, &low, &call(3, 8, 0.0, t19), t19));
        assert!(goes_before(&config, &call(4, 8, 1.0, t19), &low, t19));
        let t2 = t0 + Duration::from_millis(2_000);
        assert!(goes_before(&config, &low, &call(5, 8, 1.0, t2), t2));
        // No aging: it never catches up.
        let frozen = OrderConfig {
            aging: None,
            ..config
        };
        let late = t0 + Duration::from_secs(3_600);
        assert!(goes_before(&frozen, &call(6, -7, 0.0, late), &low, late));
        assert_eq!(overtake_window(&frozen), None);
    }

    /// A small deterministic generator (no rand dependency).
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn the_aging_bound_holds_against_a_brute_force_queue() {
        // Random arrivals and dispatches; every dispatch is checked against
        // the bound: no call that arrived more than the window after a
        // still-waiting call leaves before it. The dispatcher is a naive
        // full sort, the reference for `next`.
        let config = OrderConfig {
            latency_boost: 4.0,
            aging: Some(Duration::from_millis(50)),
        };
        let window = overtake_window(&config).expect("aging on");
        assert_eq!(window, Duration::from_millis(1_000));
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let t0 = Instant::now();
        let mut queue: Vec<QueuedCall> = Vec::new();
        let mut seq = 0;
        for step in 0..20_000u64 {
            let now = t0 + Duration::from_millis(step);
            if rng.below(3) == 0 {
                queue.push(call(
                    seq,
                    rng.below(17) as i32 - 8,
                    rng.below(5) as f32 / 4.0,
                    now,
                ));
                seq += 1;
            }
            if rng.below(4) == 0 && !queue.is_empty() {
                let i = next(&config, &queue, now).expect("non-empty");
                let mut sorted = queue.clone();
                sorted.sort_by(|a, b| {
                    effective_priority(&config, b, now)
                        .total_cmp(&effective_priority(&config, a, now))
                        .then(a.seq.cmp(&b.seq))
                });
                assert_eq!(queue[i], sorted[0], "next agrees with a full sort");
                let leaving = queue.swap_remove(i);
                for waiting in &queue {
                    assert!(
                        leaving.enqueued <= waiting.enqueued + window,
                        "{leaving:?} overtook {waiting:?} beyond the aging window"
                    );
                }
            }
        }
    }
}
