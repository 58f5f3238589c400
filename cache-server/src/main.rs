//! `kvtier-server`: parse flags, run the library's server until SIGTERM/SIGINT.
//! Logging, signals, the ready line and the exit report: `kvtier-process`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use kvtier_cache_server::cluster::ClusterSettings;
use kvtier_cache_server::config::{
    parse_byte_size, DataListen, PolicyKind, PrefetchConfig, SecurityConfig, ServerConfig,
    StoreConfig,
};
use kvtier_cache_server::server;
use kvtier_cluster::ClusterUrl;
use kvtier_process::{ready, shutdown, LogArgs};
use kvtier_security::tls::ServerTlsFiles;
use kvtier_security::LimitConfig;

// jemalloc (kvtier-process explains why) unless built without `jemalloc`.
kvtier_process::global_allocator!();

/// kvtier cache server: a tiered (GPU HBM → host memory → NVMe/RocksDB) KV block
/// store for agentic LLM inference, served over gRPC (kvtier.v1).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// gRPC listen address (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "KVTIER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Prometheus /metrics listen address; "off" disables it.
    #[arg(long, env = "KVTIER_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// Binary data-plane listen address for block payloads (`<ip>:<port>`,
    /// `unix:<path>`, or "off"); gRPC stays the control plane. Default
    /// 127.0.0.1:50052 (a free port when --listen uses port 0). Plaintext: with
    /// --tls-cert it must be "off" (the default then turns it off); with tokens,
    /// clients present the same bearer token in their HELLO frame.
    #[arg(long, env = "KVTIER_DATA_LISTEN")]
    data_listen: Option<String>,
    /// Directory of the RocksDB disk tier.
    #[arg(long, env = "KVTIER_DATA_DIR", default_value = "./kvtier-data")]
    data_dir: PathBuf,
    /// Host-memory tier capacity (e.g. 512MiB, 8GiB).
    #[arg(long, env = "KVTIER_HOST_CAPACITY", default_value = "1GiB", value_parser = parse_byte_size)]
    host_capacity: u64,
    /// Fault the host tier's memory in at start (it is reserved whole either way).
    #[arg(long, env = "KVTIER_HOST_PREFAULT", default_value_t = true, action = clap::ArgAction::Set)]
    host_prefault: bool,
    /// Disk tier capacity in payload bytes; 0 disables the disk tier.
    #[arg(long, env = "KVTIER_DISK_CAPACITY", default_value = "16GiB", value_parser = parse_byte_size)]
    disk_capacity: u64,
    /// GPU HBM tier capacity (needs a build with the `cuda` feature and a GPU); 0 disables it.
    #[arg(long, env = "KVTIER_GPU_CAPACITY", default_value = "0", value_parser = parse_byte_size)]
    gpu_capacity: u64,
    /// CUDA device ordinal of the GPU tier.
    #[arg(long, env = "KVTIER_GPU_DEVICE", default_value_t = 0)]
    gpu_device: usize,
    /// Largest block payload accepted.
    #[arg(long, env = "KVTIER_MAX_BLOCK_BYTES", default_value = "64MiB", value_parser = parse_byte_size)]
    max_block_bytes: u64,
    /// Requests served at once; beyond that, requests wait up to 2 s, then get RESOURCE_EXHAUSTED.
    /// A data-plane PUT takes its slot only once its payload has arrived, a gRPC Put stream once
    /// its first message has.
    #[arg(long, env = "KVTIER_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    max_concurrent_requests: usize,
    /// Data plane: a connection silent between frames for this many ms is closed.
    #[arg(long, env = "KVTIER_DATA_IDLE_TIMEOUT_MS", default_value_t = kvtier_cache_server::config::DEFAULT_DATA_IDLE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    data_idle_timeout_ms: u64,
    /// Once a data-plane frame has begun, the rest of it (payload included) must arrive within
    /// this many ms, else the connection is closed; also the longest wait for each message of a
    /// gRPC Put stream (then DEADLINE_EXCEEDED).
    #[arg(long, env = "KVTIER_FRAME_TIMEOUT_MS", default_value_t = kvtier_cache_server::config::DEFAULT_FRAME_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    frame_timeout_ms: u64,
    /// Comma-separated namespaces a handshake may create; empty allows any.
    #[arg(long, env = "KVTIER_ALLOWED_NAMESPACES", value_delimiter = ',')]
    allowed_namespaces: Vec<String>,
    /// fsync the write-ahead log on every disk write (survives power loss, slower).
    #[arg(long, env = "KVTIER_SYNC_WRITES", default_value_t = false)]
    sync_writes: bool,
    /// Eviction policy: `value` (kvtier's value- and lifecycle-aware order) or `lru`.
    #[arg(long, env = "KVTIER_POLICY", default_value = "value")]
    policy: PolicyKind,
    /// Blocks each namespace may pin through hints.
    #[arg(long, env = "KVTIER_PIN_QUOTA_BLOCKS", default_value_t = kvtier_cache_server::config::DEFAULT_PIN_QUOTA_BLOCKS)]
    pin_quota_blocks: u64,
    /// Longest agent lease (RegisterAgent lease_ms) a client may ask for, in ms; more is INVALID_ARGUMENT.
    #[arg(long, env = "KVTIER_MAX_AGENT_LEASE_MS", default_value_t = kvtier_cache_server::config::DEFAULT_MAX_AGENT_LEASE_MS, value_parser = clap::value_parser!(u64).range(1..))]
    max_agent_lease_ms: u64,
    /// Live agents each namespace may hold; registering more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "KVTIER_MAX_AGENTS_PER_NAMESPACE", default_value_t = kvtier_cache_server::config::DEFAULT_MAX_AGENTS_PER_NAMESPACE)]
    max_agents_per_namespace: usize,
    /// Do not move blocks read from a lower tier up.
    #[arg(long, env = "KVTIER_NO_PROMOTE", default_value_t = false)]
    no_promote: bool,
    /// Prefetch: every --prefetch-interval-ms, move the disk blocks of the agents the
    /// policy expects back soonest up to the host tier, displacing only host blocks of
    /// lower forecast value (needs --policy value; with lru nothing moves).
    #[arg(long, env = "KVTIER_PREFETCH", default_value_t = false)]
    prefetch: bool,
    /// Time between prefetch rounds, in ms.
    #[arg(long, env = "KVTIER_PREFETCH_INTERVAL_MS", default_value_t = kvtier_cache_server::config::DEFAULT_PREFETCH_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..))]
    prefetch_interval_ms: u64,
    /// Disk read bandwidth prefetch may use (e.g. 256MiB: per second; each round moves
    /// its share, at least one block); 0 moves nothing.
    #[arg(long, env = "KVTIER_PREFETCH_BYTES_PER_S", default_value = "256MiB", value_parser = parse_byte_size)]
    prefetch_bytes_per_s: u64,
    /// Lead time in ms with which prefetch values agents (how soon a call must come to be
    /// worth a move); 0: the policy's own ranking.
    #[arg(long, env = "KVTIER_PREFETCH_HORIZON_MS", default_value_t = kvtier_cache_server::config::DEFAULT_PREFETCH_HORIZON_MS)]
    prefetch_horizon_ms: u64,
    /// On SIGTERM, copy memory-tier blocks to the disk tier (hottest first) for
    /// at most this long, so a restart keeps the hot set; 0 turns it off.
    #[arg(long, env = "KVTIER_SHUTDOWN_SPILL_MS", default_value_t = 20_000)]
    shutdown_spill_ms: u64,
    /// TLS certificate chain (PEM); with --tls-key, gRPC is served over TLS.
    #[arg(long, env = "KVTIER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "KVTIER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: turns on mutual TLS.
    #[arg(long, env = "KVTIER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Token file: `<principal> sha256:<hex> [tenant=<t>] [admin] <ns-pattern>=<r|w|rw>...`
    /// per line; reloaded on SIGHUP. Turns on bearer-token authentication.
    #[arg(long, env = "KVTIER_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Token table inline (entries separated by `;`), when there is no file.
    #[arg(long, env = "KVTIER_TOKENS", hide_env_values = true)]
    tokens: Option<String>,
    /// Allow plaintext gRPC and /metrics on non-loopback addresses (a warning is logged).
    #[arg(long, env = "KVTIER_ALLOW_PLAINTEXT", default_value_t = false)]
    allow_plaintext: bool,
    /// Serve /metrics without TLS even when gRPC uses TLS (off loopback this also needs --allow-plaintext).
    #[arg(long, env = "KVTIER_METRICS_PLAINTEXT", default_value_t = false)]
    metrics_plaintext: bool,
    /// Requests one client (token principal, or IP without tokens) may have in flight; 0: unlimited.
    #[arg(long, env = "KVTIER_CLIENT_MAX_CONCURRENT", default_value_t = kvtier_cache_server::config::DEFAULT_CLIENT_MAX_CONCURRENT)]
    client_max_concurrent: usize,
    /// Payload bytes per second one client may move (Put in + Get out); 0: unlimited.
    #[arg(long, env = "KVTIER_CLIENT_MAX_BYTES_PER_SEC", default_value = "0", value_parser = parse_byte_size)]
    client_max_bytes_per_sec: u64,
    /// Byte-rate burst per client (default: one second's worth).
    #[arg(long, env = "KVTIER_CLIENT_BURST_BYTES", default_value = "0", value_parser = parse_byte_size)]
    client_burst_bytes: u64,
    /// Join a cluster whose membership and namespace configurations are in etcd:
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (key prefix default /kvtier). The
    /// server registers before it prints its ready line; an unreachable etcd is
    /// retried with a log line, a node id held by a live process is an error.
    #[arg(long, env = "KVTIER_CLUSTER")]
    cluster: Option<String>,
    /// This node's id in the cluster (1-64 of A-Z a-z 0-9 . _ -). Stored in the data
    /// directory on first start; later starts take it back (a different id is refused).
    /// Default: the stored id, or a generated one.
    #[arg(long, env = "KVTIER_NODE_ID", requires = "cluster")]
    node_id: Option<String>,
    /// gRPC address other parties dial (HOST:PORT); default the bound --listen address
    /// (required when that is 0.0.0.0).
    #[arg(long, env = "KVTIER_ADVERTISE", requires = "cluster")]
    advertise: Option<String>,
    /// Data-plane address other parties dial (HOST:PORT); default the bound TCP
    /// --data-listen address.
    #[arg(long, env = "KVTIER_ADVERTISE_DATA", requires = "cluster")]
    advertise_data: Option<String>,
    /// Lease TTL of this node's membership record, in seconds: a node that stops
    /// renewing (killed, frozen, cut off) leaves the membership within this long.
    #[arg(long, env = "KVTIER_CLUSTER_LEASE_TTL_S", default_value_t = kvtier_cache_server::cluster::DEFAULT_LEASE_TTL_S, value_parser = clap::value_parser!(u64).range(1..=3600))]
    cluster_lease_ttl_s: u64,
    /// This node's share of the hash space relative to the others (e.g. 2 for twice
    /// the memory and disk).
    #[arg(long, env = "KVTIER_CLUSTER_WEIGHT", default_value_t = 1.0)]
    cluster_weight: f64,
    /// On SIGTERM, stay in the cluster as `draining` this many seconds (reads are
    /// served, clients send no new writes here) before leaving; 0: leave at once.
    #[arg(long, env = "KVTIER_CLUSTER_DRAIN_S", default_value_t = 0, requires = "cluster", value_parser = clap::value_parser!(u64).range(0..=3600))]
    cluster_drain_s: u64,
    #[command(flatten)]
    log: LogArgs,
}

