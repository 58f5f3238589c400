//! The agent's shared state: settings, the attached pool (AttachPool's work:
//! check the hashing configuration, map the memory, open the cache-server
//! session, allocate staging), the event log and the counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use kvtier_proto::hashing::effective_seed;
use kvtier_proto::v1::*;

use crate::config::AgentConfig;
use crate::datapath::AttachedPool;
use crate::error::AgentError;
use crate::events::EventLog;
use crate::memory::shm::{own_uid, PoolAccess, ShmPool};
use crate::memory::{Geometry, PoolMemory};
use crate::staging::StagingPool;
use crate::stats::Stats;
use crate::tier::{connect_lazy, TierSession};

/// Most staging buffers per pool: enough to keep a loopback link busy
/// without pinning much memory.
const MAX_STAGING_BUFFERS: u64 = 64;

/// Shared state of the agent.
#[derive(Debug)]
pub struct AgentState {
    /// Settings.
    pub config: AgentConfig,
    /// The attached pool, if any. A read lock is held only to clone the `Arc`.
    pub(crate) pool: RwLock<Option<Arc<AttachedPool>>>,
    next_pool_id: AtomicU64,
    /// The worker's event log.
    pub events: Arc<EventLog>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Fires on shutdown: ends event streams.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Separate connections to the cache server (concurrent streams).
    channels: Vec<kvtier_security::AuthChannel>,
    /// With `--cluster`: the membership, followed from the first attach on.
    membership: tokio::sync::OnceCell<kvtier_cluster::MembershipWatch>,
}

