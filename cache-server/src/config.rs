//! Server configuration: every field has an embedded default so that the
//! server starts on a laptop with no GPU and no setup.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default pin quota per namespace, in blocks (what [`ServerConfig::pin_quota_blocks`]
/// holds unless set). A configuration default, so it lives here, below the
/// modules that use it ([`crate::agents`] takes the quota as an argument).
pub const DEFAULT_PIN_QUOTA_BLOCKS: u64 = 65_536;
/// Default cap on an agent's lease (`RegisterAgent.lease_ms`): one hour.
pub const DEFAULT_MAX_AGENT_LEASE_MS: u64 = 60 * 60 * 1000;
/// Default cap on live agents per namespace.
pub const DEFAULT_MAX_AGENTS_PER_NAMESPACE: usize = 10_000;
/// Default data-plane idle timeout: a connection silent between frames for
/// this long is closed (five minutes; clients reconnect on demand).
pub const DEFAULT_DATA_IDLE_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// Default frame deadline: once a data-plane frame has begun, the rest of it
/// (header, payload or hash list) must arrive within this; it is also the
/// longest wait for each message of a gRPC Put stream. 30 s moves a 64 MiB
/// block at about 2 MB/s.
pub const DEFAULT_FRAME_TIMEOUT_MS: u64 = 30_000;
/// Default per-client concurrency (requests in flight per token principal,
/// or per IP address without tokens): half the default server-wide
/// `max_concurrent_requests`, so that one client can never hold every slot.
pub const DEFAULT_CLIENT_MAX_CONCURRENT: usize = 128;

/// The byte-size syntax of every flag (`512MiB`, `2GiB`, `1.5GB`, `4096`).
pub use kvtier_process::size::parse_byte_size;

/// Capacities and locations of the tiered store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the RocksDB tier. Default `./kvtier-data`.
    pub data_dir: PathBuf,
    /// T0 GPU capacity in bytes; 0 disables it. Default 0 (only used with the `cuda` feature).
    pub gpu_capacity: u64,
    /// CUDA device ordinal for T0. Default 0.
    pub gpu_device: usize,
    /// T1 host-memory capacity in bytes, reserved at start as the host
    /// tier's arena. Default 1 GiB.
    pub host_capacity: u64,
    /// Fault the host arena's pages in at start (so that no put pays for
    /// it); off, they are faulted on first use and kept. Default true.
    pub host_prefault: bool,
    /// T2 disk capacity in payload bytes; 0 disables the disk tier. Default 16 GiB.
    pub disk_capacity: u64,
    /// Sync the RocksDB write-ahead log on every write (survives power loss,
    /// not only process crashes). Default false: a `kill -9` loses nothing either way.
    pub sync_writes: bool,
    /// Move a block read from a lower tier up to the highest tier with a place for it. Default true.
    pub promote_on_hit: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./kvtier-data"),
            gpu_capacity: 0,
            gpu_device: 0,
            host_capacity: 1 << 30,
            host_prefault: true,
            disk_capacity: 16 << 30,
            sync_writes: false,
            promote_on_hit: true,
        }
    }
}

/// Default time between prefetch rounds.
pub const DEFAULT_PREFETCH_INTERVAL_MS: u64 = 100;
/// Default disk → host bandwidth prefetch may use: 256 MiB/s.
pub const DEFAULT_PREFETCH_BYTES_PER_SEC: u64 = 256 << 20;
/// Default lead time with which prefetch values agents (how soon a call must
/// come to be worth a move), as in `kvtier-bench replay --tiered`.
pub const DEFAULT_PREFETCH_HORIZON_MS: u64 = 2_000;

