//! The simulated worker's request path: prefix lookup in its own pool,
//! onboard from the cache tier through the agent ([`agent_link`](super::agent_link)),
//! queued prefill ([`gate`](super::gate)); the answer that follows is
//! [`decode`](super::decode)'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::Code;

use kvtier_prompt::stream::Usage;
use kvtier_prompt::{ApiError, ModelCall, PromptModel};
use kvtier_proto::hashing::{effective_seed, DEFAULT_SEED};
use kvtier_proto::v1::*;

use super::agent_link::{chain, detaches, AgentLink};
use super::decode::{Prefilled, RequestGuard};
use super::gate::PrefillGate;
use super::prefix_cache::{Held, PrefixCache};
use super::stats::{add, sub, AgentOp, PoolFigures, Stats};
use super::{SimWorkerConfig, SimWorkerError};
use crate::engine::{attach_request, SimEngine};

/// One simulated worker: its pool, prefix cache, agent link and counters.
pub struct SimWorker {
    pub(super) config: SimWorkerConfig,
    pub(super) worker_id: String,
    pub(super) prompt: PromptModel,
    pub(super) engine: SimEngine,
    pub(super) cache: Arc<Mutex<PrefixCache>>,
    pub(super) agent: Option<AgentLink>,
    /// The GPU: `prefill_slots` prefills at a time, the others waiting in
    /// the order of the scheduling policy.
    pub(super) gpu: PrefillGate,
    pub(super) next_id: AtomicU64,
    /// Counters and gauges.
    pub stats: Stats,
}

impl std::fmt::Debug for SimWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWorker")
            .field("worker_id", &self.worker_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Prompt tokens waiting for or in prefill, taken off the gauge on drop.
struct Queued<'a>(&'a Stats, u64);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        sub(&self.0.queued_prefill_tokens, self.1);
    }
}

impl SimWorker {
    /// Loads the prompt model, maps the pool and, when an agent is
    /// configured, tries to attach (a failure is logged and retried on later
    /// requests: the worker serves without the tier meanwhile).
    pub async fn start(config: SimWorkerConfig) -> Result<Arc<Self>, SimWorkerError> {
        if config.pool.num_blocks == 0 {
            return Err(SimWorkerError::Invalid("--pool-blocks must be > 0".into()));
        }
        if config.prefill_slots == 0 {
            return Err(SimWorkerError::Invalid(
                "--prefill-slots must be > 0".into(),
            ));
        }
        let hashing = &config.pool.hashing;
        let seed = effective_seed(
            if hashing.seed == 0 {
                DEFAULT_SEED
            } else {
                hashing.seed
            },
            &hashing.salt,
        );
        let prompt = PromptModel::load(
            &config.tokenizer,
            config.chat_template.as_deref(),
            hashing.block_tokens as usize,
            seed,
        )?;
        let agent_url = config.agent.clone().unwrap_or_default();
        let engine = SimEngine::open(
            if agent_url.is_empty() {
                "http://127.0.0.1:1"
            } else {
                &agent_url
            },
            &config.pool,
        )?;
        let agent = if agent_url.is_empty() {
            None
        } else {
            Some(AgentLink {
                client: engine.client(),
                attach: attach_request(&config.pool)?,
                pool_id: AtomicU64::new(0),
                last_try: Mutex::new(None),
                attaching: tokio::sync::Mutex::new(()),
            })
        };
        let mut worker = Self {
            worker_id: config.worker_id.clone(),
            cache: Arc::new(Mutex::new(PrefixCache::new(config.pool.num_blocks))),
            gpu: PrefillGate::new(config.scheduling, config.prefill_slots),
            config,
            prompt,
            engine,
            agent,
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
        };
        if let Some(link) = &worker.agent {
            *link.last_try.lock() = Some(Instant::now());
            match link.client.clone().attach_pool(link.attach.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    link.pool_id.store(r.pool_id, Ordering::Relaxed);
                    worker.announce(r.pool_id).await;
                    if worker.worker_id.is_empty() {
                        worker.worker_id = r.worker_id;
                    } else if worker.worker_id != r.worker_id {
                        tracing::warn!(
                            ours = %worker.worker_id,
                            agent = %r.worker_id,
                            "--worker-id differs from the agent's: routers key KV events by the agent's"
                        );
                    }
                }
                Err(e) => {
                    worker.stats.agent_error(AgentOp::Attach);
                    if matches!(e.code(), Code::FailedPrecondition | Code::InvalidArgument)
                        && !detaches(&e)
                    {
                        // A configuration mismatch never fixes itself.
                        return Err(SimWorkerError::Attach(e.message().to_string()));
                    }
                    tracing::warn!(error = %e.message(), "agent unreachable: serving without the cache tier, retrying");
                }
            }
        }
        if worker.worker_id.is_empty() {
            worker.worker_id = "sim-worker-0".into();
        }
        Ok(Arc::new(worker))
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The served model name.
    pub fn model(&self) -> &str {
        &self.config.pool.hashing.model
    }

    /// Whether the pool is attached to the agent right now.
    pub fn attached(&self) -> bool {
        self.agent
            .as_ref()
            .is_some_and(|l| l.pool_id.load(Ordering::Relaxed) != 0)
    }

