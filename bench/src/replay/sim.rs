//! Replays a trace through any [`EvictionPolicy`], one cache per worker, with
//! bounded-load prefix-affinity routing across workers.

use std::sync::atomic::{AtomicU64, Ordering};

use kvtier_policy::{AgentRegistry, AgentSpec, Answer, BlockInfo, EvictionPolicy, Tier};

use super::trace::{Event, Trace, NO_AGENT};

/// Block-weighted outcome of one replay.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Σ leading hits.
    pub hits: u64,
    /// Σ len(hash_ids).
    pub total: u64,
    /// Worker each request went to.
    pub routes: Vec<u8>,
}

impl Outcome {
    /// Hit rate in percent.
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.total as f64
        }
    }
}

/// Per-block residency, one bit per worker.
pub struct Residency {
    bits: Vec<u64>,
}

impl Residency {
    /// No block resident anywhere.
    pub fn new(blocks: usize) -> Self {
        Self {
            bits: vec![0; blocks],
        }
    }

    /// Whether `id` is resident on worker `w`.
    pub fn has(&self, id: u32, w: usize) -> bool {
        self.bits[id as usize] >> w & 1 == 1
    }

    /// Marks `id` resident (or not) on worker `w`.
    pub fn set(&mut self, id: u32, w: usize, on: bool) {
        let b = &mut self.bits[id as usize];
        if on {
            *b |= 1 << w;
        } else {
            *b &= !(1 << w);
        }
    }

    /// Number of leading ids resident on worker `w`.
    pub fn prefix(&self, ids: &[u32], w: usize) -> usize {
        ids.iter().take_while(|&&id| self.has(id, w)).count()
    }
}

/// Bounded-load affinity: among workers whose request count after this one
/// stays ≤ ceil(1.25·(i+1)/W), the longest resident prefix wins; ties go to
/// the least loaded, then the lowest index.
pub fn route(res: &Residency, ids: &[u32], served: &[u64], i: usize) -> usize {
    let w = served.len();
    if w == 1 {
        return 0;
    }
    let bound = (1.25 * (i + 1) as f64 / w as f64).ceil() as u64;
    let mut best: Option<(usize, u64, usize)> = None;
    for (k, &s) in served.iter().enumerate() {
        if s + 1 > bound {
            continue;
        }
        let p = res.prefix(ids, k);
        let better = match best {
            None => true,
            Some((bp, bs, _)) => p > bp || (p == bp && s < bs),
        };
        if better {
            best = Some((p, s, k));
        }
    }
    best.map_or(0, |(_, _, k)| k)
}

/// What the policy learns about agents' lives in a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Nothing: block accesses only.
    Off,
    /// Registration, calls and answers, and `EndAgent` exactly at each agent's
    /// last answer: what only a harness that knows the session is over can send.
    HarnessEnds,
    /// The same without any end signal: agents live and end in the server's
    /// own [`AgentRegistry`] (a call or an answer renews the agent's lease and
    /// its ancestors'; one silent for `lease_ms` ends with its descendants); a
    /// later call registers it again. What the router's HTTP front gives.
    LeaseExpiry {
        /// The agents' lease.
        lease_ms: u64,
    },
}

