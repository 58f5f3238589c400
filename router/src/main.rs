//! `kvtier-router`: routes model calls to the worker that can serve their
//! prefix cheapest, over HTTP (OpenAI chat, OpenAI Responses, Anthropic
//! Messages) and gRPC (`kvtier.v1.RouterService` for custom routers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use kvtier_proto::hashing::{effective_seed, BlockHasher, DEFAULT_SEED};
use kvtier_proto::v1::router_service_server::RouterServiceServer;
use kvtier_proto::v1::HashingConfig;
use kvtier_router::app::{ModelState, Models};
use kvtier_router::cost::CostWeights;
use kvtier_router::http::{self, HttpFront};
use kvtier_router::index::{LocalityIndex, SharedIndex};
use kvtier_router::lifecycle::CacheLifecycle;
use kvtier_router::load::LoadBook;
use kvtier_router::routing::{ModelRouter, RoutingMode, WorkerEndpoint};
use kvtier_router::service::RouterGrpc;
use kvtier_router::sources;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Routes model calls to the worker that holds (or can fetch cheapest) their prefix.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTP front (the three model APIs, /v1/models, /health, /metrics).
    #[arg(long, env = "KVTIER_ROUTER_HTTP", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// gRPC RouterService.
    #[arg(long, env = "KVTIER_ROUTER_GRPC", default_value = "127.0.0.1:50071")]
    grpc_listen: SocketAddr,
    /// A worker: ID=HTTP_BASE@AGENT_URL, e.g.
    /// worker-0=http://10.0.0.5:8000@http://10.0.0.5:50061. Repeat the flag
    /// (or separate with spaces in the environment variable).
    #[arg(
        long = "worker",
        env = "KVTIER_ROUTER_WORKERS",
        value_delimiter = ' ',
        required = true
    )]
    workers: Vec<String>,
    /// Cache server (CacheService); empty: route on worker HBM only, no hints.
    #[arg(long, env = "KVTIER_SERVER", default_value = "http://127.0.0.1:50051")]
    cache_server: String,
    /// The model served (the `model` field of requests; also the namespace's
    /// HashingConfig.model).
    #[arg(long, env = "KVTIER_MODEL", default_value = "sim-model")]
    model: String,
    /// Cache-server namespace of the model (as the workers attach it).
    #[arg(long, env = "KVTIER_NAMESPACE", default_value = "sim")]
    namespace: String,
    /// The model's tokenizer.json.
    #[arg(long, env = "KVTIER_TOKENIZER")]
    tokenizer: Option<PathBuf>,
    /// Chat template: a Jinja file or a tokenizer_config.json; default ChatML.
    #[arg(long, env = "KVTIER_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
    /// Tokens per block.
    #[arg(long, env = "KVTIER_BLOCK_TOKENS", default_value_t = 16)]
    block_tokens: u32,
    /// Base XXH3 seed.
    #[arg(long, env = "KVTIER_SEED", default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Namespace salt.
    #[arg(long, env = "KVTIER_SALT", default_value = "")]
    salt: String,
    /// Bytes per block (the namespace's HashingConfig.block_bytes).
    #[arg(long, env = "KVTIER_BLOCK_BYTES", default_value_t = 65_536)]
    block_bytes: u64,
    /// KV layout descriptor (the namespace's HashingConfig.kv_layout).
    #[arg(long, env = "KVTIER_KV_LAYOUT", default_value = "sim:layers=1,kv=2")]
    kv_layout: String,
    /// A worker whose event stream stays down this long loses its index entries.
    #[arg(long, env = "KVTIER_ROUTER_EXPIRE_MS", default_value_t = 10_000)]
    expire_ms: u64,
    /// A worker whose endpoint refused a connection gets no traffic for this long
    /// (unless its agent's events show it alive again sooner).
    #[arg(long, env = "KVTIER_ROUTER_UNREACHABLE_MS", default_value_t = 5_000)]
    unreachable_ms: u64,
    /// Largest request body accepted by the HTTP front (larger: 413).
    #[arg(long, env = "KVTIER_ROUTER_MAX_BODY_BYTES", default_value_t = http::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// How workers are picked: `cost` (the cost model) or `round-robin` (a
    /// cache-unaware baseline, for benchmarks).
    #[arg(long, env = "KVTIER_ROUTER_ROUTING", default_value = "cost", value_parser = ["cost", "round-robin"])]
    routing: String,
    /// Cost of onboarding a token from the cache's host tier, relative to computing it.
    #[arg(long, env = "KVTIER_ROUTER_HOST_FETCH_WEIGHT", default_value_t = CostWeights::default().host_fetch_weight)]
    host_fetch_weight: f64,
    /// Same for the disk tier.
    #[arg(long, env = "KVTIER_ROUTER_DISK_FETCH_WEIGHT", default_value_t = CostWeights::default().disk_fetch_weight)]
    disk_fetch_weight: f64,
    /// Cost of a queued prefill token ahead of a neutral call.
    #[arg(long, env = "KVTIER_ROUTER_QUEUE_WEIGHT", default_value_t = CostWeights::default().queue_weight)]
    queue_weight: f64,
    /// Extra queue weight at latency_sensitivity 1.0.
    #[arg(long, env = "KVTIER_ROUTER_LATENCY_QUEUE_BOOST", default_value_t = CostWeights::default().latency_queue_boost)]
    latency_queue_boost: f64,
    /// Priority steps that double the queue weight.
    #[arg(long, env = "KVTIER_ROUTER_PRIORITY_DOUBLING", default_value_t = CostWeights::default().priority_doubling)]
    priority_doubling: f64,
    /// Cost per active decode token.
    #[arg(long, env = "KVTIER_ROUTER_DECODE_WEIGHT", default_value_t = CostWeights::default().decode_weight)]
    decode_weight: f64,
    /// Sticky bonus for the agent's previous worker, as a fraction of the prompt.
    #[arg(long, env = "KVTIER_ROUTER_AFFINITY", default_value_t = CostWeights::default().affinity_fraction)]
    affinity_fraction: f64,
    /// Bounded-load factor (running requests ≤ ⌈factor × (all + 1) / workers⌉); 0 disables.
    #[arg(long, env = "KVTIER_ROUTER_LOAD_FACTOR", default_value_t = CostWeights::default().load_factor)]
    load_factor: f64,
}