    /// Pool occupancy.
    pub fn pool_figures(&self) -> PoolFigures {
        let c = self.cache.lock();
        PoolFigures {
            resident: c.resident() as u64,
            referenced: c.referenced() as u64,
            reserved: c.reserved() as u64,
            free: c.free() as u64,
            attached: self.attached(),
        }
    }

    /// The `GET /metrics` text.
    pub fn metrics_text(&self) -> String {
        self.stats.render(&self.worker_id, self.pool_figures())
    }

    /// Runs a parsed call's prefill: own-pool prefix, onboard, queued compute.
    pub async fn prefill(self: &Arc<Self>, call: ModelCall) -> Result<Prefilled, ApiError> {
        if call.model != self.model() {
            return Err(ApiError::not_found_model(&call.model));
        }
        let tokens = self.prompt.prompt_tokens(&call)?;
        let hashes = self.prompt.block_hashes(&tokens);
        let bt = self.config.pool.hashing.block_tokens as u64;
        let mut guard = RequestGuard::new(self.clone());

        // 1. The worker's own pool.
        let hbm = guard.held().pin_prefix(&hashes).len();
        let rest = &hashes[hbm..];

        // 2. Blocks for everything else (evicting unreferenced LRU blocks).
        let alloc = guard.held().allocate(rest.len());
        self.report_evicted(&alloc.evicted).await;
        let blocks = alloc.blocks;

        // 3. Onboard what the tier holds.
        let agent_id = call.hints.agent_id.clone().unwrap_or_default();
        let onboarded = if rest.is_empty() || !self.config.tier_io {
            0
        } else {
            self.onboard(rest, &blocks, &agent_id).await
        };

        // 4. Compute the rest in a prefill slot, queued by the policy.
        let cached_tokens = (hbm + onboarded) as u64 * bt;
        let prompt_tokens = tokens.len() as u64;
        let computed_tokens = prompt_tokens.saturating_sub(cached_tokens);
        add(&self.stats.queued_prefill_tokens, computed_tokens);
        let queued = Queued(&self.stats, computed_tokens);
        let enqueued = Instant::now();
        let queue_ms;
        {
            let _gpu = self.gpu.acquire(call.hints.priority).await;
            queue_ms = enqueued.elapsed().as_millis() as u64;
            let computed_blocks = &blocks[onboarded..];
            for (&b, &h) in computed_blocks.iter().zip(&rest[onboarded..]) {
                self.engine
                    .compute_block(b, h)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            if self.config.prefill_tokens_per_s > 0.0 && computed_tokens > 0 {
                tokio::time::sleep(Duration::from_secs_f64(
                    computed_tokens as f64 / self.config.prefill_tokens_per_s,
                ))
                .await;
            }
        }
        drop(queued);

        // 5. Everything loaded or computed is now resident: report it, and
        // offload the computed part (write-once) in the background.
        let resident = blocks.len().min(rest.len());
        let mut stored = Vec::with_capacity(resident);
        for (i, &block) in blocks[..resident].iter().enumerate() {
            let depth = hbm + i;
            let parent = depth.checked_sub(1).map(|p| hashes[p]);
            if let Some((b, _new)) = guard.held().commit(hashes[depth], parent, block) {
                stored.push(b);
            }
        }
        let parent = hbm.checked_sub(1).map(|p| hashes[p]);
        let stored_chain = chain(&rest[..stored.len()], &stored, parent);
        let to_offload: Vec<PoolBlock> = stored_chain.iter().skip(onboarded).cloned().collect();
        if let Some(pool_id) = self.pool_id().await {
            self.report(pool_id, WorkerEventKind::Stored, stored_chain)
                .await;
        }
        if !to_offload.is_empty() && self.agent.is_some() && self.config.tier_io {
            let mut held = Held::new(self.cache.clone());
            let offload_hashes: Vec<u64> = to_offload.iter().map(|b| b.hash).collect();
            let pinned = held.pin_each(&offload_hashes);
            // Pinned by this request: all still resident, same blocks.
            let blocks: Vec<PoolBlock> = to_offload
                .into_iter()
                .zip(pinned)
                .map(|(b, (_, block_id))| PoolBlock { block_id, ..b })
                .collect();
            tokio::spawn(self.clone().offload(held, blocks));
        }

        let s = &self.stats;
        add(&s.prompt_tokens, prompt_tokens);
        add(&s.cached_hbm_tokens, hbm as u64 * bt);
        add(&s.cached_tier_tokens, onboarded as u64 * bt);
        add(&s.computed_tokens, computed_tokens);

        let osl = call
            .hints
            .osl
            .or(call.max_tokens)
            .unwrap_or(self.config.default_osl);
        guard.start_decode((prompt_tokens + u64::from(osl)).div_ceil(bt.max(1)));
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Prefilled {
            worker: self.clone(),
            id: format!("sim-{}-{n}", self.worker_id),
            api: call.api,
            model: call.model,
            osl,
            usage: Usage {
                prompt_tokens: prompt_tokens as u32,
                cached_tokens: cached_tokens as u32,
                completion_tokens: osl,
            },
            hbm_blocks: hbm as u64,
            onboarded_blocks: onboarded as u64,
            computed_tokens,
            queue_ms,
            tool_call: false,
            text_seed: hashes
                .last()
                .copied()
                .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_64(&tokens_bytes(&tokens))),
            guard,
        })
    }
}

fn tokens_bytes(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}
