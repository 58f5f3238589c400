//! The simulated inference worker (`kvtier-sim-worker`) for tests.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use kvtier_testkit::{http_get, Process};

use crate::running::{process_handle, start, with_extra};

/// A running `kvtier-sim-worker`. Killed (SIGKILL) on drop.
pub struct SimWorkerProcess {
    process: Process,
    /// HTTP address (`/v1/...`, `/load`, `/metrics`, `/health`).
    pub http: SocketAddr,
    /// The worker id it reported (the agent's, unless `--worker-id` was given).
    pub worker_id: String,
    /// Whether it attached to its agent before reporting ready.
    pub attached: bool,
}

process_handle!(SimWorkerProcess);

impl SimWorkerProcess {
    /// Starts a worker on a free loopback port with agent endpoint `agent`
    /// (`"off"`: none), pool file `pool` and `tokenizer` (a `tokenizer.json`);
    /// `log` receives its stderr; `extra_args` are appended (e.g.
    /// `--pool-blocks 64`, `--model m`).
    pub fn start(
        log: &Path,
        agent: &str,
        pool: &Path,
        tokenizer: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let (pool, tokenizer) = (pool.display().to_string(), tokenizer.display().to_string());
        let base = [
            "--listen",
            "127.0.0.1:0",
            "--agent",
            agent,
            "--pool",
            &pool,
            "--tokenizer",
            &tokenizer,
        ];
        let args = with_extra(&base, extra_args);
        let process = start("kvtier-sim-worker", "KVTIER_SIM_WORKER_BIN", &args, log)?;
        let line = process.line();
        Ok(Self {
            http: line.parse("http")?,
            worker_id: line.parse("worker_id")?,
            attached: line.get("agent") == Some("attached"),
            process,
        })
    }

    /// The text of `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        Ok(http_get(self.http, "/metrics")?)
    }

    /// The body of `GET /load` (JSON).
    pub fn load_text(&self) -> Result<String> {
        Ok(http_get(self.http, "/load")?)
    }
}
