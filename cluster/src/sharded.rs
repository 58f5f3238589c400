//! A client of the whole tier: blocks go to their owners, computed from the
//! watched membership ([`crate::placement`]); a batch is split by owner and
//! the parts are sent in parallel; a prefix `Lookup` asks every owner
//! concurrently and combines the runs.
//!
//! **A shard that fails is a miss, never an error**: a failed call counts
//! the shard's blocks as misses (or unstored) at once, and the shard is
//! skipped (no call, its blocks missing) until the membership changes. A
//! shard that restarted and forgot our session is handshaken again once.
//!
//! Not yet here: second-owner reads during a join's warm-up, TLS and tokens
//! (plaintext gRPC only), the binary data plane.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{
    BlockData, GetRequest, HandshakeRequest, HashingConfig, LookupRequest, Tier,
};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::Code;

use crate::membership::{Membership, MembershipWatch};

/// Largest gRPC message the client sends or accepts.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// One shard's connection and session.
#[derive(Debug, Clone)]
struct Shard {
    grpc: String,
    epoch: u64,
    client: CacheServiceClient<Channel>,
    session: Option<String>,
    /// Membership revision at which a call to it failed: skipped until the
    /// membership moves past it.
    down_at: Option<i64>,
}

/// What a sharded Put did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutSummary {
    /// Blocks a shard acknowledged (stored or already present).
    pub acknowledged: usize,
    /// Blocks not stored: their owner failed, was skipped, or there was none.
    pub unstored: usize,
    /// Node ids of the shards that failed during this call.
    pub failed_shards: Vec<String>,
}

/// A client of every shard of one namespace.
#[derive(Debug)]
pub struct ShardedClient {
    membership: MembershipWatch,
    namespace: String,
    config: HashingConfig,
    client_name: String,
    shards: Mutex<HashMap<String, Shard>>,
}

/// Why one shard's call failed (it becomes misses).
struct ShardFailed(String);

impl ShardedClient {
    /// A client of `namespace` (handshaken with `config` on each shard when
    /// first used) over the watched membership.
    pub fn new(
        membership: MembershipWatch,
        namespace: impl Into<String>,
        config: HashingConfig,
        client_name: impl Into<String>,
    ) -> Self {
        Self {
            membership,
            namespace: namespace.into(),
            config,
            client_name: client_name.into(),
            shards: Mutex::new(HashMap::new()),
        }
    }

    /// The membership the client routes by now.
    pub fn membership(&self) -> Arc<Membership> {
        self.membership.current()
    }