impl AgentState {
    /// State for `config`; event streams end when `shutdown` turns true.
    pub fn new(
        config: AgentConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, AgentError> {
        let channels = (0..config.tier_connections.max(1))
            .map(|_| {
                connect_lazy(
                    &config.server,
                    &config.server_client,
                    config.connect_timeout,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self {
            events: EventLog::with_limits(
                config.worker_id.clone(),
                config.event_buffer,
                config.max_subscribers,
            ),
            stats: Arc::new(Stats::default()),
            pool: RwLock::new(None),
            next_pool_id: AtomicU64::new(1),
            shutdown,
            channels,
            membership: tokio::sync::OnceCell::new(),
            config,
        }))
    }

    pub(crate) fn pool(&self, pool_id: u64) -> Result<Arc<AttachedPool>, AgentError> {
        let pool = self.pool.read().clone();
        match pool {
            Some(p) if p.id == pool_id => Ok(p),
            Some(p) => Err(AgentError::NoPool(format!(
                "pool_id {pool_id} is not the attached pool ({}); attach again",
                p.id
            ))),
            None => Err(AgentError::NoPool(
                "no pool attached: call AttachPool first".into(),
            )),
        }
    }

    /// The attached pool, whichever it is (pool id 0 in PoolLookup: a
    /// scheduler that hashes prompts has no pool of its own).
    pub(crate) fn current_pool(&self) -> Result<Arc<AttachedPool>, AgentError> {
        self.pool.read().clone().ok_or_else(|| {
            AgentError::NoPool(
                "no pool attached: the engine's worker has not called AttachPool yet".into(),
            )
        })
    }

    pub(crate) fn check_count(&self, n: usize) -> Result<(), AgentError> {
        if n == 0 || n > self.config.max_blocks_per_call {
            return Err(AgentError::InvalidRequest(format!(
                "{n} blocks in one call; 1 to {} allowed",
                self.config.max_blocks_per_call
            )));
        }
        Ok(())
    }

    /// Compares the engine's hashing configuration with the agent's.
    fn check_hashing(&self, engine: &HashingConfig) -> Result<(), AgentError> {
        let want = &self.config.hashing;
        let engine_seed = if engine.seed == 0 {
            kvtier_proto::hashing::DEFAULT_SEED
        } else {
            engine.seed
        };
        let mut diffs = Vec::new();
        if engine.block_tokens != want.block_tokens {
            diffs.push(format!(
                "block_tokens: engine {} vs agent {}",
                engine.block_tokens, want.block_tokens
            ));
        }
        if engine_seed != want.seed {
            diffs.push(format!("seed: engine {engine_seed} vs agent {}", want.seed));
        }
        if engine.salt != want.salt {
            diffs.push(format!(
                "salt: engine {:?} vs agent {:?}",
                engine.salt, want.salt
            ));
        }
        if !want.model.is_empty() && engine.model != want.model {
            diffs.push(format!(
                "model: engine {:?} vs agent {:?}",
                engine.model, want.model
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(AgentError::ConfigMismatch(format!(
                "the engine's hashing configuration differs from the agent's ({}); \
                 blocks would never match: fix the engine's or the agent's settings",
                diffs.join("; ")
            )))
        }
    }

    /// Attaches (or re-attaches) the engine's pool.
    pub async fn attach(&self, req: AttachPoolRequest) -> Result<AttachPoolResponse, AgentError> {
        let hashing = req
            .hashing
            .clone()
            .ok_or_else(|| AgentError::InvalidRequest("hashing configuration missing".into()))?;
        let layout = req
            .layout
            .ok_or_else(|| AgentError::InvalidRequest("pool layout missing".into()))?;
        if hashing.block_bytes != layout.block_bytes {
            return Err(AgentError::ConfigMismatch(format!(
                "the pool's block_bytes {} differs from the hashing configuration's {}",
                layout.block_bytes, hashing.block_bytes
            )));
        }
        self.check_hashing(&hashing)?;
        let memory: Arc<dyn PoolMemory> = match req.memory {
            Some(attach_pool_request::Memory::SharedMemory(shm)) => {
                let geometry = Geometry::from_layout(&layout, shm.offset)?;
                let access = PoolAccess {
                    dir: self.config.pool_dir.clone(),
                    owner_uid: self.config.pool_owner_uid.unwrap_or_else(own_uid),
                };
                Arc::new(ShmPool::open(
                    std::path::Path::new(&shm.path),
                    geometry,
                    &access,
                )?)
            }
            Some(attach_pool_request::Memory::CudaIpc(ipc)) => cuda_pool(&layout, ipc)?,
            None => return Err(AgentError::InvalidRequest("pool memory missing".into())),
        };
        let client_name = format!("kvtier-agent/{}", self.config.worker_id);
        let tier = if self.config.cluster.is_some() {
            // The shards are reached through the sharded client below.
            TierSession::unopened(
                &self.channels,
                &req.namespace,
                hashing.clone(),
                &client_name,
            )?
        } else {
            TierSession::open(
                &self.channels,
                &req.namespace,
                hashing.clone(),
                &client_name,
                self.config
                    .call_timeout
                    .min(std::time::Duration::from_secs(10)),
            )
            .await?
        }
        .with_data_plane(
            self.config.server_data.clone(),
            self.config.server_client.token().unwrap_or_default(),
        );
        let sharded = match &self.config.cluster {
            None => None,
            Some(url) => Some(self.sharded_client(url, &req.namespace, &hashing).await?),
        };
        let block_bytes = memory.geometry().block_bytes;
        let count = (self.config.staging_bytes / block_bytes as u64)
            .clamp(2, MAX_STAGING_BUFFERS)
            .min(memory.geometry().num_blocks.max(2)) as usize;
        let staging = {
            let memory = memory.clone();
            StagingPool::new(count, block_bytes, move |len| memory.alloc_staging(len))?
        };
        let id = self.next_pool_id.fetch_add(1, Ordering::Relaxed);
        let effective = effective_seed(
            if hashing.seed == 0 {
                kvtier_proto::hashing::DEFAULT_SEED
            } else {
                hashing.seed
            },
            &hashing.salt,
        );
        let pool = AttachedPool {
            id,
            namespace: req.namespace.clone(),
            hashing,
            memory,
            staging,
            tier: Arc::new(tier),
            sharded,
        };
        tracing::info!(
            pool_id = id,
            engine = %req.engine_name,
            namespace = %req.namespace,
            blocks = layout.num_blocks,
            block_bytes,
            staging_buffers = count,
            "pool attached"
        );
        *self.pool.write() = Some(Arc::new(pool));
        Ok(AttachPoolResponse {
            pool_id: id,
            worker_id: self.config.worker_id.clone(),
            effective_seed: effective,
            staging_buffers: count as u32,
        })
    }
}

impl AgentState {
    /// A client of every shard of the cluster at `url` for `namespace`
    /// (the membership is followed from the first call on; it waits up to
    /// 3 s for etcd's first answer, then starts with what it has).
    async fn sharded_client(
        &self,
        url: &kvtier_cluster::ClusterUrl,
        namespace: &str,
        hashing: &HashingConfig,
    ) -> Result<kvtier_cluster::ShardedClient, AgentError> {
        let watch = self
            .membership
            .get_or_try_init(|| async {
                let etcd = kvtier_cluster::Etcd::connect(
                    url,
                    kvtier_cluster::etcd::DEFAULT_REQUEST_TIMEOUT,
                )
                .await
                .map_err(|e| AgentError::InvalidRequest(format!("cluster {url}: {e}")))?;
                let watch = kvtier_cluster::MembershipWatch::start(etcd);
                let (m, synced) = watch
                    .wait_for(std::time::Duration::from_secs(3), |m| m.synced)
                    .await;
                if synced {
                    tracing::info!(%url, members = m.members.len(), "cluster: following the membership");
                } else {
                    tracing::warn!(%url, "cluster: etcd has not answered yet; blocks are misses until it does");
                }
                Ok::<_, AgentError>(watch)
            })
            .await?;
        let options = kvtier_cluster::ShardedOptions {
            warmup: self.config.cluster_warmup,
            copy_on_read: self.config.cluster_copy_on_read,
            call_timeout: self
                .config
                .call_timeout
                .min(kvtier_cluster::sharded::DEFAULT_CALL_TIMEOUT),
            connect_timeout: self.config.connect_timeout,
            security: self.config.server_client.clone(),
            data_plane: self.config.cluster_data_plane,
        };
        let client = kvtier_cluster::ShardedClient::with_options(
            watch.clone(),
            namespace,
            hashing.clone(),
            format!("kvtier-agent/{}", self.config.worker_id),
            options,
        );
        // A member that refuses the namespace (token, grant, hashing config)
        // fails the attach, as a single server's refusal does; members that
        // cannot be reached only cost their blocks.
        match client.check_handshakes().await {
            Ok(accepted) => {
                tracing::info!(namespace, accepted, "cluster: handshaken with the members");
                Ok(client)
            }
            Err(kvtier_cluster::ClusterError::HandshakeRefused {
                code,
                node,
                message,
                ..
            }) => {
                let why = format!("cache server {node} refused namespace {namespace:?}: {message}");
                Err(match code {
                    tonic::Code::FailedPrecondition => AgentError::ConfigMismatch(why),
                    code => AgentError::Tier(tonic::Status::new(code, why)),
                })
            }
            Err(other) => Err(AgentError::InvalidRequest(other.to_string())),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_pool(layout: &PoolLayout, ipc: CudaIpcPool) -> Result<Arc<dyn PoolMemory>, AgentError> {
    let geometry = Geometry::from_layout(layout, ipc.offset)?;
    Ok(Arc::new(crate::memory::cuda::CudaIpcPool::open(
        &ipc.ipc_handle,
        ipc.device,
        geometry,
    )?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_pool(_layout: &PoolLayout, _ipc: CudaIpcPool) -> Result<Arc<dyn PoolMemory>, AgentError> {
    Err(AgentError::Cuda(
        "this kvtier-agent was built without the `cuda` feature: attach a shared-memory pool, \
         or rebuild with `--features cuda`"
            .into(),
    ))
}
