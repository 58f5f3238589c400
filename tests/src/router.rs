//! The `kvtier-router` process for tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;

use anyhow::{anyhow, Result};

use crate::{binary, http_get, spawn_ready, terminate_child};

/// A running `kvtier-router` on free loopback ports. Killed on drop.
pub struct RouterProcess {
    child: Option<Child>,
    /// HTTP front (`/v1/...`, `/metrics`).
    pub http: SocketAddr,
    /// gRPC RouterService.
    pub grpc: SocketAddr,
    log: PathBuf,
}

impl RouterProcess {
    /// Starts the router with `args` (workers, cache server, tokenizer...);
    /// the listen addresses are chosen here.
    pub fn start(log: &Path, args: &[&str]) -> Result<Self> {
        let bin = binary("kvtier-router", "KVTIER_ROUTER_BIN")?;
        let mut all: Vec<String> = vec![
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let (child, line) = spawn_ready(&bin, &all, log, "kvtier-router ready")?;
        let field = |name: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .ok_or_else(|| anyhow!("no {name} in {line:?}"))?
                .parse()
                .map_err(|e| anyhow!("{name} in {line:?}: {e}"))
        };
        Ok(Self {
            http: field("http=")?,
            grpc: field("grpc=")?,
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The router's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The text of `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        http_get(self.http, "/metrics")
    }

    /// SIGTERM, then wait for the exit code.
    pub fn terminate(&mut self) -> Result<i32> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("router already stopped"))?;
        terminate_child(&mut child, "kvtier-router")
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
