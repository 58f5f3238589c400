//! Online forecast of when an agent calls next.
//!
//! The forecaster learns, for each kind of call ending ([`CallEnd`]), the
//! distribution of the gap between a call being answered and the same agent's
//! next call, as a histogram over log-spaced bins. Each agent also keeps its own
//! histogram; the two are blended, the agent's own weighing more as it shows
//! more gaps. From the blended survival function `S(x) = P(gap > x)` and the
//! time already waited `w`, the policy asks for a *hit density*: the chance that
//! the next call comes within a horizon `h`, per unit of cache time spent
//! waiting for it,
//!
//! ```text
//!   density(w, h) = (S(w) - S(w + h)) / ∫_w^{w+h} S(x) dx
//! ```
//!
//! (Beckmann et al.'s LHD applied to agents). An agent that usually answers
//! fast but is overdue sees its density fall as it waits, at the rate its own
//! and the population's gap distribution says; no fixed "overdue" rule.

use crate::agent::CallEnd;

/// Number of histogram bins.
pub const BINS: usize = 56;
/// Upper edge of the first bin (ms).
const FIRST_EDGE_MS: f64 = 500.0;
/// Ratio between consecutive bin edges.
const RATIO: f64 = 1.25;

/// Log-spaced bin edges in ms: `edges[0] = 0`, `edges[k] = 500 · 1.25^(k-1)`;
/// the last bin is closed at `edges[BINS]` (about 1.2 days; longer gaps
/// count in the last bin).
#[derive(Debug, Clone)]
pub struct Edges {
    ms: [f64; BINS + 1],
}

impl Default for Edges {
    fn default() -> Self {
        let mut ms = [0.0; BINS + 1];
        for (k, e) in ms.iter_mut().enumerate().skip(1) {
            *e = FIRST_EDGE_MS * RATIO.powi(k as i32 - 1);
        }
        Self { ms }
    }
}

impl Edges {
    /// The bin holding `x_ms` (the last bin for anything beyond the edges).
    pub fn bin(&self, x_ms: f64) -> usize {
        if x_ms < FIRST_EDGE_MS {
            return 0;
        }
        let k = 1 + ((x_ms / FIRST_EDGE_MS).ln() / RATIO.ln()).floor() as usize;
        k.min(BINS - 1)
    }

    /// Upper end of the support.
    pub fn max_ms(&self) -> f64 {
        self.ms[BINS]
    }
}

/// Gap counts over the log-spaced bins.
#[derive(Debug, Clone)]
pub struct GapHistogram {
    counts: [f32; BINS],
    total: f32,
}

impl Default for GapHistogram {
    fn default() -> Self {
        Self {
            counts: [0.0; BINS],
            total: 0.0,
        }
    }
}

impl GapHistogram {
    /// Adds one observed gap with weight `w`.
    pub fn record(&mut self, edges: &Edges, gap_ms: u64, w: f32) {
        let k = edges.bin(gap_ms as f64);
        self.counts[k] += w;
        self.total += w;
    }

    /// Multiplies every count by `f` (forgetting old behaviour).
    pub fn decay(&mut self, f: f32) {
        for c in &mut self.counts {
            *c *= f;
        }
        self.total *= f;
    }

    /// Total weight recorded.
    pub fn total(&self) -> f64 {
        f64::from(self.total)
    }

    /// `(S(a), S(b), ∫_a^b S(x) dx)` with `S` piecewise linear between bin
    /// edges, as unnormalised counts (divide by [`GapHistogram::total`]).
    pub fn tail(&self, edges: &Edges, a: f64, b: f64) -> (f64, f64, f64) {
        if self.total <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        // Survival (count above) at each edge, walked upwards from bin 0.
        let mut above = f64::from(self.total);
        let mut s_a = 0.0;
        let mut s_b = 0.0;
        let mut integral = 0.0;
        for k in 0..BINS {
            let (lo, hi) = (edges.ms[k], edges.ms[k + 1]);
            let s_lo = above;
            let s_hi = (above - f64::from(self.counts[k])).max(0.0);
            above = s_hi;
            if hi <= a {
                continue;
            }
            if lo >= b {
                break;
            }
            let at = |x: f64| s_lo + (s_hi - s_lo) * (x - lo) / (hi - lo);
            let x0 = a.max(lo);
            let x1 = b.min(hi);
            if a >= lo && a < hi {
                s_a = at(a);
            }
            if b >= lo && b < hi {
                s_b = at(b);
            }
            integral += 0.5 * (at(x0) + at(x1)) * (x1 - x0);
        }
        (s_a, s_b, integral)
    }
}

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
}

impl Default for Forecaster {
    fn default() -> Self {
        Self::new(4.0)
    }
}

impl Forecaster {
    /// A forecaster with a weak built-in prior (one pseudo-gap per kind: 20 s
    /// after a tool call, 5 min after an end of turn, 1 min otherwise) so that
    /// it answers sensibly before it has seen anything.
    pub fn new(prior_weight: f64) -> Self {
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
        let agent_memory = 1.0;
        Self {
            edges,
            global,
            prior_weight,
            agent_memory,
        }
    }

    /// Records an observed gap of kind `gap` of one agent.
    pub fn record(&mut self, gap: Gap, gap_ms: u64, agent: &mut AgentGaps) {
        self.global[gap.index()].record(&self.edges, gap_ms, 1.0);
        let h = &mut agent.hist[gap.index()];
        h.decay(self.agent_memory);
        h.record(&self.edges, gap_ms, 1.0);
    }

