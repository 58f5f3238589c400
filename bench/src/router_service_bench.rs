//! `kvtier-bench router-service`: the router as a service, gRPC `FindMatches`
//! against Dynamo's standalone KV indexer (`python -m dynamo.indexer`, from
//! PyPI `ai-dynamo-runtime`), both fed the same vLLM-format ZMQ event stream,
//! measured in the same run with the same queries and client concurrency.
//!
//! Set-up, all on loopback:
//! - a Python publisher (`bench/scripts/vllm_event_publisher.py`, pyzmq +
//!   msgspec, vLLM's wire format) with one PUB socket per simulated vLLM
//!   worker; each socket is subscribed to by that worker's `kvtier-agent
//!   --vllm-events` and by Dynamo's indexer (`--workers ID=tcp://...`), so
//!   both indexes ingest the identical byte stream;
//! - `kvtier-server` (temp data dir), W `kvtier-agent`s, `kvtier-router`
//!   (`--worker worker-I=<dummy HTTP base>@<agent>`; only gRPC is queried);
//! - Dynamo's indexer (`bench/scripts/dynamo_indexer_peer.py`, which documents
//!   its flags and HTTP API).
//!
//! Workload (synthetic, agentic): sessions that start from one of a few
//! shared system-prompt roots (or fork a sub-agent off another session's
//! context), grow turn by turn to up to `--max-blocks` blocks, sometimes move
//! to another worker (which then stores the part of the context it lacks),
//! and at the end some sessions lose their tail on their last worker
//! (leaf-first `BlockRemoved`, as vLLM evicts). The events are computed here,
//! with the ground truth (per-worker block sets), and written as a plan for
//! the publisher.
//!
//! Queries: the next call of a session (its context at some turn plus the
//! next turn's new blocks and a partial block), and a few unrelated prompts.
//! Both services are asked for the per-worker overlap of each query: by token
//! ids (each service hashes the blocks itself) and by hashes (kvtier: chained
//! sequence hashes; Dynamo's `/query_by_hash`: per-block local hashes, which
//! kvtier's `local_block_hash` computes identically). Before timing, the
//! answers of a sample are checked against each other and the ground truth.
//!
//! Clients: a tonic client for `FindMatches`, a hyper HTTP/1.1 client for
//! Dynamo's JSON API; one connection per in-flight slot on both sides. While
//! timing, both send request bodies encoded beforehand (protobuf bytes through
//! a pass-through tonic codec; JSON bytes) and read each answer in full without
//! decoding it, so the client does the same work for both services (it shares
//! the machine with them). The cross-check decodes both answers. With `--pin`
//! the client's threads keep to the first half of the CPUs and every service
//! process to the other half, so that the rates compare the services' own
//! capacity rather than services plus client.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kvtier_proto::hashing::{BlockHasher, DEFAULT_SEED};
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::{FindMatchesRequest, ListWorkersRequest, PrefixQuery};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

const PUBLISHER_PY: &str = include_str!("../scripts/vllm_event_publisher.py");
const DYNAMO_PY: &str = include_str!("../scripts/dynamo_indexer_peer.py");
const MODEL: &str = "bench-model";
const DYNAMO_PIN: &str = "ai-dynamo-runtime==1.6.0";

/// How queries name their prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Token ids: each service hashes the blocks itself.
    Tokens,
    /// Precomputed hashes (kvtier: sequence hashes; Dynamo: local hashes).
    Hashes,
    /// Both, one after the other.
    Both,
}

/// Flags of `kvtier-bench router-service`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Simulated vLLM workers (one kvtier-agent and one ZMQ socket each).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Tokens per block (vLLM's block_size; kvtier's block_tokens).
    #[arg(long, default_value_t = 16)]
    block_tokens: usize,
    /// Agent sessions in the workload.
    #[arg(long, default_value_t = 48)]
    sessions: usize,
    /// Distinct shared system-prompt roots.
    #[arg(long, default_value_t = 2)]
    roots: usize,
    /// Blocks of each root.
    #[arg(long, default_value_t = 256)]
    root_blocks: usize,
    /// Longest session context, in blocks.
    #[arg(long, default_value_t = 2050)]
    max_blocks: usize,
    /// Most turns (model calls) of a session; each has 4 or more.
    #[arg(long, default_value_t = 24)]
    max_turns: usize,
    /// Chance that a turn runs on another worker than the previous one.
    #[arg(long, default_value_t = 0.1)]
    migrate: f64,
    /// Chance that a session is a sub-agent forked off another session's context.
    #[arg(long, default_value_t = 0.2)]
    fork: f64,
    /// Chance that a session's tail is evicted from its last worker at the end.
    #[arg(long, default_value_t = 0.25)]
    evict: f64,
    /// Distinct queries (cycled through while measuring).
    #[arg(long, default_value_t = 256)]
    queries: usize,
    /// Requests in flight (one connection each), on both sides.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds per service, mode and round.
    #[arg(long, default_value_t = 4.0)]
    duration_s: f64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 0.5)]
    warmup_s: f64,
    /// Rounds; each measures both services back to back (alternating which
    /// goes first), so that both see the same noise. Rates are medians over
    /// rounds, the ratio the median of the per-round ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Query by token ids, by hashes, or both.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Queries whose answers are cross-checked (both services and the ground truth).
    #[arg(long, default_value_t = 128)]
    check: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Python with ai-dynamo-runtime, pyzmq and msgspec (default: the venv below,
    /// created with pip when missing).
    #[arg(long, env = "KVTIER_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Virtual environment for Dynamo (default ~/.cache/kvtier-dynamo-venv).
    #[arg(long, env = "KVTIER_DYNAMO_VENV")]
    venv: Option<PathBuf>,
    /// Dynamo indexer threads (--threads; default: the indexer's own default, 4).
    #[arg(long)]
    dynamo_threads: Option<usize>,
    /// Longest wait for both indexes to apply every event.
    #[arg(long, default_value_t = 120)]
    catchup_timeout_s: u64,
    /// kvtier-server binary (default: next to this binary).
    #[arg(long, env = "KVTIER_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// kvtier-agent binary (default: next to this binary).
    #[arg(long, env = "KVTIER_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// kvtier-router binary (default: next to this binary).
    #[arg(long, env = "KVTIER_ROUTER_BIN")]
    router_bin: Option<PathBuf>,
    /// Also print the results as one JSON object (last line).
    #[arg(long)]
    json: bool,
    /// Keep the benchmark's client off the services' CPUs: the client's
    /// threads run on the first half of the machine's CPUs, every service
    /// process (cache server, agents, router, Dynamo's indexer, the event
    /// publisher) on the other half (`taskset`, Linux). Without it all share
    /// every CPU and the measured rates include the client's CPU cost.
    #[arg(long)]
    pin: bool,
}

