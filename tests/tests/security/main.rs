//! Security and hardening on the real `kvtier-server`: TLS and mTLS with
//! certificates generated at test time, hashed bearer tokens reloaded on
//! SIGHUP, tenant isolation with identical prompts, per-client limits,
//! bounded memory under 10x overload, kill -9 during heavy writes (20
//! rounds), a full disk, and stalled clients; the worker agent and the
//! router reaching a server with TLS and tokens, and a cluster of such servers; agent lifecycle calls that
//! need write access, belong to their token, and are capped; the agent's and
//! the router's own fronts (Unix socket, TLS, tokens, namespace access).
//!
//! Build the binaries first: `cargo build --release --workspace --bins`.

mod agents;
mod auth;
mod clients;
mod cluster;
mod faults;
mod fronts;
mod limits;
mod support;
mod tls;
