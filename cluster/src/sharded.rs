//! A client of the whole tier: blocks go to their owners, computed from the
//! watched membership ([`crate::placement`]); a batch is split by owner and
//! the parts are sent in parallel; a prefix `Lookup` asks every owner
//! concurrently and combines the runs.
//!
//! - **Writes** go to the block's owner among the *active* members (the
//!   first active one in its rendezvous ranking): never to a draining node.
//! - **Reads** follow the ranking over all members ([`read_order`]): the
//!   first member is asked; on a miss the next one in the ranking is asked
//!   when the one before it joined less than [`ShardedOptions::warmup`] ago
//!   (its epoch, the wall clock at registration, is that recent) or is
//!   draining. After a join the next one is the block's previous owner;
//!   during a drain it is where the block's new writes go. Optionally a
//!   block read from a member that is not its write owner (a previous
//!   owner during a warm-up, a draining owner) is copied in the background
//!   to its write owner ([`ShardedOptions::copy_on_read`]; at most
//!   [`MAX_COPY_TASKS`] copies run at once, the others are skipped), so
//!   what was read before a drain is still there after the node leaves.
//!
//! **A shard that fails is a miss, never an error**: a failed call (or one
//! that takes longer than [`ShardedOptions::call_timeout`]: a frozen shard)
//! counts the shard's blocks as misses (or unstored) at once, and the shard
//! is skipped (no call, its blocks missing) until the membership changes. A
//! shard that restarted and forgot our session is handshaken again once.
//!
//! TLS and the bearer token come from [`kvtier_security::ServerClient`],
//! as for a single `--server`; every shard is dialled as
//! `https://<grpc>` when it carries TLS, else `http://<grpc>`.
//!
//! **Payloads** go over gRPC (Put/Get streams) by default. With
//! [`ShardedOptions::data_plane`] (and no TLS: the data plane is
//! plaintext), Get and Put payloads go over each member's binary data plane
//! instead (the `data` address of its membership record; see
//! [`payload_route`]): a member without one is reached over gRPC. The
//! handshake and Lookup stay on gRPC; a data-plane connection presents the
//! shard's gRPC session and the bearer token in its HELLO. Data-plane
//! connections are made on first use, kept for reuse (at most
//! [`MAX_IDLE_DATA_CONNECTIONS`] idle per shard), and dropped when the
//! member's epoch or addresses change. A data-plane failure is a shard
//! failure like a gRPC one: misses or unstored blocks, the shard skipped
//! until the membership changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::join_all;
use kvtier_proto::dataplane::client::{DataClient, DataError};
use kvtier_proto::dataplane::wire::Status as DataStatus;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{
    BlockData, GetRequest, HandshakeRequest, HashingConfig, LookupRequest, Tier,
};
use kvtier_security::{AuthChannel, ServerClient};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tonic::transport::Endpoint;
use tonic::Code;

use crate::error::ClusterError;
use crate::member::{Member, MemberState};
use crate::membership::{Membership, MembershipWatch};
use crate::placement::Placement;

/// Largest gRPC message the client sends or accepts.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Default [`ShardedOptions::warmup`].
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(60);
/// Default [`ShardedOptions::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most background copies (copy-on-read) running at once.
pub const MAX_COPY_TASKS: usize = 4;
/// Most members one read asks for a block (the owner and two fallbacks).
pub const MAX_READ_TRIES: usize = 3;
/// Most idle data-plane connections kept per shard (more are closed after use).
pub const MAX_IDLE_DATA_CONNECTIONS: usize = 8;

/// How a [`ShardedClient`] reads, writes and connects.
#[derive(Debug, Clone)]
pub struct ShardedOptions {
    /// A member that registered (its epoch) less than this long ago is
    /// warming up: a miss on it is asked of the next in the ranking.
    /// Default 60 s.
    pub warmup: Duration,
    /// Copy a block read from a member other than its write owner (a
    /// fallback read, or a read from a draining member) to its write owner,
    /// in the background. Default off.
    pub copy_on_read: bool,
    /// Bound on one call to one shard (a frozen shard becomes misses, not a
    /// hang). Default 10 s.
    pub call_timeout: Duration,
    /// Bound on connecting to a shard. Default 2 s.
    pub connect_timeout: Duration,
    /// TLS and bearer token, as for a single server.
    pub security: ServerClient,
    /// Move Get/Put payloads over each member's binary data plane (its
    /// record's `data` address; gRPC for a member without one). Ignored
    /// when `security` uses TLS: the data plane is plaintext (callers refuse
    /// that combination with a message). Default off.
    pub data_plane: bool,
}

impl Default for ShardedOptions {
    fn default() -> Self {
        Self {
            warmup: DEFAULT_WARMUP,
            copy_on_read: false,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: Duration::from_secs(2),
            security: ServerClient::plain(),
            data_plane: false,
        }
    }
}

