//! Counters and load gauges of the simulated worker, and their Prometheus
//! text (`GET /metrics`) and JSON (`GET /load`) renderings. Rendered at
//! scrape time from atomics: no global recorder.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use kvtier_prompt::Api;

/// Metric names, in one place for dashboards and tests.
pub mod names {
    /// Requests received, label `api` (`chat_completions`, `responses`, `messages`).
    pub const REQUESTS: &str = "kvtier_sim_worker_requests_total";
    /// Prompt tokens of served requests.
    pub const PROMPT_TOKENS: &str = "kvtier_sim_worker_prompt_tokens_total";
    /// Prompt tokens not computed, label `source` (`hbm`: the worker's own
    /// pool; `tier`: onboarded from the cache tier).
    pub const CACHED_TOKENS: &str = "kvtier_sim_worker_cached_tokens_total";
    /// Prompt tokens computed (prefill).
    pub const COMPUTED_TOKENS: &str = "kvtier_sim_worker_computed_tokens_total";
    /// Output tokens generated.
    pub const COMPLETION_TOKENS: &str = "kvtier_sim_worker_completion_tokens_total";
    /// Requests whose client went away before the response ended.
    pub const CANCELLED: &str = "kvtier_sim_worker_cancelled_total";
    /// Requests answered with an error, label `status`.
    pub const ERRORS: &str = "kvtier_sim_worker_errors_total";
    /// Blocks offloaded to the tier, label `result` (`stored`, `skipped`).
    pub const OFFLOAD_BLOCKS: &str = "kvtier_sim_worker_offload_blocks_total";
    /// Onboarded blocks whose bytes were not the expected KV.
    pub const ONBOARD_VERIFY_FAILURES: &str = "kvtier_sim_worker_onboard_verify_failures_total";
    /// Blocks evicted from the worker's pool (reported REMOVED).
    pub const EVICTED_BLOCKS: &str = "kvtier_sim_worker_evicted_blocks_total";
    /// Failed calls to the agent, label `op`.
    pub const AGENT_ERRORS: &str = "kvtier_sim_worker_agent_errors_total";
    /// Prompt tokens waiting for or in prefill.
    pub const QUEUED_PREFILL_TOKENS: &str = "kvtier_sim_worker_queued_prefill_tokens";
    /// KV blocks of requests in decode.
    pub const ACTIVE_DECODE_BLOCKS: &str = "kvtier_sim_worker_active_decode_blocks";
    /// Requests in flight (prefill or decode).
    pub const RUNNING_REQUESTS: &str = "kvtier_sim_worker_running_requests";
    /// Pool blocks by state, label `state` (`resident`, `referenced`, `reserved`, `free`).
    pub const POOL_BLOCKS: &str = "kvtier_sim_worker_pool_blocks";
    /// 1 while the pool is attached to the agent.
    pub const AGENT_ATTACHED: &str = "kvtier_sim_worker_agent_attached";
}

/// Agent calls, for [`Stats::agent_errors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    /// AttachPool.
    Attach = 0,
    /// ReportBlocks.
    Report = 1,
    /// PoolLookup.
    Lookup = 2,
    /// Onboard.
    Onboard = 3,
    /// Offload.
    Offload = 4,
}

impl AgentOp {
    const ALL: [AgentOp; 5] = [
        AgentOp::Attach,
        AgentOp::Report,
        AgentOp::Lookup,
        AgentOp::Onboard,
        AgentOp::Offload,
    ];

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            AgentOp::Attach => "attach",
            AgentOp::Report => "report",
            AgentOp::Lookup => "lookup",
            AgentOp::Onboard => "onboard",
            AgentOp::Offload => "offload",
        }
    }
}

/// Label value of an API.
pub fn api_label(api: Api) -> &'static str {
    match api {
        Api::ChatCompletions => "chat_completions",
        Api::Responses => "responses",
        Api::Messages => "messages",
    }
}

