//! kvtier-cache-server: the tiered KV block store and its gRPC server.
//!
//! # Layout
//! - [`block`] — block keys, stored blocks and their checksums.
//! - [`tier`] — one module per storage tier behind the [`tier::BlockTier`] seam:
//!   [`tier::host`] (T1, host memory, in the slots of a pre-faulted
//!   [`tier::arena`] reserved at start), [`tier::disk`] (T2, RocksDB with BlobDB),
//!   `tier::gpu` (T0, GPU HBM through cudarc, `cuda` feature only).
//! - [`store`] — [`store::TieredStore`], the facade that places blocks in the
//!   highest tier with room, demotes under pressure in the order an
//!   [`kvtier_policy::EvictionPolicy`] decides, promotes on hits and publishes events.
//! - [`namespace`] — namespaces and their hashing configurations (handshake checks).
//! - [`events`] — the bounded block-event bus behind `WatchEvents`.
//! - [`prefetch`] — the background task that moves forecast disk blocks up
//!   to the host tier ahead of their agents' calls (`--prefetch`).
//! - [`agents`] — agent lifecycles: validated by the pure registry, forwarded
//!   to the store's policy.
//! - [`metrics`] — metric names and the Prometheus exporter.
//! - [`dataplane`] — the binary data plane: PUT/GET of payloads over TCP or a
//!   Unix socket without protobuf copies, sessions from gRPC Handshake.
//! - [`service`] — thin gRPC handlers over the library (one file per handler group).
//! - [`server`] — wires everything and runs until a shutdown future completes.
//! - [`config`] — server configuration with embedded defaults and byte-size parsing.
//! - [`cluster`] — this server as a shard of a cluster: node id, registration
//!   in etcd, cluster-wide namespace configurations (`kvtier-cluster`).
//!
//! Storage knows nothing of agents: lifecycle-aware ordering lives in the
//! policy, which the store only consults.

pub mod agents;
pub mod block;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod events;
pub mod metrics;
pub mod namespace;
pub mod prefetch;
pub mod server;
pub mod service;
pub mod store;
pub mod tier;
