//! The simulated worker's request path: prefix lookup in its own pool,
//! onboard from the cache tier through the agent, queued prefill (see
//! [`gate`](super::gate)), and the decode that paces the output.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;
use tonic::transport::Channel;
use tonic::Code;

use kvtier_prompt::stream::{full_response, StreamWriter, Usage};
use kvtier_prompt::{Api, ApiError, ModelCall, PromptModel};
use kvtier_proto::hashing::{effective_seed, DEFAULT_SEED};
use kvtier_proto::v1::worker_service_client::WorkerServiceClient;
use kvtier_proto::v1::*;

use super::gate::PrefillGate;
use super::prefix_cache::{Held, PrefixCache};
use super::stats::{add, sub, AgentOp, PoolFigures, Stats};
use super::{SimWorkerConfig, SimWorkerError};
use crate::engine::{attach_request, SimEngine};

/// Least time between two attach attempts while the agent is unreachable.
const REATTACH_EVERY: Duration = Duration::from_secs(1);

/// The pool's link to the agent: a lazily connected client and the current
/// attachment (pool id 0: detached).
struct AgentLink {
    client: WorkerServiceClient<Channel>,
    attach: AttachPoolRequest,
    pool_id: AtomicU64,
    last_try: Mutex<Option<Instant>>,
    attaching: tokio::sync::Mutex<()>,
}

/// One simulated worker: its pool, prefix cache, agent link and counters.
pub struct SimWorker {
    config: SimWorkerConfig,
    worker_id: String,
    prompt: PromptModel,
    engine: SimEngine,
    cache: Arc<Mutex<PrefixCache>>,
    agent: Option<AgentLink>,
    /// The GPU: `prefill_slots` prefills at a time, the others waiting in
    /// the order of the scheduling policy.
    gpu: PrefillGate,
    next_id: AtomicU64,
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

/// Whether an agent error means the attachment is gone (agent down or
/// restarted) rather than a refused call.
fn detaches(status: &tonic::Status) -> bool {
    match status.code() {
        Code::FailedPrecondition => status.message().contains("no such pool"),
        // The agent's own UNAVAILABLE answers are about the cache tier.
        Code::Unavailable => !status.message().starts_with("cache tier"),
        Code::Unknown | Code::Cancelled => true,
        _ => false,
    }
}

fn chain(hashes: &[u64], blocks: &[u64], parent: Option<u64>) -> Vec<PoolBlock> {
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

/// Outcome of a request's prefill, carried into its decode.
pub struct Prefilled {
    worker: Arc<SimWorker>,
    /// Response id.
    pub id: String,
    /// The API of the request.
    pub api: Api,
    /// Echoed model name.
    pub model: String,
    /// Output tokens to generate.
    pub osl: u32,
    /// Usage figures (completion_tokens = osl).
    pub usage: Usage,
    /// Full blocks found in the worker's own pool.
    pub hbm_blocks: u64,
    /// Full blocks onboarded from the tier.
    pub onboarded_blocks: u64,
    /// Prompt tokens computed.
    pub computed_tokens: u64,
    /// Time spent waiting for the GPU.
    pub queue_ms: u64,
    /// End the (streamed) answer with a tool call instead of the end of the
    /// turn (a simulation knob: the request's `nvext.sim_stop: "tool_use"`).
    pub tool_call: bool,
    text_seed: u64,
    guard: RequestGuard,
}

impl std::fmt::Debug for Prefilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefilled")
            .field("id", &self.id)
            .field("usage", &self.usage)
            .field("hbm_blocks", &self.hbm_blocks)
            .field("onboarded_blocks", &self.onboarded_blocks)
            .field("computed_tokens", &self.computed_tokens)
            .finish_non_exhaustive()
    }
}

/// A request in flight: its pool references and its share of the load
/// gauges. Dropped before [`RequestGuard::finish`]: the client went away.
struct RequestGuard {
    worker: Arc<SimWorker>,
    held: Option<Held>,
    decode_blocks: u64,
    finished: bool,
}

impl RequestGuard {
    fn new(worker: Arc<SimWorker>) -> Self {
        add(&worker.stats.running_requests, 1);
        let held = Held::new(worker.cache.clone());
        Self {
            worker,
            held: Some(held),
            decode_blocks: 0,
            finished: false,
        }
    }

    fn held(&mut self) -> &mut Held {
        self.held
            .get_or_insert_with(|| Held::new(self.worker.cache.clone()))
    }

    fn start_decode(&mut self, blocks: u64) {
        self.decode_blocks = blocks;
        add(&self.worker.stats.active_decode_blocks, blocks);
    }

    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        drop(self.held.take());
        let s = &self.worker.stats;
        sub(&s.active_decode_blocks, self.decode_blocks);
        sub(&s.running_requests, 1);
        if !self.finished {
            add(&s.cancelled, 1);
        }
    }
}

