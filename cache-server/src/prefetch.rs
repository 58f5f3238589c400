//! Server-side prefetch (`--prefetch`): a background task that, every
//! interval, moves the disk blocks of the agents the policy expects back
//! soonest up to the host tier, within a bandwidth budget, displacing only
//! host blocks of strictly lower forecast value.
//!
//! Each round: the budget is what `bytes_per_sec` moves in one interval
//! ([`kvtier_policy::prefetch::round_budget`], in blocks of the disk tier's
//! mean size); the store plans it under its lock and runs the moves one by
//! one, each read outside the lock and landed under it only if still wanted
//! ([`TieredStore::prefetch_round`]). A round ends when its bytes or its
//! interval are spent; nothing is queued beyond it (the next round plans
//! afresh), so the work in flight is bounded by one round. Client requests
//! never wait for a round: the lock is taken for a plan (no I/O) and for each
//! landing (at most what a put does).
//!
//! Only a policy that forecasts calls (`value`) names candidates: with `lru`
//! the task runs and moves nothing. Disk → host only; host → GPU (`cuda`
//! feature) is not done.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::PrefetchConfig;
use crate::metrics as m;
use crate::store::{PrefetchReport, TieredStore};
use crate::tier::Tier;

/// Runs one round now (blocking I/O), with the budget `config` gives for one
/// interval, and records its metrics.
pub fn run_round(store: &TieredStore, config: &PrefetchConfig) -> PrefetchReport {
    let interval_ms = config.interval.as_millis() as u64;
    let (blocks, bytes) = kvtier_policy::prefetch::round_budget(
        interval_ms,
        config.bytes_per_sec,
        store.mean_block_bytes(Tier::Disk),
    );
    let horizon = (config.horizon_ms > 0).then_some(config.horizon_ms);
    let report = store.prefetch_round(blocks, bytes, horizon, Instant::now() + config.interval);
    record(&report);
    report
}

fn record(r: &PrefetchReport) {
    metrics::counter!(m::PREFETCH_ROUNDS).increment(1);
    if r.planned == 0 {
        return;
    }
    metrics::counter!(m::PREFETCH_BLOCKS).increment(r.promoted);
    metrics::counter!(m::PREFETCH_BYTES).increment(r.bytes);
    metrics::counter!(m::PREFETCH_DISPLACED).increment(r.displaced);
    for (reason, n) in [
        ("fetched", r.fetched),
        ("not_wanted", r.not_wanted),
        ("no_room", r.no_room),
        ("corrupt", r.corrupt),
        ("error", r.failed),
        ("budget", r.left),
    ] {
        if n > 0 {
            metrics::counter!(m::PREFETCH_SKIPPED, "reason" => reason).increment(n);
        }
    }
}

/// Spawns the prefetcher when `config.enabled`: a round every interval on
/// the blocking pool (one at a time; a round that overruns delays the next),
/// until `stop` turns true.
pub fn spawn(
    store: Arc<TieredStore>,
    config: PrefetchConfig,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !config.enabled {
        return None;
    }
    tracing::info!(
        interval_ms = config.interval.as_millis() as u64,
        bytes_per_sec = config.bytes_per_sec,
        horizon_ms = config.horizon_ms,
        "prefetch on"
    );
    Some(tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(config.interval.max(std::time::Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let (store, config) = (Arc::clone(&store), config.clone());
            let round = tokio::task::spawn_blocking(move || run_round(&store, &config));
            match round.await {
                Ok(r) if r.promoted > 0 => tracing::debug!(
                    promoted = r.promoted,
                    bytes = r.bytes,
                    displaced = r.displaced,
                    "prefetch round"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "prefetch round panicked; prefetch stops");
                    break;
                }
            }
        }
    }))
}
