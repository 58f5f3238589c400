//! The `kvtier-server` process for tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_testkit::{http_get, Process};
use tonic::transport::Channel;

use crate::running::{process_handle, start, with_extra};

/// A running `kvtier-server`. Killed (SIGKILL) on drop.
pub struct ServerProcess {
    process: Process,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// `/metrics` address (port 0 when metrics are off).
    pub metrics: SocketAddr,
    /// Data directory (kept by the caller's `TempDir`).
    pub data_dir: PathBuf,
    /// Its node id, when it runs in a cluster (`node=` of the ready line).
    pub node: Option<String>,
}

process_handle!(ServerProcess);

impl ServerProcess {
    /// Starts the server on free loopback ports with `data_dir` and extra flags,
    /// and waits until it reports ready. Its log is `<data_dir>.log`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Result<Self> {
        let dir = data_dir.display().to_string();
        let base = [
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir,
        ];
        Self::launch(data_dir, &with_extra(&base, extra_args))
    }

    /// Like [`ServerProcess::start`], but on a fixed gRPC address (to restart a
    /// server where its clients expect it). Metrics are off.
    pub fn start_at(data_dir: &Path, listen: SocketAddr, extra_args: &[&str]) -> Result<Self> {
        let (dir, listen) = (data_dir.display().to_string(), listen.to_string());
        let base = [
            "--listen",
            &listen,
            "--metrics-listen",
            "off",
            "--data-dir",
            &dir,
        ];
        Self::launch(data_dir, &with_extra(&base, extra_args))
    }

    fn launch(data_dir: &Path, args: &[String]) -> Result<Self> {
        let log = data_dir.with_extension("log");
        let process = start("kvtier-server", "KVTIER_SERVER_BIN", args, &log)?;
        let line = process.line();
        Ok(Self {
            grpc: line.parse("grpc")?,
            metrics: match line.get_on("metrics") {
                Some(_) => line.parse("metrics")?,
                None => SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            data_dir: data_dir.to_path_buf(),
            node: line.get("node").map(str::to_string),
            process,
        })
    }

    /// Sends `signal` (`kvtier_testkit::process::signal::SIGSTOP`, ...).
    pub fn signal(&self, signal: i32) -> Result<()> {
        Ok(self.process.signal(signal)?)
    }

    /// A gRPC client connected to this server.
    pub async fn client(&self) -> Result<CacheServiceClient<Channel>> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))?
            .connect()
            .await?;
        Ok(CacheServiceClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20))
    }

    /// The text of `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        Ok(http_get(self.metrics, "/metrics")?)
    }
}
