//! One model's placement: the index's answer, the workers' load and health,
//! the agent's affinity, and the cost model, put together.
//!
//! This is the part the gRPC `Route` and the HTTP front share; it does no I/O.

use std::sync::Arc;

use parking_lot::Mutex;

use kvtier_proto::hashing::BlockHasher;

use crate::admission::{AdmissionConfig, AdmissionQueue};
use crate::cost::{self, CallProfile, CostBreakdown, CostWeights, Decision, WorkerView};
use crate::index::{PrefixMatches, SharedIndex, WorkerOverlap, WorkerSlot};
use crate::load::{AffinityMap, CallTicket, Load, LoadBook};

/// Largest prefix a query may name, in blocks (as the cache server's RPCs).
pub const MAX_QUERY_BLOCKS: usize = 65_536;

/// Whether a worker takes traffic; implemented by the event sources (a
/// worker whose event stream is down is unavailable) and told by the HTTP
/// proxy when a worker's endpoint refuses connections.
pub trait WorkerHealth: Send + Sync + 'static {
    /// The worker takes traffic now.
    fn is_available(&self, worker_id: &str) -> bool;
    /// The worker's endpoint failed (connection refused, reset before any byte).
    fn mark_unreachable(&self, worker_id: &str, reason: &str);
    /// Last event id applied from the worker's agent (0: none yet).
    fn last_event_id(&self, _worker_id: &str) -> u64 {
        0
    }
    /// [`WorkerHealth::is_available`] of each worker, in order (one look at
    /// the shared state for a whole routing decision where the implementation allows).
    fn availability(&self, worker_ids: &[&str]) -> Vec<bool> {
        worker_ids.iter().map(|id| self.is_available(id)).collect()
    }
}

/// A worker of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEndpoint {
    /// Its id, as its agent names it in events.
    pub worker_id: String,
    /// Base URL of its OpenAI/Anthropic-compatible HTTP server.
    pub http_base: String,
    /// Its kvtier-agent's gRPC URL.
    pub agent_url: String,
}

/// How the router picks a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingMode {
    /// The cost model over the index, load and hints (the default).
    #[default]
    Cost,
    /// The next available worker in turn, ignoring locality and load: the
    /// baseline a cache-unaware balancer gives.
    RoundRobin,
}

/// Hints of one call as the router uses them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteHints {
    /// LLM agent making the call.
    pub agent_id: Option<String>,
    /// -8..=8.
    pub priority: i32,
    /// 0.0..=1.0.
    pub latency_sensitivity: f32,
    /// Expected output tokens.
    pub osl: Option<u32>,
}

/// Errors of routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No worker of the model takes traffic.
    #[error(
        "no worker of model {model:?} is available ({workers} configured, all down or unreachable)"
    )]
    NoWorker {
        /// The model.
        model: String,
        /// Workers configured.
        workers: usize,
    },
    /// The prefix is too long.
    #[error("the prefix has {0} blocks; at most {MAX_QUERY_BLOCKS} are accepted")]
    TooLong(usize),
}

/// One worker's part of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerChoice {
    /// Index of the worker in [`ModelRouter::workers`].
    pub worker: usize,
    /// Its overlap with the prefix.
    pub overlap: WorkerOverlap,
    /// Its cost.
    pub cost: CostBreakdown,
    /// Over the bounded-load limit.
    pub overloaded: bool,
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// Index of the chosen worker in [`ModelRouter::workers`].
    pub worker: usize,
    /// Why (a [`cost::ChoiceReason`] label).
    pub reason: &'static str,
    /// Every available worker, cheapest first.
    pub ranked: Vec<WorkerChoice>,
    /// The index's answer.
    pub matches: PrefixMatches,
}

impl Routed {
    /// The chosen worker's evaluation.
    pub fn chosen(&self) -> &WorkerChoice {
        // `ranked` always holds the chosen worker (choose() picks from it).
        self.ranked
            .iter()
            .find(|c| c.worker == self.worker)
            .unwrap_or(&self.ranked[0])
    }
}