fn cluster_from(args: &Args) -> anyhow::Result<Option<ClusterSettings>> {
    let Some(text) = &args.cluster else {
        return Ok(None);
    };
    if !(args.cluster_weight.is_finite() && args.cluster_weight > 0.0) {
        anyhow::bail!(
            "--cluster-weight must be a number > 0, got {}",
            args.cluster_weight
        );
    }
    Ok(Some(ClusterSettings {
        url: ClusterUrl::parse(text)?,
        node_id: args.node_id.clone(),
        advertise: args.advertise.clone(),
        advertise_data: args.advertise_data.clone(),
        lease_ttl: std::time::Duration::from_secs(args.cluster_lease_ttl_s),
        weight: args.cluster_weight,
        drain: std::time::Duration::from_secs(args.cluster_drain_s),
    }))
}

fn config_from(args: Args) -> anyhow::Result<ServerConfig> {
    let metrics_listen =
        match args.metrics_listen.as_str() {
            "off" | "" => None,
            text => Some(text.parse().with_context(|| {
                format!("--metrics-listen {text:?} is not an address or \"off\"")
            })?),
        };
    let data_listen = match &args.data_listen {
        None => DataListen::default_for(args.listen),
        Some(text) => DataListen::parse(text).map_err(anyhow::Error::msg)?,
    };
    let cluster = cluster_from(&args)?;
    Ok(ServerConfig {
        listen: args.listen,
        metrics_listen,
        data_listen,
        max_block_bytes: args.max_block_bytes,
        max_concurrent_requests: args.max_concurrent_requests,
        data_idle_timeout: std::time::Duration::from_millis(args.data_idle_timeout_ms),
        frame_timeout: std::time::Duration::from_millis(args.frame_timeout_ms),
        policy: args.policy,
        pin_quota_blocks: args.pin_quota_blocks,
        max_agent_lease_ms: args.max_agent_lease_ms,
        max_agents_per_namespace: args.max_agents_per_namespace,
        shutdown_spill: std::time::Duration::from_millis(args.shutdown_spill_ms),
        allowed_namespaces: args
            .allowed_namespaces
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        security: SecurityConfig {
            tls: match (args.tls_cert, args.tls_key) {
                (Some(cert), Some(key)) => Some(ServerTlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca,
                }),
                _ => None,
            },
            tokens_file: args.tokens_file,
            tokens_text: args.tokens,
            allow_plaintext: args.allow_plaintext,
            metrics_plaintext: args.metrics_plaintext,
            limits: LimitConfig {
                max_concurrent: args.client_max_concurrent,
                bytes_per_sec: args.client_max_bytes_per_sec,
                burst_bytes: args.client_burst_bytes,
            },
        },
        store: StoreConfig {
            data_dir: args.data_dir,
            gpu_capacity: args.gpu_capacity,
            gpu_device: args.gpu_device,
            host_capacity: args.host_capacity,
            host_prefault: args.host_prefault,
            disk_capacity: args.disk_capacity,
            sync_writes: args.sync_writes,
            promote_on_hit: !args.no_promote,
        },
        prefetch: PrefetchConfig {
            enabled: args.prefetch,
            interval: std::time::Duration::from_millis(args.prefetch_interval_ms),
            bytes_per_sec: args.prefetch_bytes_per_s,
            horizon_ms: args.prefetch_horizon_ms,
        },
        cluster,
    })
}

fn main() -> ExitCode {
    kvtier_process::main("info", |a: &Args| &a.log, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = config_from(args)?;
    let (grpc, metrics) = server::bind(&config).await.with_context(|| {
        format!(
            "cannot bind {} / {:?}",
            config.listen, config.metrics_listen
        )
    })?;
    // The handlers are installed here, before the ready line.
    server::run(config, grpc, metrics, shutdown::signals()?, |addrs| {
        // In a cluster the line ends with ` node=<id>`.
        let node = addrs
            .node_id
            .as_deref()
            .map(|id| format!(" node={id}"))
            .unwrap_or_default();
        ready::announce(format_args!(
            "kvtier-server ready grpc={} metrics={} data={}{node}",
            addrs.grpc,
            ready::or_off(addrs.metrics),
            ready::or_off(addrs.data.as_ref())
        ));
    })
    .await?;
    Ok(())
}
