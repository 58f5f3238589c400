//! Counters of the agent's work (data path and engine-event ingestion), read
//! by the `WorkerStats`-style reporting in logs and tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Monotonic counters. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Blocks copied to the tier by Offload.
    pub offload_blocks: AtomicU64,
    /// Blocks Offload skipped because the tier held them.
    pub offload_skipped: AtomicU64,
    /// Bytes copied out of the pool.
    pub offload_bytes: AtomicU64,
    /// Blocks Onboard loaded into the pool.
    pub onboard_loaded: AtomicU64,
    /// Blocks Onboard was asked for but did not load.
    pub onboard_missed: AtomicU64,
    /// Onboard calls answered "not loaded" because the tier failed or timed out.
    pub onboard_degraded: AtomicU64,
    /// Bytes Onboard copied into the pool.
    pub onboard_bytes: AtomicU64,
    /// Offload calls completed (successfully or not).
    pub offload_calls: AtomicU64,
    /// Time spent in Offload calls, nanoseconds.
    pub offload_nanos: AtomicU64,
    /// Onboard calls completed.
    pub onboard_calls: AtomicU64,
    /// Time spent in Onboard calls, nanoseconds.
    pub onboard_nanos: AtomicU64,
    /// vLLM event batches received.
    pub engine_batches: AtomicU64,
    /// vLLM events applied.
    pub engine_events: AtomicU64,
    /// Gaps seen in the vLLM batch sequence numbers.
    pub engine_seq_gaps: AtomicU64,
    /// Engine-event errors by reason.
    engine_errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts an engine-event error of kind `reason`.
    pub fn engine_error(&self, reason: &'static str) {
        *self.engine_errors.lock().entry(reason).or_default() += 1;
    }

    /// Counts one call of `elapsed` into `calls` / `nanos`.
    pub fn timed(calls: &AtomicU64, nanos: &AtomicU64, elapsed: std::time::Duration) {
        calls.fetch_add(1, Ordering::Relaxed);
        nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Engine-event errors so far, by reason.
    pub fn engine_errors(&self) -> BTreeMap<&'static str, u64> {
        self.engine_errors.lock().clone()
    }
}