fn parse_worker(spec: &str) -> anyhow::Result<WorkerEndpoint> {
    let (id, rest) = spec
        .split_once('=')
        .with_context(|| format!("--worker {spec:?}: expected ID=HTTP_BASE@AGENT_URL"))?;
    let (http_base, agent_url) = rest
        .rsplit_once('@')
        .with_context(|| format!("--worker {spec:?}: expected ID=HTTP_BASE@AGENT_URL"))?;
    if id.is_empty() || !http_base.starts_with("http") || agent_url.is_empty() {
        bail!("--worker {spec:?}: expected ID=HTTP_BASE@AGENT_URL with an http(s) base URL");
    }
    Ok(WorkerEndpoint {
        worker_id: id.to_string(),
        http_base: http_base.trim_end_matches('/').to_string(),
        agent_url: agent_url.to_string(),
    })
}

fn weights(args: &Args) -> anyhow::Result<CostWeights> {
    let w = CostWeights {
        host_fetch_weight: args.host_fetch_weight,
        disk_fetch_weight: args.disk_fetch_weight,
        queue_weight: args.queue_weight,
        latency_queue_boost: args.latency_queue_boost,
        priority_doubling: args.priority_doubling,
        decode_weight: args.decode_weight,
        affinity_fraction: args.affinity_fraction,
        load_factor: if args.load_factor <= 0.0 {
            f64::INFINITY
        } else {
            args.load_factor
        },
    };
    for (name, value) in [
        ("host-fetch-weight", w.host_fetch_weight),
        ("disk-fetch-weight", w.disk_fetch_weight),
        ("queue-weight", w.queue_weight),
        ("latency-queue-boost", w.latency_queue_boost),
        ("priority-doubling", w.priority_doubling),
        ("decode-weight", w.decode_weight),
        ("affinity-fraction", w.affinity_fraction),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            bail!("--{name} must be a finite number ≥ 0, got {value}");
        }
    }
    if w.load_factor < 1.0 {
        bail!(
            "--load-factor must be ≥ 1.0 (or 0 to disable), got {}",
            w.load_factor
        );
    }
    Ok(w)
}

