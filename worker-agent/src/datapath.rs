//! Offload / Onboard / Lookup on an attached pool.
//!
//! Offload: one Lookup to skip what the tier holds (write-once), then one Put
//! stream. A producer task copies block after block out of the pool into
//! staging buffers (device→host) while the Put stream sends earlier ones: the
//! copies overlap the network transfer, and the staging pool's semaphore
//! bounds what is in flight. A staging buffer goes to the wire as
//! `Bytes::from_owner(buffer)` and returns to the pool once encoded.
//!
//! Onboard: one Get stream (`stop_at_first_miss`), each block copied into its
//! destination as it arrives; bounded by `onboard_timeout`, and any failure of
//! the tier degrades to "not loaded" for the blocks not yet copied.
//!
//! With the server's binary data plane configured (`--server-data`), the
//! payloads of both go over it instead (pipelined PUT/GET frames on their own
//! connections); Lookup and the session stay on gRPC.
//!
//! With `--cluster`, Lookup, Offload and Onboard go through the sharded
//! client (each block to and from its owner, over gRPC; with
//! `--cluster-data-plane` the payloads over each owner's binary data plane,
//! Lookup still over gRPC): a shard that fails is misses (not stored, not
//! loaded), never an error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use kvtier_proto::v1::{
    BlockData, GetRequest, HashingConfig, LookupRequest, PoolBlock, PutRequest, PutResponse, Tier,
};

use crate::error::{AgentError, Result};
use crate::memory::PoolMemory;
use crate::staging::StagingPool;
use crate::stats::Stats;
use crate::tier::{data_error, TierSession};
use kvtier_cluster::ShardedClient;
use kvtier_proto::dataplane::client::DataClient;

/// An engine pool the agent is attached to.
#[derive(Debug)]
pub struct AttachedPool {
    /// Identifies this attachment.
    pub id: u64,
    /// Namespace on the cache server.
    pub namespace: String,
    /// The engine's (and server's) hashing configuration.
    pub hashing: HashingConfig,
    /// The pool's memory.
    pub memory: Arc<dyn PoolMemory>,
    /// Reusable staging buffers, one block each.
    pub staging: StagingPool,
    /// Session with the cache server.
    pub tier: Arc<TierSession>,
    /// With `--cluster`: the client of every shard, used instead of `tier`.
    pub sharded: Option<ShardedClient>,
}

/// Outcome of an offload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadOutcome {
    /// Blocks copied to the tier.
    pub stored: u32,
    /// Blocks skipped (the tier held them).
    pub skipped: u32,
    /// Bytes copied out of the pool.
    pub bytes: u64,
}

/// Outcome of an onboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnboardOutcome {
    /// Per requested block: loaded into its destination.
    pub loaded: Vec<bool>,
    /// Why loading stopped early, if the tier failed.
    pub degraded_reason: Option<String>,
}

/// Blocks copied out of the pool per sharded Put (with `--cluster`).
pub const SHARDED_CHUNK: usize = 64;

/// Least bytes worth a stream (and a connection) of their own.
pub const MIN_STREAM_BYTES: u64 = 8 << 20;

impl AttachedPool {
    /// How many concurrent streams to split `blocks` blocks over.
    fn streams_for(&self, blocks: usize, block_bytes: usize) -> usize {
        let bytes = blocks as u64 * block_bytes as u64;
        let by_size = (bytes / MIN_STREAM_BYTES).max(1) as usize;
        by_size.min(self.tier.connections()).min(blocks).max(1)
    }

