//! The `kvtier-router` process for tests.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use kvtier_testkit::{http_get, Process};

use crate::running::{process_handle, start, with_extra};

/// A running `kvtier-router` on free loopback ports. Killed on drop.
pub struct RouterProcess {
    process: Process,
    /// HTTP front (`/v1/...`, `/metrics`).
    pub http: SocketAddr,
    /// gRPC RouterService.
    pub grpc: SocketAddr,
}

process_handle!(RouterProcess);

impl RouterProcess {
    /// Starts the router with `args` (workers, cache server, tokenizer...);
    /// the listen addresses are chosen here.
    pub fn start(log: &Path, args: &[&str]) -> Result<Self> {
        let base = [
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ];
        let all = with_extra(&base, args);
        let process = start("kvtier-router", "KVTIER_ROUTER_BIN", &all, log)?;
        Ok(Self {
            http: process.line().parse("http")?,
            grpc: process.line().parse("grpc")?,
            process,
        })
    }

    /// The text of `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        Ok(http_get(self.http, "/metrics")?)
    }
}
