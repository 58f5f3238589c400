//! kvtier-sim: a simulated inference engine and a simulated inference worker,
//! so the whole data path (agent, cache server, router) runs and is
//! benchmarked without a GPU.
//!
//! They live apart from `kvtier-worker-agent` so the production sidecar
//! carries no test machinery; they reach the agent only through its public
//! client API ([`kvtier_worker_agent::client`]), as a real engine connector
//! would.
//!
//! # Layout
//! - [`engine`]: a simulated engine (shared-memory KV pool, deterministic
//!   block bytes) driving an agent: attach, report, offload, onboard
//!   (`kvtier-sim-engine`).
//! - [`worker`]: a simulated inference worker serving the model-call HTTP
//!   APIs on such a pool (`kvtier-sim-worker`).
//! - [`args`]: the pool and hashing flags both binaries share.

pub mod args;
pub mod engine;
pub mod worker;
