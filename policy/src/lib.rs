//! Pure eviction policy for kvtier: which block leaves a tier first.
//!
//! Nothing in this crate does I/O or reads a clock: time is passed in as
//! milliseconds on a caller-chosen monotonic clock. The cache server drives a
//! policy from its tiered store; `kvtier-bench replay` drives the very same code
//! from trace files, so what the benchmark measures is what the server runs.
//!
//! # Layout
//! - [`EvictionPolicy`]: the seam between storage and policy (one per store,
//!   tracking every resident block and the tier it sits in).
//! - [`lru`]: the baseline, least recently used first.
//! - [`value`]: the value- and lifecycle-aware policy kvtier runs.
//! - [`forecast`]: the online forecast of each agent's next call.
//! - [`prefetch`]: which lower-tier blocks to move up ahead of their agents'
//!   forecast calls, within a budget, displacing only lower-valued blocks.
//! - [`lifecycle`]: the agent registry (registration, leases, pin quotas)
//!   whose outcomes the server forwards to the policy.
//! - [`agent`]: agent-level types shared by the two.
//! - [`Tier`]: the tier levels a block can reside in.
//!
//! # Wiring agents into a store
//! The server validates lifecycle calls with an [`AgentRegistry`] and then
//! forwards each accepted change to the store's policy, through the default
//! no-op methods of [`EvictionPolicy`] (policies without lifecycle awareness,
//! such as [`Lru`], ignore them):
//!
//! | gRPC handler | registry | then policy |
//! |---|---|---|
//! | `RegisterAgent` | [`AgentRegistry::register`] | [`EvictionPolicy::on_agent_register`] |
//! | `Hint` (call arrived, blocks known) | [`AgentRegistry::call`] | [`EvictionPolicy::on_agent_call`] |
//! | `Hint` (call answered) | [`AgentRegistry::answered`] | [`EvictionPolicy::on_agent_answered`] |
//! | `EndAgent` | [`AgentRegistry::end`] → ended ids | [`EvictionPolicy::on_agent_end`] for each |
//! | periodic tick | [`AgentRegistry::expire`] → ended ids | [`EvictionPolicy::on_agent_expired`] for each |
//!
//! Send `on_agent_call` after the call's blocks were inserted (keys not
//! resident are ignored); a hint that carries both the blocks and the ending
//! is an `on_agent_call` followed by an `on_agent_answered`.

pub mod agent;
pub mod forecast;
pub mod lifecycle;
pub mod lru;
pub mod prefetch;
pub mod value;

use std::hash::Hash;

pub use agent::{AgentId, AgentSpec, Answer, CallEnd};
pub use lifecycle::{AgentRegistry, LifecycleError};
pub use lru::Lru;
pub use prefetch::{BlockValue, Plan};
pub use value::{ValueConfig, ValuePolicy};

/// A storage tier, highest (fastest) first. Ordering follows speed: `Gpu < Host < Disk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// T0: GPU HBM on the cache-server host.
    Gpu = 0,
    /// T1: host memory (pinned when CUDA is present).
    Host = 1,
    /// T2: NVMe through RocksDB.
    Disk = 2,
}

impl Tier {
    /// All tiers, highest first.
    pub const ALL: [Tier; 3] = [Tier::Gpu, Tier::Host, Tier::Disk];

    /// Index usable for per-tier arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The next tier down, if any.
    pub fn below(self) -> Option<Tier> {
        match self {
            Tier::Gpu => Some(Tier::Host),
            Tier::Host => Some(Tier::Disk),
            Tier::Disk => None,
        }
    }

    /// Lower-case name used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gpu => "gpu",
            Tier::Host => "host",
            Tier::Disk => "disk",
        }
    }
}

/// What the store knows about a block when it becomes resident: its place in
/// the prefix tree and its size. These are the block's static value inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo<K> {
    /// Sequence hash of the previous block of the prefix, `None` for a root.
    pub parent: Option<K>,
    /// Payload size in bytes.
    pub bytes: u32,
}