/// CPU lists (`taskset -c` syntax) of the client and of the services under `--pin`.
#[derive(Debug, Clone)]
struct Pinning {
    client: Vec<usize>,
    services: String,
}

impl Pinning {
    fn new(pin: bool) -> Result<Option<Self>> {
        if !pin {
            return Ok(None);
        }
        // The machine's CPUs, not this thread's (which `bind_client` narrows).
        // SAFETY: sysconf reads a system constant.
        let cpus = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
            .context("sysconf(_SC_NPROCESSORS_ONLN)")?;
        anyhow::ensure!(
            cpus >= 2,
            "--pin needs at least 2 CPUs, this machine has {cpus}"
        );
        let half = cpus / 2;
        Ok(Some(Self {
            client: (0..half).collect(),
            services: format!("{half}-{}", cpus - 1),
        }))
    }

    /// Binds the calling thread (and the threads it starts later) to the client's CPUs.
    fn bind_client(&self) -> Result<()> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
        // sched_setaffinity only read and write the set given.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &self.client {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                bail!(
                    "sched_setaffinity to CPUs {:?}: {}",
                    self.client,
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    }
}

/// A command for a service process: under `taskset -c <service CPUs>` when pinning.
fn service_command(program: &Path, pinning: Option<&Pinning>) -> Command {
    match pinning {
        Some(pinning) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &pinning.services]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

// ---------------------------------------------------------------- processes

fn sibling(name: &str, explicit: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent of {}", exe.display()))?
        .join(name);
    if !path.exists() {
        bail!(
            "{} not found: `cargo build --release --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A child process, killed on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns a process whose first stdout line starting with `ready` announces
/// it is serving (other lines go on to `lines`); stderr goes to `log`.
fn spawn_ready(
    cmd: &mut Command,
    ready: &str,
    log: &Path,
    keep_stdin: bool,
) -> Result<(Proc, String, std::sync::mpsc::Receiver<String>)> {
    let log_file = std::fs::File::create(log)?;
    let mut child = cmd
        .env("KVTIER_LOG", "warn")
        .stdin(if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stdin = child.stdin.take();
    let proc = Proc { child, stdin };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(ready) => return Ok((proc, line, rx)),
            Ok(_) => continue,
            Err(_) => bail!(
                "{cmd:?} did not print {ready:?}; its log ({}):\n{}",
                log.display(),
                tail(log)
            ),
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn field(line: &str, key: &str) -> Result<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no {key} in {line:?}"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ------------------------------------------------------------------- python

fn runs(python: &Path, args: &[&str]) -> bool {
    Command::new(python)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What a missing Python means for the run.
enum PythonStatus {
    Ready(PathBuf, String),
    /// python or pip is not there: the benchmark is skipped.
    Unavailable(String),
}

/// Finds (or installs into a venv) a Python with ai-dynamo-runtime, pyzmq, msgspec.
fn find_python(args: &Args, peer_script: &Path) -> Result<PythonStatus> {
    let check = |python: &Path| -> Option<String> {
        let out = Command::new(python)
            .arg(peer_script)
            .arg("--check")
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if let Some(p) = &args.python {
        return match check(p) {
            Some(v) => Ok(PythonStatus::Ready(p.clone(), v)),
            None => bail!(
                "{} cannot import dynamo, zmq and msgspec: pip install {DYNAMO_PIN} pyzmq msgspec",
                p.display()
            ),
        };
    }
    let venv = match &args.venv {
        Some(v) => v.clone(),
        None => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/kvtier-dynamo-venv"),
    };
    let vpy = venv.join("bin/python");
    if vpy.exists() {
        if let Some(v) = check(&vpy) {
            return Ok(PythonStatus::Ready(vpy, v));
        }
    }
    let system = PathBuf::from("python3");
    if !runs(&system, &["--version"]) {
        return Ok(PythonStatus::Unavailable("no python3 on PATH".into()));
    }
    if !vpy.exists() {
        eprintln!("creating {} ...", venv.display());
        let ok = Command::new(&system)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Ok(PythonStatus::Unavailable(
                "python3 -m venv failed (no venv/ensurepip module)".into(),
            ));
        }
    }
    if !runs(&vpy, &["-m", "pip", "--version"]) {
        return Ok(PythonStatus::Unavailable(format!(
            "no pip in {}",
            venv.display()
        )));
    }
    eprintln!(
        "installing {DYNAMO_PIN} pyzmq msgspec into {} ...",
        venv.display()
    );
    let ok = Command::new(&vpy)
        .args([
            "-m", "pip", "install", "--quiet", DYNAMO_PIN, "pydantic", "uvloop", "pyzmq", "msgspec",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    match (ok, check(&vpy)) {
        (true, Some(v)) => Ok(PythonStatus::Ready(vpy, v)),
        _ => bail!(
            "pip install {DYNAMO_PIN} pyzmq msgspec into {} failed",
            venv.display()
        ),
    }
}

// ----------------------------------------------------------------- workload

/// splitmix64 step: a small, seedable PRNG (the workload must be reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn token(&mut self) -> u32 {
        (self.next() % 150_000) as u32
    }
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// vLLM-like engine hash of a block: not kvtier's (the engine's hashes are
/// not portable), unique per prefix, positive 63-bit.
fn engine_hash(seq: u64) -> u64 {
    mix(seq ^ 0x5EED_E1E6_0000_0001) >> 1
}

struct Session {
    /// Full-block tokens of the final context.
    tokens: Vec<u32>,
    /// Sequence hashes of those blocks.
    seq: Vec<u64>,
    /// Blocks at the end of each turn (increasing; the last is the final length).
    cum: Vec<usize>,
    /// Worker of each turn.
    worker: Vec<usize>,
    start_round: usize,
}

/// One event of the publisher's plan.
#[derive(Serialize)]
struct PlanEvent {
    /// "s" stored, "r" removed.
    t: &'static str,
    /// Engine block hashes.
    h: Vec<u64>,
    /// Parent's engine hash (stored).
    p: Option<u64>,
    /// Token ids (stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<Vec<u32>>,
}

#[derive(Serialize)]
struct PlanWorker {
    port: u16,
    batches: Vec<Vec<PlanEvent>>,
}

#[derive(Serialize)]
struct Plan {
    block_size: usize,
    workers: Vec<PlanWorker>,
}

struct Workload {
    plan: Plan,
    /// Ground truth: sequence hashes in each worker's pool at the end.
    present: Vec<HashSet<u64>>,
    sessions: Vec<Session>,
    stored_blocks: usize,
    removed_blocks: usize,
    events: usize,
}

fn generate(args: &Args, ports: &[u16], hasher: &BlockHasher) -> Workload {
    let bs = args.block_tokens;
    let w_n = args.workers;
    let mut rng = Rng(args.seed);
    let roots: Vec<Vec<u32>> = (0..args.roots.max(1))
        .map(|_| (0..args.root_blocks * bs).map(|_| rng.token()).collect())
        .collect();
    let mut sessions: Vec<Session> = Vec::with_capacity(args.sessions);
    for s in 0..args.sessions {
        let (mut tokens, start_round, first_worker) = if s >= 2 && rng.chance(args.fork) {
            let p = rng.below(s);
            let parent = &sessions[p];
            let t = rng.below(parent.cum.len());
            (
                parent.tokens[..parent.cum[t] * bs].to_vec(),
                parent.start_round + t + 1,
                if rng.chance(0.5) {
                    parent.worker[t]
                } else {
                    rng.below(w_n)
                },
            )
        } else {
            (roots[s % roots.len()].clone(), s % 4, s % w_n)
        };
        let base = tokens.len() / bs;
        let final_blocks = rng.range(base + 32, args.max_blocks.max(base + 32));
        tokens.extend((tokens.len()..final_blocks * bs).map(|_| rng.token()));
        let turns = rng.range(4, args.max_turns.max(4)).min(final_blocks - base);
        let mut cuts: Vec<usize> = (0..turns - 1)
            .map(|_| rng.range(base + 1, final_blocks - 1))
            .collect();
        cuts.push(final_blocks);
        cuts.sort_unstable();
        cuts.dedup();
        let mut worker = Vec::with_capacity(cuts.len());
        let mut w = first_worker;
        for _ in 0..cuts.len() {
            if w_n > 1 && rng.chance(args.migrate) {
                w = (w + 1 + rng.below(w_n - 1)) % w_n;
            }
            worker.push(w);
        }
        let seq = hasher.sequence_hashes(&tokens);
        sessions.push(Session {
            tokens,
            seq,
            cum: cuts,
            worker,
            start_round,
        });
    }

    // Publish order: by round (a session's turn t happens in round start + t).
    let mut order: Vec<(usize, usize, usize)> = sessions
        .iter()
        .enumerate()
        .flat_map(|(s, sess)| (0..sess.cum.len()).map(move |t| (sess.start_round + t, s, t)))
        .collect();
    order.sort_unstable();
    let mut present: Vec<HashSet<u64>> = vec![HashSet::new(); w_n];
    let mut batches: Vec<Vec<Vec<PlanEvent>>> = (0..w_n).map(|_| Vec::new()).collect();
    // Longest context each session had on each worker.
    let mut held: Vec<HashMap<usize, usize>> = vec![HashMap::new(); w_n];
    let (mut stored_blocks, mut removed_blocks, mut events) = (0, 0, 0);
    for (_, s, t) in order {
        let sess = &sessions[s];
        let (w, n) = (sess.worker[t], sess.cum[t]);
        let i0 = sess.seq[..n]
            .iter()
            .take_while(|h| present[w].contains(h))
            .count();
        let e = held[w].entry(s).or_insert(0);
        *e = (*e).max(n);
        if i0 == n {
            continue;
        }
        present[w].extend(&sess.seq[i0..n]);
        stored_blocks += n - i0;
        events += 1;
        batches[w].push(vec![PlanEvent {
            t: "s",
            h: sess.seq[i0..n].iter().map(|&h| engine_hash(h)).collect(),
            p: (i0 > 0).then(|| engine_hash(sess.seq[i0 - 1])),
            k: Some(sess.tokens[i0 * bs..n * bs].to_vec()),
        }]);
    }
    // Evictions at the end, leaf-first, of blocks no other session on that
    // worker uses: a session's tail on its last worker.
    let mut refs: Vec<HashMap<u64, u32>> = vec![HashMap::new(); w_n];
    for (w, h) in held.iter().enumerate() {
        for (&s, &n) in h {
            for &hash in &sessions[s].seq[..n] {
                *refs[w].entry(hash).or_insert(0) += 1;
            }
        }
    }
    for (s, sess) in sessions.iter().enumerate() {
        if !rng.chance(args.evict) {
            continue;
        }
        let w = *sess.worker.last().unwrap_or(&0);
        let n = held[w].get(&s).copied().unwrap_or(0);
        let keep = rng.range(args.root_blocks.min(n), n);
        let victims: Vec<u64> = sess.seq[keep..n]
            .iter()
            .rev()
            .take_while(|h| refs[w].get(h) == Some(&1) && present[w].contains(h))
            .copied()
            .collect();
        if victims.is_empty() {
            continue;
        }
        for h in &victims {
            present[w].remove(h);
        }
        removed_blocks += victims.len();
        events += 1;
        batches[w].push(vec![PlanEvent {
            t: "r",
            h: victims.iter().map(|&h| engine_hash(h)).collect(),
            p: None,
            k: None,
        }]);
    }
    Workload {
        plan: Plan {
            block_size: bs,
            workers: ports
                .iter()
                .zip(batches)
                .map(|(&port, batches)| PlanWorker { port, batches })
                .collect(),
        },
        present,
        sessions,
        stored_blocks,
        removed_blocks,
        events,
    }
}

/// One query, in both services' encodings, with its expected answer.
struct Query {
    tokens: Vec<u32>,
    seq: Vec<u64>,
    local: Vec<u64>,
    /// Expected overlap (leading run of blocks) on each worker.
    truth: Vec<u32>,
}

fn make_queries(args: &Args, wl: &Workload, hasher: &BlockHasher) -> Vec<Query> {
    let bs = args.block_tokens;
    let mut rng = Rng(args.seed ^ 0xA11CE);
    (0..args.queries)
        .map(|_| {
            let mut tokens: Vec<u32> = if rng.chance(0.05) {
                // an unrelated prompt
                let n = rng.range(64, args.max_blocks.max(64)) * bs;
                (0..n).map(|_| rng.token()).collect()
            } else {
                // the next call of a session: its context at turn t, the new
                // blocks of turn t + 1
                let sess = &wl.sessions[rng.below(wl.sessions.len())];
                let t = rng.below(sess.cum.len());
                let n = sess.cum[(t + 1).min(sess.cum.len() - 1)];
                sess.tokens[..n * bs].to_vec()
            };
            // and a partial block at the end
            let extra = rng.below(bs);
            tokens.extend((0..extra).map(|_| rng.token()));
            let seq = hasher.sequence_hashes(&tokens);
            let local = hasher.local_hashes(&tokens);
            let truth = wl
                .present
                .iter()
                .map(|set| seq.iter().take_while(|h| set.contains(h)).count() as u32)
                .collect();
            Query {
                tokens,
                seq,
                local,
                truth,
            }
        })
        .collect()
}

// ------------------------------------------------------------------ clients

#[derive(Serialize)]
struct DynTokens<'a> {
    token_ids: &'a [u32],
    model_name: &'a str,
}

#[derive(Serialize)]
struct DynHashes<'a> {
    block_hashes: Vec<i64>,
    model_name: &'a str,
}

#[derive(Deserialize)]
struct DynAnswer {
    scores: HashMap<String, HashMap<String, u64>>,
}

fn kv_request(q: &Query, mode: Mode) -> FindMatchesRequest {
    let (hashes, token_ids) = match mode {
        Mode::Hashes => (q.seq.clone(), Vec::new()),
        _ => (Vec::new(), q.tokens.clone()),
    };
    FindMatchesRequest {
        prefix: Some(PrefixQuery {
            model: MODEL.into(),
            hashes,
            token_ids,
        }),
    }
}

fn dyn_request(q: &Query, mode: Mode) -> Result<(&'static str, Bytes)> {
    Ok(match mode {
        Mode::Hashes => (
            "/query_by_hash",
            Bytes::from(serde_json::to_vec(&DynHashes {
                block_hashes: q.local.iter().map(|&h| h as i64).collect(),
                model_name: MODEL,
            })?),
        ),
        _ => (
            "/query",
            Bytes::from(serde_json::to_vec(&DynTokens {
                token_ids: &q.tokens,
                model_name: MODEL,
            })?),
        ),
    })
}

async fn kv_client(addr: &str) -> Result<RouterServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(RouterServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A gRPC codec that sends pre-encoded protobuf bytes and hands back the
/// response's bytes undecoded: the timed gRPC client does what the timed HTTP
/// client does (send a prepared body, read the whole answer).
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

const FIND_MATCHES_PATH: &str = "/kvtier.v1.RouterService/FindMatches";

struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    async fn call(&mut self, method: &str, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Per-worker overlap in blocks, from kvtier's answer.
async fn kv_answer(
    client: &mut RouterServiceClient<Channel>,
    q: &Query,
    mode: Mode,
    workers: usize,
) -> Result<Vec<u32>> {
    let resp = client.find_matches(kv_request(q, mode)).await?.into_inner();
    let mut out = vec![0; workers];
    for m in resp.workers {
        let i: usize = m
            .worker_id
            .strip_prefix("worker-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unexpected worker id {:?}", m.worker_id))?;
        if let Some(slot) = out.get_mut(i) {
            *slot = m.hbm_blocks;
        }
    }
    Ok(out)
}

/// Per-worker overlap in blocks, from Dynamo's answer (scores are in tokens).
async fn dyn_answer(
    http: &mut Http,
    q: &Query,
    mode: Mode,
    workers: usize,
    bs: usize,
) -> Result<Vec<u32>> {
    let (path, body) = dyn_request(q, mode)?;
    let (status, body) = http.call("POST", path, body).await?;
    if status != 200 {
        bail!(
            "Dynamo {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let answer: DynAnswer = serde_json::from_slice(&body)?;
    let mut out = vec![0; workers];
    for (id, ranks) in answer.scores {
        let i: usize = id.parse()?;
        let tokens: u64 = ranks.values().sum();
        if let Some(slot) = out.get_mut(i) {
            *slot = (tokens / bs as u64) as u32;
        }
    }
    Ok(out)
}

// -------------------------------------------------------------- measurement

#[derive(Debug, Clone, Serialize)]
struct Measured {
    qps: f64,
    /// CPU time of the service process per answered query, in µs.
    cpu_us_per_query: f64,
    /// CPU time of the benchmark's client per answered query, in µs.
    client_cpu_us_per_query: f64,
    p50_ms: f64,
    p99_ms: f64,
    queries: usize,
    errors: usize,
}

/// One timed measurement.
struct Round {
    qps: f64,
    /// Latencies in microseconds.
    lat: Vec<u32>,
    errors: usize,
    /// Calls answered, warm-up included.
    calls: usize,
    /// CPU seconds the service process used meanwhile.
    cpu_s: Option<f64>,
    /// CPU seconds this (client) process used meanwhile.
    client_cpu_s: Option<f64>,
}

/// CPU seconds (user + system) of process `pid` so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median rate over rounds; percentiles over every latency of every round.
fn summarize(rounds: &[Round]) -> Measured {
    let mut lat_us: Vec<u32> = rounds.iter().flat_map(|r| r.lat.iter().copied()).collect();
    lat_us.sort_unstable();
    let pct = |p: f64| {
        if lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((lat_us.len() as f64 * p).ceil() as usize).clamp(1, lat_us.len()) - 1;
        lat_us[i] as f64 / 1000.0
    };
    let calls: usize = rounds.iter().map(|r| r.calls).sum();
    let per_query = |cpu: Option<f64>| cpu.map_or(f64::NAN, |c| c * 1e6 / calls.max(1) as f64);
    Measured {
        cpu_us_per_query: per_query(rounds.iter().map(|r| r.cpu_s).sum()),
        client_cpu_us_per_query: per_query(rounds.iter().map(|r| r.client_cpu_s).sum()),
        qps: median(rounds.iter().map(|r| r.qps).collect()),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        queries: lat_us.len(),
        errors: rounds.iter().map(|r| r.errors).sum(),
    }
}

/// Runs `concurrency` closed loops for warm-up + duration; returns the
/// latencies of the calls started after the warm-up and finished before the end.
async fn closed_loops<S, F, Fut>(args: &Args, slots: Vec<S>, call: F) -> Result<Round>
where
    S: Send + 'static,
    F: Fn(S, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (S, Result<()>)> + Send,
{
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup_s);
    let end = warm_end + Duration::from_secs_f64(args.duration_s);
    let n = slots.len();
    let mut tasks = Vec::new();
    for (k, slot) in slots.into_iter().enumerate() {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut slot = Some(slot);
            let (mut lat, mut errors, mut calls) = (Vec::new(), 0usize, 0usize);
            let mut i = k;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let (s, r) = call(slot.take().expect("slot"), i).await;
                slot = Some(s);
                let t1 = Instant::now();
                match r {
                    Ok(()) if t0 >= warm_end && t1 <= end => {
                        calls += 1;
                        lat.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32)
                    }
                    Ok(()) => calls += 1,
                    Err(_) => errors += 1,
                }
                i += n;
            }
            (lat, errors, calls)
        }));
    }
    let (mut lat, mut errors, mut calls) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, c) = t.await?;
        lat.extend(l);
        errors += e;
        calls += c;
    }
    Ok(Round {
        qps: lat.len() as f64 / args.duration_s,
        lat,
        errors,
        calls,
        cpu_s: None,
        client_cpu_s: None,
    })
}

async fn measure_kv(
    args: &Args,
    addr: &str,
    pid: u32,
    queries: &[Query],
    mode: Mode,
) -> Result<Round> {
    let reqs: Arc<Vec<Bytes>> = Arc::new(
        queries
            .iter()
            .map(|q| Bytes::from(kv_request(q, mode).encode_to_vec()))
            .collect(),
    );
    let mut slots = Vec::new();
    for _ in 0..args.concurrency {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        slots.push(tonic::client::Grpc::new(channel));
    }
    let (cpu0, me0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let mut round = closed_loops(args, slots, move |mut grpc, i| {
        let reqs = reqs.clone();
        async move {
            let body = reqs[i % reqs.len()].clone();
            let r = async {
                grpc.ready()
                    .await
                    .map_err(|e| anyhow!("gRPC channel: {e}"))?;
                grpc.unary(
                    tonic::Request::new(body),
                    tonic::codegen::http::uri::PathAndQuery::from_static(FIND_MATCHES_PATH),
                    RawCodec,
                )
                .await?;
                anyhow::Ok(())
            }
            .await;
            (grpc, r)
        }
    })
    .await?;
    round.cpu_s = cpu0.zip(cpu_seconds(pid)).map(|(a, b)| b - a);
    round.client_cpu_s = me0.zip(cpu_seconds(std::process::id())).map(|(a, b)| b - a);
    Ok(round)
}

async fn measure_dyn(
    args: &Args,
    addr: SocketAddr,
    pid: u32,
    queries: &[Query],
    mode: Mode,
) -> Result<Round> {
    let reqs: Arc<Vec<(&'static str, Bytes)>> = Arc::new(
        queries
            .iter()
            .map(|q| dyn_request(q, mode))
            .collect::<Result<_>>()?,
    );
    let mut slots = Vec::new();
    for _ in 0..args.concurrency {
        slots.push(Http::connect(addr).await?);
    }
    let (cpu0, me0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let mut round = closed_loops(args, slots, move |mut http, i| {
        let reqs = reqs.clone();
        async move {
            let (path, body) = reqs[i % reqs.len()].clone();
            let r = match http.call("POST", path, body).await {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => {
                    Err(anyhow!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
                }
                Err(e) => Err(e),
            };
            (http, r)
        }
    })
    .await?;
    round.cpu_s = cpu0.zip(cpu_seconds(pid)).map(|(a, b)| b - a);
    round.client_cpu_s = me0.zip(cpu_seconds(std::process::id())).map(|(a, b)| b - a);
    Ok(round)
}

// -------------------------------------------------------------- cross-check

#[derive(Debug, Default, Clone, Serialize)]
struct Check {
    queries: usize,
    kv_vs_truth: usize,
    dyn_vs_truth: usize,
    kv_vs_dyn: usize,
    examples: Vec<String>,
}

async fn cross_check(
    args: &Args,
    kv: &mut RouterServiceClient<Channel>,
    http: &mut Http,
    queries: &[Query],
    mode: Mode,
) -> Result<Check> {
    let mut c = Check::default();
    for (i, q) in queries.iter().take(args.check).enumerate() {
        let a = kv_answer(kv, q, mode, args.workers).await?;
        let b = dyn_answer(http, q, mode, args.workers, args.block_tokens).await?;
        c.queries += 1;
        c.kv_vs_truth += usize::from(a != q.truth);
        c.dyn_vs_truth += usize::from(b != q.truth);
        c.kv_vs_dyn += usize::from(a != b);
        if (a != q.truth || b != q.truth) && c.examples.len() < 3 {
            c.examples.push(format!(
                "query {i} ({} blocks): truth {:?} kvtier {a:?} dynamo {b:?}",
                q.seq.len(),
                q.truth
            ));
        }
    }
    Ok(c)
}

/// Waits until kvtier's index holds every worker's blocks and Dynamo answers
/// the check sample as the ground truth says; returns the seconds each took.
async fn catch_up(
    args: &Args,
    kv: &mut RouterServiceClient<Channel>,
    http: &mut Http,
    wl: &Workload,
    queries: &[Query],
) -> Result<(Option<f64>, Option<f64>)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.catchup_timeout_s);
    let want: HashMap<String, u64> = wl
        .present
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("worker-{i}"), s.len() as u64))
        .collect();
    let (mut kv_done, mut dyn_done) = (None, None);
    let mut last_kv = String::new();
    let mut last_dyn = String::new();
    while Instant::now() < deadline && (kv_done.is_none() || dyn_done.is_none()) {
        if kv_done.is_none() {
            let resp = kv
                .list_workers(ListWorkersRequest {
                    model: MODEL.into(),
                })
                .await?
                .into_inner();
            let got: HashMap<String, u64> = resp
                .workers
                .iter()
                .map(|w| (w.worker_id.clone(), w.indexed_blocks))
                .collect();
            if got == want {
                kv_done = Some(started.elapsed().as_secs_f64());
            } else {
                last_kv = format!("indexed blocks {got:?}, want {want:?}");
            }
        }
        if dyn_done.is_none() {
            let mut ok = true;
            for q in queries.iter().take(args.check.max(1)) {
                let got =
                    dyn_answer(http, q, Mode::Tokens, args.workers, args.block_tokens).await?;
                if got != q.truth {
                    ok = false;
                    last_dyn = format!("truth {:?}, dynamo {got:?}", q.truth);
                    break;
                }
            }
            if ok {
                dyn_done = Some(started.elapsed().as_secs_f64());
            }
        }
        if kv_done.is_none() || dyn_done.is_none() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if kv_done.is_none() {
        eprintln!("WARNING: kvtier's index did not catch up: {last_kv}");
    }
    if dyn_done.is_none() {
        eprintln!("WARNING: Dynamo's index did not catch up: {last_dyn}");
    }
    Ok((kv_done, dyn_done))
}

// --------------------------------------------------------------------- run

#[derive(Debug, Serialize)]
struct ModeResult {
    mode: &'static str,
    kvtier: Measured,
    dynamo: Measured,
    qps_ratio: f64,
    round_ratios: Vec<f64>,
    check: Check,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Tokens => "token ids",
        Mode::Hashes => "hashes",
        Mode::Both => "both",
    }
}

/// Runs the benchmark and prints the table.
pub async fn run(args: Args) -> Result<()> {
    if args.workers == 0 || args.concurrency == 0 || args.queries == 0 || args.sessions == 0 {
        bail!("--workers, --concurrency, --queries and --sessions must be > 0");
    }
    if args.block_tokens == 0 || args.root_blocks == 0 {
        bail!("--block-tokens and --root-blocks must be > 0");
    }
    let pinning = Pinning::new(args.pin)?;
    if let Some(pinning) = &pinning {
        println!(
            "pinned: client on CPUs {:?}, every service process on CPUs {}",
            pinning.client, pinning.services
        );
    }
    let dir = tempfile::tempdir()?;
    let peer_script = dir.path().join("dynamo_indexer_peer.py");
    let pub_script = dir.path().join("vllm_event_publisher.py");
    std::fs::write(&peer_script, DYNAMO_PY)?;
    std::fs::write(&pub_script, PUBLISHER_PY)?;
    let (python, versions) = match find_python(&args, &peer_script)? {
        PythonStatus::Ready(p, v) => (p, v),
        PythonStatus::Unavailable(why) => {
            println!(
                "SKIPPED: router-service needs python3 with pip (for {DYNAMO_PIN}, pyzmq, msgspec): {why}"
            );
            std::process::exit(2);
        }
    };
    let server_bin = sibling("kvtier-server", &args.server_bin)?;
    let agent_bin = sibling("kvtier-agent", &args.agent_bin)?;
    let router_bin = sibling("kvtier-router", &args.router_bin)?;
    eprintln!("python {} ({versions})", python.display());

    // Workload, ground truth, queries, plan.
    let hasher = BlockHasher::new(args.block_tokens, DEFAULT_SEED);
    let ports = (0..args.workers)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    let wl = generate(&args, &ports, &hasher);
    let queries = make_queries(&args, &wl, &hasher);
    let plan_path = dir.path().join("plan.json");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&plan_path)?);
        serde_json::to_writer(&mut f, &wl.plan)?;
        f.flush()?;
    }
    let resident: usize = wl.present.iter().map(HashSet::len).sum();
    let q_blocks: Vec<usize> = queries.iter().map(|q| q.seq.len()).collect();
    let q_avg = q_blocks.iter().sum::<usize>() as f64 / q_blocks.len() as f64;
    let q_max = q_blocks.iter().copied().max().unwrap_or(0);
    eprintln!(
        "workload: {} sessions, {} events ({} blocks stored, {} removed), {} blocks resident \
         over {} workers; {} queries of {:.0} blocks on average (max {}); generated in {:.1}s",
        wl.sessions.len(),
        wl.events,
        wl.stored_blocks,
        wl.removed_blocks,
        resident,
        args.workers,
        queries.len(),
        q_avg,
        q_max,
        t.elapsed().as_secs_f64()
    );

    // The publisher first (it binds the endpoints), then every subscriber.
    let (mut publisher, _, pub_lines) = spawn_ready(
        service_command(&python, pinning.as_ref())
            .arg(&pub_script)
            .arg("--plan")
            .arg(&plan_path)
            .args(["--subscribers", "2"]),
        "publisher bound",
        &dir.path().join("publisher.log"),
        true,
    )?;
    let data = dir.path().join("data");
    let (_server, line, _) = spawn_ready(
        service_command(&server_bin, pinning.as_ref())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--data-dir",
            ])
            .arg(&data),
        "kvtier-server ready",
        &dir.path().join("server.log"),
        false,
    )?;
    let server = field(&line, "grpc=")?;
    let bs = args.block_tokens.to_string();
    let mut agents = Vec::new();
    let mut worker_flags = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (proc, line, _) = spawn_ready(
            service_command(&agent_bin, pinning.as_ref()).args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--server",
                &format!("http://{server}"),
                "--worker-id",
                &format!("worker-{i}"),
                "--block-tokens",
                &bs,
                "--vllm-events",
                &format!("tcp://127.0.0.1:{port}"),
                "--vllm-idle-reconnect-ms",
                "600000",
            ]),
            "kvtier-agent ready",
            &dir.path().join(format!("agent-{i}.log")),
            false,
        )?;
        let agent = field(&line, "grpc=")?;
        worker_flags.push("--worker".to_string());
        // Only gRPC FindMatches is queried: the worker's HTTP base is a dummy.
        worker_flags.push(format!("worker-{i}=http://127.0.0.1:9@http://{agent}"));
        agents.push(proc);
    }
    let (_router, line, _) = spawn_ready(
        service_command(&router_bin, pinning.as_ref())
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--cache-server",
                &format!("http://{server}"),
                "--model",
                MODEL,
                "--namespace",
                "bench",
                "--block-tokens",
                &bs,
            ])
            .args(&worker_flags),
        "kvtier-router ready",
        &dir.path().join("router.log"),
        false,
    )?;
    let router = field(&line, "grpc=")?;
    let router_pid = _router.child.id();
    let dyn_port = free_port()?;
    let dyn_workers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{i}=tcp://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let dyn_log = dir.path().join("dynamo.log");
    let mut dyn_cmd = service_command(&python, pinning.as_ref());
    dyn_cmd
        .arg(&peer_script)
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
    let dyn_pid = dyn_child.id();
    let _dynamo = Proc {
        child: dyn_child,
        stdin: None,
    };
    let dyn_addr: SocketAddr = format!("127.0.0.1:{dyn_port}").parse()?;
    let mut probe = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut h) = Http::connect(dyn_addr).await {
                if let Ok((200, _)) = h.call("GET", "/health", Bytes::new()).await {
                    break h;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "Dynamo's indexer did not answer /health:\n{}",
                    tail(&dyn_log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    // Publishing starts once all 2 × W subscriptions are in.
    let published =
        tokio::task::spawn_blocking(move || pub_lines.recv_timeout(Duration::from_secs(180)))
            .await?
            .map_err(|_| {
                anyhow!(
                    "the publisher did not finish: {}",
                    tail(&dir.path().join("publisher.log"))
                )
            })?;
    eprintln!("{published}");
    let mut kv = kv_client(&router).await?;
    let (kv_lag, dyn_lag) = catch_up(&args, &mut kv, &mut probe, &wl, &queries).await?;
    eprintln!(
        "caught up after publishing: kvtier {}, Dynamo {}",
        kv_lag.map_or("never".into(), |s| format!("{s:.2}s")),
        dyn_lag.map_or("never".into(), |s| format!("{s:.2}s"))
    );

    let modes: Vec<Mode> = match args.mode {
        Mode::Both => vec![Mode::Tokens, Mode::Hashes],
        m => vec![m],
    };
    let mut results = Vec::new();
    for mode in modes {
        let check = cross_check(&args, &mut kv, &mut probe, &queries, mode).await?;
        eprintln!(
            "{}: cross-check of {} queries: kvtier≠truth {}, Dynamo≠truth {}, kvtier≠Dynamo {}",
            mode_name(mode),
            check.queries,
            check.kv_vs_truth,
            check.dyn_vs_truth,
            check.kv_vs_dyn
        );
        for e in &check.examples {
            eprintln!("  {e}");
        }
        let (mut kv_rounds, mut dyn_rounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..args.rounds.max(1) {
            let (k, d) = if round % 2 == 0 {
                let k = measure_kv(&args, &router, router_pid, &queries, mode).await?;
                (
                    k,
                    measure_dyn(&args, dyn_addr, dyn_pid, &queries, mode).await?,
                )
            } else {
                let d = measure_dyn(&args, dyn_addr, dyn_pid, &queries, mode).await?;
                (
                    measure_kv(&args, &router, router_pid, &queries, mode).await?,
                    d,
                )
            };
            eprintln!(
                "{} round {round}: kvtier {:.0} q/s, Dynamo {:.0} q/s, ratio {:.2}",
                mode_name(mode),
                k.qps,
                d.qps,
                k.qps / d.qps
            );
            ratios.push(k.qps / d.qps);
            kv_rounds.push(k);
            dyn_rounds.push(d);
        }
        results.push(ModeResult {
            mode: mode_name(mode),
            qps_ratio: median(ratios.clone()),
            round_ratios: ratios,
            kvtier: summarize(&kv_rounds),
            dynamo: summarize(&dyn_rounds),
            check,
        });
    }

    let mut s = format!(
        "router as a service on loopback: {} workers (kvtier-agent --vllm-events / Dynamo ZMQ \
         listener on the same vLLM-format PUB sockets), block size {}, {} sessions ({} events, \
         {} blocks resident); {} distinct queries of {:.0} blocks on average (max {}), {} in \
         flight, {} rounds of {:.0} s per service (after {:.1} s warm-up each), both services \
         back to back in every round; kvtier FindMatches (gRPC) vs Dynamo's standalone indexer \
         ({}) /query or /query_by_hash (HTTP JSON). q/s: median over rounds; ratio: median of \
         the per-round ratios (min–max); latencies over all rounds; CPU: CPU time per answered \
         query of the service process (and of the benchmark's client); {}\n\n\
         | query by | kvtier q/s | Dynamo q/s | kvtier/Dynamo | kvtier p50 ms | Dynamo p50 ms \
         | kvtier p99 ms | Dynamo p99 ms | kvtier CPU µs/q | Dynamo CPU µs/q | errors kv/dyn \
         | answers ≠ (kv/dyn/each other, of n) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        args.workers,
        args.block_tokens,
        wl.sessions.len(),
        wl.events,
        resident,
        queries.len(),
        q_avg,
        q_max,
        args.concurrency,
        args.rounds.max(1),
        args.duration_s,
        args.warmup_s,
        versions,
        pinning.as_ref().map_or_else(
            || "client and services share every CPU".to_string(),
            |p| format!(
                "pinned: client on CPUs {:?}, services on CPUs {}",
                p.client, p.services
            )
        )
    );
    for r in &results {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | **{:.2}×** ({:.2}–{:.2}) | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} ({:.0}) | {:.0} ({:.0}) | {}/{} | {}/{}/{} of {} |\n",
            r.mode,
            r.kvtier.qps,
            r.dynamo.qps,
            r.qps_ratio,
            r.round_ratios.iter().copied().fold(f64::INFINITY, f64::min),
            r.round_ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            r.kvtier.p50_ms,
            r.dynamo.p50_ms,
            r.kvtier.p99_ms,
            r.dynamo.p99_ms,
            r.kvtier.cpu_us_per_query,
            r.kvtier.client_cpu_us_per_query,
            r.dynamo.cpu_us_per_query,
            r.dynamo.client_cpu_us_per_query,
            r.kvtier.errors,
            r.dynamo.errors,
            r.check.kv_vs_truth,
            r.check.dyn_vs_truth,
            r.check.kv_vs_dyn,
            r.check.queries
        ));
    }
    s.push_str(&format!(
        "\nindex caught up after the last event was published: kvtier {}, Dynamo {}\n",
        kv_lag.map_or("never (see warning)".into(), |s| format!("{s:.2} s")),
        dyn_lag.map_or("never (see warning)".into(), |s| format!("{s:.2} s"))
    ));
    println!("{s}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "workers": args.workers,
                "block_tokens": args.block_tokens,
                "sessions": wl.sessions.len(),
                "events": wl.events,
                "resident_blocks": resident,
                "queries": queries.len(),
                "query_blocks_avg": q_avg,
                "query_blocks_max": q_max,
                "concurrency": args.concurrency,
                "duration_s": args.duration_s,
                "rounds": args.rounds.max(1),
                "dynamo": versions,
                "catch_up_s": {"kvtier": kv_lag, "dynamo": dyn_lag},
                "pinned": pinning.as_ref().map(|p| serde_json::json!({"client": p.client, "services": p.services})),
                "results": results,
            })
        );
    }
    drop(publisher.stdin.take());
    let _ = publisher.child.wait();
    drop(agents);
    Ok(())
}