/// Replays `trace` through `workers` instances from `make`, each holding at
/// most `capacity` blocks. With a `lifecycle`, the policy also gets what a live
/// server would learn about agents (registration with parent, each call's
/// context, the stop reason once answered, and their ends as `lifecycle` says).
pub fn simulate<P: EvictionPolicy<u32>>(
    trace: &Trace,
    capacity: usize,
    workers: usize,
    lifecycle: Lifecycle,
    make: impl Fn() -> P,
    progress: &AtomicU64,
) -> Outcome {
    let mut policies: Vec<P> = (0..workers).map(|_| make()).collect();
    let mut res = Residency::new(trace.unique_blocks);
    let mut served = vec![0u64; workers];
    let mut resident = vec![0usize; workers];
    let mut out = Outcome {
        routes: vec![0; trace.requests.len()],
        ..Outcome::default()
    };
    let mut registered = vec![false; trace.agents.len()];
    let mut visited = vec![0u64; trace.agents.len()];
    // Lease expiry: the server's registry decides who is live.
    let lease_ms = match lifecycle {
        Lifecycle::LeaseExpiry { lease_ms } => Some(lease_ms),
        _ => None,
    };
    let mut registry = AgentRegistry::new(u64::MAX);
    let events = if lifecycle != Lifecycle::Off {
        trace.events()
    } else {
        (0..trace.requests.len() as u32)
            .map(Event::Request)
            .collect()
    };
    let mut done = 0u64;
    for ev in events {
        if let Some(lease) = lease_ms {
            let (now, agent) = match ev {
                Event::Request(i) => {
                    let r = &trace.requests[i as usize];
                    (r.time_ms, r.agent)
                }
                Event::Answer(i) => {
                    let r = &trace.requests[i as usize];
                    (r.answered_ms, r.agent)
                }
            };
            // Every agent silent past its lease ends first, at its deadline.
            while let Some(due) = registry.next_expiry().filter(|&due| due <= now) {
                for ended in registry.expire(due) {
                    let a = ended as usize;
                    registered[a] = false;
                    for (k, q) in policies.iter_mut().enumerate() {
                        if visited[a] >> k & 1 == 1 {
                            q.on_agent_expired(ended, due);
                        }
                    }
                    visited[a] = 0;
                }
            }
            if agent != NO_AGENT {
                let id = u64::from(agent);
                // An answer for an agent its lease already ended renews nothing
                // (the registry answers "unknown agent", as the server would).
                let _ = match ev {
                    Event::Request(i) => {
                        if registry.get(id).is_none() {
                            // A sub-agent whose parent already ended registers as a root.
                            let parent = trace.agents[agent as usize]
                                .parent
                                .map(u64::from)
                                .filter(|&p| registry.get(p).is_some());
                            let spec = AgentSpec {
                                parent,
                                lease_ms: lease,
                                ..AgentSpec::default()
                            };
                            let _ = registry.register(id, spec, now);
                        }
                        registry.call(id, trace.requests[i as usize].len as usize, now)
                    }
                    Event::Answer(_) => registry.answered(id, &Answer::default(), now),
                };
            }
        }
        match ev {
            Event::Request(i) => {
                let i = i as usize;
                let r = &trace.requests[i];
                let now = r.time_ms;
                let ids = trace.blocks_of(i);
                let w = route(&res, ids, &served, i);
                served[w] += 1;
                out.routes[i] = w as u8;
                out.hits += res.prefix(ids, w) as u64;
                out.total += ids.len() as u64;
                let p = &mut policies[w];
                // Tail first, so that the head ends up most recent. Each block's
                // parent is the one before it, as the server learns it on a put.
                for (j, &id) in ids.iter().enumerate().rev() {
                    if res.has(id, w) {
                        p.on_hit(id, now);
                    } else {
                        let info = BlockInfo {
                            parent: j.checked_sub(1).map(|q| ids[q]),
                            bytes: 1,
                        };
                        p.on_insert(id, Tier::Host, info, now);
                        res.set(id, w, true);
                        resident[w] += 1;
                    }
                }
                if lifecycle != Lifecycle::Off && r.agent != NO_AGENT {
                    let a = r.agent as usize;
                    if !registered[a] {
                        registered[a] = true;
                        let spec = AgentSpec {
                            parent: trace.agents[a].parent.map(u64::from),
                            ..AgentSpec::default()
                        };
                        for q in policies.iter_mut() {
                            q.on_agent_register(a as u64, &spec, now);
                        }
                    }
                    visited[a] |= 1 << w;
                    policies[w].on_agent_call(a as u64, ids, now);
                }
                let p = &mut policies[w];
                while resident[w] > capacity {
                    let Some(v) = p.victim(Tier::Host, now) else {
                        break;
                    };
                    p.on_remove(v);
                    res.set(v, w, false);
                    resident[w] -= 1;
                }
                done += 1;
                if done.is_multiple_of(256) {
                    progress.fetch_add(256, Ordering::Relaxed);
                }
            }
            Event::Answer(i) => {
                let r = &trace.requests[i as usize];
                let w = out.routes[i as usize] as usize;
                let answer = Answer {
                    ended: r.stop,
                    ..Answer::default()
                };
                if !registered[r.agent as usize] {
                    continue; // ended by its lease before the answer came
                }
                policies[w].on_agent_answered(u64::from(r.agent), &answer, r.answered_ms);
                if r.last_of_agent && lifecycle == Lifecycle::HarnessEnds {
                    for (k, q) in policies.iter_mut().enumerate() {
                        if visited[r.agent as usize] >> k & 1 == 1 {
                            q.on_agent_end(u64::from(r.agent), r.answered_ms);
                        }
                    }
                }
            }
        }
    }
    progress.fetch_add(done % 256, Ordering::Relaxed);
    out
}
