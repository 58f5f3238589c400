//! Test harness: starts the real kvtier binaries on loopback ports with temp
//! data directories and talks to them as a client would.
//!
//! Binaries are looked up next to the test executable's target directory
//! (`target/<profile>/`), or at `$KVTIER_SERVER_BIN`. Build them first:
//! `cargo build --release --workspace --bins` (the project's test script does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kvtier_proto::hashing::{effective_seed, BlockHasher, DEFAULT_SEED};
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::*;
use tonic::transport::Channel;

pub mod model_api;
pub mod router;
pub use router::RouterProcess;

/// Path of a workspace binary built in the same profile as the tests.
pub fn binary(name: &str, env_override: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_override) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-exe>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))?;
    let path = profile_dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release --workspace --bins` \
             (or set {env_override})",
            path.display()
        );
    }
    Ok(path)
}

/// A running `kvtier-server` process. Killed (SIGKILL) on drop.
pub struct ServerProcess {
    child: Option<Child>,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// `/metrics` address.
    pub metrics: SocketAddr,
    /// Data directory (kept by the caller's `TempDir`).
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the server on free loopback ports with `data_dir` and extra flags,
    /// and waits until it reports ready.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Result<Self> {
        let bin = binary("kvtier-server", "KVTIER_SERVER_BIN")?;
        let log = data_dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut child = Command::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra_args)
            .env("KVTIER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .context("spawn kvtier-server")?;
        let line = match first_stdout_line(&mut child)? {
            Ok(line) if line.starts_with("kvtier-server ready") => line,
            other => {
                let _ = child.kill();
                let logs = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("kvtier-server did not become ready ({other:?}); log:\n{logs}");
            }
        };
        let field = |name: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .ok_or_else(|| anyhow!("no {name} in {line:?}"))?
                .parse()
                .with_context(|| format!("bad address in {line:?}"))
        };
        Ok(Self {
            grpc: field("grpc=")?,
            metrics: field("metrics=")?,
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            log,
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, then wait for the process to be gone.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to 30 s for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Result<i32> {
        let Some(mut child) = self.child.take() else {
            bail!("server already stopped");
        };
        terminate_child(&mut child, "server")
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
        http_get(self.metrics, "/metrics")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The first line a child prints on its (piped) stdout, waiting up to 60 s
/// (`Err(timeout)` inside); a thread keeps draining the pipe afterwards so the
/// child never blocks on a full pipe.
pub fn first_stdout_line(child: &mut Child) -> Result<Result<String, mpsc::RecvTimeoutError>> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    Ok(rx.recv_timeout(Duration::from_secs(60)))
}

/// A plain HTTP/1.1 GET returning the body (enough for `/metrics`).
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
    Ok(body.to_string())
}

/// Sum of all samples of a metric whose label set contains every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A hashing configuration for tests.
pub fn config(block_tokens: u32, block_bytes: u64) -> HashingConfig {
    HashingConfig {
        block_tokens,
        seed: DEFAULT_SEED,
        salt: String::new(),
        block_bytes,
        kv_layout: "test:layers=2,kv=2".into(),
        model: "test-model".into(),
    }
}

/// Handshakes `namespace` with `config` and returns the session id.
pub async fn handshake(
    client: &mut CacheServiceClient<Channel>,
    namespace: &str,
    config: HashingConfig,
) -> Result<String, tonic::Status> {
    Ok(client
        .handshake(HandshakeRequest {
            namespace: namespace.into(),
            config: Some(config),
            client_name: "integration-test".into(),
        })
        .await?
        .into_inner()
        .session_id)
}

/// Sequence hashes of a synthetic prompt: `n` blocks of `block_tokens` tokens
/// derived from `seed` (distinct seeds give distinct prefixes).
pub fn prompt_hashes(seed: u32, n: usize, block_tokens: usize) -> Vec<u64> {
    let tokens: Vec<u32> = (0..(n * block_tokens) as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(seed))
        .collect();
    BlockHasher::new(block_tokens, effective_seed(DEFAULT_SEED, "")).sequence_hashes(&tokens)
}

/// Deterministic payload for a block, derived from its hash.
pub fn payload_for(hash: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut x = hash | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Put messages for a chain of hashes with deterministic payloads.
pub fn put_messages(session: &str, hashes: &[u64], len: usize) -> Vec<PutRequest> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| PutRequest {
            session_id: if i == 0 {
                session.into()
            } else {
                String::new()
            },
            block: Some(BlockData {
                hash: h,
                parent_hash: i.checked_sub(1).map(|p| hashes[p]),
                payload: payload_for(h, len),
            }),
        })
        .collect()
}

/// Puts a chain of blocks in one stream.
pub async fn put_chain(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    hashes: &[u64],
    len: usize,
) -> Result<PutResponse, tonic::Status> {
    let messages = put_messages(session, hashes, len);
    Ok(client.put(tokio_stream::iter(messages)).await?.into_inner())
}

/// Gets blocks and collects the whole response stream.
pub async fn get_all(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    hashes: &[u64],
) -> Result<Vec<GetResponse>, tonic::Status> {
    let mut stream = client
        .get(GetRequest {
            session_id: session.into(),
            hashes: hashes.to_vec(),
            stop_at_first_miss: false,
            agent_id: String::new(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await? {
        out.push(item);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Worker agent (`kvtier-agent`) and simulated engine (`kvtier-sim-engine`).
// ---------------------------------------------------------------------------

/// A free loopback port (bound then released; fine for tests).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawns `bin` with `args`, stderr to `log`, and waits for a stdout line
/// starting with `ready_prefix`; returns the child and that line.
pub(crate) fn spawn_ready(
    bin: &Path,
    args: &[String],
    log: &Path,
    ready_prefix: &str,
) -> Result<(Child, String)> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(bin)
        .args(args)
        .env("KVTIER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    match first_stdout_line(&mut child)? {
        Ok(line) if line.starts_with(ready_prefix) => Ok((child, line)),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let logs = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{} did not become ready ({other:?}); log:\n{logs}",
                bin.display()
            );
        }
    }
}

/// SIGTERM, then wait up to 30 s for the exit code.
pub(crate) fn terminate_child(child: &mut Child, what: &str) -> Result<i32> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM {what} failed");
    }
    for _ in 0..300 {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    bail!("{what} did not exit within 30 s of SIGTERM")
}

impl ServerProcess {
    /// Like [`ServerProcess::start`], but on a fixed gRPC address (to restart a
    /// server where its clients expect it). Metrics are off.
    pub fn start_at(data_dir: &Path, listen: SocketAddr, extra_args: &[&str]) -> Result<Self> {
        let bin = binary("kvtier-server", "KVTIER_SERVER_BIN")?;
        let log = data_dir.with_extension("log");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.to_string(),
            "--metrics-listen".into(),
            "off".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let (child, line) = spawn_ready(&bin, &args, &log, "kvtier-server ready")?;
        let grpc = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("grpc="))
            .ok_or_else(|| anyhow!("no grpc= in {line:?}"))?
            .parse()?;
        Ok(Self {
            child: Some(child),
            grpc,
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            log,
        })
    }
}

/// A running `kvtier-agent`. Killed (SIGKILL) on drop.
pub struct AgentProcess {
    child: Option<Child>,
    /// gRPC (TCP) address.
    pub grpc: SocketAddr,
    /// Unix socket path, when one was asked for.
    pub uds: Option<PathBuf>,
    /// `/metrics` address.
    pub metrics: Option<SocketAddr>,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts an agent for the cache server at `server` on a free loopback
    /// port; `log` receives its stderr; `extra_args` are appended
    /// (e.g. `--worker-id A`, `--uds /path`).
    pub fn start(log: &Path, server: SocketAddr, extra_args: &[&str]) -> Result<Self> {
        Self::start_url(log, &format!("http://{server}"), extra_args)
    }

    /// Like [`AgentProcess::start`] with the server's URL (e.g. `https://...`).
    pub fn start_url(log: &Path, server_url: &str, extra_args: &[&str]) -> Result<Self> {
        let bin = binary("kvtier-agent", "KVTIER_AGENT_BIN")?;
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--server".into(),
            server_url.to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let (child, line) = spawn_ready(&bin, &args, log, "kvtier-agent ready")?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .map(str::to_string)
        };
        let grpc = field("grpc=")
            .ok_or_else(|| anyhow!("no grpc= in {line:?}"))?
            .parse()?;
        let uds = field("uds=").filter(|u| u != "off").map(PathBuf::from);
        let metrics = field("metrics=")
            .filter(|m| m != "off")
            .map(|m| m.parse())
            .transpose()?;
        Ok(Self {
            child: Some(child),
            grpc,
            uds,
            metrics,
            log: log.to_path_buf(),
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
    pub async fn client(
        &self,
    ) -> Result<kvtier_proto::v1::worker_service_client::WorkerServiceClient<Channel>> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))?
            .connect()
            .await?;
        Ok(kvtier_proto::v1::worker_service_client::WorkerServiceClient::new(channel))
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The text of the agent's `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        http_get(
            self.metrics
                .ok_or_else(|| anyhow!("agent metrics are off"))?,
            "/metrics",
        )
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Result<i32> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("agent already stopped"))?;
        terminate_child(&mut child, "kvtier-agent")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `kvtier-sim-engine --agent <agent> --pool <pool> <args...>` to
