//! Starting and stopping one configuration's processes: a `kvtier-server`,
//! N × (`kvtier-agent` + `kvtier-sim-worker`) and a `kvtier-router`, all on
//! loopback with free ports, logs in the run's temp directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::ListWorkersRequest;
use kvtier_testkit::{Binary, Launch, Process, Stop};

pub use kvtier_testkit::{http_get, metric_sum};

/// Where the binaries are: next to this one unless given.
pub fn sibling(name: &str, dir: &Option<PathBuf>) -> Result<PathBuf> {
    Ok(Binary::new(name)
        .dir(dir.as_deref())
        .hint("pass --bin-dir")
        .find()?)
}

/// Spawns `bin args` (stderr to `log`) and waits for its `ready` line; on
/// drop it gets SIGTERM, then SIGKILL 2.5 s later.
fn spawn(bin: &Path, args: &[String], log: &Path, ready: &str) -> Result<Process> {
    Ok(Launch::new(bin)
        .args(args)
        .env("KVTIER_LOG", "warn")
        .log(log)
        .ready(ready)
        .stop_on_drop(Stop::Terminate(Duration::from_millis(2500)))
        .spawn()?)
}

/// One configuration's settings.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Binaries' directory (None: next to kvtier-bench).
    pub bin_dir: Option<PathBuf>,
    /// Run directory (logs, data, model files).
    pub dir: PathBuf,
    /// Shared-memory directory for the pools.
    pub shm: PathBuf,
    /// tokenizer.json and chat template.
    pub tokenizer: PathBuf,
    /// Chat template file.
    pub template: PathBuf,
    /// Workers.
    pub workers: usize,
    /// Worker pool (HBM) blocks.
    pub pool_blocks: u64,
    /// Bytes per block.
    pub block_bytes: u64,
    /// Simulated prefill rate, tokens/s.
    pub prefill_tps: f64,
    /// Simulated decode rate, tokens/s.
    pub decode_tps: f64,
    /// Cache server host tier bytes.
    pub host_bytes: u64,
    /// Cache server disk tier bytes.
    pub disk_bytes: u64,
    /// `lru` or `value`.
    pub policy: &'static str,
    /// Workers onboard/offload through the tier.
    pub tier_io: bool,
    /// `cost` or `round-robin`.
    pub routing: &'static str,
    /// The router talks to the cache server (tier locality, hints).
    pub router_uses_cache: bool,
    /// Extra flags for every `kvtier-sim-worker` (e.g. `--scheduling-policy`).
    pub worker_args: Vec<String>,
    /// Extra flags for `kvtier-router` (e.g. `--admission-queue`).
    pub router_args: Vec<String>,
    /// Extra flags for `kvtier-server` (e.g. `--prefetch`).
    pub server_args: Vec<String>,
}

/// Model and namespace of the replay.
pub const MODEL: &str = "sim-model";
const NAMESPACE: &str = "system-replay";

/// Running processes of one configuration (dropped: all stopped).
pub struct Fleet {
    // Drop order: router, workers, agents, server.
    router: Process,
    workers: Vec<Process>,
    agents: Vec<Process>,
    server: Process,
    /// Router HTTP front.
    pub router_http: SocketAddr,
    /// Router gRPC.
    pub router_grpc: SocketAddr,
    /// Workers' HTTP (for /metrics).
    pub worker_http: Vec<SocketAddr>,
    /// Server /metrics.
    pub server_metrics: SocketAddr,
}

