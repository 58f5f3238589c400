//! Agent settings. Every field has a default so that an agent starts on a
//! laptop next to a simulated engine with no setup.

use kvtier_security::{FrontSecurity, ServerClient};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kvtier_proto::hashing::DEFAULT_SEED;

/// Default directory of shared-memory pools.
pub const DEFAULT_POOL_DIR: &str = "/dev/shm/kvtier";

/// Default Unix socket of the agent: beside the pools, so one shared
/// `/dev/shm` (an in-memory volume in Kubernetes) carries both.
pub const DEFAULT_UDS: &str = "/dev/shm/kvtier/agent.sock";

/// The hashing configuration this agent expects every attached engine (and the
/// cache server) to use. `block_bytes` and `kv_layout` come from the engine's
/// pool; `model` is only compared when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedHashing {
    /// Tokens per block. Default 16 (vLLM's default).
    pub block_tokens: u32,
    /// Base XXH3 seed. Default 1337 (Dynamo's).
    pub seed: u64,
    /// Namespace salt. Default empty.
    pub salt: String,
    /// Model name; empty accepts any. Default empty.
    pub model: String,
}

impl Default for ExpectedHashing {
    fn default() -> Self {
        Self {
            block_tokens: 16,
            seed: DEFAULT_SEED,
            salt: String::new(),
            model: String::new(),
        }
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// TCP gRPC listen address, only when asked for (then with the
    /// plaintext rule, TLS and tokens of `security`). Default none.
    pub listen: Option<SocketAddr>,
    /// Unix socket the engine reaches the agent on. Default
    /// `/dev/shm/kvtier/agent.sock` ([`DEFAULT_UDS`]); `None` with `listen`
    /// set serves TCP only. One of the two must be set.
    pub uds: Option<PathBuf>,
    /// TLS, bearer tokens and the plaintext rule of the TCP listener (tokens
    /// also apply on the Unix socket). Default: no TLS, no tokens.
    pub security: FrontSecurity,
    /// Prometheus `/metrics` listen address; `None` disables it. Default `127.0.0.1:9465`.
    pub metrics_listen: Option<SocketAddr>,
    /// Cache server gRPC endpoint. Default `http://127.0.0.1:50051`.
    pub server: String,
    /// TLS and bearer token for the cache server (`https://` URLs need a CA).
    /// Default plaintext without a token.
    pub server_client: ServerClient,
    /// The cache server's binary data plane (`--data-listen`), as `host:port`
    /// (a name is resolved at each connection): when set, Offload and Onboard
    /// move payloads over it (gRPC stays for the handshake, Lookup and
    /// everything else). Default none (all over gRPC).
    pub server_data: Option<String>,
    /// A cluster of cache servers (`--cluster etcd://...`) instead of
    /// `server`: tier I/O goes to each block's owner through
    /// [`kvtier_cluster::ShardedClient`] (over gRPC, or over each owner's
    /// data plane with `cluster_data_plane`; `server_data` is not used
    /// then). Default none.
    pub cluster: Option<kvtier_cluster::ClusterUrl>,
    /// With `cluster`: Offload and Onboard payloads go over each block
    /// owner's binary data plane (the `data` address of its membership
    /// record; gRPC for a member without one). Lookup and the handshake stay
    /// on gRPC. Plaintext only. Default off.
    pub cluster_data_plane: bool,
    /// With `cluster`: copy blocks read from a previous owner to their new
    /// owner in the background. Default off.
    pub cluster_copy_on_read: bool,
    /// With `cluster`: how long after a member joins a miss on it is asked
    /// of the previous owner. Default 60 s.
    pub cluster_warmup: Duration,
    /// Worker id carried by this agent's events. Default `worker-0`.
    pub worker_id: String,
    /// Hashing configuration attached engines must use.
    pub hashing: ExpectedHashing,
    /// Where shared-memory pools may be: files beneath this directory only,
    /// regular, not symbolic links, owned by `pool_owner_uid`. Default
    /// `/dev/shm/kvtier`.
    pub pool_dir: PathBuf,
    /// Owner every pool file must have; `None`: the agent's own user. Default `None`.
    pub pool_owner_uid: Option<u32>,
    /// Bytes of staging memory (split into block-sized buffers, at least 2). Default 256 MiB.
    pub staging_bytes: u64,
    /// Connections to the cache server; a large Offload/Onboard is split over
    /// that many concurrent streams. Default 4.
    pub tier_connections: usize,
    /// Most blocks accepted in one Offload/Onboard/Lookup. Default 65,536 (the server's limit).
    pub max_blocks_per_call: usize,
    /// Connect timeout to the cache server. Default 500 ms.
    pub connect_timeout: Duration,
    /// Longest an Onboard waits for the cache tier before answering "not loaded". Default 2 s.
    pub onboard_timeout: Duration,
    /// Longest an Offload or Lookup waits for the cache tier. Default 30 s.
    pub call_timeout: Duration,
    /// Events kept for replay to subscribers that reconnect. Default 4,096.
    pub event_buffer: usize,
    /// Event subscriptions served at once; more get RESOURCE_EXHAUSTED. Default 256.
    pub max_subscribers: usize,
    /// vLLM KV-event ZMQ PUB endpoint to subscribe to (e.g. `tcp://127.0.0.1:5557`). Default none.
    pub vllm_events: Option<String>,
    /// vLLM replay (ROUTER) endpoint asked for missed batches after a gap. Default none.
    pub vllm_replay: Option<String>,
    /// ZMQ topic prefix to subscribe to. Default empty (all topics).
    pub vllm_topic: String,
    /// Silence on the vLLM event stream after which the agent resubscribes
    /// (the ZMQ library does not report a publisher that went away). Default 5 s.
    pub vllm_idle_reconnect: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: None,
            uds: Some(PathBuf::from(DEFAULT_UDS)),
            security: FrontSecurity::open(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            server: "http://127.0.0.1:50051".into(),
            server_client: ServerClient::plain(),
            server_data: None,
            cluster: None,
            cluster_data_plane: false,
            cluster_copy_on_read: false,
            cluster_warmup: kvtier_cluster::sharded::DEFAULT_WARMUP,
            worker_id: "worker-0".into(),
            hashing: ExpectedHashing::default(),
            pool_dir: PathBuf::from(DEFAULT_POOL_DIR),
            pool_owner_uid: None,
            staging_bytes: 256 << 20,
            tier_connections: 4,
            max_blocks_per_call: 65_536,
            connect_timeout: Duration::from_millis(500),
            onboard_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(30),
            event_buffer: 4096,
            max_subscribers: 256,
            vllm_events: None,
            vllm_replay: None,
            vllm_topic: String::new(),
            vllm_idle_reconnect: Duration::from_secs(5),
        }
    }
}
