//! Online forecast of when an agent calls next.
//!
//! The forecaster learns, for each kind of call ending ([`CallEnd`]), the
//! distribution of the gap between a call being answered and the same agent's
//! next call (and, for calls still in flight, of the gap from call to call),
//! as histograms over log-spaced bins. The population's distribution is also
//! kept split by which third of it the agent's previous gap of that kind fell
//! in: an agent that answered fast last time tends to answer fast again. Each
//! agent keeps its own histogram (older gaps fading); the two are blended, the
//! agent's own weighing more as it shows more gaps.
//!
//! From the blended gap density `f`, survival `S(x) = P(gap > x)`, and the
//! time already waited `w`, the policy asks for a *hit density*: the chance
//! that the next call comes before the blocks would be evicted anyway, per
//! unit of cache time spent waiting for it. The eviction clock is taken as
//! exponential with mean `T` (the cache's turnover time, see
//! [`crate::ValueConfig::adaptive_horizon`]):
//!
//! ```text
//!   density(w) = ∫_w^∞ f(x) e^{-(x-w)/T} dx  /  ∫_w^∞ S(x) e^{-(x-w)/T} dx
//! ```
//!
//! (Beckmann et al.'s LHD, applied to agents rather than objects). An agent
//! that usually answers fast but is overdue sees its density fall as it waits,
//! at the rate its own and the population's gap distribution say: no fixed
//! "overdue" rule.
//!
//! Agents that go silent and end by lease expiry teach the population that a
//! wait of that kind may never end in a call ([`Forecaster::record_never`]).
//! With `p` the population's share of such waits (an agent's own history
//! cannot know it: it holds only the waits the agent came back from), the
//! blended finite distribution (hits `h(w)`, occupancy `o(w)` as above) is
//! mixed with a point at an infinite gap, which adds no hit and `T` of
//! occupancy: `density(w) = (1-p)·h(w) / ((1-p)·o(w) + p·T)`, with `h`, `o`
//! normalised so that `o(w)` is the survival-weighted remaining wait. Early in
//! a wait the finite part dominates; once an agent is overdue (its remaining
//! finite mass small) the `p·T` term does, and its density falls toward that
//! of an ended agent before its lease runs out.

mod histogram;

pub use histogram::{Discount, Edges, GapHistogram, BINS};

use crate::agent::CallEnd;

/// Gaps a conditional population distribution needs before it is used.
const MIN_CONDITIONED: f64 = 20.0;

/// Which gap a distribution describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// From a call's answer, which ended this way, to the agent's next call.
    AfterAnswer(CallEnd),
    /// From a call's arrival to the agent's next call (used while the call
    /// is in flight, when the ending is not known yet).
    AfterCall,
}

impl Gap {
    const COUNT: usize = CallEnd::COUNT + 1;

    fn index(self) -> usize {
        match self {
            Gap::AfterAnswer(end) => end.index(),
            Gap::AfterCall => CallEnd::COUNT,
        }
    }
}

/// Population-wide gap distributions, one per kind of call ending, plus the
/// knobs of the blend with each agent's own history.
#[derive(Debug, Clone)]
pub struct Forecaster {
    edges: Edges,
    global: [GapHistogram; Gap::COUNT],
    /// Per kind, by which third of the population distribution the agent's
    /// previous gap of that kind fell in (3: no previous gap). Agents that
    /// answered fast last time tend to answer fast again.
    by_previous: [[GapHistogram; 4]; Gap::COUNT],
    /// Weight of the population distribution against an agent's own gaps:
    /// an agent with this many recorded gaps of a kind counts as much as the
    /// population for that kind.
    pub prior_weight: f64,
    /// Each new gap of an agent multiplies the weight of its older gaps of
    /// that kind by this (1.0 remembers all equally).
    pub agent_memory: f32,
}

/// Per-agent gap history, kept by the policy next to each agent.
#[derive(Debug, Clone, Default)]
pub struct AgentGaps {
    hist: [GapHistogram; Gap::COUNT],
    /// Per kind, the tercile of the agent's previous gap (see `by_previous`).
    previous: [Option<u8>; Gap::COUNT],
}

impl Default for Forecaster {
    fn default() -> Self {
        Self::new(2.0, 0.95)
    }
}

