//! The `kvtier-router` process for tests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::{ListWorkersRequest, WorkerInfo};
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
    /// to the router: after a start, all of them; after a worker is stopped,
    /// one fewer.
    pub async fn wait_available(&self, expected: usize) -> Result<()> {
        let what = format!("{expected} workers available");
        self.wait_workers(&what, Duration::from_secs(10), |workers| {
            workers.iter().filter(|w| w.available).count() == expected
        })
        .await
        .map(drop)
    }

    /// Polls `ListWorkers` every 20 ms until `done` holds for the list, and
    /// returns it; after `within`, fails naming `what` and the last list.
    pub async fn wait_workers(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[WorkerInfo]) -> bool,
    ) -> Result<Vec<WorkerInfo>> {
        let mut client = self.grpc_client().await?;
        let start = Instant::now();
        loop {
            let workers = client
                .list_workers(ListWorkersRequest::default())
                .await?
                .into_inner()
                .workers;
            if done(&workers) {
                return Ok(workers);
            }
            if start.elapsed() > within {
                bail!("not {what} after {within:?}: {workers:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The text of `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        Ok(http_get(self.http, "/metrics")?)
    }
}
