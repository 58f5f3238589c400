//! What every kvtier binary does around its service, written once.
//!
//! Five binaries (`kvtier-server`, `kvtier-agent`, `kvtier-router`,
//! `kvtier-sim-worker`, `kvtier-sim-engine`) start the same way: install a
//! log subscriber, install the signal handlers, print one ready line, and on a
//! refused start print why and exit non-zero. Each `main.rs` stays a thin
//! shell: parse flags, call these, hand the shutdown future to the library.
//!
//! # Layout
//!
//! - [`logging`]: `--log-format text|json` ([`LogArgs`], flattened into each
//!   binary's flags) and [`logging::init`], the stderr subscriber filtered by
//!   `KVTIER_LOG`; colours only on a terminal.
//! - [`shutdown`]: [`shutdown::signals`] installs the SIGTERM/SIGINT handlers
//!   before the ready line and returns the future that resolves on either.
//! - [`ready`]: [`ready::announce`], the one machine-readable line on stdout.
//! - [`report`]: [`report::exit_code`], the start-up error printed once
//!   (a context and its causes, no cause repeated) with a failing status.
//! - [`size`]: [`size::parse_byte_size`], the byte-size syntax of every flag.
//! - [`entry`]: [`main`], all of the above around a binary's async body.
//! - [`alloc`]: [`global_allocator!`], jemalloc for every binary (feature
//!   `jemalloc`).
//!
//! This crate knows nothing of the wire contract (`kvtier-proto`) or of any
//! service: it is process plumbing only.

pub mod alloc;
pub mod entry;
pub mod logging;
pub mod ready;
pub mod report;
pub mod shutdown;
pub mod size;

pub use entry::main;
pub use logging::{LogArgs, LogFormat};