/// completion and returns the `key=value` fields of its result line.
pub fn sim_engine(
    agent: &str,
    pool: &Path,
    args: &[&str],
) -> Result<std::collections::HashMap<String, String>> {
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
    Ok(line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
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

// ---------------------------------------------------------------------------
// Simulated inference worker (`kvtier-sim-worker`).
// ---------------------------------------------------------------------------

/// A running `kvtier-sim-worker`. Killed (SIGKILL) on drop.
pub struct SimWorkerProcess {
    child: Option<Child>,
    /// HTTP address (`/v1/...`, `/load`, `/metrics`, `/health`).
    pub http: SocketAddr,
    /// The worker id it reported (the agent's, unless `--worker-id` was given).
    pub worker_id: String,
    /// Whether it attached to its agent before reporting ready.
    pub attached: bool,
    log: PathBuf,
}

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
        let bin = binary("kvtier-sim-worker", "KVTIER_SIM_WORKER_BIN")?;
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--agent".into(),
            agent.into(),
            "--pool".into(),
            pool.display().to_string(),
            "--tokenizer".into(),
            tokenizer.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let (child, line) = spawn_ready(&bin, &args, log, "kvtier-sim-worker ready")?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .map(str::to_string)
        };
        Ok(Self {
            http: field("http=")
                .ok_or_else(|| anyhow!("no http= in {line:?}"))?
                .parse()?,
            worker_id: field("worker_id=").ok_or_else(|| anyhow!("no worker_id= in {line:?}"))?,
            attached: field("agent=").as_deref() == Some("attached"),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The worker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The text of `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        http_get(self.http, "/metrics")
    }

    /// The body of `GET /load` (JSON).
    pub fn load_text(&self) -> Result<String> {
        http_get(self.http, "/load")
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Result<i32> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("sim worker already stopped"))?;
        terminate_child(&mut child, "kvtier-sim-worker")
    }
}

impl Drop for SimWorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