fn api_index(api: Api) -> usize {
    match api {
        Api::ChatCompletions => 0,
        Api::Responses => 1,
        Api::Messages => 2,
    }
}

const APIS: [Api; 3] = [Api::ChatCompletions, Api::Responses, Api::Messages];

/// Counters (monotonic) and gauges of one worker.
#[derive(Debug, Default)]
pub struct Stats {
    requests: [AtomicU64; 3],
    /// Prompt tokens of served requests.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from the worker's own pool.
    pub cached_hbm_tokens: AtomicU64,
    /// Prompt tokens onboarded from the tier.
    pub cached_tier_tokens: AtomicU64,
    /// Prompt tokens computed.
    pub computed_tokens: AtomicU64,
    /// Output tokens generated.
    pub completion_tokens: AtomicU64,
    /// Requests cancelled by their client.
    pub cancelled: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    /// Blocks the tier stored on Offload.
    pub offload_stored: AtomicU64,
    /// Blocks Offload skipped (the tier held them).
    pub offload_skipped: AtomicU64,
    /// Onboarded blocks with wrong bytes.
    pub onboard_verify_failures: AtomicU64,
    /// Blocks evicted from the pool.
    pub evicted_blocks: AtomicU64,
    agent_errors: [AtomicU64; 5],
    /// Gauge: prompt tokens waiting for or in prefill.
    pub queued_prefill_tokens: AtomicU64,
    /// Gauge: KV blocks of requests in decode.
    pub active_decode_blocks: AtomicU64,
    /// Gauge: requests in flight.
    pub running_requests: AtomicU64,
}

/// Pool occupancy at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolFigures {
    /// Resident blocks.
    pub resident: u64,
    /// Resident blocks referenced by requests.
    pub referenced: u64,
    /// Reserved blocks.
    pub reserved: u64,
    /// Free blocks.
    pub free: u64,
    /// Attached to the agent.
    pub attached: bool,
}

/// Adds `n` to a counter or gauge.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts `n` from a gauge.
pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Ordering::Relaxed);
}

