//! A simulated inference worker (`kvtier-sim-worker`): serves the three
//! model-call APIs (OpenAI chat completions and responses, Anthropic
//! messages) over HTTP, streamed and not, with a KV pool in a shared-memory
//! file driving a real `kvtier-agent`, so routers can be tested and
//! benchmarked end to end without GPUs.
//!
//! - [`prefix_cache`]: the worker's own bounded LRU prefix cache (pure bookkeeping).
//! - [`request`]: the request path: own-pool prefix, onboard from the tier,
//!   queued prefill.
//! - [`agent_link`]: attach to the agent, KV-event reports, onboard, offload.
//! - [`decode`]: the paced answer (streamed or whole) and the request guard.
//! - [`schedule`]: the order of waiting prefills, fcfs or by priority (pure).
//! - [`gate`]: the GPU's prefill slots and their waiting queue.
//! - [`stats`]: counters and load gauges, `/metrics` and `/load`.
//! - [`http`]: the thin HTTP shell.

use std::path::PathBuf;

mod agent_link;
pub mod decode;
pub mod gate;
pub mod http;
pub mod prefix_cache;
pub mod request;
pub mod schedule;
pub mod stats;

pub use request::SimWorker;
pub use schedule::SchedulingPolicy;

use crate::engine::{SimError, SimPoolSpec};

/// Settings of a simulated worker.
#[derive(Debug, Clone)]
pub struct SimWorkerConfig {
    /// Worker id; empty: the agent's (as its KV events carry it).
    pub worker_id: String,
    /// Agent endpoint (`http://host:port` or `unix:/path`); None: no agent.
    pub agent: Option<String>,
    /// The pool: file, blocks, namespace, hashing (its `model` is the served model).
    pub pool: SimPoolSpec,
    /// The model's `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Chat template file (None: built-in ChatML).
    pub chat_template: Option<PathBuf>,
    /// Prefill throughput of one prefill slot, tokens per second; 0: instant.
    pub prefill_tokens_per_s: f64,
    /// Prefills computed at once, each at `prefill_tokens_per_s` (1: one
    /// GPU, prefills queue; more: as many data-parallel ranks).
    pub prefill_slots: usize,
    /// Order of the prefills waiting for a slot.
    pub scheduling: SchedulingPolicy,
    /// Decode speed of one stream, tokens per second; 0: instant.
    pub decode_tokens_per_s: f64,
    /// Output tokens when the call names none.
    pub default_osl: u32,
    /// Onboard from and offload to the cache tier through the agent. Off:
    /// the worker still reports its blocks to the agent (so routers get its
    /// KV events) but serves from its own pool only, like an engine with a
    /// local prefix cache and no tier (a benchmark baseline).
    pub tier_io: bool,
}

/// Errors starting a simulated worker.
#[derive(Debug, thiserror::Error)]
pub enum SimWorkerError {
    /// The tokenizer or chat template could not be loaded.
    #[error("prompt model: {0}")]
    Prompt(#[from] kvtier_prompt::PromptError),
    /// The pool could not be created or mapped.
    #[error("pool: {0}")]
    Sim(#[from] SimError),
    /// The agent refused the pool (a configuration mismatch).
    #[error("the agent refused the pool: {0}")]
    Attach(String),
    /// Bad settings.
    #[error("{0}")]
    Invalid(String),
}