/// Prompt tokens waiting for or in prefill, taken off the gauge on drop.
struct Queued<'a>(&'a Stats, u64);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        sub(&self.0.queued_prefill_tokens, self.1);
    }
}

const WORDS: [&str; 32] = [
    "the", "cache", "block", "prefix", "token", "agent", "router", "worker", "tier", "warm",
    "value", "hash", "pool", "layer", "model", "call", "tool", "result", "session", "context",
    "reuse", "fetch", "store", "evict", "route", "queue", "decode", "prefill", "stream", "answer",
    "memory", "host",
];

/// The `i`-th output word of a response seeded by `seed` (deterministic:
/// the same prompt gets the same answer on every worker).
pub fn output_word(seed: u64, i: u32) -> &'static str {
    let mut x = seed ^ (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    WORDS[(x % WORDS.len() as u64) as usize]
}

/// The text piece of output token `i` (words separated by spaces).
pub fn output_piece(seed: u64, i: u32) -> String {
    let w = output_word(seed, i);
    if i == 0 {
        w.to_string()
    } else {
        format!(" {w}")
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

    /// The current pool id, attaching first when detached (at most once per
    /// [`REATTACH_EVERY`]); None while the agent is unreachable.
    async fn pool_id(&self) -> Option<u64> {
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
    async fn announce(&self, pool_id: u64) {
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

    fn agent_failed(&self, op: AgentOp, pool_id: u64, e: &tonic::Status) {
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

    fn client(&self) -> Option<WorkerServiceClient<Channel>> {
        self.agent.as_ref().map(|l| l.client.clone())
    }

    /// Reports `blocks` (parents before children, any number of chains) as
    /// STORED, one ReportBlocks per chain.
    async fn report_chains(&self, pool_id: u64, blocks: Vec<PoolBlock>) {
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

    async fn report(&self, pool_id: u64, kind: WorkerEventKind, blocks: Vec<PoolBlock>) {
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

    async fn report_evicted(&self, evicted: &[u64]) {
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
    async fn onboard(&self, hashes: &[u64], blocks: &[u64], agent_id: &str) -> usize {
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
    async fn offload(self: Arc<Self>, held: Held, blocks: Vec<PoolBlock>) {
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

impl Prefilled {
    /// The `x-kvtier-prefill` header value.
    pub fn prefill_header(&self) -> String {
        format!(
            "hbm={},onboarded={},computed_tokens={},queue_ms={}",
            self.hbm_blocks, self.onboarded_blocks, self.computed_tokens, self.queue_ms
        )
    }

    fn token_interval(&self) -> Option<Duration> {
        let rate = self.worker.config.decode_tokens_per_s;
        (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate))
    }

    /// Decodes the whole output, then returns the API's response body.
    pub async fn complete(mut self) -> serde_json::Value {
        if let Some(step) = self.token_interval() {
            tokio::time::sleep(step * self.osl).await;
        }
        let text: String = (0..self.osl)
            .map(|i| output_piece(self.text_seed, i))
            .collect();
        add(&self.worker.stats.completion_tokens, u64::from(self.osl));
        self.guard.finish();
        full_response(self.api, &self.id, &self.model, &text, self.usage)
    }

    /// The SSE body: the API's opening frames, one delta per output token
    /// paced by the decode rate, the closing frames. Dropping the stream
    /// (client gone) stops the decode and releases the request's blocks.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        enum Step {
            Start,
            Token(u32),
            Finish,
            Done,
        }
        let mut writer = StreamWriter::new(self.api, &self.id, &self.model);
        if self.tool_call {
            writer.end_with_tool_call("run_tool", "{}");
        }
        let interval = self.token_interval();
        let started = tokio::time::Instant::now();
        futures::stream::unfold(
            (self, writer, Step::Start),
            move |(mut p, mut writer, step)| async move {
                let frames = match step {
                    Step::Start => {
                        let usage = Usage {
                            completion_tokens: 0,
                            ..p.usage
                        };
                        let next = if p.osl == 0 {
                            Step::Finish
                        } else {
                            Step::Token(0)
                        };
                        (writer.start(usage), next)
                    }
                    Step::Token(i) => {
                        // Token i is due (i + 1) decode steps after the prefill.
                        if let Some(step) = interval {
                            tokio::time::sleep_until(started + step * (i + 1)).await;
                        }
                        add(&p.worker.stats.completion_tokens, 1);
                        let next = if i + 1 >= p.osl {
                            Step::Finish
                        } else {
                            Step::Token(i + 1)
                        };
                        (writer.delta(&output_piece(p.text_seed, i)), next)
                    }
                    Step::Finish => {
                        p.guard.finish();
                        (writer.finish(p.usage), Step::Done)
                    }
                    Step::Done => return None,
                };
                let (frames, next) = frames;
                Some((Ok(Bytes::from(frames.concat())), (p, writer, next)))
            },
        )
    }
}
