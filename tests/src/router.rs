//! The `kvtier-router` process for tests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::ListWorkersRequest;
use kvtier_testkit::{http_get, Process};
use tonic::transport::Channel;

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

    /// A `RouterService` client.
    pub async fn grpc_client(&self) -> Result<RouterServiceClient<Channel>> {
        Ok(RouterServiceClient::connect(format!("http://{}", self.grpc)).await?)
    }

    /// Waits (10 s at most) until exactly `expected` workers are available
    /// to the router (`ListWorkers`): after a start, all of them; after a
    /// worker is stopped, one fewer.
    pub async fn wait_available(&self, expected: usize) -> Result<()> {
        let mut client = self.grpc_client().await?;
        let start = Instant::now();
        loop {
            let workers = client
                .list_workers(ListWorkersRequest::default())
                .await?
                .into_inner()
                .workers;
            let up = workers.iter().filter(|w| w.available).count();
            if up == expected {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("{up} of {expected} workers available after 10 s: {workers:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        Ok(http_get(self.http, "/metrics")?)
    }
}
