//! Event ingestion (see the crate docs): the tasks that keep the
//! [`SharedIndex`](crate::index::SharedIndex) in step with the workers and the
//! cache server.
//!
//! - [`spawn_worker_source`]: one task per worker. Subscribes to its agent's
//!   `WorkerService.SubscribeWorkerEvents`, applies STORED / REMOVED / CLEARED
//!   / SNAPSHOT events, resyncs (resubscribe from 0, which starts with a
//!   SNAPSHOT) on a gap in event ids or a new epoch, marks the worker
//!   unavailable the moment its stream fails, reconnects with bounded backoff,
//!   and forgets the worker's blocks once it stays away past an expiry.
//! - [`spawn_cache_source`]: one task per model namespace. Handshakes the
//!   cache server with the model's hashing configuration, then
//!   `CacheService.WatchEvents` with `snapshot`: the snapshot replaces the
//!   index's cache-server view once `SYNCED` arrives, live events follow; a gap
//!   or a new epoch resubscribes.
//! - [`spawn_cluster_sources`]: with `--cluster`, one cache source per
//!   member of the membership, merged through [`ShardViews`]; a member that
//!   leaves takes its blocks out of the index.
//! - [`WorkerStates`] / [`CacheState`]: cheap shared tables of the sources'
//!   health, read by the cost model, `ListWorkers` and the HTTP proxy (which
//!   also reports refused connections through [`WorkerStates::mark_unreachable`]).
//!
//! The decisions (what an event does to the index, when to resync) are pure
//! code in [`sync`]; the tasks are thin I/O shells around it.

mod backoff;
mod cache;
mod connect;
mod shards;
mod state;
pub mod sync;
mod worker;

pub use backoff::Backoff;
pub use cache::{spawn_cache_source, CacheSourceConfig};
pub use connect::{connect, ConnectError};
pub use shards::{spawn_cluster_sources, ClusterSourceConfig, ShardViews, SharedShardViews};
pub use state::{CacheState, CacheStatus, WorkerStates, WorkerStatus};
pub use worker::{spawn_worker_source, AgentEndpoint, WorkerSourceConfig};
