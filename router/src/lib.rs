//! kvtier-router: places every model call on the worker that can serve its
//! prefix cheapest.
//!
//! # Layout
//! - [`index`]: the block-locality index (sequence hash -> worker HBM, cache
//!   server host/disk), exact, fed by events. Pure, no I/O.
//! - [`sources`]: event ingestion: each worker agent's `SubscribeWorkerEvents`
//!   and the cache server's `WatchEvents`, with gap/epoch resync and worker
//!   availability.

pub mod index;
pub mod sources;
