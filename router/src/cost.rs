//! The routing cost model: pure code, no I/O.
//!
//! Every figure is in *prefill-token equivalents*: the time a worker would
//! spend computing that many prompt tokens. For each candidate worker:
//!
//! ```text
//! total = prefill_tokens                      tokens it would still compute
//!       + fetch_cost                          host/disk blocks it would onboard
//!       + queue_weight(hints) × queued        prefill tokens queued ahead of the call
//!       + decode_weight × active_decode_tokens
//!       + affinity                            ≤ 0: the agent's previous worker
//! ```
//!
//! `prefill_tokens` credits HBM blocks fully and cache-tier blocks fully too
//! (they are not recomputed) but those pay `fetch_cost` = tokens ×
//! `host_fetch_weight` (or `disk_fetch_weight`), so an HBM block is worth
//! more than a host block, which is worth more than a disk block.
//!
//! Hints change the weights: a latency-sensitive or high-priority call pays
//! more for every queued token ahead of it, so it avoids long queues even at
//! the price of recomputing some prefix.
//!
//! Ordering is apart from cost ([`choose`]): among available workers that stay
//! within the bounded-load limit (the consistent-hashing-with-bounded-loads
//! rule of the shared traces' W8 simulator: running requests after this one ≤
//! ⌈load_factor × (all running + 1) / workers⌉), the cheapest wins; ties go to
//! the worker with fewer running requests, then to the lower slot.

/// Weights of the cost model (all configurable on the router's command line).
#[derive(Debug, Clone, PartialEq)]
pub struct CostWeights {
    /// Cost of onboarding one token's KV from the cache server's host tier,
    /// relative to computing it (0.0 = free, 1.0 = as dear as recomputing).
    pub host_fetch_weight: f64,
    /// Same for the disk tier.
    pub disk_fetch_weight: f64,
    /// Cost of one queued prefill token ahead of a neutral call.
    pub queue_weight: f64,
    /// Extra queue weight at latency_sensitivity 1.0 (linear in between).
    pub latency_queue_boost: f64,
    /// Each +`priority_doubling` of priority doubles the queue weight
    /// (negative priorities halve it likewise).
    pub priority_doubling: f64,
    /// Cost per active decode token on the worker (decode steps slow prefill).
    pub decode_weight: f64,
    /// Affinity bonus for the agent's previous worker, as a fraction of the
    /// call's prompt tokens (covers blocks its last call wrote that the index
    /// has not learnt yet).
    pub affinity_fraction: f64,
    /// Bounded-load factor (≥ 1.0); `f64::INFINITY` disables the bound.
    pub load_factor: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        Self {
            host_fetch_weight: 0.1,
            disk_fetch_weight: 0.35,
            queue_weight: 1.0,
            latency_queue_boost: 3.0,
            priority_doubling: 4.0,
            decode_weight: 0.05,
            affinity_fraction: 0.05,
            load_factor: 1.25,
        }
    }
}

/// The hints of one call that the cost model reads.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CallProfile {
    /// Prompt tokens (all of them, including the partial last block).
    pub prompt_tokens: u64,
    /// Tokens per block.
    pub block_tokens: u64,
    /// -8..=8.
    pub priority: i32,
    /// 0.0..=1.0.
    pub latency_sensitivity: f32,
}

/// What the router knows about one worker when a call arrives.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WorkerView {
    /// Leading run of the call's blocks in the worker's HBM.
    pub hbm_blocks: u32,
    /// After those, blocks it would fetch from the cache server's host tier.
    pub host_blocks: u32,
    /// After those, blocks it would fetch from the disk tier.
    pub disk_blocks: u32,
    /// Prefill tokens queued or running on it.
    pub queued_prefill_tokens: u64,
    /// KV blocks of its requests in decode.
    pub active_decode_blocks: u64,
    /// Requests running on it.
    pub running_requests: u32,
    /// The agent's previous call went there.
    pub sticky: bool,
    /// It takes traffic (event stream up, endpoint reachable).
    pub available: bool,
}

