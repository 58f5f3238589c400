//! Per-agent state kept by the value policy and the agent ranking it derives.

use crate::agent::{AgentId, CallEnd};
use crate::forecast::{AgentGaps, Discount, Forecaster, Gap};

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

/// `(class, value, last activity, slot)`: ascending = evicted first.
pub(crate) type RankKey = (u8, f64, u64, u32);

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
    /// Rank key as last computed.
    pub key: RankKey,
    /// Whether the key is stale (queued for recomputation).
    pub touched: bool,
    pub last_call: u64,
    /// The agent that spawned this one.
    pub parent: Option<AgentId>,
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
            key: (0, 0.0, 0, 0),
            touched: false,
            last_call: now_ms,
            parent: None,
        }
    }

    /// Learns the gaps that end at a call arriving at `now_ms`.
    pub fn learn_gap(&mut self, forecaster: &mut Forecaster, now_ms: u64) {
        if let Phase::Answered { at, end } = self.phase {
            forecaster.record(
                Gap::AfterAnswer(end),
                now_ms.saturating_sub(at),
                &mut self.gaps,
            );
        }
        if self.seq > 0 {
            forecaster.record(
                Gap::AfterCall,
                now_ms.saturating_sub(self.last_call),
                &mut self.gaps,
            );
        }
    }

    /// Learns that the wait this agent is in never ended in a call (its
    /// lease expired): on the clock of its last answer's ending, and on the
    /// call-to-call clock its last call started.
    pub fn learn_never(&self, forecaster: &mut Forecaster) {
        if let Phase::Answered { end, .. } = self.phase {
            forecaster.record_never(Gap::AfterAnswer(end), &self.gaps);
        }
        if self.seq > 0 {
            forecaster.record_never(Gap::AfterCall, &self.gaps);
        }
    }

    /// Ranking key: `(class, value, last activity)`, ascending = evicted
    /// first. Classes: 0 ordinary, 1 kept warm, 2 pinned. Within class 0 the
    /// value is the agent's weight times the hit density of its next call:
    /// while a call is in flight, on the clock of call-to-next-call gaps; once
    /// answered, on the clock of answer-to-next-call gaps of that ending.
    pub fn rank_key(
        &self,
        forecaster: &Forecaster,
        discount: &Discount,
        now_ms: u64,
        slot: u32,
    ) -> RankKey {
        let last = match self.phase {
            Phase::New { since } | Phase::InFlight { since } => since,
            Phase::Answered { at, .. } => at,
        };
        if self.pinned {
            return (2, self.weight, last, slot);
        }
        if now_ms < self.keep_warm_until {
            return (1, self.weight, last, slot);
        }
        let (gap, since) = match self.phase {
            Phase::New { since } | Phase::InFlight { since } => (Gap::AfterCall, since),
            Phase::Answered { at, end } => (Gap::AfterAnswer(end), at),
        };
        let waited = now_ms.saturating_sub(since);
        let density = forecaster.density(gap, waited, discount, &self.gaps);
        (0, self.weight * density, last, slot)
    }
}