/// For a synchronous `main`: runs [`run`] on a fresh tokio runtime.
pub fn run_blocking(args: Args) -> Result<()> {
    if let Some(pinning) = Pinning::new(args.pin)? {
        // Before the runtime starts: its threads inherit the binding.
        pinning.bind_client()?;
    }
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_prefix_closed_and_truth_matches_a_replay() {
        let args = Args::parse_from([
            "router-service",
            "--workers",
            "3",
            "--sessions",
            "12",
            "--root-blocks",
            "8",
            "--max-blocks",
            "80",
            "--queries",
            "40",
            "--migrate",
            "0.3",
            "--fork",
            "0.4",
            "--evict",
            "0.5",
        ]);
        let hasher = BlockHasher::new(args.block_tokens, DEFAULT_SEED);
        let wl = generate(&args, &[1, 2, 3], &hasher);
        // Replaying the plan (engine hashes) must give the ground truth, and
        // every stored event's parent must be resident on that worker.
        let mut eng: Vec<HashSet<u64>> = vec![HashSet::new(); 3];
        for (w, pw) in wl.plan.workers.iter().enumerate() {
            for batch in &pw.batches {
                for ev in batch {
                    if ev.t == "s" {
                        if let Some(p) = ev.p {
                            assert!(eng[w].contains(&p), "unknown parent");
                        }
                        assert_eq!(ev.k.as_ref().map(Vec::len), Some(ev.h.len() * 16));
                        eng[w].extend(&ev.h);
                    } else {
                        for h in &ev.h {
                            assert!(eng[w].remove(h), "removed twice");
                        }
                    }
                }
            }
            let truth: HashSet<u64> = wl.present[w].iter().map(|&h| engine_hash(h)).collect();
            assert_eq!(eng[w], truth);
        }
        let queries = make_queries(&args, &wl, &hasher);
        assert!(queries.iter().any(|q| q.truth.iter().any(|&n| n > 0)));
        for q in &queries {
            assert_eq!(q.seq.len(), q.tokens.len() / 16);
            assert_eq!(q.local, hasher.local_hashes(&q.tokens));
        }
    }
}