/// The cost of one worker, broken down.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CostBreakdown {
    /// Sum of the parts below.
    pub total: f64,
    /// Prompt tokens it would still compute.
    pub prefill_tokens: f64,
    /// Cost of onboarding the cache-tier blocks credited.
    pub fetch_cost: f64,
    /// Hint-weighted cost of its prefill queue.
    pub queue_cost: f64,
    /// Cost of its decode load.
    pub decode_cost: f64,
    /// ≤ 0: the sticky bonus.
    pub affinity: f64,
}

/// The queue weight of a call: dearer for latency-sensitive and high-priority calls.
pub fn queue_weight(weights: &CostWeights, call: &CallProfile) -> f64 {
    let sensitivity = f64::from(call.latency_sensitivity.clamp(0.0, 1.0));
    let priority = f64::from(call.priority.clamp(-8, 8));
    let doubling = if weights.priority_doubling > 0.0 {
        (priority / weights.priority_doubling).exp2()
    } else {
        1.0
    };
    weights.queue_weight * (1.0 + weights.latency_queue_boost * sensitivity) * doubling
}

/// The cost of sending `call` to a worker in state `view`.
pub fn worker_cost(weights: &CostWeights, call: &CallProfile, view: &WorkerView) -> CostBreakdown {
    let block_tokens = call.block_tokens.max(1);
    let full_blocks = call.prompt_tokens / block_tokens;
    // Credit never exceeds the call's full blocks (a stale or oversized match).
    let hbm = u64::from(view.hbm_blocks).min(full_blocks);
    let host = u64::from(view.host_blocks).min(full_blocks - hbm);
    let disk = u64::from(view.disk_blocks).min(full_blocks - hbm - host);
    let credited_tokens = (hbm + host + disk) * block_tokens;
    let prefill_tokens = call.prompt_tokens.saturating_sub(credited_tokens) as f64;
    let fetch_cost = (host * block_tokens) as f64 * weights.host_fetch_weight
        + (disk * block_tokens) as f64 * weights.disk_fetch_weight;
    let queue_cost = queue_weight(weights, call) * view.queued_prefill_tokens as f64;
    let decode_cost = weights.decode_weight * (view.active_decode_blocks * block_tokens) as f64;
    let affinity = if view.sticky {
        -weights.affinity_fraction * call.prompt_tokens as f64
    } else {
        0.0
    };
    CostBreakdown {
        total: prefill_tokens + fetch_cost + queue_cost + decode_cost + affinity,
        prefill_tokens,
        fetch_cost,
        queue_cost,
        decode_cost,
        affinity,
    }
}

/// The bounded-load limit on running requests per worker, counting this call.
pub fn load_limit(weights: &CostWeights, total_running: u64, available_workers: usize) -> u64 {
    if !weights.load_factor.is_finite() || available_workers == 0 {
        return u64::MAX;
    }
    let fair = weights.load_factor.max(1.0) * (total_running + 1) as f64 / available_workers as f64;
    fair.ceil() as u64
}

/// Why [`choose`] picked its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceReason {
    /// The cheapest worker within the load bound.
    BestCost,
    /// The cheapest overall was over the load bound: a cheaper-looking hot
    /// spot was skipped.
    HotSpotShed,
    /// Every available worker was over the bound: the cheapest of all.
    AllOverloaded,
    /// Round-robin mode: the next worker in turn, whatever its cost.
    RoundRobin,
}

impl ChoiceReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ChoiceReason::BestCost => "best_cost",
            ChoiceReason::HotSpotShed => "hot_spot_shed",
            ChoiceReason::AllOverloaded => "all_overloaded",
            ChoiceReason::RoundRobin => "round_robin",
        }
    }
}

/// One worker's evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Index of the worker in the caller's list.
    pub index: usize,
    /// Its cost.
    pub cost: CostBreakdown,
    /// Over the bounded-load limit.
    pub overloaded: bool,
}

/// The decision over all workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Index of the chosen worker in the caller's list.
    pub chosen: usize,
    /// Why.
    pub reason: ChoiceReason,
    /// Every available worker, cheapest first (overloaded ones after the
    /// others).
    pub ranked: Vec<Candidate>,
}