/// Whether `member` is warming up at `now_ms` (ms since 1970): it
/// registered (its epoch is the wall clock then) less than `warmup` ago.
pub fn warming_up(member: &Member, now_ms: u64, warmup: Duration) -> bool {
    now_ms < member.epoch.saturating_add(warmup.as_millis() as u64)
}

/// Indices (into `all.members()`, a placement over every member whatever
/// its state) of the members to ask for `block_hash`, in order: the first
/// in its ranking, then, while the last one asked is draining or warming up,
/// the next in the ranking (at most [`MAX_READ_TRIES`] in all). Pure.
pub fn read_order(all: &Placement, block_hash: u64, now_ms: u64, warmup: Duration) -> Vec<usize> {
    let ranking = all.ranking_indices(block_hash);
    let mut order = Vec::with_capacity(2);
    for (k, &i) in ranking.iter().enumerate() {
        order.push(i);
        let member = &all.members()[i];
        let fall_through =
            member.state == MemberState::Draining || warming_up(member, now_ms, warmup);
        if !fall_through || order.len() >= MAX_READ_TRIES || k + 1 >= ranking.len() {
            break;
        }
    }
    order
}

/// How a block's payload reaches a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadRoute {
    /// Put/Get streams on the member's gRPC address.
    Grpc,
    /// PUT/GET frames on the member's binary data plane at this `HOST:PORT`.
    DataPlane(String),
}

/// The route of payloads to `member`: its data plane when `data_plane` is
/// on and its record carries a data address, else gRPC. Pure.
pub fn payload_route(member: &Member, data_plane: bool) -> PayloadRoute {
    match &member.data {
        Some(addr) if data_plane && !addr.is_empty() => PayloadRoute::DataPlane(addr.clone()),
        _ => PayloadRoute::Grpc,
    }
}

