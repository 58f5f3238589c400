//! Agent ranking: the hit-density horizon, and keeping `order` (live agents,
//! least valuable first) up to date, fully or incrementally.

use std::hash::Hash;

use super::agents::RankKey;
use super::ValuePolicy;
use crate::Tier;

impl<K: Copy + Eq + Hash> ValuePolicy<K> {
    /// The horizon of the hit density now in use (ms): with an adaptive
    /// horizon, the factor times the turnover time of the top non-empty tier
    /// (its blocks / the recent rate of blocks entering it, by insert or
    /// move). One ranking orders every tier, and it serves the busiest
    /// decision: which block leaves the fastest tier. With a single tier
    /// this is the whole cache's turnover.
    pub fn horizon_ms(&self) -> u64 {
        if self.cfg.adaptive_horizon <= 0.0 {
            return self.cfg.horizon_ms;
        }
        let Some(top) = Tier::ALL.into_iter().find(|&t| self.lists.tier_len(t) > 0) else {
            return self.cfg.horizon_ms;
        };
        let inflow = self.recent_inflow[top.index()];
        if inflow < 1.0 {
            return self.cfg.horizon_ms;
        }
        let turnover = self.lists.tier_len(top) as f64 * self.cfg.rate_window_ms as f64 / inflow;
        (self.cfg.adaptive_horizon * turnover).clamp(1_000.0, 86_400_000.0) as u64
    }

    /// A block entered `tier` (a new block, or a move).
    pub(super) fn count_inflow(&mut self, tier: Tier, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.inflow_at);
        if dt > 0 {
            let f = (-(dt as f64) / self.cfg.rate_window_ms.max(1) as f64).exp();
            for r in &mut self.recent_inflow {
                *r *= f;
            }
            self.inflow_at = now_ms;
        }
        self.recent_inflow[tier.index()] += 1.0;
    }

    /// Marks agent `slot` for a fresh rank key at the next victim query.
    pub(super) fn touch(&mut self, slot: u32) {
        if let Some(a) = self.agents[slot as usize].as_mut() {
            if !a.touched {
                a.touched = true;
                self.touched.push(slot);
            }
        }
    }

    /// Brings `order` up to date: every agent's key is recomputed when
    /// `rerank_ms` passed (waiting changes forecasts) or, with
    /// `full_rerank_on_change`, when any agent changed state; else only the
    /// keys of agents whose state changed, which move to their new place.
    pub(super) fn rerank(&mut self, now_ms: u64) {
        let full = (self.cfg.full_rerank_on_change && !self.touched.is_empty())
            || now_ms >= self.ranked_at.saturating_add(self.cfg.rerank_ms);
        if !full && self.touched.is_empty() {
            return;
        }
        let horizon = self.forecaster.discount(self.horizon_ms());
        if full {
            for slot in 0..self.agents.len() as u32 {
                if let Some(a) = self.agents[slot as usize].as_mut() {
                    a.key = a.rank_key(&self.forecaster, &horizon, now_ms, slot);
                    a.touched = false;
                }
            }
            self.touched.clear();
            let agents = &self.agents;
            let key = |slot: &u32| agents[*slot as usize].as_ref().map(|a| a.key);
            self.order = (0..agents.len() as u32)
                .filter(|&s| agents[s as usize].is_some())
                .collect();
            self.order.sort_unstable_by(|a, b| cmp_key(key(a), key(b)));
            self.ranked_at = now_ms;
        } else if !self.touched.is_empty() {
            let agents = &self.agents;
            self.order
                .retain(|&s| agents[s as usize].as_ref().is_some_and(|a| !a.touched));
            for slot in std::mem::take(&mut self.touched) {
                let Some(a) = self.agents[slot as usize].as_mut() else {
                    continue;
                };
                if !a.touched {
                    continue; // queued twice (slot reused after an end)
                }
                a.touched = false;
                a.key = a.rank_key(&self.forecaster, &horizon, now_ms, slot);
                let k = Some(a.key);
                let agents = &self.agents;
                let at = self.order.partition_point(|s| {
                    cmp_key(agents[*s as usize].as_ref().map(|a| a.key), k).is_lt()
                });
                self.order.insert(at, slot);
            }
        }
        for (pos, &slot) in self.order.iter().enumerate() {
            if let Some(a) = self.agents[slot as usize].as_mut() {
                a.rank_pos = pos as u32;
            }
        }
        self.cursor = [0; 3];
    }
}

/// Order of rank keys `(class, value, last activity, slot)`; absent agents last.
fn cmp_key(a: Option<RankKey>, b: Option<RankKey>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        }
        (a, b) => a.is_none().cmp(&b.is_none()),
    }
}
