//! `kvtier-agent`: parse flags, run the worker sidecar until SIGTERM/SIGINT.
//! Logging, signals, the ready line and the exit report: `kvtier-process`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use kvtier_process::{ready, shutdown, LogArgs};
use kvtier_worker_agent::config::{AgentConfig, ExpectedHashing};
use kvtier_worker_agent::server;

// Same allocator as kvtier-server: every onboarded block arrives in a fresh
// block-sized buffer, which jemalloc recycles without a page-fault storm.
kvtier_process::global_allocator!();

/// kvtier worker agent: moves KV blocks between one inference worker's KV pool
/// and the kvtier cache tier, and publishes the worker's KV events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket the engine reaches the agent on (mode 0660); "off" serves
    /// TCP only. Default /dev/shm/kvtier/agent.sock, or off when --listen is
    /// given without --uds.
    #[arg(long, env = "KVTIER_AGENT_UDS")]
    uds: Option<String>,
    /// Also (or only, with --uds off) serve gRPC on TCP at this address (port 0
    /// picks a free port; the bound address is printed). Off by default; a
    /// non-loopback address needs --tokens-file and --tls-cert/--tls-key.
    #[arg(long, env = "KVTIER_AGENT_LISTEN")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    security: kvtier_security::FrontSecurityArgs,
    /// Shared-memory pools may only be files beneath this directory (regular
    /// files, no symbolic links, owned by --pool-owner-uid); created at start.
    #[arg(long, env = "KVTIER_AGENT_POOL_DIR", default_value = kvtier_worker_agent::config::DEFAULT_POOL_DIR)]
    pool_dir: PathBuf,
    /// Owner every pool file must have (a numeric uid); default: the agent's own user.
    #[arg(long, env = "KVTIER_AGENT_POOL_OWNER_UID")]
    pool_owner_uid: Option<u32>,
    /// Prometheus /metrics listen address; "off" disables it.
    #[arg(
        long,
        env = "KVTIER_AGENT_METRICS_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    metrics_listen: String,
    /// Cache server gRPC endpoint.
    #[arg(long, env = "KVTIER_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    #[command(flatten)]
    server_client: kvtier_security::ServerClientArgs,
    /// The cache server's binary data plane, HOST:PORT (its --data-listen
    /// address, e.g. 127.0.0.1:50052 or kvtier-cache:50052): Offload and
    /// Onboard payloads go over it instead of gRPC streams. The server must
    /// run without TLS (its data plane is plaintext).
    #[arg(long, env = "KVTIER_SERVER_DATA", value_parser = parse_host_port)]
    server_data: Option<String>,
    /// A cluster of cache servers instead of --server:
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`. Blocks go to and come from their
    /// owners (weighted rendezvous over the membership in etcd), over gRPC, or over
    /// each owner's binary data plane with --cluster-data-plane (--server-data names
    /// one server's and is refused here). --server-ca etc. apply to every member
    /// (https when a CA is given).
    #[arg(long, env = "KVTIER_CLUSTER", conflicts_with = "server_data")]
    cluster: Option<String>,
    /// With --cluster: Offload and Onboard payloads go over each block owner's
    /// binary data plane (the data address in its membership record, i.e. the
    /// server's --data-listen or --advertise-data) instead of gRPC streams; a
    /// member without one is reached over gRPC. Lookup stays on gRPC. The servers
    /// must run without TLS (the data plane is plaintext).
    #[arg(
        long,
        env = "KVTIER_CLUSTER_DATA_PLANE",
        default_value_t = false,
        requires = "cluster"
    )]
    cluster_data_plane: bool,
    /// With --cluster: after a read served by a block's previous owner (during a
    /// join's warm-up or a drain), copy the block to its new owner in the background.
    #[arg(
        long,
        env = "KVTIER_CLUSTER_COPY_ON_READ",
        default_value_t = false,
        requires = "cluster"
    )]
    cluster_copy_on_read: bool,
    /// With --cluster: seconds after a member joins during which a miss on it is
    /// asked of the block's previous owner.
    #[arg(
        long,
        env = "KVTIER_CLUSTER_WARMUP_S",
        default_value_t = 60,
        requires = "cluster"
    )]
    cluster_warmup_s: u64,
    /// Worker id carried by this agent's events.
    #[arg(long, env = "KVTIER_WORKER_ID", default_value = "worker-0")]
    worker_id: String,
    /// Tokens per block engines must use.
    #[arg(long, env = "KVTIER_BLOCK_TOKENS", default_value_t = 16)]
    block_tokens: u32,
    /// Base XXH3 seed engines must use.
    #[arg(long, env = "KVTIER_SEED", default_value_t = kvtier_proto::hashing::DEFAULT_SEED)]
    seed: u64,
    /// Namespace salt engines must use.
    #[arg(long, env = "KVTIER_SALT", default_value = "")]
    salt: String,
    /// Model engines must serve (empty: any).
    #[arg(long, env = "KVTIER_MODEL", default_value = "")]
    model: String,
    /// Staging memory, split into block-sized buffers (e.g. 256MiB).
    #[arg(long, env = "KVTIER_STAGING_BYTES", default_value = "256MiB", value_parser = kvtier_process::size::parse_byte_size)]
    staging_bytes: u64,
    /// Connections to the cache server (a large transfer is split over them).
    #[arg(long, env = "KVTIER_TIER_CONNECTIONS", default_value_t = 4)]
    tier_connections: usize,
    /// Longest an Onboard waits for the cache tier, in milliseconds.
    #[arg(long, env = "KVTIER_ONBOARD_TIMEOUT_MS", default_value_t = 2000)]
    onboard_timeout_ms: u64,
    /// Longest an Offload or Lookup waits for the cache tier, in milliseconds.
    #[arg(long, env = "KVTIER_CALL_TIMEOUT_MS", default_value_t = 30_000)]
    call_timeout_ms: u64,
    /// Connect timeout to the cache server, in milliseconds.
    #[arg(long, env = "KVTIER_CONNECT_TIMEOUT_MS", default_value_t = 500)]
    connect_timeout_ms: u64,
    /// Events kept for subscribers that reconnect.
    #[arg(long, env = "KVTIER_EVENT_BUFFER", default_value_t = 4096)]
    event_buffer: usize,
    /// Event subscriptions served at once.
    #[arg(long, env = "KVTIER_MAX_SUBSCRIBERS", default_value_t = 256)]
    max_subscribers: usize,
    /// vLLM KV-event ZMQ PUB endpoint to track (e.g. tcp://127.0.0.1:5557).
    #[arg(long, env = "KVTIER_VLLM_EVENTS")]
    vllm_events: Option<String>,
    /// vLLM KV-event replay endpoint, asked for missed batches.
    #[arg(long, env = "KVTIER_VLLM_REPLAY")]
    vllm_replay: Option<String>,
    /// Resubscribe to vLLM events after this much silence, in milliseconds.
    #[arg(long, env = "KVTIER_VLLM_IDLE_RECONNECT_MS", default_value_t = 5000)]
    vllm_idle_reconnect_ms: u64,
    /// ZMQ topic prefix to subscribe to.
    #[arg(long, env = "KVTIER_VLLM_TOPIC", default_value = "")]
    vllm_topic: String,
    #[command(flatten)]
    log: LogArgs,
}

fn parse_host_port(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(text.to_string())
        }
        _ => Err(format!("{text:?} is not HOST:PORT")),
    }
}

impl TryFrom<Args> for AgentConfig {
    type Error = anyhow::Error;

    fn try_from(a: Args) -> anyhow::Result<Self> {
        let metrics_listen = match a.metrics_listen.as_str() {
            "off" | "" => None,
            text => Some(text.parse().with_context(|| {
                format!("--metrics-listen {text:?} is not an address or \"off\"")
            })?),
        };
        let cluster = a
            .cluster
            .as_deref()
            .map(kvtier_cluster::ClusterUrl::parse)
            .transpose()?;
        // In a cluster each member is dialled with TLS when a CA is given.
        let server_client = match &cluster {
            None => a.server_client.resolve(&a.server)?,
            Some(_) => a.server_client.resolve_for_cluster()?,
        };
        if server_client.tls() && a.server_data.is_some() {
            anyhow::bail!(
                "--server-data moves payloads in plaintext, but the cache server is reached over \
                 TLS ({}): leave --server-data unset (a server with TLS serves no data plane)",
                a.server
            );
        }
        if server_client.tls() && a.cluster_data_plane {
            anyhow::bail!(
                "--cluster-data-plane moves payloads in plaintext, but the cluster's members are \
                 reached over TLS (--server-ca is set): leave --cluster-data-plane unset \
                 (a server with TLS serves no data plane)"
            );
        }
        let uds = match (a.uds.as_deref(), a.listen) {
            (Some("off"), None) => anyhow::bail!(
                "--uds off needs --listen: the agent must serve on a Unix socket or on TCP"
            ),
            (Some("off"), Some(_)) | (None, Some(_)) => None,
            (Some(""), _) => anyhow::bail!("--uds is empty: give a socket path or \"off\""),
            (Some(path), _) => Some(PathBuf::from(path)),
            (None, None) => Some(PathBuf::from(kvtier_worker_agent::config::DEFAULT_UDS)),
        };
        let security = a
            .security
            .resolve()
            .context("the agent's listener security (--tls-cert, --tokens-file)")?;
        Ok(Self {
            listen: a.listen,
            security,
            server_client,
            metrics_listen,
            uds,
            pool_dir: a.pool_dir,
            pool_owner_uid: a.pool_owner_uid,
            server: a.server,
            server_data: a.server_data,
            cluster,
            cluster_data_plane: a.cluster_data_plane,
            cluster_copy_on_read: a.cluster_copy_on_read,
            cluster_warmup: Duration::from_secs(a.cluster_warmup_s),
            worker_id: a.worker_id,
            hashing: ExpectedHashing {
                block_tokens: a.block_tokens,
                seed: a.seed,
                salt: a.salt,
                model: a.model,
            },
            staging_bytes: a.staging_bytes,
            tier_connections: a.tier_connections,
            onboard_timeout: Duration::from_millis(a.onboard_timeout_ms),
            call_timeout: Duration::from_millis(a.call_timeout_ms),
            connect_timeout: Duration::from_millis(a.connect_timeout_ms),
            event_buffer: a.event_buffer,
            max_subscribers: a.max_subscribers,
            vllm_events: a.vllm_events,
            vllm_replay: a.vllm_replay,
            vllm_topic: a.vllm_topic,
            vllm_idle_reconnect: Duration::from_millis(a.vllm_idle_reconnect_ms.max(100)),
            ..AgentConfig::default()
        })
    }
}

fn main() -> ExitCode {
    kvtier_process::main("info", |a: &Args| &a.log, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = AgentConfig::try_from(args)?;
    // The handlers are installed here, before the ready line.
    server::run(config, shutdown::signals()?, |addrs| {
        ready::announce(format_args!(
            "kvtier-agent ready grpc={} uds={} metrics={}",
            ready::or_off(addrs.grpc),
            ready::or_off(addrs.uds.as_ref().map(|p| p.display())),
            ready::or_off(addrs.metrics)
        ));
    })
    .await?;
    Ok(())
}