/// Positions of `hashes` grouped by their write owner in `placement` (a
/// placement over the active members), and the positions of those with no
/// owner (no active member). Each position is in exactly one group, in
/// input order. Pure.
pub fn split_by_owner(
    placement: &Placement,
    hashes: impl IntoIterator<Item = u64>,
) -> (HashMap<String, Vec<usize>>, Vec<usize>) {
    let mut parts: HashMap<String, Vec<usize>> = HashMap::new();
    let mut unplaced = Vec::new();
    for (i, h) in hashes.into_iter().enumerate() {
        match placement.owner(h) {
            Some(owner) => parts.entry(owner.id.clone()).or_default().push(i),
            None => unplaced.push(i),
        }
    }
    (parts, unplaced)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Idle data-plane connections of one shard (shared by the clones of its
/// [`Shard`]; dropped with it when the member's epoch changes).
type IdleData = Arc<parking_lot::Mutex<Vec<DataClient<TcpStream>>>>;

/// One shard's connection and session.
#[derive(Debug, Clone)]
struct Shard {
    grpc: String,
    epoch: u64,
    client: CacheServiceClient<AuthChannel>,
    session: Option<String>,
    /// Membership revision at which a call to it failed: skipped until the
    /// membership moves past it.
    down_at: Option<i64>,
    /// How payloads reach it.
    route: PayloadRoute,
    /// Its idle data-plane connections (with [`PayloadRoute::DataPlane`]).
    idle: IdleData,
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

/// Counters of a [`ShardedClient`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardedStats {
    /// Blocks read from a member other than the first in their ranking.
    pub fallback_hits: u64,
    /// Blocks copied to their write owner (copy-on-read).
    pub copied: u64,
    /// Blocks not copied because [`MAX_COPY_TASKS`] copies were running.
    pub copies_skipped: u64,
    /// Calls to a shard that failed or timed out (each turned into misses).
    pub failed_calls: u64,
    /// Blocks stored or read over a member's binary data plane.
    pub data_plane_blocks: u64,
    /// Blocks stored or read over gRPC Put/Get streams.
    pub grpc_blocks: u64,
    /// Data-plane connections opened (HELLO accepted).
    pub data_connections: u64,
}

#[derive(Debug, Default)]
struct Counters {
    fallback_hits: AtomicU64,
    copied: AtomicU64,
    copies_skipped: AtomicU64,
    failed_calls: AtomicU64,
    data_plane_blocks: AtomicU64,
    grpc_blocks: AtomicU64,
    data_connections: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    membership: MembershipWatch,
    namespace: String,
    config: HashingConfig,
    client_name: String,
    options: ShardedOptions,
    shards: Mutex<HashMap<String, Shard>>,
    copies: Arc<Semaphore>,
    counters: Counters,
}

/// A client of every shard of one namespace. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ShardedClient {
    inner: Arc<Inner>,
}

/// Why one shard's call failed (it becomes misses).
struct ShardFailed(String);

impl ShardedClient {
    /// A client of `namespace` (handshaken with `config` on each shard when
    /// first used) over the watched membership, with default options
    /// (plaintext, no token).
    pub fn new(
        membership: MembershipWatch,
        namespace: impl Into<String>,
        config: HashingConfig,
        client_name: impl Into<String>,
    ) -> Self {
        Self::with_options(
            membership,
            namespace,
            config,
            client_name,
            ShardedOptions::default(),
        )
    }

    /// As [`ShardedClient::new`], with `options`.
    pub fn with_options(
        membership: MembershipWatch,
        namespace: impl Into<String>,
        config: HashingConfig,
        client_name: impl Into<String>,
        options: ShardedOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                membership,
                namespace: namespace.into(),
                config,
                client_name: client_name.into(),
                options,
                shards: Mutex::new(HashMap::new()),
                copies: Arc::new(Semaphore::new(MAX_COPY_TASKS)),
                counters: Counters::default(),
            }),
        }
    }

    /// The membership the client routes by now.
    pub fn membership(&self) -> Arc<Membership> {
        self.inner.membership.current()
    }

    /// The options it was made with.
    pub fn options(&self) -> &ShardedOptions {
        &self.inner.options
    }

    /// Counters since it was made.
    pub fn stats(&self) -> ShardedStats {
        let c = &self.inner.counters;
        ShardedStats {
            fallback_hits: c.fallback_hits.load(Ordering::Relaxed),
            copied: c.copied.load(Ordering::Relaxed),
            copies_skipped: c.copies_skipped.load(Ordering::Relaxed),
            failed_calls: c.failed_calls.load(Ordering::Relaxed),
            data_plane_blocks: c.data_plane_blocks.load(Ordering::Relaxed),
            grpc_blocks: c.grpc_blocks.load(Ordering::Relaxed),
            data_connections: c.data_connections.load(Ordering::Relaxed),
        }
    }

    /// Handshakes with every member now, concurrently, and keeps the
    /// sessions. A member that *refuses* (UNAUTHENTICATED,
    /// PERMISSION_DENIED, FAILED_PRECONDITION: a hashing config that differs
    /// from the namespace's, INVALID_ARGUMENT) is an error: on a later call
    /// the same refusal would only turn every block of that shard into a
    /// miss, which is how a wrong token or a block-size mismatch gets
    /// silently accepted. A member that cannot be reached is not an error
    /// (its blocks are misses, as on any call); the answer is how many
    /// members accepted.
    pub async fn check_handshakes(&self) -> Result<usize, ClusterError> {
        let membership = self.membership();
        let calls = membership.members.keys().map(|id| {
            let membership = Arc::clone(&membership);
            async move {
                let shard = self.inner.shard(&membership, id).await?;
                let answer = tokio::time::timeout(
                    self.inner.options.call_timeout,
                    self.inner.handshake(&shard),
                )
                .await
                .ok()?;
                Some(match answer {
                    Ok(session) => {
                        self.inner.settle(id, &membership, Ok(session)).await;
                        Ok(())
                    }
                    Err(status) => Err((id.clone(), shard.grpc.clone(), status)),
                })
            }
        });
        let mut accepted = 0;
        for answer in join_all(calls).await.into_iter().flatten() {
            match answer {
                Ok(()) => accepted += 1,
                Err((node, grpc, status)) if is_refusal(status.code()) => {
                    return Err(ClusterError::HandshakeRefused {
                        node,
                        grpc,
                        namespace: self.inner.namespace.clone(),
                        code: status.code(),
                        message: status.message().to_string(),
                    })
                }
                Err((node, _, status)) => {
                    tracing::warn!(node, code = ?status.code(), reason = status.message(), "cluster: handshake failed; its blocks are misses");
                }
            }
        }
        Ok(accepted)
    }

    /// Reads `hashes`; `None` for a miss (absent everywhere asked, or its
    /// shards failed). See the module doc for who is asked.
    pub async fn get(&self, hashes: &[u64]) -> Vec<Option<Bytes>> {
        let membership = self.membership();
        let orders = self.read_orders(&membership, hashes);
        let mut out: Vec<Option<Bytes>> = vec![None; hashes.len()];
        // Who served each block found.
        let mut served_by: Vec<Option<String>> = vec![None; hashes.len()];
        let mut fallback_hits = 0u64;
        for level in 0..MAX_READ_TRIES {
            let parts = group_level(&membership, &orders, level, |i| out[i].is_none());
            if parts.is_empty() {
                break;
            }
            let calls = parts.into_iter().map(|(id, indices)| {
                let membership = Arc::clone(&membership);
                async move {
                    let wanted: Vec<u64> = indices.iter().map(|&i| hashes[i]).collect();
                    let mut found = self.inner.get_from(&membership, &id, &wanted).await;
                    let blocks: Vec<_> = wanted.iter().map(|h| found.remove(h)).collect();
                    (id, indices, blocks)
                }
            });
            for (id, indices, blocks) in join_all(calls).await {
                for (i, block) in indices.into_iter().zip(blocks) {
                    if block.is_some() {
                        if level > 0 {
                            fallback_hits += 1;
                        }
                        served_by[i] = Some(id.clone());
                    }
                    out[i] = block;
                }
            }
        }
        self.inner
            .counters
            .fallback_hits
            .fetch_add(fallback_hits, Ordering::Relaxed);
        if self.inner.options.copy_on_read {
            self.copy_to_owners(&membership, hashes, &out, &served_by);
        }
        out
    }

    /// Copies the blocks served by a member other than their write owner
    /// to their write owners, one background task per owner while fewer
    /// than [`MAX_COPY_TASKS`] run; the rest are skipped (counted).
    fn copy_to_owners(
        &self,
        membership: &Arc<Membership>,
        hashes: &[u64],
        out: &[Option<Bytes>],
        served_by: &[Option<String>],
    ) {
        let placement = membership.placement();
        let mut by_owner: HashMap<String, Vec<BlockData>> = HashMap::new();
        for (i, source) in served_by.iter().enumerate() {
            let (Some(source), Some(owner), Some(payload)) =
                (source, placement.owner(hashes[i]), &out[i])
            else {
                continue;
            };
            if *source == owner.id {
                continue;
            }
            by_owner
                .entry(owner.id.clone())
                .or_default()
                .push(BlockData {
                    hash: hashes[i],
                    parent_hash: None,
                    payload: payload.clone(),
                });
        }
        for (owner, blocks) in by_owner {
            let Ok(permit) = Arc::clone(&self.inner.copies).try_acquire_owned() else {
                self.inner
                    .counters
                    .copies_skipped
                    .fetch_add(blocks.len() as u64, Ordering::Relaxed);
                continue;
            };
            let inner = Arc::clone(&self.inner);
            let membership = Arc::clone(membership);
            tokio::spawn(async move {
                let n = blocks.len() as u64;
                if inner.put_to(&membership, &owner, blocks).await.is_some() {
                    inner.counters.copied.fetch_add(n, Ordering::Relaxed);
                }
                drop(permit);
            });
        }
    }

    /// Stores `blocks` on their write owners (active members only), one Put
    /// stream (or one pipelined run of data-plane PUTs) per owner, in
    /// parallel.
    pub async fn put(&self, blocks: Vec<BlockData>) -> PutSummary {
        let membership = self.membership();
        let placement = membership.placement();
        let (groups, unplaced) = split_by_owner(&placement, blocks.iter().map(|b| b.hash));
        let mut slots: Vec<Option<BlockData>> = blocks.into_iter().map(Some).collect();
        let parts: Vec<(String, Vec<BlockData>)> = groups
            .into_iter()
            .map(|(id, indices)| {
                let part = indices.iter().filter_map(|&i| slots[i].take()).collect();
                (id, part)
            })
            .collect();
        let calls = parts.into_iter().map(|(id, part)| {
            let membership = Arc::clone(&membership);
            async move {
                let n = part.len();
                let result = self.inner.put_to(&membership, &id, part).await;
                (id, n, result)
            }
        });
        let mut summary = PutSummary {
            unstored: unplaced.len(),
            ..PutSummary::default()
        };
        for (id, n, result) in join_all(calls).await {
            match result {
                Some(acknowledged) => {
                    let acknowledged = acknowledged.min(n);
                    summary.acknowledged += acknowledged;
                    summary.unstored += n - acknowledged;
                }
                None => {
                    summary.unstored += n;
                    summary.failed_shards.push(id);
                }
            }
        }
        summary.failed_shards.sort();
        summary
    }

    /// The tier of each of `hashes` (`Tier::None`: absent, or its shards
    /// failed), asking the members [`ShardedClient::get`] would.
    pub async fn lookup(&self, hashes: &[u64]) -> Vec<Tier> {
        let membership = self.membership();
        let orders = self.read_orders(&membership, hashes);
        let mut out = vec![Tier::None; hashes.len()];
        for level in 0..MAX_READ_TRIES {
            let parts = group_level(&membership, &orders, level, |i| out[i] == Tier::None);
            if parts.is_empty() {
                break;
            }
            let calls = parts.into_iter().map(|(id, indices)| {
                let membership = Arc::clone(&membership);
                async move {
                    let wanted: Vec<u64> = indices.iter().map(|&i| hashes[i]).collect();
                    let tiers = self.inner.lookup_on(&membership, &id, wanted).await;
                    (indices, tiers)
                }
            });
            for (indices, tiers) in join_all(calls).await {
                for (i, tier) in indices.into_iter().zip(tiers) {
                    out[i] = tier;
                }
            }
        }
        out
    }

    /// Length of the longest leading run of `prefix` (sequence hashes in
    /// order) that the tier holds: each member is asked for its blocks
    /// concurrently and the answers are combined; a failed shard's blocks
    /// are absent.
    pub async fn lookup_prefix(&self, prefix: &[u64]) -> usize {
        self.lookup(prefix)
            .await
            .iter()
            .take_while(|&&t| t != Tier::None)
            .count()
    }

    fn read_orders(&self, membership: &Membership, hashes: &[u64]) -> Vec<Vec<String>> {
        let all = membership.read_placement();
        let (now, warmup) = (now_ms(), self.inner.options.warmup);
        hashes
            .iter()
            .map(|&h| {
                read_order(&all, h, now, warmup)
                    .into_iter()
                    .map(|i| all.members()[i].id.clone())
                    .collect()
            })
            .collect()
    }
}

