//! `GET /metrics` in the Prometheus text format, rendered from the agent's
//! counters ([`crate::stats::Stats`]) and event log at scrape time: no global
//! recorder, nothing to keep in sync.
//!
//! Latency is exported as `*_seconds_total` / `*_calls_total` counter pairs
//! (mean latency = ratio of their rates).

use std::fmt::Write as _;
use std::sync::Arc;

use crate::state::AgentState;
use crate::stats::Stats;

/// Metric names, in one place for dashboards and tests.
pub mod names {
    /// Blocks handled by Offload, label `result` (`stored`, `skipped`).
    pub const OFFLOAD_BLOCKS: &str = "kvtier_agent_offload_blocks_total";
    /// Blocks asked for by Onboard, label `result` (`loaded`, `missed`).
    pub const ONBOARD_BLOCKS: &str = "kvtier_agent_onboard_blocks_total";
    /// Onboard calls answered "not loaded" because the cache tier failed or timed out.
    pub const ONBOARD_DEGRADED: &str = "kvtier_agent_onboard_degraded_total";
    /// Payload bytes copied, label `direction` (`offload`, `onboard`).
    pub const TRANSFER_BYTES: &str = "kvtier_agent_transfer_bytes_total";
    /// Calls, label `op` (`offload`, `onboard`).
    pub const CALLS: &str = "kvtier_agent_calls_total";
    /// Seconds spent in calls, label `op`.
    pub const CALL_SECONDS: &str = "kvtier_agent_call_seconds_total";
    /// Worker events published (the last event id of this epoch).
    pub const WORKER_EVENTS: &str = "kvtier_agent_worker_events_total";
    /// vLLM KV-event batches received.
    pub const ENGINE_BATCHES: &str = "kvtier_agent_engine_batches_total";
    /// vLLM KV events applied.
    pub const ENGINE_EVENTS: &str = "kvtier_agent_engine_events_total";
    /// Gaps in the vLLM batch sequence.
    pub const ENGINE_SEQ_GAPS: &str = "kvtier_agent_engine_seq_gaps_total";
    /// vLLM KV events not applied, label `reason`.
    pub const ENGINE_ERRORS: &str = "kvtier_agent_engine_event_errors_total";
}

fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The exposition text for `state`.
pub fn render(state: &AgentState) -> String {
    let s = &state.stats;
    let g = Stats::get;
    let worker = format!("worker=\"{}\"", state.config.worker_id.replace('"', "'"));
    let l = |extra: &str| {
        if extra.is_empty() {
            worker.clone()
        } else {
            format!("{worker},{extra}")
        }
    };
    let mut out = String::new();
    use names::*;
    counter(
        &mut out,
        OFFLOAD_BLOCKS,
        "Blocks handled by Offload.",
        &[
            (&l("result=\"stored\""), g(&s.offload_blocks)),
            (&l("result=\"skipped\""), g(&s.offload_skipped)),
        ],
    );
    counter(
        &mut out,
        ONBOARD_BLOCKS,
        "Blocks asked for by Onboard.",
        &[
            (&l("result=\"loaded\""), g(&s.onboard_loaded)),
            (&l("result=\"missed\""), g(&s.onboard_missed)),
        ],
    );
    counter(
        &mut out,
        ONBOARD_DEGRADED,
        "Onboard calls answered not-loaded because the cache tier failed or timed out.",
        &[(&l(""), g(&s.onboard_degraded))],
    );
    counter(
        &mut out,
        TRANSFER_BYTES,
        "Payload bytes copied between the pool and the cache tier.",
        &[
            (&l("direction=\"offload\""), g(&s.offload_bytes)),
            (&l("direction=\"onboard\""), g(&s.onboard_bytes)),
        ],
    );
    counter(
        &mut out,
        CALLS,
        "Data-path calls.",
        &[
            (&l("op=\"offload\""), g(&s.offload_calls)),
            (&l("op=\"onboard\""), g(&s.onboard_calls)),
        ],
    );
    let secs = |nanos: u64| nanos as f64 / 1e9;
    let _ = writeln!(
        out,
        "# HELP {CALL_SECONDS} Seconds spent in data-path calls.\n# TYPE {CALL_SECONDS} counter\n\
         {CALL_SECONDS}{{{}}} {}\n{CALL_SECONDS}{{{}}} {}",
        l("op=\"offload\""),
        secs(g(&s.offload_nanos)),
        l("op=\"onboard\""),
        secs(g(&s.onboard_nanos)),
    );
    counter(
        &mut out,
        WORKER_EVENTS,
        "Worker events published in this epoch.",
        &[(&l(""), state.events.last_id())],
    );
    counter(
        &mut out,
        ENGINE_BATCHES,
        "vLLM KV-event batches received.",
        &[(&l(""), g(&s.engine_batches))],
    );
    counter(
        &mut out,
        ENGINE_EVENTS,
        "vLLM KV events applied.",
        &[(&l(""), g(&s.engine_events))],
    );
    counter(
        &mut out,
        ENGINE_SEQ_GAPS,
        "Gaps in the vLLM batch sequence.",
        &[(&l(""), g(&s.engine_seq_gaps))],
    );
    let errors: Vec<(String, u64)> = s
        .engine_errors()
        .into_iter()
        .map(|(reason, n)| (l(&format!("reason=\"{reason}\"")), n))
        .collect();
    let errors: Vec<(&str, u64)> = errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    counter(
        &mut out,
        ENGINE_ERRORS,
        "vLLM KV events not applied, by reason.",
        &errors,
    );
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move { render(&state) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