/// Placement state of one model.
pub struct ModelRouter {
    model: String,
    hasher: BlockHasher,
    index: SharedIndex,
    workers: Vec<(WorkerEndpoint, WorkerSlot)>,
    health: Arc<dyn WorkerHealth>,
    load: LoadBook,
    affinity: Mutex<AffinityMap>,
    weights: CostWeights,
    mode: RoutingMode,
    next: std::sync::atomic::AtomicUsize,
    admission: Option<AdmissionQueue>,
}

impl std::fmt::Debug for ModelRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRouter")
            .field("model", &self.model)
            .field("workers", &self.workers)
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

impl ModelRouter {
    /// A router for `model` over `workers`, registering them in `index`.
    pub fn new(
        model: &str,
        hasher: BlockHasher,
        index: SharedIndex,
        workers: Vec<WorkerEndpoint>,
        health: Arc<dyn WorkerHealth>,
        load: LoadBook,
        weights: CostWeights,
    ) -> Self {
        let workers = {
            let mut guard = index.write();
            workers
                .into_iter()
                .map(|w| {
                    let slot = guard.add_worker(&w.worker_id);
                    (w, slot)
                })
                .collect()
        };
        Self {
            model: model.to_string(),
            hasher,
            index,
            workers,
            health,
            load,
            affinity: Mutex::new(AffinityMap::new(100_000)),
            weights,
            mode: RoutingMode::Cost,
            next: std::sync::atomic::AtomicUsize::new(0),
            admission: None,
        }
    }

    /// Queues calls at the router while every worker is busy (HTTP front).
    pub fn with_admission(mut self, config: AdmissionConfig) -> Self {
        let ids = self
            .workers
            .iter()
            .map(|(w, _)| w.worker_id.clone())
            .collect();
        self.admission = Some(AdmissionQueue::new(
            config,
            self.load.clone(),
            self.health.clone(),
            ids,
        ));
        self
    }

    /// The admission queue, when calls queue at the router.
    pub fn admission(&self) -> Option<&AdmissionQueue> {
        self.admission.as_ref()
    }

    /// Picks workers by `mode` instead of the cost model.
    pub fn with_mode(mut self, mode: RoutingMode) -> Self {
        self.mode = mode;
        self
    }

    /// The model served.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model's block hasher (namespace seed folded in).
    pub fn hasher(&self) -> &BlockHasher {
        &self.hasher
    }

