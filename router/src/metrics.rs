//! The router's metric names (one place, so dashboards and tests rely on
//! them) and its Prometheus recorder.
//!
//! The predicted hit rate is block-weighted:
//! `sum(rate(kvtier_router_predicted_blocks_total{tier!="compute"}[5m])) /
//! sum(rate(kvtier_router_predicted_blocks_total[5m]))`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP calls answered, labels `api` (`chat_completions`, `responses`,
/// `messages`) and `code` (HTTP status).
pub const REQUESTS: &str = "kvtier_router_requests_total";
/// Routing decisions, labels `source` (`http`, `grpc`) and `reason`
/// (`best_cost`, `hot_spot_shed`, `all_overloaded`, `round_robin`).
pub const DECISIONS: &str = "kvtier_router_decisions_total";
/// Calls sent to each worker, label `worker`.
pub const ROUTED: &str = "kvtier_router_routed_total";
/// Time to choose a worker (index query + cost model), seconds.
pub const DECISION_SECONDS: &str = "kvtier_router_decision_seconds";
/// Time from receiving a call to sending it upstream (parse, template,
/// tokenize, hash, route), seconds.
pub const OVERHEAD_SECONDS: &str = "kvtier_router_overhead_seconds";
/// Prompt blocks of routed calls by where the chosen worker finds them,
/// label `tier` (`hbm`, `host`, `disk`, `compute`).
pub const PREDICTED_BLOCKS: &str = "kvtier_router_predicted_blocks_total";
/// Upstream failures, labels `worker`, `kind` (`connect`, `stream`).
pub const UPSTREAM_ERRORS: &str = "kvtier_router_upstream_errors_total";
/// Calls whose client went away before the answer ended (the upstream
/// request is cancelled).
pub const CANCELLED: &str = "kvtier_router_cancelled_total";
/// Hints sent to the cache server, labels `kind` (`call`, `ending`) and
/// `result` (`ok`, `error`).
pub const HINTS: &str = "kvtier_router_hints_total";
/// Available workers, label `model`.
pub const WORKERS_AVAILABLE: &str = "kvtier_router_workers_available";
/// Blocks indexed per worker's HBM, label `worker`.
pub const INDEXED_BLOCKS: &str = "kvtier_router_indexed_blocks";
/// gRPC handler latency, labels `method`, `code`.
pub const GRPC_SECONDS: &str = "kvtier_router_grpc_seconds";
/// Calls waiting in the admission queue, label `priority` (the hint, -8..8).
pub const QUEUE_DEPTH: &str = "kvtier_router_queue_depth";
/// Time admitted calls spent in the admission queue (0 when admitted at
/// once), seconds, label `priority`.
pub const QUEUE_WAIT_SECONDS: &str = "kvtier_router_queue_wait_seconds";
/// Calls the admission queue turned away, label `reason` (`queue_full`: 429,
/// `max_wait`: 503).
pub const QUEUE_REJECTED: &str = "kvtier_router_queue_rejected_total";
/// Queued calls whose client went away before they were admitted.
pub const QUEUE_ABANDONED: &str = "kvtier_router_queue_abandoned_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Queue waits run from nothing to the maximum wait (default 30 s).
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the global Prometheus recorder.
pub fn install_recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let mut builder = PrometheusBuilder::new();
    for name in [DECISION_SECONDS, OVERHEAD_SECONDS, GRPC_SECONDS] {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS)?;
    }
    builder = builder
        .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT_SECONDS.to_string()), WAIT_BUCKETS)?;
    builder.install_recorder()
}

/// Creates the router's counters at zero, so that `rate()` sees their first
/// increment (a counter born at 1 looks like no change to Prometheus).
pub fn register_zeroes<'a>(workers: impl IntoIterator<Item = &'a str>) {
    use metrics::counter;
    counter!(CANCELLED).increment(0);
    counter!(QUEUE_ABANDONED).increment(0);
    for reason in ["queue_full", "max_wait"] {
        counter!(QUEUE_REJECTED, "reason" => reason).increment(0);
    }
    for kind in ["call", "ending"] {
        for result in ["ok", "error"] {
            counter!(HINTS, "kind" => kind, "result" => result).increment(0);
        }
    }
    for source in ["http", "grpc"] {
        for reason in [
            "best_cost",
            "hot_spot_shed",
            "all_overloaded",
            "round_robin",
        ] {
            counter!(DECISIONS, "source" => source, "reason" => reason).increment(0);
        }
    }
    for tier in ["hbm", "host", "disk", "compute"] {
        counter!(PREDICTED_BLOCKS, "tier" => tier).increment(0);
    }
    for worker in workers {
        counter!(ROUTED, "worker" => worker.to_string()).increment(0);
        for kind in ["connect", "stream"] {
            counter!(UPSTREAM_ERRORS, "worker" => worker.to_string(), "kind" => kind).increment(0);
        }
    }
}