impl Fleet {
    /// Starts everything and waits until the router sees every worker.
    pub async fn start(spec: &FleetSpec, tag: &str) -> Result<Self> {
        let dir = spec.dir.join(tag);
        std::fs::create_dir_all(&dir)?;
        let bb = spec.block_bytes.to_string();
        let server_args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir.join("server-data").display().to_string(),
            "--host-capacity",
            &spec.host_bytes.to_string(),
            "--disk-capacity",
            &spec.disk_bytes.to_string(),
            "--policy",
            spec.policy,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(spec.server_args.iter().cloned())
        .collect();
        let server = spawn(
            &sibling("kvtier-server", &spec.bin_dir)?,
            &server_args,
            &dir.join("server.log"),
            "kvtier-server ready",
        )?;
        let grpc: SocketAddr = server.line().parse("grpc")?;
        let server_metrics: SocketAddr = server.line().parse("metrics")?;
        let agent_bin = sibling("kvtier-agent", &spec.bin_dir)?;
        let worker_bin = sibling("kvtier-sim-worker", &spec.bin_dir)?;
        let mut agents = Vec::new();
        let mut workers = Vec::new();
        let mut worker_http = Vec::new();
        let mut specs = Vec::new();
        for i in 0..spec.workers {
            let id = format!("w{i}");
            let args: Vec<String> = [
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--server",
                &format!("http://{grpc}"),
                "--worker-id",
                &id,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let agent = spawn(
                &agent_bin,
                &args,
                &dir.join(format!("agent-{id}.log")),
                "kvtier-agent ready",
            )?;
            let agent_url = format!("http://{}", agent.line().parse::<String>("grpc")?);
            let pool = spec.shm.join(format!("{tag}-pool-{id}"));
            let _ = std::fs::remove_file(&pool);
            let args: Vec<String> = [
                "--listen",
                "127.0.0.1:0",
                "--agent",
                &agent_url,
                "--worker-id",
                &id,
                "--pool",
                &pool.display().to_string(),
                "--pool-blocks",
                &spec.pool_blocks.to_string(),
                "--block-bytes",
                &bb,
                "--block-tokens",
                "16",
                "--model",
                MODEL,
                "--namespace",
                NAMESPACE,
                "--tokenizer",
                &spec.tokenizer.display().to_string(),
                "--chat-template",
                &spec.template.display().to_string(),
                "--prefill-tokens-per-s",
                &spec.prefill_tps.to_string(),
                "--decode-tokens-per-s",
                &spec.decode_tps.to_string(),
                "--tier-io",
                if spec.tier_io { "on" } else { "off" },
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let args = [args, spec.worker_args.clone()].concat();
            let worker = spawn(
                &worker_bin,
                &args,
                &dir.join(format!("worker-{id}.log")),
                "kvtier-sim-worker ready",
            )?;
            if worker.line().parse::<String>("agent")? != "attached" {
                bail!("worker {id} did not attach to its agent: {}", worker.line());
            }
            let http: SocketAddr = worker.line().parse("http")?;
            specs.push(format!("{id}=http://{http}@{agent_url}"));
            worker_http.push(http);
            agents.push(agent);
            workers.push(worker);
        }
        let mut args: Vec<String> = [
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--cache-server",
            &if spec.router_uses_cache {
                format!("http://{grpc}")
            } else {
                String::new()
            },
            "--namespace",
            NAMESPACE,
            "--model",
            MODEL,
            "--block-bytes",
            &bb,
            "--block-tokens",
            "16",
            "--tokenizer",
            &spec.tokenizer.display().to_string(),
            "--chat-template",
            &spec.template.display().to_string(),
            "--routing",
            spec.routing,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for s in &specs {
            args.push("--worker".into());
            args.push(s.clone());
        }
        args.extend(spec.router_args.iter().cloned());
        let router = spawn(
            &sibling("kvtier-router", &spec.bin_dir)?,
            &args,
            &dir.join("router.log"),
            "kvtier-router ready",
        )?;
        let fleet = Self {
            router_http: router.line().parse("http")?,
            router_grpc: router.line().parse("grpc")?,
            router,
            workers,
            agents,
            server,
            worker_http,
            server_metrics,
        };
        fleet.wait_available(spec.workers).await?;
        Ok(fleet)
    }

    async fn wait_available(&self, n: usize) -> Result<()> {
        let mut client =
            RouterServiceClient::connect(format!("http://{}", self.router_grpc)).await?;
        let start = Instant::now();
        loop {
            let workers = client
                .list_workers(ListWorkersRequest::default())
                .await?
                .into_inner()
                .workers;
            let up = workers.iter().filter(|w| w.available).count();
            if up >= n {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("{up} of {n} workers available to the router after 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every process (router first, server last).
    pub fn stop(self) {
        let Fleet {
            router,
            workers,
            agents,
            server,
            ..
        } = self;
        drop(router);
        drop(workers);
        drop(agents);
        drop(server);
    }
}