    /// The workers, in configuration order.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerEndpoint> {
        self.workers.iter().map(|(w, _)| w)
    }

    /// Worker `i`.
    pub fn worker(&self, i: usize) -> &WorkerEndpoint {
        &self.workers[i].0
    }

    /// The index.
    pub fn index(&self) -> &SharedIndex {
        &self.index
    }

    /// Health of the workers.
    pub fn health(&self) -> &Arc<dyn WorkerHealth> {
        &self.health
    }

    /// The load book.
    pub fn load_book(&self) -> &LoadBook {
        &self.load
    }

    /// The load of worker `i`.
    pub fn load(&self, i: usize) -> Load {
        self.load.load(&self.workers[i].0.worker_id)
    }

    /// The index's answer for a prefix, one overlap per worker in
    /// configuration order.
    pub fn matches(
        &self,
        hashes: &[u64],
    ) -> Result<(PrefixMatches, Vec<WorkerOverlap>), RouteError> {
        if hashes.len() > MAX_QUERY_BLOCKS {
            return Err(RouteError::TooLong(hashes.len()));
        }
        let matches = self.index.read().find_matches(hashes);
        // `matches.workers` is in slot order, one entry per registered slot.
        let per_worker = self
            .workers
            .iter()
            .map(|(_, slot)| {
                matches
                    .workers
                    .get(*slot as usize)
                    .copied()
                    .unwrap_or(WorkerOverlap {
                        slot: *slot,
                        ..WorkerOverlap::default()
                    })
            })
            .collect();
        Ok((matches, per_worker))
    }

    /// The workers' ids, in order.
    pub fn worker_ids(&self) -> Vec<&str> {
        self.workers
            .iter()
            .map(|(w, _)| w.worker_id.as_str())
            .collect()
    }

    /// Chooses a worker for a call whose full blocks hash to `hashes` and
    /// whose prompt has `prompt_tokens` tokens.
    pub fn route(
        &self,
        hashes: &[u64],
        prompt_tokens: u64,
        hints: &RouteHints,
    ) -> Result<Routed, RouteError> {
        let (matches, overlaps) = self.matches(hashes)?;
        let sticky = hints
            .agent_id
            .as_deref()
            .and_then(|a| self.affinity.lock().get(a).map(str::to_string));
        let ids = self.worker_ids();
        let loads = self.load.loads(&ids);
        let available = self.health.availability(&ids);
        let views: Vec<WorkerView> = self
            .workers
            .iter()
            .zip(&overlaps)
            .zip(loads.iter().zip(&available))
            .map(|(((w, _), o), (load, &available))| WorkerView {
                hbm_blocks: o.hbm_blocks,
                host_blocks: o.host_blocks,
                disk_blocks: o.disk_blocks,
                queued_prefill_tokens: load.queued_prefill_tokens,
                active_decode_blocks: load.active_decode_blocks,
                running_requests: load.running_requests,
                sticky: sticky.as_deref() == Some(w.worker_id.as_str()),
                available,
            })
            .collect();
        let call = CallProfile {
            prompt_tokens: prompt_tokens.max(hashes.len() as u64 * self.block_tokens()),
            block_tokens: self.block_tokens(),
            priority: hints.priority,
            latency_sensitivity: hints.latency_sensitivity,
        };
        let decision = match self.mode {
            RoutingMode::Cost => cost::choose(&self.weights, &call, &views),
            RoutingMode::RoundRobin => self.round_robin(&call, &views),
        };
        let Some(Decision {
            chosen,
            reason,
            ranked,
        }) = decision
        else {
            return Err(RouteError::NoWorker {
                model: self.model.clone(),
                workers: self.workers.len(),
            });
        };
        Ok(Routed {
            worker: chosen,
            reason: reason.as_str(),
            ranked: ranked
                .into_iter()
                .map(|c| WorkerChoice {
                    worker: c.index,
                    overlap: overlaps[c.index],
                    cost: c.cost,
                    overloaded: c.overloaded,
                })
                .collect(),
            matches,
        })
    }

    /// Books a routed call on its worker and remembers the agent's worker;
    /// the booking lasts as long as the ticket.
    pub fn commit(&self, routed: &Routed, hints: &RouteHints, prompt_tokens: u64) -> CallTicket {
        let worker = &self.workers[routed.worker].0.worker_id;
        if let Some(agent) = &hints.agent_id {
            self.affinity.lock().set(agent, worker);
        }
        let block_tokens = self.block_tokens();
        let output = u64::from(hints.osl.unwrap_or(0));
        let blocks = (prompt_tokens + output).div_ceil(block_tokens);
        let prefill = routed.chosen().cost.prefill_tokens as u64;
        self.load.book(worker, prefill, blocks)
    }

    /// Remembers that the agent's call went to worker `i` (gRPC `Route` with `commit`).
    pub fn remember_affinity(&self, agent: &str, i: usize) {
        self.affinity
            .lock()
            .set(agent, &self.workers[i].0.worker_id);
    }

    /// Moves an agent's affinity (e.g. after a failed worker).
    pub fn forget_affinity(&self, agent: &str, worker: &str) {
        let mut map = self.affinity.lock();
        if map.get(agent) == Some(worker) {
            map.set(agent, "");
        }
    }

    /// The next available worker in turn; `ranked` still carries every
    /// available worker's cost, for the response and the metrics.
    fn round_robin(&self, call: &CallProfile, views: &[WorkerView]) -> Option<Decision> {
        let mut decision = cost::choose(&self.weights, call, views)?;
        let n = views.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chosen = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| views[i].available)?;
        decision.chosen = chosen;
        decision.reason = cost::ChoiceReason::RoundRobin;
        Some(decision)
    }

    fn block_tokens(&self) -> u64 {
        self.hasher.block_tokens() as u64
    }
}

