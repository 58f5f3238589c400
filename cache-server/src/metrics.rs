//! Metric names (one place, so dashboards and tests can rely on them) and the
//! Prometheus exporter.
//!
//! Hit rates are block-weighted ratios of counter rates:
//! `sum(rate(kvtier_block_hits_total[5m])) / sum(rate(kvtier_block_lookups_total[5m]))`,
//! never a mean of per-request ratios.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Blocks asked for by Get/Lookup, labels `namespace`, `priority`, `op`.
pub const BLOCK_LOOKUPS: &str = "kvtier_block_lookups_total";
/// Blocks found, labels `namespace`, `priority`, `op`, `tier`.
pub const BLOCK_HITS: &str = "kvtier_block_hits_total";
/// Blocks not found, labels `namespace`, `priority`, `op`.
pub const BLOCK_MISSES: &str = "kvtier_block_misses_total";
/// Payload bytes held per tier, label `tier`.
pub const TIER_BYTES: &str = "kvtier_tier_bytes";
/// Blocks held per tier, label `tier`.
pub const TIER_BLOCKS: &str = "kvtier_tier_blocks";
/// Configured capacity per tier, label `tier`.
pub const TIER_CAPACITY_BYTES: &str = "kvtier_tier_capacity_bytes";
/// Blocks stored by Put, labels `namespace`, `tier` (where they landed).
pub const BLOCKS_STORED: &str = "kvtier_blocks_stored_total";
/// Blocks moved up, labels `from`, `to`.
pub const PROMOTIONS: &str = "kvtier_promotions_total";
/// Blocks moved down, labels `from`, `to`.
pub const DEMOTIONS: &str = "kvtier_demotions_total";
/// Blocks dropped from the store, labels `tier`, `reason` (`capacity`, `corrupt`, `error`).
pub const EVICTIONS: &str = "kvtier_evictions_total";
/// Blocks whose bytes failed verification on read, label `tier`.
pub const CHECKSUM_FAILURES: &str = "kvtier_checksum_failures_total";
/// Payload bytes moved over gRPC, label `direction` (`in` for Put, `out` for Get).
pub const TRANSFER_BYTES: &str = "kvtier_transfer_bytes_total";
/// Blocks the prefetcher moved disk → host.
pub const PREFETCH_BLOCKS: &str = "kvtier_prefetch_blocks_total";
/// Payload bytes the prefetcher moved disk → host.
pub const PREFETCH_BYTES: &str = "kvtier_prefetch_bytes_total";
/// Host blocks the prefetcher moved down to make room (each of a lower
/// forecast value than the block that took its place).
pub const PREFETCH_DISPLACED: &str = "kvtier_prefetch_displaced_total";
/// Planned prefetch moves not made, label `reason` (`fetched`: read by a
/// client or dropped meanwhile; `not_wanted`: its agent ended; `no_room`;
/// `corrupt`; `error`; `budget`: the round's bytes or time ran out).
pub const PREFETCH_SKIPPED: &str = "kvtier_prefetch_skipped_total";
/// Prefetch rounds run.
pub const PREFETCH_ROUNDS: &str = "kvtier_prefetch_rounds_total";
/// Handler latency in seconds, labels `method`, `code`.
pub const REQUEST_DURATION: &str = "kvtier_request_duration_seconds";
/// Requests refused for overload, label `method`.
pub const REQUESTS_REJECTED: &str = "kvtier_requests_rejected_total";
/// Handshakes, labels `namespace`, `result` (`ok`, `mismatch`, `invalid`).
pub const HANDSHAKES: &str = "kvtier_handshakes_total";
/// Sessions open now.
pub const SESSIONS: &str = "kvtier_sessions";
/// Watch subscribers now.
pub const WATCHERS: &str = "kvtier_event_watchers";
/// Live agents, label `namespace`.
pub const AGENTS_LIVE: &str = "kvtier_agents_live";
/// Agents ended, labels `namespace`, `reason` (`explicit`, `lease`).
pub const AGENTS_ENDED: &str = "kvtier_agents_ended_total";
/// Call-ending hints received, label `ending` (`tool_call`, `end_of_turn`, `unknown`).
pub const AGENT_HINTS: &str = "kvtier_agent_hints_total";
/// Events a watcher missed because it fell behind.
pub const EVENTS_DROPPED: &str = "kvtier_events_dropped_total";
/// In a cluster (`--cluster`): 1 while this node's record is in etcd under a
/// live lease, 0 while it is not (lease lost, re-registering), label `node_id`.
pub const CLUSTER_REGISTERED: &str = "kvtier_cluster_registered";
/// In a cluster: the epoch of this node's current record (milliseconds since
/// the Unix epoch at registration; grows on every re-registration), label `node_id`.
pub const CLUSTER_EPOCH: &str = "kvtier_cluster_epoch";
/// In a cluster: registrations by this process (1 after start; each lost
/// lease adds one), label `node_id`.
pub const CLUSTER_REGISTRATIONS: &str = "kvtier_cluster_registrations_total";

/// Installs the global Prometheus recorder and returns the handle that
/// renders `/metrics`. Fails when another recorder is already installed.
pub fn install_recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION.to_string()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ],
        )?
        .install_recorder()
}

/// Serves `GET /metrics` from `handle` on `listener` until `shutdown` completes.
pub async fn serve<L>(
    listener: L,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
