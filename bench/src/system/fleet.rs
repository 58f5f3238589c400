//! Starting and stopping one configuration's processes: a `kvtier-server`,
//! N × (`kvtier-agent` + `kvtier-sim-worker`) and a `kvtier-router`, all on
//! loopback with free ports, logs in the run's temp directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::ListWorkersRequest;

/// A child process: SIGTERM then SIGKILL on drop.
pub struct Proc {
    child: Child,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing_free_warn(&self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracing_free_warn(name: &str) {
    eprintln!("{name} did not exit 2.5 s after SIGTERM: killed");
}

/// Where the binaries are: next to this one unless given.
pub fn sibling(name: &str, dir: &Option<PathBuf>) -> Result<PathBuf> {
    let base = match dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no parent of the current executable"))?
            .to_path_buf(),
    };
    let path = base.join(name);
    if !path.exists() {
        bail!(
            "{} not found: `cargo build --release --workspace --bins` first (or pass --bin-dir)",
            path.display()
        );
    }
    Ok(path)
}

/// Spawns `bin args` (stderr to `log`) and returns it with its ready line.
fn spawn(bin: &Path, args: &[String], log: &Path, ready: &str) -> Result<(Proc, String)> {
    let stderr =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(bin)
        .args(args)
        .env("KVTIER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let name = bin
        .file_name()
        .map_or_else(|| "child".into(), |n| n.to_string_lossy().into_owned());
    let proc = Proc { child, name };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    if !line.starts_with(ready) {
        let logs = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "{} did not become ready (printed {line:?}); log {}:\n{logs}",
            bin.display(),
            log.display()
        );
    }
    Ok((proc, line))
}

fn field(line: &str, name: &str) -> Result<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no {name} in {line:?}"))
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
}

/// Model and namespace of the replay.
pub const MODEL: &str = "sim-model";
const NAMESPACE: &str = "system-replay";

/// Running processes of one configuration (dropped: all stopped).
pub struct Fleet {
    // Drop order: router, workers, agents, server.
    router: Proc,
    workers: Vec<Proc>,
    agents: Vec<Proc>,
    server: Proc,
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
        .collect();
        let (server, line) = spawn(
            &sibling("kvtier-server", &spec.bin_dir)?,
            &server_args,
            &dir.join("server.log"),
            "kvtier-server ready",
        )?;
        let grpc: SocketAddr = field(&line, "grpc=")?.parse()?;
        let server_metrics: SocketAddr = field(&line, "metrics=")?.parse()?;
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
            let (agent, line) = spawn(
                &agent_bin,
                &args,
                &dir.join(format!("agent-{id}.log")),
                "kvtier-agent ready",
            )?;
            let agent_url = format!("http://{}", field(&line, "grpc=")?);
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
            let (worker, line) = spawn(
                &worker_bin,
                &args,
                &dir.join(format!("worker-{id}.log")),
                "kvtier-sim-worker ready",
            )?;
            if field(&line, "agent=")? != "attached" {
                bail!("worker {id} did not attach to its agent: {line}");
            }
            let http: SocketAddr = field(&line, "http=")?.parse()?;
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
        let (router, line) = spawn(
            &sibling("kvtier-router", &spec.bin_dir)?,
            &args,
            &dir.join("router.log"),
            "kvtier-router ready",
        )?;
        let fleet = Self {
            router_http: field(&line, "http=")?.parse()?,
            router_grpc: field(&line, "grpc=")?.parse()?,
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

/// A plain HTTP/1.1 GET returning the body (for `/metrics`).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sum of all samples of `name` whose labels contain every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