/// Installs the SIGTERM/SIGINT handlers now (before the ready line) and
/// returns the future that completes on the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutdown signal received");
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVTIER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let metrics =
        kvtier_router::metrics::install_recorder().context("install the metrics recorder")?;
    let weights = weights(&args)?;
    let workers = args
        .workers
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| parse_worker(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if workers.is_empty() {
        bail!("no --worker given: the router needs at least one worker");
    }
    kvtier_router::metrics::register_zeroes(workers.iter().map(|w| w.worker_id.as_str()));
    let config = HashingConfig {
        block_tokens: args.block_tokens,
        seed: args.seed,
        salt: args.salt.clone(),
        block_bytes: args.block_bytes,
        kv_layout: args.kv_layout.clone(),
        model: args.model.clone(),
    };
    if args.block_tokens == 0 {
        bail!("--block-tokens must be > 0");
    }

    // The hashing seed: the cache server's answer wins (it folds a tenant
    // salt in when tokens are in use); without it, the local computation.
    let mut seed = effective_seed(args.seed, &args.salt);
    let lifecycle = if args.cache_server.is_empty() {
        None
    } else {
        let lifecycle = CacheLifecycle::new(&args.cache_server, &args.namespace, config.clone())
            .map_err(anyhow::Error::msg)?;
        match lifecycle.handshake().await {
            Ok(response) => seed = response.effective_seed,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => bail!(
                "the cache server refused namespace {:?}: {}",
                args.namespace,
                status.message()
            ),
            Err(status) => tracing::warn!(
                error = %status.message(),
                "cache server unreachable at start; hashing with the local seed"
            ),
        }
        Some(Arc::new(lifecycle))
    };
    let prompt = match &args.tokenizer {
        Some(path) => Some(
            kvtier_prompt::PromptModel::load(
                path,
                args.chat_template.as_deref(),
                args.block_tokens as usize,
                seed,
            )
            .with_context(|| format!("load the tokenizer {}", path.display()))?,
        ),
        None => {
            tracing::warn!("no --tokenizer: the HTTP front answers 503; gRPC queries by hash work");
            None
        }
    };

    let index: SharedIndex = kvtier_router::index::shared(LocalityIndex::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let states = sources::WorkerStates::new(Duration::from_millis(args.unreachable_ms));
    let source_config = sources::WorkerSourceConfig {
        expiry: Duration::from_millis(args.expire_ms),
        ..sources::WorkerSourceConfig::default()
    };
    let mut source_tasks = Vec::new();
    for worker in &workers {
        source_tasks.push(sources::spawn_worker_source(
            sources::AgentEndpoint {
                worker_id: worker.worker_id.clone(),
                agent_url: worker.agent_url.clone(),
            },
            index.clone(),
            states.clone(),
            source_config.clone(),
            stop_rx.clone(),
        ));
    }
    if !args.cache_server.is_empty() {
        source_tasks.push(sources::spawn_cache_source(
            sources::CacheSourceConfig::new(&args.cache_server, &args.namespace, config.clone()),
            index.clone(),
            sources::CacheState::default(),
            stop_rx.clone(),
        ));
    }
    let router = ModelRouter::new(
        &args.model,
        BlockHasher::new(args.block_tokens as usize, seed),
        index,
        workers,
        Arc::new(states),
        LoadBook::new(Duration::from_secs(2)),
        weights,
    )
    .with_mode(if args.routing == "round-robin" {
        RoutingMode::RoundRobin
    } else {
        RoutingMode::Cost
    });
    let mut models = Models::default();
    models.push(ModelState {
        router,
        prompt,
        lifecycle,
    });

    let shutdown = shutdown_signal()?;
    let http_listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("bind the HTTP front on {}", args.http_listen))?;
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("bind gRPC on {}", args.grpc_listen))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;

    let front = Arc::new(
        HttpFront::new(models.clone(), Some(metrics))
            .context("build the HTTP client")?
            .with_max_body_bytes(args.max_body_bytes),
    );
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        // Small SSE frames must leave at once (no Nagle delay).
        let listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, http::app(front))
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RouterServiceServer<RouterGrpc>>()
        .await;
    let mut grpc_stop = stop_rx.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            // Token-id queries exceed HTTP/2's default 64 KiB window: larger
            // windows, and no Nagle delay on replies.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .add_service(health_service)
            .add_service(RouterServiceServer::new(RouterGrpc::new(models)))
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    |stream| {
                        if let Ok(tcp) = &stream {
                            let _ = tcp.set_nodelay(true);
                        }
                        stream
                    },
                ),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            ),
    );
    println!("kvtier-router ready http={http_addr} grpc={grpc_addr}");

    shutdown.await;
    let _ = stop_tx.send(true);
    for task in source_tasks {
        let _ = task.await;
    }
    // In-flight streams get a moment to finish; then the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = http_task.await;
        let _ = grpc_task.await;
    })
    .await;
    Ok(())
}
