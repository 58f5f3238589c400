//! The processes, all on loopback, logs in the run's temp directory:
//! - the vLLM event publisher (`bench/scripts/vllm_event_publisher.py`), one
//!   PUB socket per simulated worker, started first since it binds them; it
//!   publishes the plan once all 2 × W subscriptions are in;
//! - `kvtier-server` (temp data dir), W `kvtier-agent --vllm-events`, and
//!   `kvtier-router` (`--worker worker-I=<dummy HTTP base>@<agent>`; only
//!   gRPC is queried);
//! - Dynamo's indexer (`bench/scripts/dynamo_indexer_peer.py`, which
//!   documents its flags and HTTP API), subscribed to the same sockets.
//!
//! Under `--pin` every one of them runs on the services' CPUs. Each process
//! is killed when its handle drops, so a failed run leaves none behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kvtier_testkit::{free_port, Binary, Launch, Process};

use super::client::Http;
use super::measure::Endpoints;
use super::pinning::{service_command, Pinning};
use super::{Args, MODEL};

/// The kvtier binaries (`--server-bin` etc., or next to this one).
pub struct Bins {
    pub server: PathBuf,
    pub agent: PathBuf,
    pub router: PathBuf,
}

impl Bins {
    pub fn find(args: &Args) -> Result<Self> {
        let find = |name: &str, flag: &str, explicit: &Option<PathBuf>| {
            Binary::new(name)
                .explicit(explicit.as_deref())
                .hint(format!("pass --{flag}"))
                .find()
        };
        Ok(Self {
            server: find("kvtier-server", "server-bin", &args.server_bin)?,
            agent: find("kvtier-agent", "agent-bin", &args.agent_bin)?,
            router: find("kvtier-router", "router-bin", &args.router_bin)?,
        })
    }
}

/// What [`Fleet::start`] needs besides the flags.
pub struct Spec<'a> {
    pub args: &'a Args,
    pub pinning: Option<&'a Pinning>,
    pub bins: &'a Bins,
    pub python: &'a Path,
    /// The run's temp directory (logs, the server's data).
    pub dir: &'a Path,
    pub publisher_script: &'a Path,
    pub peer_script: &'a Path,
    pub plan: &'a Path,
    /// The publisher's PUB ports, one per worker.
    pub ports: &'a [u16],
}

/// The running processes; dropping it kills them, in field order (Dynamo
/// first, the publisher last). The underscored ones are only held for that.
pub struct Fleet {
    _dynamo: Peer,
    _router: Process,
    agents: Vec<Process>,
    _server: Process,
    publisher: Process,
    /// The publisher's stdout after its ready line (its summary once done).
    published: Option<Receiver<String>>,
    publisher_log: PathBuf,
    pub endpoints: Endpoints,
}

