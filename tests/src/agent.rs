//! The worker agent (`kvtier-agent`) and the simulated engine
//! (`kvtier-sim-engine`) for tests.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use kvtier_proto::v1::worker_service_client::WorkerServiceClient;
use kvtier_testkit::{binary, http_get, Process, ReadyLine};
use tonic::transport::Channel;

use crate::running::{process_handle, start, with_extra};

/// A running `kvtier-agent`. Killed (SIGKILL) on drop.
pub struct AgentProcess {
    process: Process,
    /// gRPC (TCP) address.
    pub grpc: SocketAddr,
    /// Unix socket path, when one was asked for.
    pub uds: Option<PathBuf>,
    /// `/metrics` address.
    pub metrics: Option<SocketAddr>,
}

process_handle!(AgentProcess);

impl AgentProcess {
    /// Starts an agent for the cache server at `server` on a free loopback
    /// port; `log` receives its stderr; `extra_args` are appended
    /// (e.g. `--worker-id A`, `--uds /path`).
    pub fn start(log: &Path, server: SocketAddr, extra_args: &[&str]) -> Result<Self> {
        Self::start_url(log, &format!("http://{server}"), extra_args)
    }

    /// Like [`AgentProcess::start`] with the server's URL (e.g. `https://...`).
    pub fn start_url(log: &Path, server_url: &str, extra_args: &[&str]) -> Result<Self> {
        let base = [
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--server",
            server_url,
        ];
        let args = with_extra(&base, extra_args);
        let process = start("kvtier-agent", "KVTIER_AGENT_BIN", &args, log)?;
        let line = process.line();
        Ok(Self {
            grpc: line.parse("grpc")?,
            uds: line.get_on("uds").map(PathBuf::from),
            metrics: match line.get_on("metrics") {
                Some(_) => Some(line.parse("metrics")?),
                None => None,
            },
            process,
        })
    }

    /// The agent endpoint for `kvtier-sim-engine --agent`: the Unix socket
    /// when there is one, else TCP.
    pub fn endpoint(&self) -> String {
        match &self.uds {
            Some(p) => format!("unix:{}", p.display()),
            None => format!("http://{}", self.grpc),
        }
    }

    /// A gRPC client (TCP).
    pub async fn client(&self) -> Result<WorkerServiceClient<Channel>> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))?
            .connect()
            .await?;
        Ok(WorkerServiceClient::new(channel))
    }

    /// The text of the agent's `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        let addr = self
            .metrics
            .ok_or_else(|| anyhow!("agent metrics are off"))?;
        Ok(http_get(addr, "/metrics")?)
    }
}

/// Runs `kvtier-sim-engine --agent <agent> --pool <pool> <args...>` to
/// completion and returns the `key=value` fields of its result line.
pub fn sim_engine(agent: &str, pool: &Path, args: &[&str]) -> Result<HashMap<String, String>> {
    let bin = binary("kvtier-sim-engine", "KVTIER_SIM_ENGINE_BIN")?;
    let out = Command::new(bin)
        .arg("--agent")
        .arg(agent)
        .arg("--pool")
        .arg(pool)
        .args(args)
        .output()
        .context("run kvtier-sim-engine")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "kvtier-sim-engine {args:?} failed ({}):\n{stderr}",
            out.status
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kvtier-sim-engine "))
        .ok_or_else(|| anyhow!("no result line in {stdout:?} (stderr: {stderr})"))?;
    Ok(ReadyLine::new(line).fields())
}

/// Bytes `[block × block_bytes, (block + n) × block_bytes)` of a pool file.
pub fn pool_blocks(pool: &Path, block: u64, n: u64, block_bytes: u64) -> Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(pool)?;
    file.seek(SeekFrom::Start(block * block_bytes))?;
    let mut out = vec![0u8; (n * block_bytes) as usize];
    file.read_exact(&mut out)?;
    Ok(out)
}