impl WorkerHealth for crate::sources::WorkerStates {
    fn is_available(&self, worker_id: &str) -> bool {
        crate::sources::WorkerStates::is_available(self, worker_id)
    }

    fn mark_unreachable(&self, worker_id: &str, reason: &str) {
        crate::sources::WorkerStates::mark_unreachable(self, worker_id, reason);
    }

    fn last_event_id(&self, worker_id: &str) -> u64 {
        self.get(worker_id).map_or(0, |s| s.last_event_id)
    }

    fn availability(&self, worker_ids: &[&str]) -> Vec<bool> {
        crate::sources::WorkerStates::availability(self, worker_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::LocalityIndex;

    struct AllUp(Vec<&'static str>);

    impl WorkerHealth for AllUp {
        fn is_available(&self, worker_id: &str) -> bool {
            !self.0.contains(&worker_id)
        }
        fn mark_unreachable(&self, _: &str, _: &str) {}
    }

    fn router(down: Vec<&'static str>, mode: RoutingMode) -> ModelRouter {
        let index: SharedIndex = crate::index::shared(LocalityIndex::new());
        let workers = (0..3)
            .map(|i| WorkerEndpoint {
                worker_id: format!("w{i}"),
                http_base: format!("http://127.0.0.1:{}", 9000 + i),
                agent_url: String::new(),
            })
            .collect();
        ModelRouter::new(
            "m",
            BlockHasher::new(16, 1337),
            index,
            workers,
            Arc::new(AllUp(down)),
            LoadBook::new(std::time::Duration::from_secs(1)),
            CostWeights::default(),
        )
        .with_mode(mode)
    }

    #[test]
    fn the_cost_mode_follows_the_index() {
        let r = router(vec![], RoutingMode::Cost);
        let hashes = r.hasher().sequence_hashes(&(0..160).collect::<Vec<u32>>());
        let slot = r.index().read().worker_slot("w2").expect("registered");
        r.index().write().worker_stored(slot, None, &hashes);
        for _ in 0..3 {
            let routed = r
                .route(&hashes, 160, &RouteHints::default())
                .expect("routed");
            assert_eq!(r.worker(routed.worker).worker_id, "w2");
            assert_eq!(routed.chosen().overlap.hbm_blocks, 10);
            assert_eq!(routed.reason, "best_cost");
        }
    }

    #[test]
    fn round_robin_skips_unavailable_workers_and_ignores_locality() {
        let r = router(vec!["w1"], RoutingMode::RoundRobin);
        let hashes = r.hasher().sequence_hashes(&(0..160).collect::<Vec<u32>>());
        let slot = r.index().read().worker_slot("w2").expect("registered");
        r.index().write().worker_stored(slot, None, &hashes);
        let picks: Vec<String> = (0..4)
            .map(|_| {
                let routed = r
                    .route(&hashes, 160, &RouteHints::default())
                    .expect("routed");
                assert_eq!(routed.reason, "round_robin");
                r.worker(routed.worker).worker_id.clone()
            })
            .collect();
        assert_eq!(picks, ["w0", "w2", "w2", "w0"]);
    }

    #[test]
    fn the_agents_previous_worker_is_sticky_and_no_worker_is_an_error() {
        let r = router(vec![], RoutingMode::Cost);
        let hints = RouteHints {
            agent_id: Some("a".into()),
            ..RouteHints::default()
        };
        let hashes = r.hasher().sequence_hashes(&(0..64).collect::<Vec<u32>>());
        let first = r.route(&hashes, 64, &hints).expect("routed");
        drop(r.commit(&first, &hints, 64));
        for _ in 0..3 {
            let next = r.route(&hashes, 64, &hints).expect("routed");
            assert_eq!(next.worker, first.worker);
            assert!(next.chosen().cost.affinity < 0.0);
        }
        let none = router(vec!["w0", "w1", "w2"], RoutingMode::Cost);
        assert!(matches!(
            none.route(&hashes, 64, &hints),
            Err(RouteError::NoWorker { workers: 3, .. })
        ));
    }
}
