//! kvtier-worker-agent: the sidecar next to one inference worker.
//!
//! It moves KV blocks between the worker's KV pool and the kvtier cache tier
//! (so that a prefix computed on worker A can be read by worker B), and
//! publishes the worker's block events to routers.
//!
//! # Layout
//! - [`config`]: the agent's settings (every field has a default).
//! - [`error`]: the library's error type and its gRPC status mapping.
//! - [`memory`]: the device layer: how the agent reaches the engine's pool
//!   (shared-memory file; CUDA IPC under the `cuda` feature). Everything above
//!   it is the same for both.
//! - [`staging`]: the fixed pool of reusable staging buffers (page-aligned, or
//!   pinned under `cuda`) that bounds the blocks in flight.
//! - [`tier`]: the cache-server client (handshake, session renewal, timeouts).
//! - [`datapath`]: Offload / Onboard / Lookup on an attached pool.
//! - [`stats`]: the agent's counters (WorkerStats, `/metrics`).
//! - [`events`]: the worker's event log: monotonic ids, replay buffer, snapshot.
//! - [`vllm`]: ingestion of vLLM's ZMQ KV-event stream into the event log.
//! - [`state`]: the agent's shared state and AttachPool.
//! - [`service`]: the `kvtier.v1.WorkerService` gRPC handlers.
//! - [`metrics`]: `GET /metrics` (Prometheus text) from the agent's counters.
//! - [`server`]: binds TCP / Unix socket, runs until shutdown, stops its tasks.
//! - [`client`]: how engines, simulators and tests connect to an agent (TCP or
//!   its Unix socket, with the agent's message-size limit).

// Messages of the shared wire contract gain optional fields over time; building
// them with `..Default::default()` keeps this crate compiling when they do.
#![allow(clippy::needless_update)]

pub mod client;
pub mod config;
pub mod datapath;
pub mod error;
pub mod events;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod service;
pub mod staging;
pub mod state;
pub mod stats;
pub mod tier;
pub mod vllm;

pub use config::AgentConfig;
pub use error::AgentError;
