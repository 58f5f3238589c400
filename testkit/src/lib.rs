//! Shared harness of kvtier's integration tests and benchmarks.
//!
//! Every test and benchmark that drives the real binaries does the same
//! chores: find the binary next to the running executable, start it on
//! loopback, wait for its `<name> ready key=value ...` line, read `/metrics`,
//! kill it when done. They live here once, generic (no kvtier types), so that
//! a fix to one (a pipe that fills up, a zombie, a chunked body) reaches all.
//!
//! # Layout
//! - [`process`]: a child process with a ready line; kill or SIGTERM on drop.
//! - [`binary`]: where a workspace binary is (env, explicit path, or
//!   `target/<profile>/` next to the current executable).
//! - [`net`]: a free loopback port; a tiny blocking HTTP GET.
//! - [`prom`]: sums over Prometheus text exposition.
//! - [`size`]: byte-size labels for reports (`8 MiB`).
//! - [`rng`]: splitmix64 and xorshift64: seeded, reproducible data.
//! - [`stats`]: median and percentiles.
//! - [`dir`]: temporary directories (in `/dev/shm` for pool files).
//! - [`prereq`]: a missing prerequisite: `SKIPPED` on a laptop, a failure in CI.
//! - [`etcd`]: a real etcd on loopback (the cluster tests): kill, restart
//!   with or without its data.
//! - [`Error`]: what the above can fail with.

pub mod binary;
pub mod dir;
mod error;
pub mod etcd;
pub mod net;
pub mod prereq;
pub mod process;
pub mod prom;
pub mod rng;
pub mod size;
pub mod stats;

pub use binary::{binary, Binary};
pub use error::{Error, NotReady};
pub use etcd::{find_etcd, EtcdProcess};
pub use net::{free_port, http_get};
pub use process::{Launch, Process, ReadyLine, ReadyProbe, Stop};
pub use prom::metric_sum;