/// Whether a handshake answered with `code` is a refusal (of the
/// client's credentials or config) rather than an outage.
pub fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::InvalidArgument
    )
}

/// Indices still `open` whose read order has a member at `level`, by that
/// member's id.
fn group_level(
    membership: &Membership,
    orders: &[Vec<String>],
    level: usize,
    open: impl Fn(usize) -> bool,
) -> HashMap<String, Vec<usize>> {
    let mut parts: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, order) in orders.iter().enumerate() {
        if let Some(id) = order.get(level) {
            if open(i) && membership.members.contains_key(id) {
                parts.entry(id.clone()).or_default().push(i);
            }
        }
    }
    parts
}

impl Inner {
    /// The shard `id` ready for a call (connected lazily), or `None` when
    /// it is skipped, unknown, or its address cannot be dialled.
    async fn shard(&self, membership: &Membership, id: &str) -> Option<Shard> {
        let member = membership.members.get(id)?;
        let mut shards = self.shards.lock().await;
        let route = payload_route(member, self.data_plane());
        let stale = shards
            .get(id)
            .is_none_or(|s| s.grpc != member.grpc || s.epoch != member.epoch || s.route != route);
        if stale {
            let client = match self.connect(&member.grpc) {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(node = id, grpc = %member.grpc, reason = %why, "cluster: cannot dial a shard; its blocks are misses");
                    return None;
                }
            };
            shards.insert(
                id.to_string(),
                Shard {
                    grpc: member.grpc.clone(),
                    epoch: member.epoch,
                    client,
                    session: None,
                    down_at: None,
                    route,
                    idle: IdleData::default(),
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

    /// Whether payloads go over the members' data planes (never with TLS).
    fn data_plane(&self) -> bool {
        self.options.data_plane && !self.options.security.tls()
    }

    fn connect(&self, grpc: &str) -> Result<CacheServiceClient<AuthChannel>, String> {
        let security = &self.options.security;
        let scheme = if security.tls() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{grpc}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20);
        let endpoint = security.configure(endpoint).map_err(|e| e.to_string())?;
        Ok(
            CacheServiceClient::new(security.intercept(endpoint.connect_lazy()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
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
                self.counters.failed_calls.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = id, reason = %why, "cluster: shard failed; its blocks are misses until the membership changes");
                shard.session = None;
                shard.down_at = Some(membership.revision);
            }
        }
    }

    /// This client's handshake with `shard`: the new session id, or the
    /// server's answer.
    async fn handshake(&self, shard: &Shard) -> Result<String, tonic::Status> {
        let mut client = shard.client.clone();
        let response = client
            .handshake(HandshakeRequest {
                namespace: self.namespace.clone(),
                config: Some(self.config.clone()),
                client_name: self.client_name.clone(),
            })
            .await?;
        Ok(response.into_inner().session_id)
    }

    async fn session(&self, shard: &mut Shard) -> Result<String, ShardFailed> {
        if let Some(s) = &shard.session {
            return Ok(s.clone());
        }
        let session = self
            .handshake(shard)
            .await
            .map_err(|s| ShardFailed(format!("handshake: {:?}: {}", s.code(), s.message())))?;
        shard.session = Some(session.clone());
        Ok(session)
    }

    /// Runs `call` on a shard with a session; a shard that forgot the
    /// session (it restarted) is handshaken again once.
    async fn with_session<T, F, Fut>(&self, shard: &mut Shard, call: F) -> Result<T, ShardFailed>
    where
        F: Fn(CacheServiceClient<AuthChannel>, String) -> Fut,
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

    /// Runs `call` on shard `id` with a session within the call timeout and
    /// records the outcome (a failure marks the shard down until the
    /// membership changes); `None` when the shard is skipped or the call
    /// failed.
    async fn on_shard<T, F, Fut>(&self, membership: &Membership, id: &str, call: F) -> Option<T>
    where
        F: Fn(CacheServiceClient<AuthChannel>, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.on_shard_with(membership, id, |mut shard| async move {
            let result = self.with_session(&mut shard, call).await;
            (shard, result)
        })
        .await
    }

    /// Runs `op` on shard `id` (connected lazily; `op` hands the shard
    /// back with its session) within the call timeout and records the
    /// outcome, as [`Inner::on_shard`].
    async fn on_shard_with<T, F, Fut>(&self, membership: &Membership, id: &str, op: F) -> Option<T>
    where
        F: FnOnce(Shard) -> Fut,
        Fut: std::future::Future<Output = (Shard, Result<T, ShardFailed>)>,
    {
        let shard = self.shard(membership, id).await?;
        let timeout = self.options.call_timeout;
        let (session, result) = match tokio::time::timeout(timeout, op(shard)).await {
            Ok((shard, r)) => (shard.session, r),
            Err(_) => (
                None,
                Err(ShardFailed(format!("no answer within {timeout:?}"))),
            ),
        };
        let outcome = result.as_ref().map(|_| session.unwrap_or_default());
        self.settle(id, membership, outcome).await;
        result.ok()
    }

    /// A data-plane connection to `shard` at `addr`: an idle one (`true`:
    /// reused), or a new one whose HELLO presents the shard's session (a
    /// shard that forgot it is handshaken again once) and the bearer token.
    async fn data_connection(
        &self,
        shard: &mut Shard,
        addr: &str,
    ) -> Result<(DataClient<TcpStream>, bool), ShardFailed> {
        if let Some(client) = shard.idle.lock().pop() {
            return Ok((client, true));
        }
        let failed = |why: String| ShardFailed(format!("data plane {addr}: {why}"));
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| failed(e.to_string()))?
            .next()
            .ok_or_else(|| failed("resolves to no address".into()))?;
        let token = self.options.security.token().unwrap_or_default();
        let limit = self.options.connect_timeout;
        for attempt in 0..2 {
            let session = self.session(shard).await?;
            let hello = DataClient::connect(resolved, &session, token, "");
            match tokio::time::timeout(limit, hello).await {
                Err(_) => return Err(failed(format!("no HELLO answer within {limit:?}"))),
                Ok(Ok(client)) => {
                    self.counters
                        .data_connections
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok((client, false));
                }
                Ok(Err(DataError::Refused {
                    status: DataStatus::NoSession,
                    ..
                })) if attempt == 0 => shard.session = None,
                Ok(Err(e)) => return Err(failed(e.to_string())),
            }
        }
        Err(failed("session refused twice".into()))
    }

    /// Keeps `client` for the next call to `shard` (or closes it when
    /// enough are idle).
    fn keep_idle(shard: &Shard, client: DataClient<TcpStream>) {
        let mut idle = shard.idle.lock();
        if idle.len() < MAX_IDLE_DATA_CONNECTIONS {
            idle.push(client);
        }
    }

    /// Runs `op` on a data-plane connection to `shard`; a reused connection
    /// that fails on I/O (the server closed it while it was idle) is
    /// replaced by a new one once: data-plane GETs and PUTs can be repeated
    /// (blocks are write-once).
    async fn over_data_plane<T, F, Fut>(
        &self,
        shard: &mut Shard,
        addr: &str,
        op: F,
    ) -> Result<T, ShardFailed>
    where
        F: Fn(DataClient<TcpStream>) -> Fut,
        Fut: std::future::Future<Output = (DataClient<TcpStream>, Result<T, DataError>)>,
    {
        for attempt in 0..2 {
            let (client, reused) = self.data_connection(shard, addr).await?;
            match op(client).await {
                (client, Ok(v)) => {
                    Self::keep_idle(shard, client);
                    return Ok(v);
                }
                (_, Err(DataError::Io(_))) if reused && attempt == 0 => continue,
                (_, Err(e)) => return Err(ShardFailed(format!("data plane {addr}: {e}"))),
            }
        }
        Err(ShardFailed(format!(
            "data plane {addr}: connection lost twice"
        )))
    }

    /// The blocks of `wanted` that shard `id` holds (none when it failed).
    async fn get_from(
        &self,
        membership: &Membership,
        id: &str,
        wanted: &[u64],
    ) -> HashMap<u64, Bytes> {
        let route = self.route(membership, id);
        let found = match &route {
            PayloadRoute::DataPlane(addr) => {
                self.get_over_data_plane(membership, id, addr, wanted).await
            }
            PayloadRoute::Grpc => self.get_over_grpc(membership, id, wanted).await,
        };
        self.count_blocks(&route, found.len());
        found
    }

    /// Counts `n` blocks moved over `route`.
    fn count_blocks(&self, route: &PayloadRoute, n: usize) {
        let counter = match route {
            PayloadRoute::DataPlane(_) => &self.counters.data_plane_blocks,
            PayloadRoute::Grpc => &self.counters.grpc_blocks,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// How payloads reach member `id` now.
    fn route(&self, membership: &Membership, id: &str) -> PayloadRoute {
        membership
            .members
            .get(id)
            .map_or(PayloadRoute::Grpc, |m| payload_route(m, self.data_plane()))
    }

    /// [`Inner::get_from`] over the member's data plane: one pipelined GET.
    async fn get_over_data_plane(
        &self,
        membership: &Membership,
        id: &str,
        addr: &str,
        wanted: &[u64],
    ) -> HashMap<u64, Bytes> {
        self.on_shard_with(membership, id, |mut shard| async move {
            let result = self
                .over_data_plane(&mut shard, addr, |mut client| async move {
                    let mut found = HashMap::new();
                    let r = client
                        .get_many_each(wanted, false, |reply| {
                            if let Some(payload) = reply.payload {
                                found.insert(reply.hash, payload);
                            }
                        })
                        .await;
                    (client, r.map(|()| found))
                })
                .await;
            (shard, result)
        })
        .await
        .unwrap_or_default()
    }

    /// [`Inner::get_from`] over a gRPC Get stream.
    async fn get_over_grpc(
        &self,
        membership: &Membership,
        id: &str,
        wanted: &[u64],
    ) -> HashMap<u64, Bytes> {
        self.on_shard(membership, id, |mut client, session| {
            let wanted = wanted.to_vec();
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
        .await
        .unwrap_or_default()
    }

    /// Tiers of `wanted` on shard `id` (all `Tier::None` when it failed).
    async fn lookup_on(&self, membership: &Membership, id: &str, wanted: Vec<u64>) -> Vec<Tier> {
        let n = wanted.len();
        let answer = self
            .on_shard(membership, id, |mut client, session| {
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
        let mut tiers: Vec<Tier> = match answer {
            Some(r) => r
                .into_inner()
                .tiers
                .iter()
                .map(|&t| Tier::try_from(t).unwrap_or(Tier::None))
                .collect(),
            None => Vec::new(),
        };
        tiers.resize(n, Tier::None);
        tiers
    }

    /// `blocks` to shard `id` (one Put stream, or pipelined data-plane
    /// PUTs): the blocks acknowledged (stored or already present), `None`
    /// when it failed.
    async fn put_to(
        &self,
        membership: &Membership,
        id: &str,
        blocks: Vec<BlockData>,
    ) -> Option<usize> {
        let route = self.route(membership, id);
        let acknowledged = match &route {
            PayloadRoute::DataPlane(addr) => {
                self.put_over_data_plane(membership, id, addr, blocks).await
            }
            PayloadRoute::Grpc => self.put_over_grpc(membership, id, blocks).await,
        }?;
        self.count_blocks(&route, acknowledged);
        Some(acknowledged)
    }

    /// [`Inner::put_to`] over the member's data plane. A block the server
    /// refuses (BUSY, INVALID, ...) is not stored; the connection goes on.
    async fn put_over_data_plane(
        &self,
        membership: &Membership,
        id: &str,
        addr: &str,
        blocks: Vec<BlockData>,
    ) -> Option<usize> {
        let frames: Vec<(u64, Option<u64>, Bytes)> = blocks
            .into_iter()
            .map(|b| (b.hash, b.parent_hash, b.payload))
            .collect();
        let frames = &frames;
        self.on_shard_with(membership, id, |mut shard| async move {
            let result = self
                .over_data_plane(&mut shard, addr, |mut client| async move {
                    let (mut acknowledged, mut refused) = (0usize, None);
                    let r = client
                        .put_many_each(frames, |answer| match answer {
                            Ok(_) => acknowledged += 1,
                            Err(e) => {
                                refused.get_or_insert(e);
                            }
                        })
                        .await;
                    if let Some(e) = refused {
                        tracing::warn!(node = id, reason = %e, refused = frames.len() - acknowledged, "cluster: the shard refused blocks; they are not stored");
                    }
                    (client, r.map(|()| acknowledged))
                })
                .await;
            (shard, result)
        })
        .await
    }

    /// [`Inner::put_to`] over one gRPC Put stream.
    async fn put_over_grpc(
        &self,
        membership: &Membership,
        id: &str,
        blocks: Vec<BlockData>,
    ) -> Option<usize> {
        let blocks = Arc::new(blocks);
        let response = self
            .on_shard(membership, id, |mut client, session| {
                let messages: Vec<_> = blocks
                    .iter()
                    .enumerate()
                    .map(|(k, b)| kvtier_proto::put_message(&session, k, b.clone()))
                    .collect();
                async move { client.put(tokio_stream::iter(messages)).await }
            })
            .await?;
        let r = response.into_inner();
        Some((r.stored + r.already_present) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, epoch: u64, state: MemberState) -> Member {
        Member {
            id: id.into(),
            grpc: format!("{id}:50051"),
            data: None,
            weight: 1.0,
            epoch,
            state,
        }
    }

    const NOW: u64 = 10_000_000;
    const WARMUP: Duration = Duration::from_secs(60);
    const OLD: u64 = NOW - 3_600_000;

    fn ids(p: &Placement, order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| p.members()[i].id.clone()).collect()
    }

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
    }

    #[test]
    fn settled_members_are_asked_alone() {
        let ms: Vec<_> = (0..4)
            .map(|i| member(&format!("n{i}"), OLD, MemberState::Active))
            .collect();
        let p = Placement::over_all(&ms);
        for k in keys(1_000) {
            let order = read_order(&p, k, NOW, WARMUP);
            assert_eq!(order, vec![p.owner_index(k).expect("owner")]);
        }
    }

    #[test]
    fn a_new_owner_falls_back_to_the_previous_owner_during_warm_up_only() {
        let mut ms: Vec<_> = (0..3)
            .map(|i| member(&format!("n{i}"), OLD, MemberState::Active))
            .collect();
        let before = Placement::over_all(&ms);
        ms.push(member("n3", NOW - 1_000, MemberState::Active));
        let after = Placement::over_all(&ms);
        let mut moved = 0;
        for k in keys(2_000) {
            let order = ids(&after, &read_order(&after, k, NOW, WARMUP));
            let previous = before.owner(k).expect("owner").id.clone();
            if after.owner(k).expect("owner").id == "n3" {
                moved += 1;
                assert_eq!(order, ["n3".to_string(), previous], "{k:#x}");
            } else {
                assert_eq!(order, [previous], "{k:#x}");
            }
            // Warm-up over: the new owner alone.
            let later = NOW - 1_000 + WARMUP.as_millis() as u64;
            assert_eq!(read_order(&after, k, later, WARMUP).len(), 1);
        }
        assert!(moved > 300, "n3 owns about a quarter: {moved}");
    }

    #[test]
    fn a_draining_member_is_read_then_the_next_which_takes_its_writes() {
        let mut ms: Vec<_> = (0..3)
            .map(|i| member(&format!("n{i}"), OLD, MemberState::Active))
            .collect();
        ms[1].state = MemberState::Draining;
        let all = Placement::over_all(&ms);
        let writes = Placement::new(&ms);
        let mut on_draining = 0;
        for k in keys(2_000) {
            let order = ids(&all, &read_order(&all, k, NOW, WARMUP));
            let write_owner = writes.owner(k).expect("owner").id.clone();
            assert_ne!(write_owner, "n1", "no writes to a draining member");
            if order[0] == "n1" {
                on_draining += 1;
                assert_eq!(order, ["n1".to_string(), write_owner]);
            } else {
                assert_eq!(order, [write_owner]);
            }
        }
        assert!(on_draining > 400, "{on_draining}");
    }

    #[test]
    fn fallbacks_chain_at_most_three_deep_and_stop_at_the_last_member() {
        // Everyone young: three asked of four; of two, both.
        let ms: Vec<_> = (0..4)
            .map(|i| member(&format!("n{i}"), NOW, MemberState::Active))
            .collect();
        let p = Placement::over_all(&ms);
        for k in keys(200) {
            let order = read_order(&p, k, NOW, WARMUP);
            assert_eq!(order.len(), MAX_READ_TRIES);
            assert_eq!(order, p.ranking_indices(k)[..MAX_READ_TRIES]);
        }
        let p = Placement::over_all(&ms[..2]);
        assert_eq!(read_order(&p, 7, NOW, WARMUP).len(), 2);
        let p = Placement::over_all(&ms[..1]);
        assert_eq!(read_order(&p, 7, NOW, WARMUP).len(), 1);
        assert!(read_order(&Placement::over_all(&[]), 7, NOW, WARMUP).is_empty());
    }

    #[test]
    fn a_batch_splits_by_write_owner_and_never_onto_a_draining_member() {
        let mut ms: Vec<_> = (0..3)
            .map(|i| member(&format!("n{i}"), OLD, MemberState::Active))
            .collect();
        ms[2].state = MemberState::Draining;
        let writes = Placement::new(&ms);
        let hashes: Vec<u64> = keys(3_000).collect();
        let (parts, unplaced) = split_by_owner(&writes, hashes.iter().copied());
        assert!(unplaced.is_empty());
        assert_eq!(parts.len(), 2, "both active members get blocks");
        assert!(!parts.contains_key("n2"), "no writes to a draining member");
        let mut seen = vec![0u8; hashes.len()];
        for (id, indices) in &parts {
            assert!(indices.windows(2).all(|w| w[0] < w[1]), "input order");
            for &i in indices {
                seen[i] += 1;
                let owner = writes.owner(hashes[i]).expect("owner");
                assert_eq!(&owner.id, id, "{:#x}", hashes[i]);
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "each block in one part");

        // No active member: every block is unplaced.
        let none = Placement::new(&ms[2..]);
        let (parts, unplaced) = split_by_owner(&none, hashes[..10].iter().copied());
        assert!(parts.is_empty());
        assert_eq!(unplaced, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn payloads_use_a_members_data_plane_only_when_on_and_advertised() {
        let mut m = member("n0", OLD, MemberState::Active);
        assert_eq!(payload_route(&m, true), PayloadRoute::Grpc, "no address");
        m.data = Some("10.0.0.1:50052".into());
        assert_eq!(
            payload_route(&m, true),
            PayloadRoute::DataPlane("10.0.0.1:50052".into())
        );
        assert_eq!(payload_route(&m, false), PayloadRoute::Grpc, "off");
        m.data = Some(String::new());
        assert_eq!(payload_route(&m, true), PayloadRoute::Grpc, "empty");
    }

    #[test]
    fn warm_up_is_measured_from_the_epoch() {
        let m = member("a", 1_000, MemberState::Active);
        assert!(warming_up(&m, 1_000, Duration::from_secs(1)));
        assert!(warming_up(&m, 1_999, Duration::from_secs(1)));
        assert!(!warming_up(&m, 2_000, Duration::from_secs(1)));
        assert!(!warming_up(&m, 1_000, Duration::ZERO));
        let far = member("b", u64::MAX, MemberState::Active);
        assert!(warming_up(&far, NOW, WARMUP), "no overflow");
    }
}
