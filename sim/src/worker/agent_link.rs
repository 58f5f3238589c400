//! The simulated worker's link to its agent: attach (and re-attach after the
//! agent restarts), report stored and evicted blocks as KV events, onboard a
//! prefix from the cache tier, offload computed blocks. Every failure here is
//! a miss or a skipped report, never a failed request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::transport::Channel;
use tonic::Code;

use kvtier_proto::v1::worker_service_client::WorkerServiceClient;
use kvtier_proto::v1::*;

use super::prefix_cache::Held;
use super::request::SimWorker;
use super::stats::{add, AgentOp};

/// Least time between two attach attempts while the agent is unreachable.
pub(super) const REATTACH_EVERY: Duration = Duration::from_secs(1);

/// The pool's link to the agent: a lazily connected client and the current
/// attachment (pool id 0: detached).
pub(super) struct AgentLink {
    pub(super) client: WorkerServiceClient<Channel>,
    pub(super) attach: AttachPoolRequest,
    pub(super) pool_id: AtomicU64,
    pub(super) last_try: Mutex<Option<Instant>>,
    pub(super) attaching: tokio::sync::Mutex<()>,
}

/// Whether an agent error means the attachment is gone (agent down or
/// restarted) rather than a refused call.
pub(super) fn detaches(status: &tonic::Status) -> bool {
    match status.code() {
        Code::FailedPrecondition => status.message().contains("no such pool"),
        // The agent's own UNAVAILABLE answers are about the cache tier.
        Code::Unavailable => !status.message().starts_with("cache tier"),
        Code::Unknown | Code::Cancelled => true,
        _ => false,
    }
}

pub(super) fn chain(hashes: &[u64], blocks: &[u64], parent: Option<u64>) -> Vec<PoolBlock> {
    hashes
        .iter()
        .zip(blocks)
        .enumerate()
        .map(|(i, (&hash, &block_id))| PoolBlock {
            block_id,
            hash,
            parent_hash: if i == 0 { parent } else { Some(hashes[i - 1]) },
        })
        .collect()
}