    /// Tiers of `hashes` on the cache server.
    pub async fn lookup(&self, hashes: &[u64], timeout: Duration) -> Result<(u32, Vec<Tier>)> {
        if let Some(sharded) = &self.sharded {
            let tiers = tokio::time::timeout(timeout, sharded.lookup(hashes))
                .await
                .map_err(|_| AgentError::Timeout(timeout))?;
            let prefix = tiers.iter().take_while(|&&t| t != Tier::None).count();
            return Ok((prefix as u32, tiers));
        }
        let hashes = hashes.to_vec();
        let response = self
            .tier
            .call(timeout, |mut client, session_id| {
                let hashes = hashes.clone();
                async move {
                    client
                        .lookup(LookupRequest {
                            session_id,
                            hashes,
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(AgentError::Tier)
                }
            })
            .await?;
        let tiers = response
            .tiers
            .iter()
            .map(|&t| Tier::try_from(t).unwrap_or(Tier::None))
            .collect();
        Ok((response.prefix_len, tiers))
    }

    /// Copies `blocks` to the tier, skipping those it already holds.
    pub async fn offload(
        &self,
        blocks: &[PoolBlock],
        timeout: Duration,
        stats: &Stats,
    ) -> Result<OffloadOutcome> {
        let geometry = self.memory.geometry();
        for b in blocks {
            geometry.block_offset(b.block_id)?;
        }
        let hashes: Vec<u64> = blocks.iter().map(|b| b.hash).collect();
        let (_, tiers) = self.lookup(&hashes, timeout).await?;
        let todo: Vec<PoolBlock> = blocks
            .iter()
            .zip(&tiers)
            .filter(|(_, t)| **t == Tier::None)
            .map(|(b, _)| *b)
            .collect();
        let skipped = (blocks.len() - todo.len()) as u32;
        Stats::add(&stats.offload_skipped, skipped as u64);
        if todo.is_empty() {
            return Ok(OffloadOutcome {
                stored: 0,
                skipped,
                bytes: 0,
            });
        }
        // Contiguous chunks on separate connections: one Put stream is bound
        // by one connection's round trips; the staging pool bounds them all.
        let streams = self.streams_for(todo.len(), geometry.block_bytes);
        let per = todo.len().div_ceil(streams);
        let (stored, present) = if let Some(sharded) = &self.sharded {
            tokio::time::timeout(timeout, self.offload_sharded(sharded, &todo))
                .await
                .map_err(|_| AgentError::Timeout(timeout))??
        } else if self.tier.uses_data_plane() {
            let group = self.staging.count() / streams;
            let sends = todo.chunks(per).map(|chunk| async move {
                let client = self
                    .tier
                    .data_connection("", timeout)
                    .await?
                    .ok_or_else(|| AgentError::DataPlane("data plane went away".into()))?;
                self.offload_over_data_plane(client, chunk, group).await
            });
            let work = futures::future::try_join_all(sends);
            let results = tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| AgentError::Timeout(timeout))??;
            results
                .into_iter()
                .fold((0, 0), |(s, p), (ds, dp)| (s + ds, p + dp))
        } else {
            self.offload_over_grpc(&todo, per, timeout).await?
        };
        // Every block not skipped by the Lookup was copied out of the pool
        // (a concurrent writer may have stored some meanwhile: already present).
        let bytes = todo.len() as u64 * geometry.block_bytes as u64;
        Stats::add(&stats.offload_blocks, stored as u64);
        Stats::add(&stats.offload_bytes, bytes);
        Ok(OffloadOutcome {
            stored,
            skipped: skipped + present,
            bytes,
        })
    }

    /// To a cluster: the blocks, copied out of the pool into buffers of
    /// their own [`SHARDED_CHUNK`] at a time (not staging buffers: two
    /// offloads holding part of the staging pool each would wait on each
    /// other), go to their owners. Returns (acknowledged, 0): a sharded Put
    /// does not tell stored from already present; blocks whose owner failed
    /// are simply not stored.
    async fn offload_sharded(
        &self,
        sharded: &ShardedClient,
        todo: &[PoolBlock],
    ) -> Result<(u32, u32)> {
        let block_bytes = self.memory.geometry().block_bytes;
        let mut acknowledged = 0;
        for chunk in todo.chunks(SHARDED_CHUNK) {
            let mut blocks = Vec::with_capacity(chunk.len());
            for b in chunk {
                let mut buffer = vec![0u8; block_bytes];
                self.memory.copy_out(b.block_id, &mut buffer)?;
                blocks.push(BlockData {
                    hash: b.hash,
                    parent_hash: b.parent_hash,
                    payload: Bytes::from(buffer),
                });
            }
            let summary = sharded.put(blocks).await;
            if summary.unstored > 0 {
                tracing::warn!(
                    unstored = summary.unstored, failed = ?summary.failed_shards,
                    "offload: blocks whose shard failed were not stored"
                );
            }
            acknowledged += summary.acknowledged as u32;
        }
        Ok((acknowledged, 0))
    }

    /// From a cluster: the blocks of `hashes` from their owners, the
    /// leading run found copied into `block_ids`.
    async fn onboard_sharded(
        &self,
        sharded: &ShardedClient,
        hashes: &[u64],
        block_ids: &[u64],
        loaded: &mut [bool],
    ) -> Result<()> {
        let block_bytes = self.memory.geometry().block_bytes;
        let blocks = sharded.get(hashes).await;
        let mut staging = if self.memory.needs_staging_for_copy_in() {
            Some(self.staging.acquire().await)
        } else {
            None
        };
        for (i, block) in blocks.iter().enumerate() {
            let Some(payload) = block else { break };
            if payload.len() != block_bytes {
                return Err(AgentError::Tier(tonic::Status::internal(format!(
                    "block {:#x} has {} bytes, the pool's blocks have {block_bytes}",
                    hashes[i],
                    payload.len()
                ))));
            }
            let scratch: &mut [u8] = match staging.as_mut() {
                Some(s) => s.as_mut_slice(),
                None => &mut [],
            };
            self.memory.copy_in(block_ids[i], payload, scratch)?;
            loaded[i] = true;
        }
        Ok(())
    }

    /// Put streams of `per` blocks each, one per connection. Returns (stored, already present).
    async fn offload_over_grpc(
        &self,
        todo: &[PoolBlock],
        per: usize,
        timeout: Duration,
    ) -> Result<(u32, u32)> {
        let puts = todo.chunks(per).enumerate().map(|(k, chunk)| {
            let chunk = Arc::new(chunk.to_vec());
            self.tier
                .call_on(k, timeout, move |mut client, session_id| {
                    let chunk = chunk.clone();
                    let memory = self.memory.clone();
                    let staging = self.staging.clone();
                    async move {
                        let (tx, rx) = mpsc::channel(staging.count().max(1));
                        // The producer copies out of the pool while the stream
                        // sends; it stops early when the stream is dropped.
                        let producer =
                            tokio::spawn(produce(chunk, memory, staging, session_id, tx));
                        let result = client.put(ReceiverStream::new(rx)).await;
                        match producer.await {
                            Ok(Err(e)) => return Err(e),
                            Err(join) => {
                                return Err(AgentError::Memory(format!("copy task failed: {join}")))
                            }
                            Ok(Ok(())) => {}
                        }
                        result.map(|r| r.into_inner()).map_err(AgentError::Tier)
                    }
                })
        });
        let mut response = PutResponse::default();
        for r in futures::future::try_join_all(puts).await? {
            response.stored += r.stored;
            response.already_present += r.already_present;
        }
        Ok((response.stored, response.already_present))
    }

    /// Loads the leading present blocks of `hashes` into `block_ids`.
    /// Never fails for the tier's sake: a dead or slow tier yields "not loaded".
    /// `agent_id` (may be empty) is passed on to the server's Get.
    pub async fn onboard(
        &self,
        hashes: &[u64],
        block_ids: &[u64],
        agent_id: &str,
        timeout: Duration,
        stats: &Stats,
    ) -> Result<OnboardOutcome> {
        if hashes.len() != block_ids.len() {
            return Err(AgentError::InvalidRequest(format!(
                "{} hashes but {} destination block ids",
                hashes.len(),
                block_ids.len()
            )));
        }
        let geometry = self.memory.geometry();
        // Distinct destinations: concurrent streams write them at once.
        let mut seen = std::collections::HashSet::with_capacity(block_ids.len());
        for &b in block_ids {
            geometry.block_offset(b)?;
            if !seen.insert(b) {
                return Err(AgentError::InvalidRequest(format!(
                    "destination block {b} appears twice"
                )));
            }
        }
        let mut loaded = vec![false; hashes.len()];
        let work = self.onboard_all(hashes, block_ids, agent_id, &mut loaded, timeout);
        let degraded_reason = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(())) => None,
            Ok(Err(e @ AgentError::InvalidRequest(_))) => return Err(e),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("cache tier did not answer within {timeout:?}")),
        };
        let n = loaded.iter().filter(|&&l| l).count() as u64;
        Stats::add(&stats.onboard_loaded, n);
        Stats::add(&stats.onboard_bytes, n * geometry.block_bytes as u64);
        Stats::add(&stats.onboard_missed, hashes.len() as u64 - n);
        if let Some(reason) = &degraded_reason {
            Stats::add(&stats.onboard_degraded, 1);
            tracing::warn!(%reason, loaded = n, "onboard degraded: the engine recomputes the rest");
        }
        Ok(OnboardOutcome {
            loaded,
            degraded_reason,
        })
    }

    /// Small prefixes: one Get stream. Large ones: a Lookup for the present
    /// prefix, then that prefix split over concurrent Get streams.
    async fn onboard_all(
        &self,
        hashes: &[u64],
        block_ids: &[u64],
        agent_id: &str,
        loaded: &mut [bool],
        timeout: Duration,
    ) -> Result<()> {
        if let Some(sharded) = &self.sharded {
            return self
                .onboard_sharded(sharded, hashes, block_ids, loaded)
                .await;
        }
        let block_bytes = self.memory.geometry().block_bytes;
        if self.streams_for(hashes.len(), block_bytes) < 2 {
            return self
                .onboard_inner(0, hashes, block_ids, agent_id, loaded)
                .await;
        }
        let (present, _) = self.lookup(hashes, timeout).await?;
        let present = (present as usize).min(hashes.len());
        if present == 0 {
            return Ok(());
        }
        let streams = self.streams_for(present, block_bytes);
        let per = present.div_ceil(streams);
        let gets = hashes[..present]
            .chunks(per)
            .zip(block_ids[..present].chunks(per))
            .zip(loaded[..present].chunks_mut(per))
            .enumerate()
            .map(|(k, ((h, b), l))| self.onboard_inner(k, h, b, agent_id, l));
        // Every stream runs to its end; the first error is reported.
        let mut first_error = None;
        for r in futures::future::join_all(gets).await {
            if let (Err(e), None) = (r, &first_error) {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn onboard_inner(
        &self,
        stream: usize,
        hashes: &[u64],
        block_ids: &[u64],
        agent_id: &str,
        loaded: &mut [bool],
    ) -> Result<()> {
        let block_bytes = self.memory.geometry().block_bytes;
        if let Some(client) = self
            .tier
            .data_connection(agent_id, Duration::from_secs(3600))
            .await?
        {
            return self
                .onboard_over_data_plane(client, hashes, block_ids, loaded)
                .await;
        }
        let request = GetRequest {
            session_id: String::new(),
            hashes: hashes.to_vec(),
            stop_at_first_miss: true,
            agent_id: agent_id.to_string(),
            ..Default::default()
        };
        // Opening the stream may renew the session; the body is read below.
        let mut stream = self
            .tier
            .call_on(
                stream,
                Duration::from_secs(3600),
                |mut client, session_id| {
                    let request = GetRequest {
                        session_id,
                        ..request.clone()
                    };
                    async move {
                        client
                            .get(request)
                            .await
                            .map(|r| r.into_inner())
                            .map_err(AgentError::Tier)
                    }
                },
            )
            .await?;
        let mut staging = if self.memory.needs_staging_for_copy_in() {
            Some(self.staging.acquire().await)
        } else {
            None
        };
        let mut i = 0;
        while let Some(block) = stream.message().await.map_err(AgentError::Tier)? {
            if i >= hashes.len() || block.hash != hashes[i] {
                return Err(AgentError::Tier(tonic::Status::internal(format!(
                    "cache server answered block {:#x} out of order",
                    block.hash
                ))));
            }
            if !block.found {
                break;
            }
            if block.payload.len() != block_bytes {
                return Err(AgentError::Tier(tonic::Status::internal(format!(
                    "block {:#x} has {} bytes, the pool's blocks have {block_bytes}",
                    block.hash,
                    block.payload.len()
                ))));
            }
            let scratch: &mut [u8] = match staging.as_mut() {
                Some(s) => s.as_mut_slice(),
                None => &mut [],
            };
            self.memory.copy_in(block_ids[i], &block.payload, scratch)?;
            loaded[i] = true;
            i += 1;
        }
        Ok(())
    }
}

impl AttachedPool {
    /// [`Self::onboard_inner`] over the binary data plane: one pipelined
    /// GET frame, each hit copied into its destination as it arrives.
    async fn onboard_over_data_plane(
        &self,
        mut client: DataClient<tokio::net::TcpStream>,
        hashes: &[u64],
        block_ids: &[u64],
        loaded: &mut [bool],
    ) -> Result<()> {
        let block_bytes = self.memory.geometry().block_bytes;
        let mut staging = if self.memory.needs_staging_for_copy_in() {
            Some(self.staging.acquire().await)
        } else {
            None
        };
        let mut next = 0;
        let mut missed = false;
        let mut failure: Option<AgentError> = None;
        client
            .get_many_each(hashes, true, |reply| {
                if missed || failure.is_some() {
                    return;
                }
                if next >= hashes.len() || reply.hash != hashes[next] {
                    failure = Some(AgentError::DataPlane(format!(
                        "cache server answered block {:#x} out of order",
                        reply.hash
                    )));
                    return;
                }
                let Some(payload) = reply.payload else {
                    missed = true;
                    return;
                };
                if payload.len() != block_bytes {
                    failure = Some(AgentError::DataPlane(format!(
                        "block {:#x} has {} bytes, the pool's blocks have {block_bytes}",
                        reply.hash,
                        payload.len()
                    )));
                    return;
                }
                let scratch: &mut [u8] = match staging.as_mut() {
                    Some(s) => s.as_mut_slice(),
                    None => &mut [],
                };
                match self.memory.copy_in(block_ids[next], &payload, scratch) {
                    Ok(()) => {
                        loaded[next] = true;
                        next += 1;
                    }
                    Err(e) => failure = Some(e),
                }
            })
            .await
            .map_err(data_error)?;
        failure.map_or(Ok(()), Err)
    }

    /// One offload stream over the binary data plane: groups of blocks copied
    /// out of the pool into staging buffers, then sent as pipelined PUTs;
    /// the staging pool bounds the memory in flight. Returns (stored, already present).
    async fn offload_over_data_plane(
        &self,
        mut client: DataClient<tokio::net::TcpStream>,
        blocks: &[PoolBlock],
        group: usize,
    ) -> Result<(u32, u32)> {
        let (mut stored, mut present) = (0u32, 0u32);
        for chunk in blocks.chunks(group.max(1)) {
            let mut frames = Vec::with_capacity(chunk.len());
            for b in chunk {
                let mut buffer = self.staging.acquire().await;
                self.memory.copy_out(b.block_id, buffer.as_mut_slice())?;
                frames.push((b.hash, b.parent_hash, Bytes::from_owner(buffer)));
            }
            let mut refused = None;
            client
                .put_many_each(&frames, |answer| match answer {
                    Ok(ack) if ack.already_present => present += 1,
                    Ok(_) => stored += 1,
                    Err(e) => {
                        refused.get_or_insert(e);
                    }
                })
                .await
                .map_err(data_error)?;
            if let Some(e) = refused {
                return Err(data_error(e));
            }
        }
        Ok((stored, present))
    }
}

/// Copies `blocks` out of the pool, one staging buffer each, and feeds the Put stream.
async fn produce(
    blocks: Arc<Vec<PoolBlock>>,
    memory: Arc<dyn PoolMemory>,
    staging: StagingPool,
    session_id: String,
    tx: mpsc::Sender<PutRequest>,
) -> Result<()> {
    for (i, b) in blocks.iter().enumerate() {
        let mut buffer = staging.acquire().await;
        memory.copy_out(b.block_id, buffer.as_mut_slice())?;
        let message = kvtier_proto::put_message(
            &session_id,
            i,
            BlockData {
                hash: b.hash,
                parent_hash: b.parent_hash,
                payload: Bytes::from_owner(buffer),
                ..Default::default()
            },
        );
        if tx.send(message).await.is_err() {
            // The stream ended early (the server refused it); its status tells why.
            break;
        }
    }
    Ok(())
}
