//! This server as one shard of a cluster (`--cluster etcd://...`): its node
//! id, its registration in etcd, and namespace configurations that hold
//! cluster-wide. Membership, leases and placement are `kvtier-cluster`'s;
//! this module only wires them to the server.
//!
//! - **Node id**: kept in the file [`NODE_ID_FILE`] in the data directory,
//!   beside RocksDB's files. The first start writes `--node-id` there (or a
//!   generated id when none is given); a restart without `--node-id` takes
//!   the id back, so the node owns the same share of the hash space and its
//!   disk turns into hits again; a different `--node-id` on that directory
//!   is refused (it would serve one node's blocks under another's name).
//! - **Start**: the server registers after its listeners are bound and its
//!   store is open, and prints its ready line only once registered. An
//!   unreachable etcd is retried (every 1 to 5 s, each attempt logged with
//!   the reason) until it answers or the server is stopped; a node id held
//!   by a live process is refused with an error (exit code 1).
//! - **Namespaces**: the first handshake of a namespace anywhere creates its
//!   configuration at `{prefix}/namespaces/{name}` in one create-if-absent
//!   transaction; a handshake that disagrees with it is refused on every
//!   server exactly as a mismatch with a local namespace is. While etcd is
//!   unreachable, namespaces this server knows keep working and new ones are
//!   refused with UNAVAILABLE (they could not be made cluster-wide).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use kvtier_cluster::{
    validate_node_id, Claim, ClusterError, ClusterUrl, Etcd, Member, MemberState, Registration,
    RegistrationConfig, RegistrationStatus,
};
use kvtier_proto::v1::HashingConfig;

use crate::dataplane::DataAddr;
use crate::metrics as m;
use crate::namespace::{Namespace, NamespaceError, NamespaceRegistry};

/// The file in the data directory that holds this node's id.
pub const NODE_ID_FILE: &str = "kvtier-node-id";

/// Default lease TTL (`--cluster-lease-ttl-s`).
pub const DEFAULT_LEASE_TTL_S: u64 = 10;

/// Deadline of one etcd request made by the server.
const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Pauses between start-up attempts while etcd is unreachable.
const START_RETRY_FIRST: Duration = Duration::from_secs(1);
const START_RETRY_MAX: Duration = Duration::from_secs(5);

/// `--cluster` and the flags that go with it.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// etcd endpoints and key prefix.
    pub url: ClusterUrl,
    /// `--node-id`; `None`: the one in the data directory, or a new one.
    pub node_id: Option<String>,
    /// `--advertise`: the gRPC address clients dial; default the bound one.
    pub advertise: Option<String>,
    /// `--advertise-data`: the data-plane address clients dial; default the
    /// bound TCP one (none for a Unix socket).
    pub advertise_data: Option<String>,
    /// Lease TTL. Default 10 s.
    pub lease_ttl: Duration,
    /// Share of the hash space relative to the other members. Default 1.
    pub weight: f64,
    /// `--cluster-drain-s`: on a stop signal, stay in the membership as
    /// `draining` this long (reads served, no new writes routed here)
    /// before leaving. Zero (the default): leave at once.
    pub drain: Duration,
}

/// Why this server cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The node id file, or its relation to `--node-id`.
    #[error("{0}")]
    NodeId(String),
    /// An address to advertise is missing or unusable.
    #[error("{0}")]
    Advertise(String),
    /// etcd refused the registration (a duplicate id, a bad record).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The server was stopped while it waited for etcd.
    #[error("stopped while waiting for etcd")]
    Stopped,
}

/// Where this node's id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdSource {
    /// Read back from the data directory.
    DataDir,
    /// Given by `--node-id` and written to the data directory.
    Flag,
    /// Generated and written to the data directory.
    Generated,
}