impl SimWorker {
    /// The current pool id, attaching first when detached (at most once per
    /// [`REATTACH_EVERY`]); None while the agent is unreachable.
    pub(super) async fn pool_id(&self) -> Option<u64> {
        let link = self.agent.as_ref()?;
        let id = link.pool_id.load(Ordering::Relaxed);
        if id != 0 {
            return Some(id);
        }
        let _one = link.attaching.try_lock().ok()?;
        {
            let mut last = link.last_try.lock();
            if last.is_some_and(|t| t.elapsed() < REATTACH_EVERY) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match link.client.clone().attach_pool(link.attach.clone()).await {
            Ok(r) => {
                let id = r.into_inner().pool_id;
                link.pool_id.store(id, Ordering::Relaxed);
                tracing::info!(pool_id = id, "pool attached to the agent");
                self.announce(id).await;
                Some(id)
            }
            Err(e) => {
                self.stats.agent_error(AgentOp::Attach);
                tracing::debug!(error = %e.message(), "attach failed");
                None
            }
        }
    }

    /// After an attach: the agent (new, restarted, or one that missed
    /// reports while the worker was detached) learns exactly what the pool
    /// holds: CLEARED, then every resident block as STORED chains.
    pub(super) async fn announce(&self, pool_id: u64) {
        self.report(pool_id, WorkerEventKind::Cleared, Vec::new())
            .await;
        let blocks: Vec<PoolBlock> = self
            .cache
            .lock()
            .residents()
            .into_iter()
            .map(|r| PoolBlock {
                block_id: r.block,
                hash: r.hash,
                parent_hash: r.parent,
            })
            .collect();
        self.report_chains(pool_id, blocks).await;
    }

    pub(super) fn agent_failed(&self, op: AgentOp, pool_id: u64, e: &tonic::Status) {
        self.stats.agent_error(op);
        tracing::warn!(op = op.name(), code = ?e.code(), error = %e.message(), "agent call failed");
        if let Some(link) = &self.agent {
            if detaches(e) {
                let _ =
                    link.pool_id
                        .compare_exchange(pool_id, 0, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn client(&self) -> Option<WorkerServiceClient<Channel>> {
        self.agent.as_ref().map(|l| l.client.clone())
    }

    /// Reports `blocks` (parents before children, any number of chains) as
    /// STORED, one ReportBlocks per chain.
    pub(super) async fn report_chains(&self, pool_id: u64, blocks: Vec<PoolBlock>) {
        let mut runs: Vec<Vec<PoolBlock>> = Vec::new();
        for b in blocks {
            match runs.last_mut() {
                Some(run) if run.last().map(|l| Some(l.hash)) == Some(b.parent_hash) => run.push(b),
                _ => runs.push(vec![b]),
            }
        }
        for run in runs {
            self.report(pool_id, WorkerEventKind::Stored, run).await;
        }
    }

    pub(super) async fn report(&self, pool_id: u64, kind: WorkerEventKind, blocks: Vec<PoolBlock>) {
        if blocks.is_empty() && kind != WorkerEventKind::Cleared {
            return;
        }
        let Some(mut client) = self.client() else {
            return;
        };
        let req = ReportBlocksRequest {
            pool_id,
            kind: kind as i32,
            blocks,
        };
        if let Err(e) = client.report_blocks(req).await {
            self.agent_failed(AgentOp::Report, pool_id, &e);
        }
    }

    pub(super) async fn report_evicted(&self, evicted: &[u64]) {
        if evicted.is_empty() {
            return;
        }
        add(&self.stats.evicted_blocks, evicted.len() as u64);
        if let Some(pool_id) = self.pool_id().await {
            let blocks = evicted
                .iter()
                .map(|&hash| PoolBlock {
                    block_id: 0,
                    hash,
                    parent_hash: None,
                })
                .collect();
            self.report(pool_id, WorkerEventKind::Removed, blocks).await;
        }
    }

    /// Onboards up to `blocks.len()` blocks of `hashes` from the tier into
    /// `blocks`; returns how many leading blocks arrived with the right bytes.
    pub(super) async fn onboard(&self, hashes: &[u64], blocks: &[u64], agent_id: &str) -> usize {
        let Some(pool_id) = self.pool_id().await else {
            return 0;
        };
        let Some(mut client) = self.client() else {
            return 0;
        };
        let n = hashes.len().min(blocks.len());
        if n == 0 {
            return 0;
        }
        let present = match client
            .pool_lookup(PoolLookupRequest {
                pool_id,
                hashes: hashes[..n].to_vec(),
            })
            .await
        {
            Ok(r) => r.into_inner().prefix_len as usize,
            Err(e) => {
                self.agent_failed(AgentOp::Lookup, pool_id, &e);
                return 0;
            }
        }
        .min(n);
        if present == 0 {
            return 0;
        }
        for &b in &blocks[..present] {
            if self.engine.clear_block(b).is_err() {
                return 0;
            }
        }
        let out = match client
            .onboard(OnboardRequest {
                pool_id,
                hashes: hashes[..present].to_vec(),
                block_ids: blocks[..present].to_vec(),
                agent_id: agent_id.to_string(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.agent_failed(AgentOp::Onboard, pool_id, &e);
                return 0;
            }
        };
        if !out.degraded_reason.is_empty() {
            tracing::warn!(reason = %out.degraded_reason, "onboard degraded");
        }
        let loaded = (out.loaded_prefix as usize).min(present);
        for i in 0..loaded {
            if !self
                .engine
                .verify_block(blocks[i], hashes[i])
                .unwrap_or(false)
            {
                add(&self.stats.onboard_verify_failures, 1);
                tracing::error!(
                    hash = hashes[i],
                    block = blocks[i],
                    "onboarded block holds the wrong bytes: recomputing from here"
                );
                return i;
            }
        }
        loaded
    }

    /// Offloads `hashes` (resident, pinned by `held`) to the tier.
    pub(super) async fn offload(self: Arc<Self>, held: Held, blocks: Vec<PoolBlock>) {
        if blocks.is_empty() {
            return;
        }
        let Some(pool_id) = self.pool_id().await else {
            return;
        };
        let Some(mut client) = self.client() else {
            return;
        };
        match client.offload(OffloadRequest { pool_id, blocks }).await {
            Ok(r) => {
                let r = r.into_inner();
                add(&self.stats.offload_stored, u64::from(r.stored));
                add(&self.stats.offload_skipped, u64::from(r.skipped));
            }
            Err(e) => self.agent_failed(AgentOp::Offload, pool_id, &e),
        }
        drop(held);
    }
}