/// Server-side prefetch (see [`crate::prefetch`]). Off by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Run the prefetcher. Default false.
    pub enabled: bool,
    /// Time between rounds. Default 100 ms.
    pub interval: std::time::Duration,
    /// Payload bytes a second the prefetcher may read from disk (each
    /// round moves its share, at least one block); 0 moves nothing.
    /// Default 256 MiB/s.
    pub bytes_per_sec: u64,
    /// Lead time (ms) with which agents are valued; 0: the policy's own
    /// ranking. Default 2,000.
    pub horizon_ms: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: std::time::Duration::from_millis(DEFAULT_PREFETCH_INTERVAL_MS),
            bytes_per_sec: DEFAULT_PREFETCH_BYTES_PER_SEC,
            horizon_ms: DEFAULT_PREFETCH_HORIZON_MS,
        }
    }
}

/// Which eviction order the store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// kvtier's value- and lifecycle-aware policy (default).
    #[default]
    Value,
    /// Least recently used first (the baseline; ignores agent hints).
    Lru,
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "value" | "kvtier" => Ok(Self::Value),
            "lru" => Ok(Self::Lru),
            other => Err(format!("unknown policy {other:?}: use value or lru")),
        }
    }
}

/// TLS, authentication and per-client limits (TLS and tokens off by
/// default, which is only accepted on loopback listeners).
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Server certificate, key and optional client CA (mTLS). Default none.
    pub tls: Option<kvtier_security::tls::ServerTlsFiles>,
    /// Token file (hashed tokens and grants), reloaded on SIGHUP. Default none.
    pub tokens_file: Option<PathBuf>,
    /// Token table given inline (`;`-separated lines); not reloadable. Default none.
    pub tokens_text: Option<String>,
    /// Serve plaintext on non-loopback addresses (logged as a warning). Default false.
    pub allow_plaintext: bool,
    /// Serve `/metrics` without TLS even when gRPC has TLS (still subject to
    /// the loopback rule). Default false: `/metrics` uses gRPC's certificate.
    pub metrics_plaintext: bool,
    /// Per-client limits. Default: [`DEFAULT_CLIENT_MAX_CONCURRENT`] requests
    /// in flight per client, byte rate unlimited.
    pub limits: kvtier_security::LimitConfig,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            tls: None,
            tokens_file: None,
            tokens_text: None,
            allow_plaintext: false,
            metrics_plaintext: false,
            limits: kvtier_security::LimitConfig {
                max_concurrent: DEFAULT_CLIENT_MAX_CONCURRENT,
                ..Default::default()
            },
        }
    }
}

/// Where the binary data plane listens (see [`crate::dataplane`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataListen {
    /// No data plane.
    Off,
    /// TCP. `explicit`: the operator asked for this address; when false (the
    /// embedded default) a failure to bind it, or TLS on gRPC, turns the
    /// data plane off with a log line instead of stopping the server.
    Tcp {
        /// Address to bind (port 0 picks a free port).
        addr: SocketAddr,
        /// Whether the operator configured it.
        explicit: bool,
    },
    /// A Unix-domain socket at this path (a stale socket file is replaced).
    Unix(PathBuf),
}

impl DataListen {
    /// The default: 127.0.0.1:50052, or a free port when gRPC listens on
    /// port 0 (so that servers started side by side, as tests do, never
    /// fight over one port).
    pub fn default_for(grpc: SocketAddr) -> Self {
        let port = if grpc.port() == 0 { 0 } else { 50052 };
        Self::Tcp {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            explicit: false,
        }
    }

    /// Parses `--data-listen`: `off`, `unix:<path>` or `<ip>:<port>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        if let Some(path) = t.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "--data-listen unix: needs a path, e.g. unix:/run/kvtier/data.sock".into(),
                );
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        t.parse()
            .map(|addr| Self::Tcp {
                addr,
                explicit: true,
            })
            .map_err(|_| {
                format!(
                    "--data-listen {text:?} is not an address (e.g. 127.0.0.1:50052), \"unix:<path>\" or \"off\""
                )
            })
    }
}