    /// Indices of `hashes` by owner id (blocks without an owner are left out).
    fn split(
        membership: &Membership,
        hashes: impl Iterator<Item = u64>,
    ) -> HashMap<String, Vec<usize>> {
        let placement = membership.placement();
        let mut parts: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, h) in hashes.enumerate() {
            if let Some(owner) = placement.owner(h) {
                parts.entry(owner.id.clone()).or_default().push(i);
            }
        }
        parts
    }

    /// The shard `id` ready for a call (connected lazily, handshaken), or
    /// `None` when it is skipped or unknown.
    async fn shard(&self, membership: &Membership, id: &str) -> Option<Shard> {
        let member = membership.members.get(id)?;
        let mut shards = self.shards.lock().await;
        let stale = shards
            .get(id)
            .is_none_or(|s| s.grpc != member.grpc || s.epoch != member.epoch);
        if stale {
            let channel = Channel::from_shared(format!("http://{}", member.grpc))
                .ok()?
                .connect_lazy();
            let client = CacheServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            shards.insert(
                id.to_string(),
                Shard {
                    grpc: member.grpc.clone(),
                    epoch: member.epoch,
                    client,
                    session: None,
                    down_at: None,
                },
            );
        }
        let shard = shards.get_mut(id)?;
        match shard.down_at {
            Some(at) if at >= membership.revision => return None,
            Some(_) => shard.down_at = None,
            None => {}
        }
        Some(shard.clone())
    }

    /// Records the outcome of a call to `id`: a new session, or a failure.
    async fn settle(
        &self,
        id: &str,
        membership: &Membership,
        outcome: Result<String, &ShardFailed>,
    ) {
        let mut shards = self.shards.lock().await;
        let Some(shard) = shards.get_mut(id) else {
            return;
        };
        match outcome {
            Ok(session) => shard.session = Some(session),
            Err(ShardFailed(why)) => {
                tracing::warn!(node = id, reason = %why, "cluster: shard failed; its blocks are misses until the membership changes");
                shard.session = None;
                shard.down_at = Some(membership.revision);
            }
        }
    }

    async fn session(&self, shard: &mut Shard) -> Result<String, ShardFailed> {
        if let Some(s) = &shard.session {
            return Ok(s.clone());
        }
        let response = shard
            .client
            .handshake(HandshakeRequest {
                namespace: self.namespace.clone(),
                config: Some(self.config.clone()),
                client_name: self.client_name.clone(),
            })
            .await
            .map_err(|s| ShardFailed(format!("handshake: {}", s.message())))?;
        let session = response.into_inner().session_id;
        shard.session = Some(session.clone());
        Ok(session)
    }

    /// Runs `call` on a shard with a session; a shard that forgot the
    /// session (it restarted) is handshaken again once.
    async fn with_session<T, F, Fut>(&self, shard: &mut Shard, call: F) -> Result<T, ShardFailed>
    where
        F: Fn(CacheServiceClient<Channel>, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        for attempt in 0..2 {
            let session = self.session(shard).await?;
            match call(shard.client.clone(), session).await {
                Ok(v) => return Ok(v),
                Err(s) if attempt == 0 && s.code() == Code::FailedPrecondition => {
                    shard.session = None;
                }
                Err(s) => return Err(ShardFailed(format!("{:?}: {}", s.code(), s.message()))),
            }
        }
        Err(ShardFailed("session refused twice".into()))
    }

    /// Runs `call` on shard `id` with a session and records the outcome (a
    /// failure marks the shard down until the membership changes); `None`
    /// when the shard is skipped or the call failed.
    async fn on_shard<T, F, Fut>(&self, membership: &Membership, id: &str, call: F) -> Option<T>
    where
        F: Fn(CacheServiceClient<Channel>, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut shard = self.shard(membership, id).await?;
        let result = self.with_session(&mut shard, call).await;
        let outcome = result
            .as_ref()
            .map(|_| shard.session.clone().unwrap_or_default());
        self.settle(id, membership, outcome).await;
        result.ok()
    }

    /// Reads `hashes`; `None` for a miss (absent, or its shard failed).
    pub async fn get(&self, hashes: &[u64]) -> Vec<Option<Bytes>> {
        let membership = self.membership();
        let parts = Self::split(&membership, hashes.iter().copied());
        let calls = parts.into_iter().map(|(id, indices)| {
            let membership = Arc::clone(&membership);
            async move {
                let wanted: Vec<u64> = indices.iter().map(|&i| hashes[i]).collect();
                let result = self
                    .on_shard(&membership, &id, |mut client, session| {
                        let wanted = wanted.clone();
                        async move {
                            let mut stream = client
                                .get(GetRequest {
                                    session_id: session,
                                    hashes: wanted,
                                    stop_at_first_miss: false,
                                    agent_id: String::new(),
                                })
                                .await?
                                .into_inner();
                            let mut found = HashMap::new();
                            while let Some(block) = stream.message().await? {
                                if block.found {
                                    found.insert(block.hash, block.payload);
                                }
                            }
                            Ok(found)
                        }
                    })
                    .await;
                let mut found = result.unwrap_or_default();
                let blocks: Vec<_> = wanted.iter().map(|h| found.remove(h)).collect();
                (indices, blocks)
            }
        });
        let mut out = vec![None; hashes.len()];
        for (indices, blocks) in join_all(calls).await {
            for (i, block) in indices.into_iter().zip(blocks) {
                out[i] = block;
            }
        }
        out
    }

    /// Stores `blocks` on their owners, one Put stream per owner, in parallel.
    pub async fn put(&self, blocks: Vec<BlockData>) -> PutSummary {
        let membership = self.membership();
        let parts = Self::split(&membership, blocks.iter().map(|b| b.hash));
        let placed: usize = parts.values().map(Vec::len).sum();
        let blocks = Arc::new(blocks);
        let calls = parts.into_iter().map(|(id, indices)| {
            let (membership, blocks) = (Arc::clone(&membership), Arc::clone(&blocks));
            async move {
                let n = indices.len();
                let result = self
                    .on_shard(&membership, &id, |mut client, session| {
                        let messages: Vec<_> = indices
                            .iter()
                            .enumerate()
                            .map(|(k, &i)| {
                                kvtier_proto::put_message(&session, k, blocks[i].clone())
                            })
                            .collect();
                        async move { client.put(tokio_stream::iter(messages)).await }
                    })
                    .await;
                match result {
                    Some(r) => {
                        let r = r.into_inner();
                        (id, Ok((r.stored + r.already_present) as usize))
                    }
                    None => (id, Err(n)),
                }
            }
        });
        let mut summary = PutSummary {
            unstored: blocks.len() - placed,
            ..PutSummary::default()
        };
        for (id, result) in join_all(calls).await {
            match result {
                Ok(n) => summary.acknowledged += n,
                Err(n) => {
                    summary.unstored += n;
                    summary.failed_shards.push(id);
                }
            }
        }
        summary.failed_shards.sort();
        summary
    }

    /// Length of the longest leading run of `prefix` (sequence hashes in
    /// order) that the tier holds: each owner is asked for its blocks
    /// concurrently and the answers are combined; a failed shard's blocks
    /// are absent.
    pub async fn lookup_prefix(&self, prefix: &[u64]) -> usize {
        let membership = self.membership();
        let parts = Self::split(&membership, prefix.iter().copied());
        let calls = parts.into_iter().map(|(id, indices)| {
            let membership = Arc::clone(&membership);
            async move {
                let wanted: Vec<u64> = indices.iter().map(|&i| prefix[i]).collect();
                let result = self
                    .on_shard(&membership, &id, |mut client, session| {
                        let wanted = wanted.clone();
                        async move {
                            client
                                .lookup(LookupRequest {
                                    session_id: session,
                                    hashes: wanted,
                                })
                                .await
                        }
                    })
                    .await;
                let present = match result {
                    Some(r) => r
                        .into_inner()
                        .tiers
                        .iter()
                        .map(|&t| t != Tier::None as i32)
                        .collect(),
                    None => Vec::new(),
                };
                (indices, present)
            }
        });
        let mut present = vec![false; prefix.len()];
        for (indices, answers) in join_all(calls).await {
            for (i, here) in indices.into_iter().zip(answers) {
                present[i] = here;
            }
        }
        present.iter().take_while(|&&p| p).count()
    }
}