impl Forecaster {
    /// A forecaster with a weak built-in prior (one pseudo-gap per kind: 20 s
    /// after a tool call, 5 min after an end of turn, 1 min otherwise) so that
    /// it answers sensibly before it has seen anything.
    pub fn new(prior_weight: f64, agent_memory: f32) -> Self {
        let edges = Edges::default();
        let mut global: [GapHistogram; Gap::COUNT] = Default::default();
        for (gap, ms) in [
            (Gap::AfterAnswer(CallEnd::Unknown), 60_000),
            (Gap::AfterAnswer(CallEnd::ToolCall), 20_000),
            (Gap::AfterAnswer(CallEnd::EndOfTurn), 300_000),
            (Gap::AfterCall, 30_000),
        ] {
            global[gap.index()].record(&edges, ms, 1.0);
        }
        Self {
            edges,
            global,
            by_previous: Default::default(),
            prior_weight,
            agent_memory,
        }
    }

    /// Records an observed gap of kind `gap` of one agent.
    pub fn record(&mut self, gap: Gap, gap_ms: u64, agent: &mut AgentGaps) {
        let i = gap.index();
        let prev = agent.previous[i].map_or(3, usize::from);
        self.by_previous[i][prev].record(&self.edges, gap_ms, 1.0);
        agent.previous[i] = Some(self.global[i].tercile(&self.edges, gap_ms) as u8);
        self.global[gap.index()].record(&self.edges, gap_ms, 1.0);
        let h = &mut agent.hist[gap.index()];
        h.decay(self.agent_memory);
        h.record(&self.edges, gap_ms, 1.0);
    }

    /// Records that an agent waited on the clock of `gap` and never called
    /// again (it went silent until its lease expired): mass at an infinite
    /// gap in the population's distributions. Agents that only ever end
    /// explicitly never add any, so their forecasts are unchanged.
    pub fn record_never(&mut self, gap: Gap, agent: &AgentGaps) {
        let i = gap.index();
        let prev = agent.previous[i].map_or(3, usize::from);
        self.by_previous[i][prev].record_never(1.0);
        self.global[i].record_never(1.0);
    }

    /// Hit density of an agent that has waited `waited_ms` on the clock of
    /// `gap` (since its last answer, or since its last call while in flight),
    /// with an eviction clock of mean `d.mean_ms()`: the chance of a call
    /// before eviction per ms of cache time spent waiting for it. Larger means
    /// more worth keeping. Always finite and > 0.
    pub fn density(&self, gap: Gap, waited_ms: u64, d: &Discount, agent: &AgentGaps) -> f64 {
        let w = waited_ms as f64;
        let i = gap.index();
        let cond = &self.by_previous[i][agent.previous[i].map_or(3, usize::from)];
        let population = if cond.total() >= MIN_CONDITIONED {
            cond
        } else {
            &self.global[i]
        };
        let own = &agent.hist[i];
        let (gh, go) = population.discounted(&self.edges, w, d);
        let (lh, lo) = own.discounted(&self.edges, w, d);
        // Blend the normalised distributions of finite gaps: the agent's own
        // history weighs its (decayed) count of gaps, the population
        // `prior_weight`.
        let (gt, lt) = (population.total().max(1e-9), own.total());
        let wl = lt / (lt + self.prior_weight);
        let (ng, nl) = ((1.0 - wl) / gt, if lt > 0.0 { wl / lt } else { 0.0 });
        // The chance that this wait never ends in a call comes from the
        // population alone: an agent's own history holds only the waits it
        // came back from.
        let never = population.never() / population.mass().max(1e-9);
        let hits = (1.0 - never) * (ng * gh + nl * lh);
        let occupancy = (1.0 - never) * (ng * go + nl * lo) + never * d.mean_ms();
        // Waited past everything ever observed: worth less the longer it waits.
        let floor = 1e-12 / (1.0 + w);
        if hits <= 0.0 || occupancy <= 1e-9 {
            return floor;
        }
        (hits / occupancy).max(floor)
    }

    /// The discount table for an eviction clock of mean `horizon_ms`.
    pub fn discount(&self, horizon_ms: u64) -> Discount {
        Discount::new(&self.edges, horizon_ms)
    }

    /// The bin edges in use.
    pub fn edges(&self) -> &Edges {
        &self.edges
    }
}

#[cfg(test)]
mod tests;
