//! `kvtier-sim-worker`: a simulated inference worker serving
//! `POST /v1/chat/completions`, `/v1/responses` and `/v1/messages` (streamed
//! and not) from a shared-memory KV pool attached to a `kvtier-agent`, so the
//! kvtier router can be tested and benchmarked end to end without GPUs.
//!
//! Prints `kvtier-sim-worker ready http=<addr> worker_id=<id> agent=<state>`
//! on stdout once listening (and attached, when the agent answers); exits 0
//! on SIGTERM / SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use kvtier_process::{ready, shutdown, LogArgs};
use kvtier_sim::args::PoolHashingArgs;
use kvtier_sim::worker::{http, SchedulingPolicy, SimWorker, SimWorkerConfig};

/// Longest the worker waits for open responses to end after SIGTERM.
const DRAIN: Duration = Duration::from_secs(10);

/// Simulated inference worker for the kvtier router (no GPU needed).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// HTTP listen address (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "KVTIER_SIM_WORKER_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Worker id (empty: the agent's worker id, which its KV events carry).
    #[arg(long, env = "KVTIER_WORKER_ID", default_value = "")]
    worker_id: String,
    /// kvtier-agent endpoint: http://host:port or unix:/path; "off" runs without one.
    #[arg(long, env = "KVTIER_AGENT", default_value = "http://127.0.0.1:50061")]
    agent: String,
    /// Pool file (e.g. /dev/shm/kvtier/sim-worker-0, beneath the agent's --pool-dir); created if absent.
    #[arg(long, env = "KVTIER_SIM_POOL")]
    pool: PathBuf,
    /// Pool capacity in blocks (the worker's bounded prefix cache).
    #[arg(long, env = "KVTIER_SIM_POOL_BLOCKS", default_value_t = 1024)]
    pool_blocks: u64,
    #[command(flatten)]
    hashing: PoolHashingArgs,
    /// Model served (requests naming another get 404).
    #[arg(long, env = "KVTIER_MODEL", default_value = "sim-model")]
    model: String,
    /// The model's tokenizer.json.
    #[arg(long, env = "KVTIER_TOKENIZER")]
    tokenizer: PathBuf,
    /// Chat template (Jinja file, or tokenizer_config.json); default ChatML.
    #[arg(long, env = "KVTIER_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
    /// Prefill throughput of the worker's one GPU, tokens/s (prefills queue).
    #[arg(long, env = "KVTIER_SIM_PREFILL_TPS", default_value_t = 20_000.0)]
    prefill_tokens_per_s: f64,
    /// Prefills computed at once, each at --prefill-tokens-per-s (1: one GPU;
    /// more: as many data-parallel ranks behind one endpoint).
    #[arg(long, env = "KVTIER_SIM_PREFILL_SLOTS", default_value_t = 1)]
    prefill_slots: usize,
    /// Order of the prefills waiting for a slot, as vLLM's --scheduling-policy:
    /// `fcfs` (arrival order; vLLM's default), or `priority` (the call's
    /// priority hint, higher first, arrival order among equals).
    #[arg(long, env = "KVTIER_SIM_SCHEDULING_POLICY", default_value = "fcfs")]
    scheduling_policy: SchedulingPolicy,
    /// Decode speed per stream, tokens/s.
    #[arg(long, env = "KVTIER_SIM_DECODE_TPS", default_value_t = 200.0)]
    decode_tokens_per_s: f64,
    /// Output tokens when the request gives neither an osl hint nor max_tokens.
    #[arg(long, env = "KVTIER_SIM_DEFAULT_OSL", default_value_t = 16)]
    default_osl: u32,
    /// Cache-tier I/O: `on` onboards from and offloads to the tier through the
    /// agent; `off` keeps reporting blocks to the agent (the router still gets
    /// KV events) but never onboards or offloads: a worker with only its own
    /// LRU prefix cache (benchmark baseline).
    #[arg(long, env = "KVTIER_SIM_TIER_IO", default_value = "on", value_parser = ["on", "off"])]
    tier_io: String,
    #[command(flatten)]
    log: LogArgs,
}

impl Args {
    fn into_config(self) -> anyhow::Result<SimWorkerConfig> {
        if !(self.prefill_tokens_per_s >= 0.0 && self.decode_tokens_per_s >= 0.0) {
            anyhow::bail!("--prefill-tokens-per-s and --decode-tokens-per-s must be >= 0");
        }
        let agent = match self.agent.as_str() {
            "" | "off" => None,
            a => Some(a.to_string()),
        };
        Ok(SimWorkerConfig {
            worker_id: self.worker_id.clone(),
            agent,
            pool: self.hashing.pool_spec(
                self.pool,
                self.pool_blocks,
                self.model,
                if self.worker_id.is_empty() {
                    "kvtier-sim-worker".into()
                } else {
                    format!("kvtier-sim-worker/{}", self.worker_id)
                },
            ),
            tokenizer: self.tokenizer,
            chat_template: self.chat_template,
            prefill_tokens_per_s: self.prefill_tokens_per_s,
            prefill_slots: self.prefill_slots,
            scheduling: self.scheduling_policy,
            decode_tokens_per_s: self.decode_tokens_per_s,
            default_osl: self.default_osl,
            tier_io: self.tier_io == "on",
        })
    }
}

fn main() -> ExitCode {
    kvtier_process::main("info", |a: &Args| &a.log, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listen = args.listen;
    let config = args.into_config()?;
    // Installed before the ready line, so that no SIGTERM is lost.
    let shutdown = shutdown::signals()?;
    let worker = SimWorker::start(config).await.context("start the worker")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    let addr = listener.local_addr()?;
    ready::announce(format_args!(
        "kvtier-sim-worker ready http={addr} worker_id={} agent={}",
        worker.worker_id(),
        if worker.attached() {
            "attached"
        } else {
            "detached"
        }
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, http::router(worker)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    tokio::select! {
        r = server => r.context("HTTP server")?,
        _ = async {
            let _ = stop_rx.await;
            tokio::time::sleep(DRAIN).await;
        } => tracing::warn!("responses still open {DRAIN:?} after shutdown: exiting"),
    }
    tracing::info!("kvtier-sim-worker stopped");
    Ok(())
}
