//! `kvtier-router`: routes model calls to the worker that can serve their
//! prefix cheapest, over HTTP (OpenAI chat, OpenAI Responses, Anthropic
//! Messages) and gRPC (`kvtier.v1.RouterService` for custom routers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use kvtier_process::{ready, report, shutdown, LogArgs};
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
use kvtier_security::ServerClient;

#[cfg(feature = "jemalloc")]
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
        required_unless_present = "models_file"
    )]
    workers: Vec<String>,
    /// Serve several models: a JSON file `{"models": [{"model": ..., "namespace":
    /// ..., "workers": ["ID=HTTP_BASE@AGENT_URL", ...], "tokenizer": ...,
    /// "chat_template": ..., "block_tokens": ..., "seed": ..., "salt": ...,
    /// "block_bytes": ..., "kv_layout": ...}, ...]}` (fields after `workers`
    /// optional, with the defaults of the flags of the same names). Replaces
    /// `--worker`, `--model`, `--namespace` and the other per-model flags;
    /// routing, cost and cache-server flags apply to every model.
    #[arg(long, env = "KVTIER_ROUTER_MODELS_FILE", conflicts_with = "workers")]
    models_file: Option<PathBuf>,
    /// Cache server (CacheService); empty: route on worker HBM only, no hints.
    #[arg(
        long,
        visible_alias = "server",
        env = "KVTIER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    cache_server: String,
    #[command(flatten)]
    server_client: kvtier_security::ServerClientArgs,
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
    #[arg(long, env = "KVTIER_BLOCK_TOKENS", default_value_t = DEFAULT_BLOCK_TOKENS)]
    block_tokens: u32,
    /// Base XXH3 seed.
    #[arg(long, env = "KVTIER_SEED", default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Namespace salt.
    #[arg(long, env = "KVTIER_SALT", default_value = "")]
    salt: String,
    /// Bytes per block (the namespace's HashingConfig.block_bytes).
    #[arg(long, env = "KVTIER_BLOCK_BYTES", default_value_t = DEFAULT_BLOCK_BYTES)]
    block_bytes: u64,
    /// KV layout descriptor (the namespace's HashingConfig.kv_layout).
    #[arg(long, env = "KVTIER_KV_LAYOUT", default_value = DEFAULT_KV_LAYOUT)]
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
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    admission: kvtier_router::admission::AdmissionArgs,
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

/// One model the router serves: the per-model flags, or one entry of `--models-file`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSpec {
    model: String,
    namespace: String,
    workers: Vec<String>,
    #[serde(default)]
    tokenizer: Option<PathBuf>,
    #[serde(default)]
    chat_template: Option<PathBuf>,
    #[serde(default = "default_block_tokens")]
    block_tokens: u32,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    salt: String,
    #[serde(default = "default_block_bytes")]
    block_bytes: u64,
    #[serde(default = "default_kv_layout")]
    kv_layout: String,
}

const DEFAULT_BLOCK_TOKENS: u32 = 16;
const DEFAULT_BLOCK_BYTES: u64 = 65_536;
const DEFAULT_KV_LAYOUT: &str = "sim:layers=1,kv=2";

fn default_block_tokens() -> u32 {
    DEFAULT_BLOCK_TOKENS
}
fn default_seed() -> u64 {
    DEFAULT_SEED
}
fn default_block_bytes() -> u64 {
    DEFAULT_BLOCK_BYTES
}
fn default_kv_layout() -> String {
    DEFAULT_KV_LAYOUT.to_string()
}

/// `--models-file`'s shape.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    models: Vec<ModelSpec>,
}