/// The seam between a tiered store and its eviction order.
///
/// One instance tracks all resident blocks of a store. The store reports every
/// residency change; the policy answers which block of a given tier should
/// leave it first. The store then moves that block down a tier (calling
/// [`EvictionPolicy::on_move`]) or drops it (calling [`EvictionPolicy::on_remove`]).
pub trait EvictionPolicy<K: Copy + Eq + Hash>: Send {
    /// Short name for logs and benchmark tables.
    fn name(&self) -> &'static str;

    /// `key` became resident in `tier` (a new block).
    fn on_insert(&mut self, key: K, tier: Tier, info: BlockInfo<K>, now_ms: u64);

    /// `key` was read (a hit in whatever tier it is in).
    fn on_hit(&mut self, key: K, now_ms: u64);

    /// `key` moved to another tier (promotion or demotion); it keeps its history.
    fn on_move(&mut self, key: K, to: Tier, now_ms: u64);

    /// `key` is no longer resident anywhere.
    fn on_remove(&mut self, key: K);

    /// The block of `tier` that should leave it first, or `None` when the tier
    /// holds no block. Does not change state: the store reports what it did.
    fn victim(&mut self, tier: Tier, now_ms: u64) -> Option<K>;

    /// Number of blocks tracked in `tier`.
    fn len(&self, tier: Tier) -> usize;

    /// Whether `tier` tracks no block.
    fn is_empty(&self, tier: Tier) -> bool {
        self.len(tier) == 0
    }

    /// An agent registered (or re-registered with new parameters).
    fn on_agent_register(&mut self, _agent: AgentId, _spec: &AgentSpec, _now_ms: u64) {}

    /// A call of `agent` arrived; `blocks` is its context in prefix order
    /// (blocks read and written). Its latest context replaces the previous one.
    fn on_agent_call(&mut self, _agent: AgentId, _blocks: &[K], _now_ms: u64) {}

    /// The latest call of `agent` was answered.
    fn on_agent_answered(&mut self, _agent: AgentId, _answer: &Answer, _now_ms: u64) {}

    /// `agent` ended (explicitly or by lease expiry). Blocks only it held fall
    /// to the bottom of the eviction order.
    fn on_agent_end(&mut self, _agent: AgentId, _now_ms: u64) {}

    /// `agent` ended because its lease expired: it was silent for its whole
    /// lease and never called again. A policy that forecasts calls learns from
    /// it that a wait may never end in a call; the default is [`Self::on_agent_end`].
    fn on_agent_expired(&mut self, agent: AgentId, now_ms: u64) {
        self.on_agent_end(agent, now_ms);
    }

    /// Prefetch: up to `limit` blocks of `tier` most worth moving up, most
    /// valuable first, each with its forecast value (see [`prefetch`]).
    /// `horizon_ms`: value agents with an eviction clock of that mean (a
    /// prefetch's lead time) instead of the policy's own ranking. The
    /// default (a policy without forecasts, such as [`Lru`]) names none, so
    /// a prefetcher over it never moves anything.
    fn promotion_candidates(
        &mut self,
        _tier: Tier,
        _limit: usize,
        _horizon_ms: Option<u64>,
        _now_ms: u64,
    ) -> Vec<(K, BlockValue)> {
        Vec::new()
    }

    /// Prefetch: up to `limit` blocks of `tier` in eviction order, each with
    /// its forecast value, as [`EvictionPolicy::promotion_candidates`] values
    /// them. The default names none (nothing is displaced).
    fn eviction_candidates(
        &mut self,
        _tier: Tier,
        _limit: usize,
        _horizon_ms: Option<u64>,
        _now_ms: u64,
    ) -> Vec<(K, BlockValue)> {
        Vec::new()
    }

    /// Prefetch: whether `key` is still worth moving up ahead of a call (a
    /// live agent's context block), asked again just before a planned move
    /// lands: an agent that ended meanwhile cancels the move. Default false.
    fn wants_prefetch(&self, _key: K) -> bool {
        false
    }
}
