//! The order in which waiting prefills get the worker's GPU (pure code, no
//! I/O, no clock).
//!
//! - [`SchedulingPolicy::Fcfs`]: arrival order (vLLM's default
//!   `--scheduling-policy fcfs`).
//! - [`SchedulingPolicy::Priority`]: the call's priority hint (-8..8, higher
//!   first), arrival order among equal priorities — as vLLM's
//!   `--scheduling-policy priority` orders its waiting queue (vLLM: lower
//!   value first; kvtier's hint: higher value first, as the router's cost
//!   and admission order read it).
//!
//! Only the priority counts, not the latency sensitivity: a real engine is
//! given one priority per request, and the simulated worker should not
//! order better than the engine it stands for. Folding the sensitivity in
//! is the router's business (its admission queue does). Running prefills
//! are never preempted: the order decides who goes next when a slot frees.
//!
//! Cost: `push`, `pop` and `remove` are O(log n) in the waiting calls (a
//! B-tree keyed by (rank, arrival)).

use std::collections::BTreeMap;

/// How a worker orders its waiting prefills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulingPolicy {
    /// Arrival order.
    #[default]
    Fcfs,
    /// Higher priority first, arrival order among equals.
    Priority,
}

/// A `--scheduling-policy` value that is neither `fcfs` nor `priority`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduling policy {0:?} (fcfs or priority)")]
pub struct UnknownPolicy(pub String);

impl std::str::FromStr for SchedulingPolicy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fcfs" => Ok(Self::Fcfs),
            "priority" => Ok(Self::Priority),
            other => Err(UnknownPolicy(other.to_string())),
        }
    }
}

impl SchedulingPolicy {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fcfs => "fcfs",
            Self::Priority => "priority",
        }
    }
}

/// Where a waiting call stands: smaller goes first. Returned by
/// [`PrefillQueue::push`] so the call can leave the queue (client gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    /// Negated priority under [`SchedulingPolicy::Priority`], 0 under fcfs.
    rank: i64,
    /// Arrival number.
    seq: u64,
}

/// Waiting prefills in the order of a [`SchedulingPolicy`].
#[derive(Debug)]
pub struct PrefillQueue<T> {
    policy: SchedulingPolicy,
    next_seq: u64,
    waiting: BTreeMap<Place, T>,
}

impl<T> PrefillQueue<T> {
    /// An empty queue.
    pub fn new(policy: SchedulingPolicy) -> Self {
        Self {
            policy,
            next_seq: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// The queue's policy.
    pub fn policy(&self) -> SchedulingPolicy {
        self.policy
    }

    /// Adds a call of `priority` behind every earlier call of the same rank.
    pub fn push(&mut self, priority: i32, item: T) -> Place {
        let rank = match self.policy {
            SchedulingPolicy::Fcfs => 0,
            SchedulingPolicy::Priority => -i64::from(priority),
        };
        let place = Place {
            rank,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.waiting.insert(place, item);
        place
    }

    /// Takes the call that goes next.
    pub fn pop(&mut self) -> Option<T> {
        self.waiting.pop_first().map(|(_, item)| item)
    }

    /// Takes the call at `place` out of the queue (None: already popped).
    pub fn remove(&mut self, place: Place) -> Option<T> {
        self.waiting.remove(&place)
    }

    /// Calls waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// No call waiting.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcfs_keeps_arrival_order_whatever_the_priority() {
        let mut q = PrefillQueue::new(SchedulingPolicy::Fcfs);
        for (i, p) in [-8, 8, 0, 3, -1].into_iter().enumerate() {
            q.push(p, i);
        }
        let order: Vec<usize> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn priority_goes_first_and_equals_keep_arrival_order() {
        let mut q = PrefillQueue::new(SchedulingPolicy::Priority);
        // Four low-priority calls, then a high one, then a normal one.
        for (name, p) in [
            ("b1", -4),
            ("b2", -4),
            ("b3", -4),
            ("b4", -4),
            ("h", 4),
            ("n", 0),
        ] {
            q.push(p, name);
        }
        let order: Vec<&str> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec!["h", "n", "b1", "b2", "b3", "b4"]);
    }

    #[test]
    fn a_removed_call_leaves_and_the_rest_keep_their_order() {
        let mut q = PrefillQueue::new(SchedulingPolicy::Priority);
        let a = q.push(1, "a");
        let b = q.push(1, "b");
        q.push(2, "c");
        assert_eq!(q.remove(a), Some("a"));
        assert_eq!(q.remove(a), None, "removing twice finds nothing");
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some("c"));
        assert_eq!(q.pop(), Some("b"));
        assert_eq!(q.remove(b), None, "a popped call cannot be removed");
        assert!(q.is_empty());
    }

    #[test]
    fn policy_names_parse_back() {
        for p in [SchedulingPolicy::Fcfs, SchedulingPolicy::Priority] {
            assert_eq!(p.name().parse::<SchedulingPolicy>(), Ok(p));
        }
        assert!("lifo".parse::<SchedulingPolicy>().is_err());
    }

    /// The naive version: a list, searched for the best waiting call.
    struct Naive {
        policy: SchedulingPolicy,
        waiting: Vec<(i32, u64, u32)>,
        seq: u64,
    }

    impl Naive {
        fn push(&mut self, priority: i32, item: u32) -> u64 {
            self.seq += 1;
            self.waiting.push((priority, self.seq, item));
            self.seq
        }

        fn pop(&mut self) -> Option<u32> {
            let best = (0..self.waiting.len()).min_by_key(|&i| {
                let (p, seq, _) = self.waiting[i];
                match self.policy {
                    SchedulingPolicy::Fcfs => (0, seq),
                    SchedulingPolicy::Priority => (-i64::from(p), seq),
                }
            })?;
            Some(self.waiting.remove(best).2)
        }

        fn remove(&mut self, seq: u64) -> Option<u32> {
            let i = self.waiting.iter().position(|w| w.1 == seq)?;
            Some(self.waiting.remove(i).2)
        }
    }

    #[test]
    fn random_operations_match_the_naive_version() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for policy in [SchedulingPolicy::Fcfs, SchedulingPolicy::Priority] {
            let mut q = PrefillQueue::new(policy);
            let mut naive = Naive {
                policy,
                waiting: Vec::new(),
                seq: 0,
            };
            let mut places: Vec<(Place, u64)> = Vec::new();
            for item in 0..5_000u32 {
                match next() % 10 {
                    0..=4 => {
                        let p = (next() % 17) as i32 - 8;
                        places.push((q.push(p, item), naive.push(p, item)));
                    }
                    5..=7 => assert_eq!(q.pop(), naive.pop()),
                    _ if !places.is_empty() => {
                        let k = (next() % places.len() as u64) as usize;
                        let (place, seq) = places.swap_remove(k);
                        assert_eq!(q.remove(place), naive.remove(seq));
                    }
                    _ => {}
                }
                assert_eq!(q.len(), naive.waiting.len());
            }
        }
    }
}