/// Ranks the available workers and picks one; None when none is available.
pub fn choose(weights: &CostWeights, call: &CallProfile, views: &[WorkerView]) -> Option<Decision> {
    let available = views.iter().filter(|v| v.available).count();
    if available == 0 {
        return None;
    }
    let total_running: u64 = views
        .iter()
        .filter(|v| v.available)
        .map(|v| u64::from(v.running_requests))
        .sum();
    let limit = load_limit(weights, total_running, available);
    let mut ranked: Vec<Candidate> = views
        .iter()
        .enumerate()
        .filter(|(_, v)| v.available)
        .map(|(index, view)| Candidate {
            index,
            cost: worker_cost(weights, call, view),
            overloaded: u64::from(view.running_requests) + 1 > limit,
        })
        .collect();
    let order = |a: &Candidate, b: &Candidate| {
        a.cost
            .total
            .total_cmp(&b.cost.total)
            .then(
                views[a.index]
                    .running_requests
                    .cmp(&views[b.index].running_requests),
            )
            .then(a.index.cmp(&b.index))
    };
    ranked.sort_by(order);
    let cheapest = ranked[0];
    ranked.sort_by(|a, b| a.overloaded.cmp(&b.overloaded).then(order(a, b)));
    let chosen = ranked[0];
    let reason = if chosen.overloaded {
        ChoiceReason::AllOverloaded
    } else if cheapest.overloaded {
        ChoiceReason::HotSpotShed
    } else {
        ChoiceReason::BestCost
    };
    Some(Decision {
        chosen: chosen.index,
        reason,
        ranked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prompt_tokens: u64) -> CallProfile {
        CallProfile {
            prompt_tokens,
            block_tokens: 16,
            priority: 0,
            latency_sensitivity: 0.0,
        }
    }

    fn idle() -> WorkerView {
        WorkerView {
            available: true,
            ..WorkerView::default()
        }
    }

    #[test]
    fn hbm_blocks_are_credited_in_full() {
        let w = CostWeights::default();
        let cost = worker_cost(
            &w,
            &call(160),
            &WorkerView {
                hbm_blocks: 8,
                ..idle()
            },
        );
        assert_eq!(cost.prefill_tokens, 32.0);
        assert_eq!(cost.fetch_cost, 0.0);
        assert_eq!(cost.total, 32.0);
    }

    #[test]
    fn host_blocks_cost_less_than_recompute_and_more_than_hbm() {
        let w = CostWeights::default();
        let c = call(160);
        let hbm = worker_cost(
            &w,
            &c,
            &WorkerView {
                hbm_blocks: 10,
                ..idle()
            },
        )
        .total;
        let host = worker_cost(
            &w,
            &c,
            &WorkerView {
                host_blocks: 10,
                ..idle()
            },
        )
        .total;
        let disk = worker_cost(
            &w,
            &c,
            &WorkerView {
                disk_blocks: 10,
                ..idle()
            },
        )
        .total;
        let none = worker_cost(&w, &c, &idle()).total;
        assert!(
            hbm < host && host < disk && disk < none,
            "{hbm} {host} {disk} {none}"
        );
        assert_eq!(host, 160.0 * 0.1);
    }

    #[test]
    fn credit_is_capped_at_the_calls_full_blocks() {
        let w = CostWeights::default();
        // 100 tokens = 6 full blocks + 4 tokens; a match of 50 blocks is stale.
        let cost = worker_cost(
            &w,
            &call(100),
            &WorkerView {
                hbm_blocks: 4,
                host_blocks: 50,
                disk_blocks: 50,
                ..idle()
            },
        );
        assert_eq!(cost.prefill_tokens, 4.0);
        assert_eq!(cost.fetch_cost, 2.0 * 16.0 * 0.1);
    }

    #[test]
    fn latency_sensitive_and_high_priority_calls_pay_more_for_queueing() {
        let w = CostWeights::default();
        let neutral = queue_weight(&w, &call(16));
        let urgent = queue_weight(
            &w,
            &CallProfile {
                latency_sensitivity: 1.0,
                ..call(16)
            },
        );
        let important = queue_weight(
            &w,
            &CallProfile {
                priority: 4,
                ..call(16)
            },
        );
        let batch = queue_weight(
            &w,
            &CallProfile {
                priority: -4,
                ..call(16)
            },
        );
        assert_eq!(neutral, 1.0);
        assert_eq!(urgent, 4.0);
        assert_eq!(important, 2.0);
        assert_eq!(batch, 0.5);
    }

    #[test]
    fn an_urgent_call_avoids_a_long_queue_that_a_batch_call_accepts() {
        let w = CostWeights::default();
        // Worker 0 holds the whole 1,600-token prefix but has 1,000 tokens
        // queued; worker 1 is idle and holds nothing.
        let views = [
            WorkerView {
                hbm_blocks: 100,
                queued_prefill_tokens: 1_000,
                running_requests: 1,
                ..idle()
            },
            idle(),
        ];
        let batch = CallProfile {
            priority: -4,
            ..call(1_600)
        };
        let urgent = CallProfile {
            priority: 4,
            latency_sensitivity: 1.0,
            ..call(1_600)
        };
        assert_eq!(choose(&w, &batch, &views).map(|d| d.chosen), Some(0));
        assert_eq!(choose(&w, &urgent, &views).map(|d| d.chosen), Some(1));
    }

    #[test]
    fn the_sticky_worker_wins_ties_but_not_a_much_better_match() {
        let w = CostWeights::default();
        let c = call(1_600);
        let tie = [
            idle(),
            WorkerView {
                sticky: true,
                ..idle()
            },
        ];
        assert_eq!(choose(&w, &c, &tie).map(|d| d.chosen), Some(1));
        let better = [
            WorkerView {
                hbm_blocks: 50,
                ..idle()
            },
            WorkerView {
                sticky: true,
                ..idle()
            },
        ];
        assert_eq!(choose(&w, &c, &better).map(|d| d.chosen), Some(0));
    }

    #[test]
    fn a_hot_spot_sheds_load_within_the_bound() {
        let w = CostWeights::default();
        // Everyone shares block 0..10, worker 0 is the hot spot.
        let mut views = vec![idle(); 4];
        for v in &mut views {
            v.hbm_blocks = 2;
        }
        views[0].hbm_blocks = 10;
        views[0].running_requests = 4;
        // total running 4, +1, ×1.25 / 4 workers → limit 2: worker 0 is over.
        let d = choose(&w, &call(160), &views).expect("workers");
        assert_eq!(d.reason, ChoiceReason::HotSpotShed);
        assert_ne!(d.chosen, 0);
        assert!(d.ranked.last().map(|c| c.overloaded).unwrap_or(false));
        // Without the bound the hot spot wins.
        let unbounded = CostWeights {
            load_factor: f64::INFINITY,
            ..w
        };
        let d = choose(&unbounded, &call(160), &views).expect("workers");
        assert_eq!((d.chosen, d.reason), (0, ChoiceReason::BestCost));
    }

    #[test]
    fn load_limit_follows_the_w8_rule() {
        let w = CostWeights::default();
        // ceil(1.25 × (i + 1) / 8)
        assert_eq!(load_limit(&w, 0, 8), 1);
        assert_eq!(load_limit(&w, 7, 8), 2);
        assert_eq!(load_limit(&w, 63, 8), 10);
    }

    #[test]
    fn unavailable_workers_are_never_chosen() {
        let w = CostWeights::default();
        let views = [
            WorkerView {
                hbm_blocks: 100,
                available: false,
                ..WorkerView::default()
            },
            idle(),
        ];
        let d = choose(&w, &call(1_600), &views).expect("one available");
        assert_eq!(d.chosen, 1);
        assert_eq!(d.ranked.len(), 1);
        assert!(choose(&w, &call(16), &[WorkerView::default()]).is_none());
    }

    #[test]
    fn ties_go_to_the_less_loaded_worker() {
        let w = CostWeights {
            decode_weight: 0.0,
            ..CostWeights::default()
        };
        let views = [
            WorkerView {
                running_requests: 1,
                ..idle()
            },
            idle(),
        ];
        assert_eq!(choose(&w, &call(16), &views).map(|d| d.chosen), Some(1));
    }
}