/// Network-facing settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC listen address. Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address; `None` disables it. Default `127.0.0.1:9464`.
    pub metrics_listen: Option<SocketAddr>,
    /// Binary data plane (PUT/GET of block payloads without protobuf).
    /// Default `127.0.0.1:50052` (see [`DataListen::default_for`]).
    pub data_listen: DataListen,
    /// Largest payload accepted for one block, in bytes. Default 64 MiB.
    pub max_block_bytes: u64,
    /// Requests served at once; more wait up to 2 s for a slot. Default 256.
    /// A data-plane PUT takes its slot only once its payload has arrived in
    /// full, a gRPC Put stream once its first message has.
    pub max_concurrent_requests: usize,
    /// Data plane: a connection silent between frames for this long is
    /// closed. Default 5 minutes ([`DEFAULT_DATA_IDLE_TIMEOUT_MS`]).
    pub data_idle_timeout: std::time::Duration,
    /// Once a data-plane frame has begun, the rest of it must arrive within
    /// this, else the connection is closed; also the longest wait for each
    /// message of a gRPC Put stream (then `DEADLINE_EXCEEDED`). Default 30 s
    /// ([`DEFAULT_FRAME_TIMEOUT_MS`]).
    pub frame_timeout: std::time::Duration,
    /// Namespaces a handshake may create; empty allows any. Default empty.
    pub allowed_namespaces: Vec<String>,
    /// Eviction policy. Default [`PolicyKind::Value`].
    pub policy: PolicyKind,
    /// Blocks each namespace may pin through hints. Default 65,536.
    pub pin_quota_blocks: u64,
    /// Longest agent lease a registration may ask for, in ms. Default 1 hour.
    pub max_agent_lease_ms: u64,
    /// Live agents each namespace may hold. Default 10,000.
    pub max_agents_per_namespace: usize,
    /// On a graceful shutdown, how long memory-tier blocks may be copied to
    /// the disk tier (hottest first); zero skips it. Default 20 s.
    pub shutdown_spill: std::time::Duration,
    /// Store settings.
    pub store: StoreConfig,
    /// Server-side prefetch (disk → host ahead of forecast calls). Default off.
    pub prefetch: PrefetchConfig,
    /// TLS, tokens, per-client limits.
    pub security: SecurityConfig,
    /// Membership in a cluster (`--cluster`); `None`: a single server, as
    /// before clusters existed. Default `None`.
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            data_listen: DataListen::default_for(SocketAddr::from(([127, 0, 0, 1], 50051))),
            max_block_bytes: 64 << 20,
            max_concurrent_requests: 256,
            data_idle_timeout: std::time::Duration::from_millis(DEFAULT_DATA_IDLE_TIMEOUT_MS),
            frame_timeout: std::time::Duration::from_millis(DEFAULT_FRAME_TIMEOUT_MS),
            allowed_namespaces: Vec::new(),
            policy: PolicyKind::default(),
            pin_quota_blocks: DEFAULT_PIN_QUOTA_BLOCKS,
            max_agent_lease_ms: DEFAULT_MAX_AGENT_LEASE_MS,
            max_agents_per_namespace: DEFAULT_MAX_AGENTS_PER_NAMESPACE,
            shutdown_spill: std::time::Duration::from_secs(20),
            store: StoreConfig::default(),
            prefetch: PrefetchConfig::default(),
            security: SecurityConfig::default(),
            cluster: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DataListen;

    #[test]
    fn parses_data_listen() {
        assert_eq!(DataListen::parse("off"), Ok(DataListen::Off));
        assert_eq!(
            DataListen::parse("127.0.0.1:7000"),
            Ok(DataListen::Tcp {
                addr: "127.0.0.1:7000".parse().expect("addr"),
                explicit: true
            })
        );
        assert_eq!(
            DataListen::parse("unix:/tmp/kv.sock"),
            Ok(DataListen::Unix("/tmp/kv.sock".into()))
        );
        assert!(DataListen::parse("unix:").is_err());
        assert!(DataListen::parse("nowhere").is_err());
        // port 0 for gRPC: the default data plane takes a free port too
        let d = DataListen::default_for("127.0.0.1:0".parse().expect("addr"));
        assert!(matches!(d, DataListen::Tcp { addr, explicit: false } if addr.port() == 0));
    }
}
