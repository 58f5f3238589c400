//! `kvtier-router`: routes model calls to the worker that can serve their
//! prefix cheapest, over HTTP (OpenAI chat, OpenAI Responses, Anthropic
//! Messages) and gRPC (`kvtier.v1.RouterService` for custom routers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use kvtier_process::{ready, shutdown, LogArgs};
use kvtier_proto::hashing::DEFAULT_SEED;
use kvtier_router::cost::CostWeights;
use kvtier_router::http;
use kvtier_router::models_file::{
    self, ModelSpec, DEFAULT_BLOCK_BYTES, DEFAULT_BLOCK_TOKENS, DEFAULT_KV_LAYOUT,
};
use kvtier_router::routing::RoutingMode;
use kvtier_router::server::{self, FrontConfig};
use kvtier_router::startup::{self, weights_from_flags, StartConfig};

// jemalloc (kvtier-process explains why) unless built without `jemalloc`.
kvtier_process::global_allocator!();

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
    /// A cluster of cache servers instead of --cache-server:
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`. The router follows the membership
    /// in etcd and keeps one event stream per member (a member that leaves takes its
    /// blocks out of the index), hashes with the seed a member's handshake gives, and
    /// sends hints and agent lifecycle calls to every member. --server-ca etc. apply
    /// to every member (https).
    #[arg(long, env = "KVTIER_CLUSTER")]
    cluster: Option<String>,
    #[command(flatten)]
    server_client: kvtier_security::ServerClientArgs,
    /// TLS, bearer tokens and the plaintext rule of the router's own HTTP and
    /// gRPC fronts (the cache server's flags of the same names). With tokens,
    /// a call needs a grant on the model's namespace: read for FindMatches,
    /// Route and ListWorkers, write for model calls over HTTP, ReportLoad and
    /// agent lifecycle calls.
    #[command(flatten)]
    front_security: kvtier_security::FrontSecurityArgs,
    /// Bearer token presented to the workers' agents (needed when an agent
    /// serves TCP with --tokens-file). Prefer --agent-token-file.
    #[arg(long, env = "KVTIER_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// File holding the agents' bearer token.
    #[arg(long, env = "KVTIER_AGENT_TOKEN_FILE", conflicts_with = "agent_token")]
    agent_token_file: Option<PathBuf>,
    /// CA (PEM) that agents' certificates chain to (for https:// agent URLs).
    #[arg(long, env = "KVTIER_AGENT_CA")]
    agent_ca: Option<PathBuf>,
    /// Name to verify in the agents' certificates (default: each URL's host).
    #[arg(long, env = "KVTIER_AGENT_TLS_DOMAIN", requires = "agent_ca")]
    agent_tls_domain: Option<String>,
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

/// The library's start-up config from the flags; the checks run in this
/// order (weights, models, credentials, admission), before any model starts.
fn start_config(args: &Args) -> anyhow::Result<StartConfig> {
    let weights = weights_from_flags(CostWeights {
        host_fetch_weight: args.host_fetch_weight,
        disk_fetch_weight: args.disk_fetch_weight,
        queue_weight: args.queue_weight,
        latency_queue_boost: args.latency_queue_boost,
        priority_doubling: args.priority_doubling,
        decode_weight: args.decode_weight,
        affinity_fraction: args.affinity_fraction,
        load_factor: args.load_factor,
    })?;
    let models = match &args.models_file {
        Some(path) => models_file::read(path)?,
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
    models_file::validate(&models)?;
    // TLS files and the token are read once, before any model starts.
    let cluster = args
        .cluster
        .as_deref()
        .map(kvtier_cluster::ClusterUrl::parse)
        .transpose()?;
    // In a cluster each member is dialled with TLS when a CA is given.
    let security = match &cluster {
        None => args.server_client.resolve(&args.cache_server)?,
        Some(_) => args.server_client.resolve_for_cluster()?,
    };
    // The agents' credentials, in the cache client's shape (the scheme only
    // says whether a CA was given; each agent URL picks TLS by its own).
    let agent_client = kvtier_security::ServerClientArgs {
        server_token: args.agent_token.clone(),
        server_token_file: args.agent_token_file.clone(),
        server_ca: args.agent_ca.clone(),
        server_tls_domain: args.agent_tls_domain.clone(),
        ..Default::default()
    }
    .resolve(if args.agent_ca.is_some() {
        "https://agents"
    } else {
        "http://agents"
    })
    .context("the agents' credentials (--agent-token[-file], --agent-ca)")?;
    let admission = args.admission.config()?;
    Ok(StartConfig {
        models,
        cache_server: (cluster.is_none() && !args.cache_server.is_empty())
            .then(|| args.cache_server.clone()),
        cluster,
        security,
        agent_client,
        weights,
        routing: if args.routing == "round-robin" {
            RoutingMode::RoundRobin
        } else {
            RoutingMode::Cost
        },
        admission,
        expiry: Duration::from_millis(args.expire_ms),
        unreachable: Duration::from_millis(args.unreachable_ms),
    })
}

fn main() -> ExitCode {
    kvtier_process::main("info", |a: &Args| &a.log, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics =
        kvtier_router::metrics::install_recorder().context("install the metrics recorder")?;
    let started = startup::start(&start_config(&args)?).await?;

    // Installed before the ready line, so that no SIGTERM is lost.
    let shutdown = shutdown::signals()?;
    let front = FrontConfig {
        http_listen: args.http_listen,
        grpc_listen: args.grpc_listen,
        max_body_bytes: args.max_body_bytes,
        security: args
            .front_security
            .resolve()
            .context("the router's front security (--tls-cert, --tokens-file)")?,
    };
    let running = server::serve(started, &front, Some(metrics)).await?;
    ready::announce(format_args!(
        "kvtier-router ready http={} grpc={}",
        running.addrs.http, running.addrs.grpc
    ));

    shutdown.await;
    running.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_file_and_worker_exclude_each_other_and_one_is_needed() {
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

    #[test]
    fn the_per_model_flags_make_one_model() {
        let args = Args::try_parse_from([
            "kvtier-router",
            "--worker",
            "w0=http://h:1@http://g:2",
            "--model",
            "m",
            "--block-tokens",
            "32",
            "--cache-server",
            "",
            "--routing",
            "round-robin",
        ])
        .expect("flags parse");
        let config = start_config(&args).expect("valid");
        assert_eq!(config.models.len(), 1);
        assert_eq!(config.models[0].model, "m");
        assert_eq!(config.models[0].block_tokens, 32);
        assert_eq!(config.cache_server, None);
        assert_eq!(config.routing, RoutingMode::RoundRobin);
    }
}