/// The models to serve: from `--models-file`, or the one the flags describe.
/// Names and worker ids must be unique across models.
fn model_specs(args: &Args) -> anyhow::Result<Vec<ModelSpec>> {
    let specs = match &args.models_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read --models-file {}", path.display()))?;
            let file: ModelsFile = serde_json::from_str(&text)
                .with_context(|| format!("parse --models-file {}", path.display()))?;
            if file.models.is_empty() {
                bail!("--models-file {}: \"models\" is empty", path.display());
            }
            file.models
        }
        None => vec![ModelSpec {
            model: args.model.clone(),
            namespace: args.namespace.clone(),
            workers: args.workers.clone(),
            tokenizer: args.tokenizer.clone(),
            chat_template: args.chat_template.clone(),
            block_tokens: args.block_tokens,
            seed: args.seed,
            salt: args.salt.clone(),
            block_bytes: args.block_bytes,
            kv_layout: args.kv_layout.clone(),
        }],
    };
    let mut names = std::collections::HashSet::new();
    let mut worker_ids = std::collections::HashSet::new();
    for spec in &specs {
        if spec.model.is_empty() || !names.insert(spec.model.as_str()) {
            bail!("model {:?}: names must be non-empty and unique", spec.model);
        }
        if spec.block_tokens == 0 {
            bail!("model {:?}: block_tokens must be > 0", spec.model);
        }
        if spec.workers.iter().all(|w| w.is_empty()) {
            bail!(
                "model {:?}: no worker given; the router needs at least one per model",
                spec.model
            );
        }
        for worker in spec.workers.iter().filter(|w| !w.is_empty()) {
            let id = parse_worker(worker)?.worker_id;
            if !worker_ids.insert(id.clone()) {
                bail!("worker {id:?} is listed twice (worker ids are unique across models)");
            }
        }
    }
    Ok(specs)
}

/// What serving one model needs that outlives its set-up.
struct StartedModel {
    state: ModelState,
    sources: Vec<tokio::task::JoinHandle<()>>,
}