    /// Hit density of an agent that has waited `waited_ms` on the clock of
    /// `gap` (since its last answer, or since its last call while in flight), over a horizon of `horizon_ms`: the chance of
    /// a call within the horizon per ms of cache time spent waiting for it.
    /// Larger means more worth keeping. Always finite and > 0.
    pub fn density(&self, gap: Gap, waited_ms: u64, horizon_ms: u64, agent: &AgentGaps) -> f64 {
        let a = waited_ms as f64;
        let b = a + horizon_ms.max(1) as f64;
        let g = &self.global[gap.index()];
        let l = &agent.hist[gap.index()];
        let (gs_a, gs_b, gi) = g.tail(&self.edges, a, b);
        let (ls_a, ls_b, li) = l.tail(&self.edges, a, b);
        let (gt, lt) = (g.total().max(1e-9), l.total());
        // Blend the normalised survivals: the agent's own history weighs lt,
        // the population prior_weight.
        let wl = lt / (lt + self.prior_weight);
        let (ng, nl) = ((1.0 - wl) / gt, if lt > 0.0 { wl / lt } else { 0.0 });
        let s_a = ng * gs_a + nl * ls_a;
        let s_b = ng * gs_b + nl * ls_b;
        let integral = ng * gi + nl * li;
        let floor = 1e-12 / (1.0 + a);
        if integral <= 1e-9 {
            // Waited past everything ever observed: worth less the longer it waits.
            return floor;
        }
        ((s_a - s_b) / integral).max(floor)
    }

    /// The bin edges in use.
    pub fn edges(&self) -> &Edges {
        &self.edges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_range() {
        let e = Edges::default();
        assert_eq!(e.bin(0.0), 0);
        assert_eq!(e.bin(499.0), 0);
        assert_eq!(e.bin(500.0), 1);
        assert_eq!(e.bin(624.0), 1);
        assert_eq!(e.bin(626.0), 2);
        assert_eq!(e.bin(1e12), BINS - 1);
        assert!(e.max_ms() > 86_400_000.0);
    }

    /// `tail` against brute-force numeric integration of the same survival.
    #[test]
    fn tail_matches_numeric_integration() {
        let e = Edges::default();
        let mut h = GapHistogram::default();
        for (gap, n) in [(300, 2), (2_000, 5), (9_000, 3), (45_000, 1), (400_000, 2)] {
            for _ in 0..n {
                h.record(&e, gap, 1.0);
            }
        }
        let s = |x: f64| h.tail(&e, x, x + 1.0).0;
        for (a, b) in [(0.0, 1_000.0), (1_500.0, 20_000.0), (10_000.0, 1_000_000.0)] {
            let (sa, sb, integral) = h.tail(&e, a, b);
            assert!((sa - s(a)).abs() < 1e-9 && (sb - s(b)).abs() < 1e-9);
            let steps = 20_000;
            let dx = (b - a) / steps as f64;
            let numeric: f64 = (0..steps).map(|i| s(a + (i as f64 + 0.5) * dx) * dx).sum();
            assert!(
                (integral - numeric).abs() / numeric < 1e-3,
                "{integral} vs {numeric}"
            );
        }
        assert_eq!(h.tail(&e, 0.0, 1.0).0, 13.0);
        assert_eq!(h.tail(&e, 1e10, 2e10), (0.0, 0.0, 0.0));
    }

    #[test]
    fn tool_calls_outrank_ends_of_turn_and_overdue_agents_fade() {
        let mut f = Forecaster::new(4.0);
        let mut a = AgentGaps::default();
        for i in 0..50 {
            f.record(Gap::AfterAnswer(CallEnd::ToolCall), 5_000 + 100 * i, &mut a);
            f.record(
                Gap::AfterAnswer(CallEnd::EndOfTurn),
                200_000 + 10_000 * i,
                &mut a,
            );
        }
        let fresh = AgentGaps::default();
        let h = 60_000;
        let tool = f.density(Gap::AfterAnswer(CallEnd::ToolCall), 1_000, h, &fresh);
        let turn = f.density(Gap::AfterAnswer(CallEnd::EndOfTurn), 1_000, h, &fresh);
        assert!(tool > 10.0 * turn, "{tool} vs {turn}");
        // Long overdue after a tool call: worth less than fresh.
        let late = f.density(Gap::AfterAnswer(CallEnd::ToolCall), 3_600_000, h, &fresh);
        assert!(late < tool / 10.0);
        // Past every observation: still positive, and smaller the longer it waits.
        let gone = f.density(
            Gap::AfterAnswer(CallEnd::ToolCall),
            10u64.pow(12),
            h,
            &fresh,
        );
        let gone2 = f.density(
            Gap::AfterAnswer(CallEnd::ToolCall),
            2 * 10u64.pow(12),
            h,
            &fresh,
        );
        assert!(gone > 0.0 && gone2 < gone);
    }

    #[test]
    fn an_agents_own_history_shifts_its_forecast() {
        let mut f = Forecaster::new(2.0);
        let mut slow = AgentGaps::default();
        let mut fast = AgentGaps::default();
        for _ in 0..100 {
            f.record(Gap::AfterAnswer(CallEnd::ToolCall), 3_000, &mut fast);
        }
        for _ in 0..10 {
            f.record(Gap::AfterAnswer(CallEnd::ToolCall), 120_000, &mut slow);
        }
        let g = Gap::AfterAnswer(CallEnd::ToolCall);
        assert!(f.density(g, 1_000, 30_000, &fast) > 5.0 * f.density(g, 1_000, 30_000, &slow));
    }
}