impl Fleet {
    /// Starts every process in order; returns once each is ready, with a
    /// connection to Dynamo's indexer that answered `/health`.
    pub async fn start(spec: Spec<'_>) -> Result<(Self, Http)> {
        let Spec {
            args,
            pinning,
            bins,
            python,
            dir,
            publisher_script,
            peer_script,
            plan,
            ports,
        } = spec;
        // The publisher first (it binds the endpoints), then every subscriber.
        let publisher_log = dir.join("publisher.log");
        let mut publisher = launch(python, pinning, "publisher bound", &publisher_log)
            .arg(publisher_script)
            .arg("--plan")
            .arg(plan)
            .args(["--subscribers", "2"])
            .stdin(Stdio::piped())
            .keep_lines()
            .spawn()?;
        let published = publisher.take_lines();
        let data = dir.join("data");
        let server = launch(
            &bins.server,
            pinning,
            "kvtier-server ready",
            &dir.join("server.log"),
        )
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(&data)
        .spawn()?;
        let server_addr: String = server.line().parse("grpc")?;
        let bs = args.block_tokens.to_string();
        let mut agents = Vec::new();
        let mut worker_flags = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let agent = launch(
                &bins.agent,
                pinning,
                "kvtier-agent ready",
                &dir.join(format!("agent-{i}.log")),
            )
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--server",
                &format!("http://{server_addr}"),
                "--worker-id",
                &format!("worker-{i}"),
                "--block-tokens",
                &bs,
                "--vllm-events",
                &format!("tcp://127.0.0.1:{port}"),
                "--vllm-idle-reconnect-ms",
                "600000",
            ])
            .spawn()?;
            let agent_addr: String = agent.line().parse("grpc")?;
            worker_flags.push("--worker".to_string());
            // Only gRPC FindMatches is queried: the worker's HTTP base is a dummy.
            worker_flags.push(format!("worker-{i}=http://127.0.0.1:9@http://{agent_addr}"));
            agents.push(agent);
        }
        let router = launch(
            &bins.router,
            pinning,
            "kvtier-router ready",
            &dir.join("router.log"),
        )
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--cache-server",
            &format!("http://{server_addr}"),
            "--model",
            MODEL,
            "--namespace",
            "bench",
            "--block-tokens",
            &bs,
        ])
        .args(&worker_flags)
        .spawn()?;
        let router_addr: String = router.line().parse("grpc")?;
        let router_pid = router.pid();
        let dyn_port = free_port()?;
        let dyn_workers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{i}=tcp://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let dyn_log = dir.join("dynamo.log");
        let mut dyn_cmd = service_command(python, pinning);
        dyn_cmd
            .arg(peer_script)
            .args(["--port", &dyn_port.to_string(), "--block-size", &bs])
            .args(["--workers", &dyn_workers, "--model-name", MODEL]);
        if let Some(t) = args.dynamo_threads {
            dyn_cmd.args(["--threads", &t.to_string()]);
        }
        let dyn_child = dyn_cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&dyn_log)?))
            .spawn()
            .context("spawn Dynamo's indexer")?;
        let dynamo = Peer(dyn_child);
        let dyn_addr: SocketAddr = format!("127.0.0.1:{dyn_port}").parse()?;
        let probe = healthy(dyn_addr, &dyn_log).await?;
        let fleet = Self {
            endpoints: Endpoints {
                router: router_addr,
                router_pid,
                dynamo: dyn_addr,
                dynamo_pid: dynamo.0.id(),
            },
            _dynamo: dynamo,
            _router: router,
            agents,
            _server: server,
            publisher,
            published,
            publisher_log,
        };
        Ok((fleet, probe))
    }

    /// Waits (3 minutes at most) for the publisher to have sent the whole
    /// plan; returns its summary line.
    pub async fn published(&mut self) -> Result<String> {
        let lines = self
            .published
            .take()
            .ok_or_else(|| anyhow!("the publisher's output was already read"))?;
        let (lines, line) = tokio::task::spawn_blocking(move || {
            let line = lines.recv_timeout(Duration::from_secs(180));
            (lines, line)
        })
        .await?;
        self.published = Some(lines);
        line.map_err(|_| {
            anyhow!(
                "the publisher did not finish: {}",
                tail(&self.publisher_log)
            )
        })
    }

    /// Lets the publisher exit (its stdin closed, then its stdout seen to
    /// close), then stops the agents; the rest go on drop.
    pub fn finish(&mut self) {
        drop(self.publisher.take_stdin());
        if let Some(lines) = self.published.take() {
            while lines.recv().is_ok() {}
        }
        self.agents.clear();
    }
}

/// A service process under `--pin`'s `taskset` when pinning, with
/// `KVTIER_LOG=warn`, stderr to `log`, ready once a stdout line starts with
/// `ready` (earlier lines skipped).
fn launch(program: &Path, pinning: Option<&Pinning>, ready: &str, log: &Path) -> Launch {
    Launch::from_command(service_command(program, pinning))
        .ready(ready)
        .log(log)
        .env("KVTIER_LOG", "warn")
        .stdin(Stdio::null())
        .skip_other_lines()
}

/// Dynamo's indexer: it prints no ready line (it is ready once `/health`
/// answers), so it is a plain child, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last 20 lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A connection to Dynamo's indexer once it answers `/health` (60 s at most).
async fn healthy(addr: SocketAddr, log: &Path) -> Result<Http> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut h) = Http::connect(addr).await {
            if let Ok((200, _)) = h.call("GET", "/health", Bytes::new()).await {
                return Ok(h);
            }
        }
        if Instant::now() > deadline {
            bail!("Dynamo's indexer did not answer /health:\n{}", tail(log));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