/// Sets one model up: handshake with the cache server (which gives the
/// hashing seed), the prompt model, its own index fed by its workers' agents
/// and its cache namespace, and its router.
async fn start_model(
    spec: &ModelSpec,
    args: &Args,
    security: &ServerClient,
    weights: CostWeights,
    stop_rx: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<StartedModel> {
    let workers = spec
        .workers
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| parse_worker(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = HashingConfig {
        block_tokens: spec.block_tokens,
        seed: spec.seed,
        salt: spec.salt.clone(),
        block_bytes: spec.block_bytes,
        kv_layout: spec.kv_layout.clone(),
        model: spec.model.clone(),
    };

    // The hashing seed: the cache server's answer wins (it folds a tenant
    // salt in when tokens are in use); without it, the local computation.
    let mut seed = effective_seed(spec.seed, &spec.salt);
    let lifecycle = if args.cache_server.is_empty() {
        None
    } else {
        let lifecycle = CacheLifecycle::new(
            &args.cache_server,
            security,
            &spec.namespace,
            config.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        match lifecycle.handshake().await {
            Ok(response) => seed = response.effective_seed,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => bail!(
                "the cache server refused namespace {:?} of model {:?}: {}",
                spec.namespace,
                spec.model,
                status.message()
            ),
            // Hashing with the local seed would silently miss a tenant's
            // blocks: wrong credentials stop the router.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                bail!(
                    "the cache server refused the router's credentials for namespace {:?} of \
                     model {:?} ({:?}: {}): check --server-token / --server-token-file and the \
                     token's grants (r on the namespace once a worker's agent has created it; \
                     rw lets the router create it when it starts first)",
                    spec.namespace,
                    spec.model,
                    status.code(),
                    status.message()
                )
            }
            Err(status) => tracing::warn!(
                model = %spec.model,
                error = %status.message(),
                "cache server unreachable at start; hashing with the local seed"
            ),
        }
        Some(Arc::new(lifecycle))
    };
    let prompt = match &spec.tokenizer {
        Some(path) => Some(
            kvtier_prompt::PromptModel::load(
                path,
                spec.chat_template.as_deref(),
                spec.block_tokens as usize,
                seed,
            )
            .with_context(|| {
                format!(
                    "model {:?}: load the tokenizer {}",
                    spec.model,
                    path.display()
                )
            })?,
        ),
        None => {
            tracing::warn!(
                model = %spec.model,
                "no tokenizer: the HTTP front answers 503 for this model; gRPC queries by hash work"
            );
            None
        }
    };

    let index: SharedIndex = kvtier_router::index::shared(LocalityIndex::new());
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
            sources::CacheSourceConfig {
                security: security.clone(),
                ..sources::CacheSourceConfig::new(&args.cache_server, &spec.namespace, config)
            },
            index.clone(),
            sources::CacheState::default(),
            stop_rx.clone(),
        ));
    }
    let router = ModelRouter::new(
        &spec.model,
        BlockHasher::new(spec.block_tokens as usize, seed),
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
    let router = match args.admission.config()? {
        Some(admission) => router.with_admission(admission),
        None => router,
    };
    Ok(StartedModel {
        state: ModelState {
            router,
            prompt,
            lifecycle,
        },
        sources: source_tasks,
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

fn main() -> ExitCode {
    report::exit_code(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    kvtier_process::logging::init(&args.log, "info")?;
    let metrics =
        kvtier_router::metrics::install_recorder().context("install the metrics recorder")?;
    let weights = weights(&args)?;
    let specs = model_specs(&args)?;
    // TLS files and the token are read once, before any model starts.
    let security = args.server_client.resolve(&args.cache_server)?;
    let all_workers: Vec<String> = specs
        .iter()
        .flat_map(|spec| spec.workers.iter().filter(|w| !w.is_empty()))
        .map(|w| parse_worker(w).map(|w| w.worker_id))
        .collect::<anyhow::Result<_>>()?;
    kvtier_router::metrics::register_zeroes(all_workers.iter().map(String::as_str));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut models = Models::default();
    let mut source_tasks = Vec::new();
    for spec in &specs {
        let started = start_model(spec, &args, &security, weights.clone(), &stop_rx).await?;
        models.push(started.state);
        source_tasks.extend(started.sources);
    }

    // Installed before the ready line, so that no SIGTERM is lost.
    let shutdown = shutdown::signals()?;
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
    ready::announce(format_args!(
        "kvtier-router ready http={http_addr} grpc={grpc_addr}"
    ));

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

#[cfg(test)]
mod tests {
    use super::*;

    fn args_with_file(json: &str) -> (tempfile::TempDir, Args) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("models.json");
        std::fs::write(&path, json).expect("write");
        let args = Args::try_parse_from(["kvtier-router", "--models-file", path.to_str().unwrap()])
            .expect("flags parse");
        (dir, args)
    }

    #[test]
    fn a_models_file_gives_each_model_its_fields_and_the_flags_defaults() {
        let (_dir, args) = args_with_file(
            r#"{"models": [
                {"model": "a", "namespace": "na", "workers": ["w0=http://h:1@http://g:2"]},
                {"model": "b", "namespace": "nb", "block_tokens": 32,
                 "workers": ["w1=http://h:3@http://g:4"]}
            ]}"#,
        );
        let specs = model_specs(&args).expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].block_tokens, DEFAULT_BLOCK_TOKENS);
        assert_eq!(specs[0].kv_layout, DEFAULT_KV_LAYOUT);
        assert_eq!(specs[1].block_tokens, 32);
        assert_eq!(specs[1].namespace, "nb");
    }

    #[test]
    fn bad_models_files_are_refused_with_the_reason() {
        for (json, expected) in [
            (r#"{"models": []}"#, "is empty"),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": ["w0=http://h:1@http://g:2"]},
                               {"model": "a", "namespace": "m", "workers": ["w1=http://h:1@http://g:2"]}]}"#,
                "unique",
            ),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": ["w0=http://h:1@http://g:2"]},
                               {"model": "b", "namespace": "m", "workers": ["w0=http://h:3@http://g:4"]}]}"#,
                "listed twice",
            ),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": []}]}"#,
                "no worker",
            ),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": ["w0"], "x": 1}]}"#,
                "unknown field",
            ),
            (
                r#"{"models": [{"model": "a", "workers": ["w0"]}]}"#,
                "namespace",
            ),
        ] {
            let (_dir, args) = args_with_file(json);
            let error = format!("{:#}", model_specs(&args).expect_err(json));
            assert!(error.contains(expected), "{json}: {error}");
        }
        assert!(Args::try_parse_from([
            "kvtier-router",
            "--models-file",
            "m.json",
            "--worker",
            "w0=http://h:1@http://g:2"
        ])
        .is_err());
        assert!(Args::try_parse_from(["kvtier-router"]).is_err());
    }
}
