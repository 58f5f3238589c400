//! What the value policy tells a prefetcher (see [`crate::prefetch`]): the
//! blocks of a lower tier most worth moving up, and the blocks of an upper
//! tier in the order they would leave, each with its forecast value.

use std::hash::Hash;

use super::{reuse, ValuePolicy, AGENT_BASE, ENDED, GENERIC, STALE};
use crate::prefetch::BlockValue;
use crate::Tier;

/// Class of live agents' context blocks in [`BlockValue`] (kept warm and
/// pinned agents are 1 and 2 above it).
const AGENT_CLASS: u8 = 3;

impl<K: Copy + Eq + Hash> ValuePolicy<K> {
    fn agent_value(&self, slot: u32) -> Option<BlockValue> {
        let a = self.agents[slot as usize].as_ref()?;
        Some(BlockValue {
            class: AGENT_CLASS + a.key.0,
            density: a.key.1,
        })
    }

    /// Live agents least valuable first with their values: the policy's own
    /// ranking, or (with `horizon_ms`) one computed now with that eviction
    /// clock, e.g. a prefetch's lead time.
    fn ranked(&mut self, horizon_ms: Option<u64>, now_ms: u64) -> Vec<(u32, BlockValue)> {
        self.rerank(now_ms);
        let Some(h) = horizon_ms else {
            return self
                .order
                .iter()
                .filter_map(|&a| Some((a, self.agent_value(a)?)))
                .collect();
        };
        let d = self.forecaster.discount(h);
        let mut out: Vec<(u32, BlockValue)> = self
            .order
            .iter()
            .filter_map(|&a| {
                let st = self.agents[a as usize].as_ref()?;
                let k = st.rank_key(&self.forecaster, &d, now_ms, a);
                Some((
                    a,
                    BlockValue {
                        class: AGENT_CLASS + k.0,
                        density: k.1,
                    },
                ))
            })
            .collect();
        out.sort_by(|x, y| x.1.cmp_value(&y.1));
        out
    }

    /// Whether `key` is in a live agent's context (what
    /// [`Self::promotion_candidates`] draws from): false once the agent
    /// ended or dropped it, or for a block no agent named.
    pub fn is_agent_context(&self, key: K) -> bool {
        self.index
            .get(&key)
            .is_some_and(|&slot| self.lists.node(slot).list >= AGENT_BASE)
    }

    /// Up to `limit` blocks of `tier` most worth moving up, most valuable
    /// first: the context blocks live agents own, agent by agent from the
    /// most valuable (the agent's forecast of its next call), each context
    /// head first, so a partial move still leaves a usable prefix. Move them
    /// in reverse order (tail first, as a call touches them), so that within
    /// a context the head stays the last to leave. Agents are valued by the
    /// policy's ranking, brought up to date at `now_ms`, or with
    /// `horizon_ms`, by their hit density with an eviction clock of that mean
    /// (how soon a call must come to be worth the move).
    pub fn promotion_candidates(
        &mut self,
        tier: Tier,
        limit: usize,
        horizon_ms: Option<u64>,
        now_ms: u64,
    ) -> Vec<(K, BlockValue)> {
        let mut out = Vec::new();
        for (a, value) in self.ranked(horizon_ms, now_ms).into_iter().rev() {
            if out.len() >= limit {
                break;
            }
            let mut cur = self.lists.front(AGENT_BASE + a, tier);
            while let Some(slot) = cur {
                if out.len() >= limit {
                    break;
                }
                out.push((self.lists.node(slot).key, value));
                cur = self.lists.toward_back(slot);
            }
        }
        out
    }

    /// Up to `limit` blocks of `tier` in eviction order, each with its value:
    /// ended, stale, un-hinted (learned order), then live agents from the
    /// least valuable, each context tail first. With `horizon_ms` = `None`
    /// this is the order [`crate::EvictionPolicy::victim`] would pick them in
    /// (if nothing changed meanwhile); with a horizon, agents are valued as
    /// in [`Self::promotion_candidates`].
    pub fn eviction_candidates(
        &mut self,
        tier: Tier,
        limit: usize,
        horizon_ms: Option<u64>,
        now_ms: u64,
    ) -> Vec<(K, BlockValue)> {
        let ranked = self.ranked(horizon_ms, now_ms);
        let mut out = Vec::new();
        for (list, class) in [(ENDED, 0u8), (STALE, 1)] {
            let mut cur = self.lists.back(list, tier);
            while let Some(slot) = cur {
                if out.len() >= limit {
                    return out;
                }
                let density = 0.0;
                out.push((self.lists.node(slot).key, BlockValue { class, density }));
                cur = self.lists.toward_front(slot);
            }
        }
        self.generic_in_order(tier, limit, &mut out);
        for (a, value) in ranked {
            let mut cur = self.lists.back(AGENT_BASE + a, tier);
            while let Some(slot) = cur {
                if out.len() >= limit {
                    return out;
                }
                out.push((self.lists.node(slot).key, value));
                cur = self.lists.toward_front(slot);
            }
        }
        out
    }

    /// Un-hinted blocks of `tier` in eviction order: a merge of the class
    /// lists by (density at the block's age, least recent first), as
    /// `generic_victim` picks them one at a time.
    fn generic_in_order(&self, tier: Tier, limit: usize, out: &mut Vec<(K, BlockValue)>) {
        let classes = if self.learning() { reuse::CLASSES } else { 1 };
        let mut cursors: Vec<Option<u32>> = (0..classes)
            .map(|c| self.lists.back(GENERIC + c, tier))
            .collect();
        while out.len() < limit {
            let mut best: Option<(f64, u64, usize)> = None;
            for (c, cur) in cursors.iter().enumerate() {
                let Some(slot) = *cur else { continue };
                let n = self.lists.node(slot);
                let d = if self.learning() {
                    self.reuse.density(c as u32, n.stamp)
                } else {
                    0.0
                };
                if best.is_none_or(|(bd, bt, _)| d < bd || (d == bd && n.touch < bt)) {
                    best = Some((d, n.touch, c));
                }
            }
            let Some((density, _, c)) = best else { break };
            let Some(slot) = cursors[c] else { break };
            out.push((self.lists.node(slot).key, BlockValue { class: 2, density }));
            cursors[c] = self.lists.toward_front(slot);
        }
    }
}
