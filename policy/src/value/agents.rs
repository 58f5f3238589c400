//! Per-agent state kept by the value policy and the agent ranking it derives.

use crate::agent::CallEnd;
use crate::forecast::{AgentGaps, Forecaster};

use super::ValueConfig;

/// Where an agent is in its call cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Registered, no call yet.
    New { since: u64 },
    /// A call arrived and has not been answered.
    InFlight { since: u64 },
    /// The latest call was answered at `at` and ended with `end`.
    Answered { at: u64, end: CallEnd },
}

#[derive(Debug, Clone)]
pub(crate) struct AgentState<K> {
    /// Value multiplier from priority and latency sensitivity.
    pub weight: f64,
    /// Call counter; block refs carry the number of the call that last named them.
    pub seq: u32,
    /// Keys of the latest call's context, in prefix order.
    pub context: Vec<K>,
    pub phase: Phase,
    /// Keep-warm deadline (ms), 0 when none.
    pub keep_warm_until: u64,
    pub pinned: bool,
    pub gaps: AgentGaps,
    /// Position in the current ranking (`u32::MAX` when not ranked yet).
    pub rank_pos: u32,
}

impl<K> AgentState<K> {
    pub fn new(weight: f64, now_ms: u64) -> Self {
        Self {
            weight,
            seq: 0,
            context: Vec::new(),
            phase: Phase::New { since: now_ms },
            keep_warm_until: 0,
            pinned: false,
            gaps: AgentGaps::default(),
            rank_pos: u32::MAX,
        }
    }

    /// Learns the gap that ends at a call arriving at `now_ms`.
    pub fn learn_gap(&mut self, forecaster: &mut Forecaster, now_ms: u64) {
        match self.phase {
            Phase::Answered { at, end } => {
                forecaster.record(end, now_ms.saturating_sub(at), &mut self.gaps)
            }
            Phase::InFlight { since } => forecaster.record(
                CallEnd::Unknown,
                now_ms.saturating_sub(since),
                &mut self.gaps,
            ),
            Phase::New { .. } => {}
        }
    }

    /// Ranking key: `(class, value)`, ascending = evicted first. Classes: 0
    /// ordinary, 1 kept warm, 2 pinned. Within class 0 the value is the agent's
    /// weight times the hit density of its next call.
    pub fn rank_key(&self, forecaster: &Forecaster, cfg: &ValueConfig, now_ms: u64) -> (u8, f64) {
        if self.pinned {
            return (2, self.weight);
        }
        if now_ms < self.keep_warm_until {
            return (1, self.weight);
        }
        let (since, end) = match self.phase {
            Phase::InFlight { since } if now_ms.saturating_sub(since) < cfg.inflight_timeout_ms => {
                return (0, f64::MAX);
            }
            Phase::InFlight { since } | Phase::New { since } => (since, CallEnd::Unknown),
            Phase::Answered { at, end } => (at, end),
        };
        let waited = now_ms.saturating_sub(since);
        let density = forecaster.density(end, waited, cfg.horizon_ms, &self.gaps);
        (0, self.weight * density)
    }
}
