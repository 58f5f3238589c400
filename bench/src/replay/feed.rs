//! What a live server learns about agents during a replay, fed to the
//! policies of every worker: registration with parent, each call's context,
//! the stop reason once answered, and their ends as [`Lifecycle`] says.
//! Shared by the hit-rate replay ([`super::sim`]) and the tiered one
//! ([`super::tiered`]).

use kvtier_policy::{AgentRegistry, AgentSpec, Answer, EvictionPolicy};

use super::trace::{Event, Trace, NO_AGENT};

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
    /// its ancestors'; one silent for `lease_ms` ends with its descendants,
    /// reported as an expiry); a later call registers it again. What the
    /// router's HTTP front gives.
    LeaseExpiry {
        /// The agents' lease.
        lease_ms: u64,
    },
}

/// The agents' side of a replay (see the module docs).
pub struct AgentFeed {
    lifecycle: Lifecycle,
    /// Lease expiry: the server's registry decides who is live.
    registry: AgentRegistry,
    registered: Vec<bool>,
    /// Per agent, one bit per worker whose policy heard of it.
    visited: Vec<u64>,
}

impl AgentFeed {
    /// A feed for `trace`'s agents.
    pub fn new(trace: &Trace, lifecycle: Lifecycle) -> Self {
        Self {
            lifecycle,
            registry: AgentRegistry::new(u64::MAX),
            registered: vec![false; trace.agents.len()],
            visited: vec![0; trace.agents.len()],
        }
    }

    /// The events to replay: requests and answers by time, or only the
    /// requests when agents are off.
    pub fn events(&self, trace: &Trace) -> Vec<Event> {
        if self.lifecycle != Lifecycle::Off {
            trace.events()
        } else {
            (0..trace.requests.len() as u32)
                .map(Event::Request)
                .collect()
        }
    }

    /// Before `ev` is replayed: with leases, every agent silent past its
    /// lease ends first (at its deadline), then the registry learns of `ev`
    /// (a call registers an unknown agent and renews the lease; an answer
    /// renews it).
    pub fn before<P: EvictionPolicy<u32>>(&mut self, trace: &Trace, ev: Event, policies: &mut [P]) {
        let Lifecycle::LeaseExpiry { lease_ms } = self.lifecycle else {
            return;
        };
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
        while let Some(due) = self.registry.next_expiry().filter(|&due| due <= now) {
            for ended in self.registry.expire(due) {
                let a = ended as usize;
                self.registered[a] = false;
                for (k, q) in policies.iter_mut().enumerate() {
                    if self.visited[a] >> k & 1 == 1 {
                        q.on_agent_expired(ended, due);
                    }
                }
                self.visited[a] = 0;
            }
        }
        if agent == NO_AGENT {
            return;
        }
        let id = u64::from(agent);
        // An answer for an agent its lease already ended renews nothing
        // (the registry answers "unknown agent", as the server would).
        let _ = match ev {
            Event::Request(i) => {
                if self.registry.get(id).is_none() {
                    // A sub-agent whose parent already ended registers as a root.
                    let parent = trace.agents[agent as usize]
                        .parent
                        .map(u64::from)
                        .filter(|&p| self.registry.get(p).is_some());
                    let spec = AgentSpec {
                        parent,
                        lease_ms,
                        ..AgentSpec::default()
                    };
                    let _ = self.registry.register(id, spec, now);
                }
                self.registry
                    .call(id, trace.requests[i as usize].len as usize, now)
            }
            Event::Answer(_) => self.registry.answered(id, &Answer::default(), now),
        };
    }

    /// Request `i` was served by worker `w` and its blocks are resident
    /// there: the policies learn of the agent (once) and of its call.
    pub fn call<P: EvictionPolicy<u32>>(
        &mut self,
        trace: &Trace,
        i: usize,
        w: usize,
        policies: &mut [P],
    ) {
        let r = &trace.requests[i];
        if self.lifecycle == Lifecycle::Off || r.agent == NO_AGENT {
            return;
        }
        let a = r.agent as usize;
        if !self.registered[a] {
            self.registered[a] = true;
            let spec = AgentSpec {
                parent: trace.agents[a].parent.map(u64::from),
                ..AgentSpec::default()
            };
            for q in policies.iter_mut() {
                q.on_agent_register(a as u64, &spec, r.time_ms);
            }
        }
        self.visited[a] |= 1 << w;
        policies[w].on_agent_call(a as u64, trace.blocks_of(i), r.time_ms);
    }

    /// The answer to request `i`, served by worker `w`, is known; with a
    /// harness, an agent's last answer also ends it.
    pub fn answer<P: EvictionPolicy<u32>>(
        &mut self,
        trace: &Trace,
        i: usize,
        w: usize,
        policies: &mut [P],
    ) {
        let r = &trace.requests[i];
        if r.agent == NO_AGENT || !self.registered[r.agent as usize] {
            return; // ended by its lease before the answer came
        }
        let answer = Answer {
            ended: r.stop,
            ..Answer::default()
        };
        policies[w].on_agent_answered(u64::from(r.agent), &answer, r.answered_ms);
        if r.last_of_agent && self.lifecycle == Lifecycle::HarnessEnds {
            for (k, q) in policies.iter_mut().enumerate() {
                if self.visited[r.agent as usize] >> k & 1 == 1 {
                    q.on_agent_end(u64::from(r.agent), r.answered_ms);
                }
            }
        }
    }
}