/// This node's id for `data_dir` (see the module doc); writes the file
/// when it did not exist.
pub fn resolve_node_id(
    data_dir: &Path,
    flag: Option<&str>,
) -> Result<(String, NodeIdSource), JoinError> {
    let path = data_dir.join(NODE_ID_FILE);
    let io = |what: &str, e: std::io::Error| {
        JoinError::NodeId(format!("{what} {}: {e}", path.display()))
    };
    if let Some(id) = flag {
        validate_node_id(id)?;
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = text.trim().to_string();
            validate_node_id(&stored).map_err(|e| {
                JoinError::NodeId(format!(
                    "{} holds no valid node id ({e}); fix or remove it",
                    path.display()
                ))
            })?;
            match flag {
                Some(id) if id != stored => Err(JoinError::NodeId(format!(
                    "--node-id {id:?} does not match the node id {stored:?} stored in {}: this \
                     data directory holds node {stored:?}'s shard. Start with --node-id {stored} \
                     (or without --node-id), or give node {id:?} a data directory of its own",
                    path.display()
                ))),
                _ => Ok((stored, NodeIdSource::DataDir)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (id, source) = match flag {
                Some(id) => (id.to_string(), NodeIdSource::Flag),
                None => (generated_node_id(), NodeIdSource::Generated),
            };
            std::fs::create_dir_all(data_dir).map_err(|e| io("creating the directory of", e))?;
            let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n")).map_err(|e| io("writing", e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io("writing", e))?;
            Ok((id, source))
        }
        Err(e) => Err(io("reading", e)),
    }
}

/// `node-<16 hex digits>` from the clock, the pid and the hostname.
fn generated_node_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let seed = format!("{nanos}/{}/{}", std::process::id(), host.trim());
    format!("node-{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

/// The address to advertise: the flag, else the bound one when it is
/// specific (`None`: nothing bound, nothing given).
fn advertised(
    flag: Option<&str>,
    bound: Option<SocketAddr>,
    what: &str,
) -> Result<Option<String>, JoinError> {
    if let Some(text) = flag {
        let ok = text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        return if ok {
            Ok(Some(text.to_string()))
        } else {
            Err(JoinError::Advertise(format!(
                "--advertise{what} {text:?} is not HOST:PORT (e.g. cache-0.kvtier:50051)"
            )))
        };
    }
    match bound {
        Some(addr) if addr.ip().is_unspecified() => Err(JoinError::Advertise(format!(
            "the server listens on {addr} (all interfaces), which clients cannot dial: set \
             --advertise{what} HOST:PORT to the address they should use"
        ))),
        Some(addr) => Ok(Some(addr.to_string())),
        None => Ok(None),
    }
}

/// A namespace configuration as kept in etcd (JSON, readable with etcdctl).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NamespaceRecord {
    block_tokens: u32,
    seed: u64,
    salt: String,
    block_bytes: u64,
    kv_layout: String,
    model: String,
    /// Tenant that owns the namespace; empty without authentication.
    #[serde(default)]
    tenant: String,
}

impl NamespaceRecord {
    fn new(config: &HashingConfig, tenant: &str) -> Self {
        Self {
            block_tokens: config.block_tokens,
            seed: config.seed,
            salt: config.salt.clone(),
            block_bytes: config.block_bytes,
            kv_layout: config.kv_layout.clone(),
            model: config.model.clone(),
            tenant: tenant.to_string(),
        }
    }

    fn config(&self) -> HashingConfig {
        HashingConfig {
            block_tokens: self.block_tokens,
            seed: self.seed,
            salt: self.salt.clone(),
            block_bytes: self.block_bytes,
            kv_layout: self.kv_layout.clone(),
            model: self.model.clone(),
        }
    }
}

/// Follows the registration's status into the `kvtier_cluster_*` gauges
/// and counter until the registration ends.
fn publish_registration(node_id: String, mut status: watch::Receiver<RegistrationStatus>) {
    tokio::spawn(async move {
        loop {
            let now = status.borrow_and_update().clone();
            let labels = [("node_id", node_id.clone())];
            metrics::gauge!(m::CLUSTER_REGISTERED, &labels).set(if now.registered {
                1.0
            } else {
                0.0
            });
            // Epochs are milliseconds since 1970: exact in an f64.
            metrics::gauge!(m::CLUSTER_EPOCH, &labels).set(now.epoch as f64);
            metrics::counter!(m::CLUSTER_REGISTRATIONS, &labels).absolute(now.registrations);
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

/// This server's membership in its cluster.
#[derive(Debug)]
pub struct ClusterNode {
    etcd: Etcd,
    registration: Registration,
    node_id: String,
    /// Namespaces known to agree with etcd, and the registration count they
    /// were checked under (a re-registration may follow an etcd that lost
    /// its data, so the set is cleared then).
    confirmed: Mutex<(u64, HashSet<String>)>,
}

impl ClusterNode {
    /// Resolves the node id, then registers (retrying an unreachable etcd
    /// until `stop` turns true; see the module doc).
    pub async fn join(
        settings: &ClusterSettings,
        data_dir: &Path,
        grpc: SocketAddr,
        data: Option<&DataAddr>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Self, JoinError> {
        let (node_id, source) = resolve_node_id(data_dir, settings.node_id.as_deref())?;
        let grpc = advertised(settings.advertise.as_deref(), Some(grpc), "")?
            .ok_or_else(|| JoinError::Advertise("no gRPC address to advertise".into()))?;
        // A Unix-socket data plane is advertised only when the flag says how.
        let data_bound = match data {
            Some(DataAddr::Tcp(addr)) => Some(*addr),
            _ => None,
        };
        let data = advertised(settings.advertise_data.as_deref(), data_bound, "-data")?;
        tracing::info!(node = %node_id, source = ?source, file = %data_dir.join(NODE_ID_FILE).display(), "cluster: node id");
        let etcd = Etcd::connect(&settings.url, ETCD_REQUEST_TIMEOUT).await?;
        let member = Member {
            id: node_id.clone(),
            grpc,
            data,
            weight: settings.weight,
            epoch: 0,
            state: MemberState::Active,
        };
        let config = RegistrationConfig::new(member, settings.lease_ttl);
        let mut pause = START_RETRY_FIRST;
        let registration = loop {
            match Registration::start(&etcd, config.clone()).await {
                Ok(r) => break r,
                Err(e @ ClusterError::Etcd { .. }) => {
                    tracing::warn!(
                        error = %e, retry_in_s = pause.as_secs(), url = %settings.url,
                        "cluster: cannot reach etcd to register; retrying (this server serves once it has registered)"
                    );
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return Err(JoinError::Stopped),
            }
            pause = (pause * 2).min(START_RETRY_MAX);
        };
        publish_registration(node_id.clone(), registration.subscribe());
        Ok(Self {
            etcd,
            registration,
            node_id,
            confirmed: Mutex::new((1, HashSet::new())),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The registration (status, draining).
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// Marks this node `draining` in its membership record: clients stop
    /// routing writes here and keep reading what it holds until it leaves.
    pub fn drain(&self) {
        tracing::info!(node = %self.node_id, "cluster: draining (no new writes; reads served until this node leaves)");
        self.registration.set_state(MemberState::Draining);
    }

    /// Leaves the cluster at once (a graceful stop): the lease is revoked.
    pub async fn leave(&self) {
        self.registration.deregister().await;
    }

    fn is_confirmed(&self, name: &str) -> bool {
        let generation = self.registration.status().registrations;
        let mut confirmed = self.confirmed.lock();
        if confirmed.0 != generation {
            *confirmed = (generation, HashSet::new());
        }
        confirmed.1.contains(name)
    }

    fn confirm(&self, name: &str) {
        self.confirmed.lock().1.insert(name.to_string());
    }

    /// Checks a handshake of `name` against the cluster-wide configuration,
    /// creating it when this is the cluster's first (see the module doc).
    /// The local check ([`NamespaceRegistry::handshake_as`]) still follows.
    pub async fn check_namespace(
        &self,
        registry: &NamespaceRegistry,
        name: &str,
        config: Option<&HashingConfig>,
        tenant: Option<&str>,
    ) -> Result<(), NamespaceError> {
        if self.is_confirmed(name) {
            return Ok(());
        }
        let local: Option<Namespace> = registry.get(name);
        let (proposal, owner) = match &local {
            Some(ns) => (ns.config.clone(), ns.tenant.clone()),
            None => {
                let proposal = registry.validate_request(name, config.cloned())?;
                registry.check_allowed(name)?;
                (proposal, tenant.unwrap_or("").to_string())
            }
        };
        let record = NamespaceRecord::new(&proposal, &owner);
        let json = serde_json::to_vec(&record).map_err(|e| {
            NamespaceError::Invalid(format!("cannot encode the configuration: {e}"))
        })?;
        let key = self.etcd.url().namespace_key(name);
        let existing = match self.etcd.create_or_get(&key, &json).await {
            Ok(Claim::Created) => {
                tracing::info!(namespace = %name, "cluster: namespace configuration created cluster-wide");
                self.confirm(name);
                return Ok(());
            }
            Ok(Claim::Existing(bytes)) => bytes,
            Err(e) if local.is_some() => {
                tracing::warn!(namespace = %name, error = %e,
                    "cluster: etcd unreachable; accepting the handshake on this server's own copy of the namespace");
                return Ok(());
            }
            Err(e) => {
                return Err(NamespaceError::Unavailable(format!(
                    "cannot create namespace '{name}': the cluster's configuration store is \
                     unreachable ({e}); namespaces are created cluster-wide only, retry when \
                     etcd is back"
                )))
            }
        };
        let cluster: NamespaceRecord = serde_json::from_slice(&existing).map_err(|e| {
            NamespaceError::Invalid(format!(
                "the cluster's record of namespace '{name}' ({key}) is malformed: {e}"
            ))
        })?;
        if let Some(t) = tenant {
            if !cluster.tenant.is_empty() && cluster.tenant != t {
                return Err(NamespaceError::Forbidden(
                    crate::namespace::forbidden_message(name),
                ));
            }
        }
        match &local {
            // The client's config against the cluster's, with the same
            // message as a local mismatch.
            None => NamespaceRegistry::check_config(name, &cluster.config(), &proposal)?,
            Some(ns) if ns.config != cluster.config() => {
                return Err(NamespaceError::Mismatch(format!(
                    "namespace '{name}' on this server (node {}) uses [{}] but the cluster's \
                     configuration ({key}) is [{}]: this server's data was made under another \
                     configuration; give the namespace another name, or move this server's data \
                     directory aside",
                    self.node_id,
                    crate::namespace::describe(&ns.config),
                    crate::namespace::describe(&cluster.config())
                )));
            }
            Some(_) => {}
        }
        self.confirm(name);
        Ok(())
    }
}

/// The node id file of `data_dir`.
pub fn node_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join(NODE_ID_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_written_taken_back_and_guarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let (id, source) = resolve_node_id(&data, Some("cache-0")).expect("first");
        assert_eq!((id.as_str(), source), ("cache-0", NodeIdSource::Flag));
        assert_eq!(
            std::fs::read_to_string(node_id_path(&data)).expect("file"),
            "cache-0\n"
        );
        let (id, source) = resolve_node_id(&data, None).expect("restart");
        assert_eq!((id.as_str(), source), ("cache-0", NodeIdSource::DataDir));
        let (id, _) = resolve_node_id(&data, Some("cache-0")).expect("same flag");
        assert_eq!(id, "cache-0");
        let err = resolve_node_id(&data, Some("cache-1")).expect_err("other id");
        let msg = err.to_string();
        assert!(
            msg.contains("does not match the node id \"cache-0\""),
            "{msg}"
        );
        assert!(resolve_node_id(&data, Some("bad/id")).is_err());
        std::fs::write(node_id_path(&data), "no good\n").expect("write");
        assert!(resolve_node_id(&data, None)
            .expect_err("garbage")
            .to_string()
            .contains("holds no valid node id"));
    }

    #[test]
    fn a_node_id_is_generated_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, source) = resolve_node_id(dir.path(), None).expect("generated");
        assert_eq!(source, NodeIdSource::Generated);
        assert!(
            id.starts_with("node-") && validate_node_id(&id).is_ok(),
            "{id}"
        );
        assert_eq!(resolve_node_id(dir.path(), None).expect("again").0, id);
    }

    #[test]
    fn advertised_addresses() {
        let any: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let lo: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        assert_eq!(
            advertised(None, Some(lo), "").expect("bound").as_deref(),
            Some("127.0.0.1:7000")
        );
        assert!(advertised(None, Some(any), "")
            .expect_err("unspecified")
            .to_string()
            .contains("set --advertise HOST:PORT"));
        assert_eq!(
            advertised(Some("cache-0.kv:50051"), Some(any), "")
                .expect("flag")
                .as_deref(),
            Some("cache-0.kv:50051")
        );
        assert_eq!(advertised(None, None, "-data").expect("none"), None);
        for bad in ["cache-0", ":1", "h:0", "h:x"] {
            assert!(advertised(Some(bad), Some(lo), "-data").is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_records_round_trip() {
        let config = HashingConfig {
            block_tokens: 16,
            seed: 1337,
            salt: "s".into(),
            block_bytes: 4096,
            kv_layout: "l".into(),
            model: "m".into(),
        };
        let record = NamespaceRecord::new(&config, "t");
        let json = serde_json::to_string(&record).expect("json");
        assert!(json.contains("\"block_tokens\":16"), "{json}");
        let back: NamespaceRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.config(), config);
        assert_eq!(back.tenant, "t");
    }
}
