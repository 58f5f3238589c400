//! kvtier-router: places every model call on the worker that can serve its
//! prefix cheapest.
//!
//! # Layout
//! - [`index`]: the block-locality index (sequence hash -> worker HBM, cache
//!   server host/disk), exact, fed by events. Pure, no I/O.
//! - [`sources`]: event ingestion: each worker agent's `SubscribeWorkerEvents`
//!   and the cache server's `WatchEvents`, with gap/epoch resync and worker
//!   availability.
//! - [`cost`]: the cost model and the choice among workers. Pure.
//! - [`load`]: worker load (booked calls, reports) and agent affinity.
//! - [`routing`]: one model's placement: index + load + health + cost.
//! - [`admission`]: the queue calls wait in while every worker is busy
//!   (busy threshold and queue order are pure submodules).
//! - [`lifecycle`]: agent lifecycles and hints at the cache (one server, or
//!   every member of a cluster).
//! - [`app`]: the models served, shared by the services.
//! - [`service`]: the `kvtier.v1.RouterService` gRPC shell.
//! - [`http`]: the OpenAI/Anthropic-compatible HTTP front (routes and proxies);
//!   `ending`: whether a proxied answer ended with a tool call, read from the
//!   answer's structure (finish/stop reasons, output item types).
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`models_file`]: the models served (`ModelSpec`), `--models-file` and
//!   the checks every list of models passes.
//! - [`startup`]: starting the models from plain config (index, sources,
//!   cache-server handshake, prompt model, placement) and the cost weights
//!   from flags.
//! - [`server`]: the started models behind the HTTP front and the gRPC
//!   service, until stopped. The binary's `main.rs` only turns flags into
//!   these modules' config.

pub mod admission;
pub mod app;
pub mod cost;
mod ending;
pub mod http;
pub mod index;
pub mod lifecycle;
pub mod load;
pub mod metrics;
pub mod models_file;
pub mod routing;
pub mod server;
pub mod service;
pub mod sources;
pub mod startup;