/// Reads a counter or gauge.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Stats {
    /// Counts a request of `api`.
    pub fn request(&self, api: Api) {
        add(&self.requests[api_index(api)], 1);
    }

    /// Requests of `api` so far.
    pub fn requests(&self, api: Api) -> u64 {
        get(&self.requests[api_index(api)])
    }

    /// Counts an error response.
    pub fn error(&self, status: u16) {
        add(
            if status >= 500 {
                &self.errors_5xx
            } else {
                &self.errors_4xx
            },
            1,
        );
    }

    /// Counts a failed agent call.
    pub fn agent_error(&self, op: AgentOp) {
        add(&self.agent_errors[op as usize], 1);
    }

    /// Failed agent calls of `op` so far.
    pub fn agent_errors(&self, op: AgentOp) -> u64 {
        get(&self.agent_errors[op as usize])
    }

    /// The `GET /load` body.
    pub fn load_json(&self) -> serde_json::Value {
        serde_json::json!({
            "queued_prefill_tokens": get(&self.queued_prefill_tokens),
            "active_decode_blocks": get(&self.active_decode_blocks),
            "running_requests": get(&self.running_requests),
        })
    }

    /// The `GET /metrics` text.
    pub fn render(&self, worker_id: &str, pool: PoolFigures) -> String {
        use names::*;
        let w = format!("worker=\"{}\"", worker_id.replace(['"', '\\', '\n'], "_"));
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name}{{{w}}} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{w},{labels}}} {v}");
                }
            }
        };
        let one = |c: &AtomicU64| vec![(String::new(), get(c))];
        family(
            REQUESTS,
            "counter",
            "Requests received, by API.",
            &APIS
                .iter()
                .map(|&a| (format!("api=\"{}\"", api_label(a)), self.requests(a)))
                .collect::<Vec<_>>(),
        );
        family(
            PROMPT_TOKENS,
            "counter",
            "Prompt tokens of served requests.",
            &one(&self.prompt_tokens),
        );
        family(
            CACHED_TOKENS,
            "counter",
            "Prompt tokens not computed, by source (hbm: own pool, tier: onboarded).",
            &[
                ("source=\"hbm\"".into(), get(&self.cached_hbm_tokens)),
                ("source=\"tier\"".into(), get(&self.cached_tier_tokens)),
            ],
        );
        family(
            COMPUTED_TOKENS,
            "counter",
            "Prompt tokens computed by prefill.",
            &one(&self.computed_tokens),
        );
        family(
            COMPLETION_TOKENS,
            "counter",
            "Output tokens generated.",
            &one(&self.completion_tokens),
        );
        family(
            CANCELLED,
            "counter",
            "Requests whose client went away before the response ended.",
            &one(&self.cancelled),
        );
        family(
            ERRORS,
            "counter",
            "Requests answered with an error, by status class.",
            &[
                ("status=\"4xx\"".into(), get(&self.errors_4xx)),
                ("status=\"5xx\"".into(), get(&self.errors_5xx)),
            ],
        );
        family(
            OFFLOAD_BLOCKS,
            "counter",
            "Blocks offloaded to the cache tier, by result.",
            &[
                ("result=\"stored\"".into(), get(&self.offload_stored)),
                ("result=\"skipped\"".into(), get(&self.offload_skipped)),
            ],
        );
        family(
            ONBOARD_VERIFY_FAILURES,
            "counter",
            "Onboarded blocks whose bytes were not the expected KV (recomputed).",
            &one(&self.onboard_verify_failures),
        );
        family(
            EVICTED_BLOCKS,
            "counter",
            "Blocks evicted from the worker's pool.",
            &one(&self.evicted_blocks),
        );
        family(
            AGENT_ERRORS,
            "counter",
            "Failed calls to the kvtier agent, by call.",
            &AgentOp::ALL
                .iter()
                .map(|&op| (format!("op=\"{}\"", op.name()), self.agent_errors(op)))
                .collect::<Vec<_>>(),
        );
        family(
            QUEUED_PREFILL_TOKENS,
            "gauge",
            "Prompt tokens waiting for or in prefill.",
            &one(&self.queued_prefill_tokens),
        );
        family(
            ACTIVE_DECODE_BLOCKS,
            "gauge",
            "KV blocks of requests in decode.",
            &one(&self.active_decode_blocks),
        );
        family(
            RUNNING_REQUESTS,
            "gauge",
            "Requests in flight.",
            &one(&self.running_requests),
        );
        family(
            POOL_BLOCKS,
            "gauge",
            "Pool blocks by state.",
            &[
                ("state=\"resident\"".into(), pool.resident),
                ("state=\"referenced\"".into(), pool.referenced),
                ("state=\"reserved\"".into(), pool.reserved),
                ("state=\"free\"".into(), pool.free),
            ],
        );
        family(
            AGENT_ATTACHED,
            "gauge",
            "1 while the pool is attached to the kvtier agent.",
            &[(String::new(), u64::from(pool.attached))],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_family_with_the_worker_label() {
        let s = Stats::default();
        s.request(Api::Messages);
        add(&s.cached_tier_tokens, 32);
        let text = s.render("w\"1", PoolFigures::default());
        assert!(
            text.contains("kvtier_sim_worker_requests_total{worker=\"w_1\",api=\"messages\"} 1")
        );
        assert!(text
            .contains("kvtier_sim_worker_cached_tokens_total{worker=\"w_1\",source=\"tier\"} 32"));
        assert!(text.contains("# TYPE kvtier_sim_worker_running_requests gauge"));
        assert!(text.contains("kvtier_sim_worker_cancelled_total{worker=\"w_1\"} 0"));
    }
}
