//! The agent registry: who is live, who spawned whom, leases and pin quotas.
//!
//! The registry validates what clients say about their agents and keeps the
//! bookkeeping that is not about blocks; it holds no keys. Every accepted
//! change is forwarded by the caller to the store's [`crate::EvictionPolicy`]
//! (see the crate docs for the exact mapping). Pure: time is passed in.

use std::collections::{BTreeSet, HashMap};

use thiserror::Error;

use crate::agent::{AgentId, AgentSpec, Answer};

/// Why a lifecycle request was refused. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LifecycleError {
    /// The agent was never registered, already ended, or its lease expired.
    #[error("unknown agent {0}: register it first (it may have ended or its lease expired)")]
    UnknownAgent(AgentId),
    /// The declared parent is not a live agent.
    #[error("agent {agent}: parent agent {parent} is not registered (register the parent first)")]
    UnknownParent {
        /// The agent being registered.
        agent: AgentId,
        /// Its declared parent.
        parent: AgentId,
    },
    /// The declared parent chain leads back to the agent itself.
    #[error("agent {0}: its parent chain leads back to itself")]
    ParentCycle(AgentId),
    /// A lease of 0 ms would end the agent at once.
    #[error("agent {0}: lease must be greater than 0 ms")]
    ZeroLease(AgentId),
    /// Latency sensitivity outside `0.0..=1.0` (or not a number).
    #[error("agent {agent}: latency sensitivity {value} is outside 0.0..=1.0")]
    BadLatencySensitivity {
        /// The agent being registered.
        agent: AgentId,
        /// The value given.
        value: f32,
    },
    /// The id is live with other parameters; end it first or use a new id.
    #[error("agent {0} is already registered with different parameters")]
    Conflict(AgentId),
    /// Pinning this agent's context would pass its namespace's pin quota.
    #[error(
        "agent {agent}: pinning {requested} blocks would exceed the pin quota of namespace \
         {namespace:?} ({pinned} of {quota} blocks pinned already)"
    )]
    PinQuotaExceeded {
        /// The agent asking for the pin.
        agent: AgentId,
        /// Its namespace.
        namespace: String,
        /// Blocks it asked to pin.
        requested: u64,
        /// Blocks pinned by other agents of the namespace.
        pinned: u64,
        /// The namespace's quota.
        quota: u64,
    },
}

/// Whether [`AgentRegistry::register`] created the agent or found it live with
/// the same parameters (registration is idempotent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new agent.
    New,
    /// Already live with identical parameters; its lease was renewed.
    Existing,
}

#[derive(Debug, Clone)]
struct Entry {
    spec: AgentSpec,
    deadline: u64,
    children: Vec<AgentId>,
    context_blocks: u64,
    pinned_blocks: u64,
}

/// Live agents, their leases and the pins per namespace.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: HashMap<AgentId, Entry>,
    /// `(deadline, agent)` for every live agent, earliest first.
    leases: BTreeSet<(u64, AgentId)>,
    pinned: HashMap<String, u64>,
    default_pin_quota: u64,
    pin_quotas: HashMap<String, u64>,
}

impl AgentRegistry {
    /// An empty registry; each namespace may pin at most `default_pin_quota` blocks.
    pub fn new(default_pin_quota: u64) -> Self {
        Self {
            agents: HashMap::new(),
            leases: BTreeSet::new(),
            pinned: HashMap::new(),
            default_pin_quota,
            pin_quotas: HashMap::new(),
        }
    }

    /// Sets the pin quota (blocks) of one namespace.
    pub fn set_pin_quota(&mut self, namespace: impl Into<String>, blocks: u64) {
        self.pin_quotas.insert(namespace.into(), blocks);
    }

    /// The pin quota of `namespace` in blocks.
    pub fn pin_quota(&self, namespace: &str) -> u64 {
        self.pin_quotas
            .get(namespace)
            .copied()
            .unwrap_or(self.default_pin_quota)
    }

    /// Blocks pinned in `namespace`.
    pub fn pinned(&self, namespace: &str) -> u64 {
        self.pinned.get(namespace).copied().unwrap_or(0)
    }

    /// Number of live agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is live.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The spec of a live agent.
    pub fn get(&self, agent: AgentId) -> Option<&AgentSpec> {
        self.agents.get(&agent).map(|e| &e.spec)
    }

    /// Registers `agent`. Idempotent for identical parameters.
    pub fn register(
        &mut self,
        agent: AgentId,
        spec: AgentSpec,
        now_ms: u64,
    ) -> Result<Registered, LifecycleError> {
        if spec.lease_ms == 0 {
            return Err(LifecycleError::ZeroLease(agent));
        }
        if !(0.0..=1.0).contains(&spec.latency_sensitivity) {
            return Err(LifecycleError::BadLatencySensitivity {
                agent,
                value: spec.latency_sensitivity,
            });
        }
        if let Some(e) = self.agents.get(&agent) {
            if e.spec != spec {
                return Err(LifecycleError::Conflict(agent));
            }
            self.renew(agent, now_ms);
            return Ok(Registered::Existing);
        }
        if let Some(parent) = spec.parent {
            if parent == agent {
                return Err(LifecycleError::ParentCycle(agent));
            }
            let Some(p) = self.agents.get_mut(&parent) else {
                return Err(LifecycleError::UnknownParent { agent, parent });
            };
            p.children.push(agent);
        }
        let deadline = now_ms.saturating_add(spec.lease_ms);
        self.leases.insert((deadline, agent));
        self.agents.insert(
            agent,
            Entry {
                spec,
                deadline,
                children: Vec::new(),
                context_blocks: 0,
                pinned_blocks: 0,
            },
        );
        Ok(Registered::New)
    }

    /// A call of `agent` arrived with a context of `blocks` blocks. Renews the
    /// lease of the agent and of its ancestors (a parent waiting on a
    /// sub-agent is not silent).
    pub fn call(
        &mut self,
        agent: AgentId,
        blocks: usize,
        now_ms: u64,
    ) -> Result<(), LifecycleError> {
        let e = self
            .agents
            .get_mut(&agent)
            .ok_or(LifecycleError::UnknownAgent(agent))?;
        e.context_blocks = blocks as u64;
        self.renew(agent, now_ms);
        Ok(())
    }

    /// The latest call of `agent` was answered. A pin covers the agent's latest
    /// context and is refused (leaving the previous pin state) when it would
    /// pass the namespace quota; `pin: false` releases a previous pin.
    pub fn answered(
        &mut self,
        agent: AgentId,
        answer: &Answer,
        now_ms: u64,
    ) -> Result<(), LifecycleError> {
        let e = self
            .agents
            .get(&agent)
            .ok_or(LifecycleError::UnknownAgent(agent))?;
        let ns = e.spec.namespace.clone();
        let want = if answer.pin { e.context_blocks } else { 0 };
        let others = self.pinned(&ns).saturating_sub(e.pinned_blocks);
        let quota = self.pin_quota(&ns);
        if want > 0 && others.saturating_add(want) > quota {
            return Err(LifecycleError::PinQuotaExceeded {
                agent,
                namespace: ns,
                requested: want,
                pinned: others,
                quota,
            });
        }
        self.set_pinned(agent, want);
        self.renew(agent, now_ms);
        Ok(())
    }

    /// Ends `agent` and its live descendants; returns every ended id,
    /// descendants before their parents.
    pub fn end(&mut self, agent: AgentId, _now_ms: u64) -> Result<Vec<AgentId>, LifecycleError> {
        if !self.agents.contains_key(&agent) {
            return Err(LifecycleError::UnknownAgent(agent));
        }
        let mut ended = Vec::new();
        self.end_tree(agent, &mut ended);
        Ok(ended)
    }

    /// When the next lease runs out, if any agent is live.
    pub fn next_expiry(&self) -> Option<u64> {
        self.leases.first().map(|&(deadline, _)| deadline)
    }

    /// Ends every agent silent past its lease (and its descendants); returns the ended ids.
    pub fn expire(&mut self, now_ms: u64) -> Vec<AgentId> {
        let mut ended = Vec::new();
        while let Some(&(deadline, agent)) = self.leases.first() {
            if deadline > now_ms {
                break;
            }
            self.end_tree(agent, &mut ended);
        }
        ended
    }

    fn end_tree(&mut self, agent: AgentId, ended: &mut Vec<AgentId>) {
        let mut stack = vec![(agent, false)];
        while let Some((id, expanded)) = stack.pop() {
            let Some(e) = self.agents.get(&id) else {
                continue;
            };
            if !expanded {
                stack.push((id, true));
                stack.extend(e.children.iter().map(|&c| (c, false)));
                continue;
            }
            self.set_pinned(id, 0);
            if let Some(e) = self.agents.remove(&id) {
                self.leases.remove(&(e.deadline, id));
                if let Some(p) = e.spec.parent.and_then(|p| self.agents.get_mut(&p)) {
                    p.children.retain(|&c| c != id);
                }
                ended.push(id);
            }
        }
    }

    fn set_pinned(&mut self, agent: AgentId, blocks: u64) {
        let Some(e) = self.agents.get_mut(&agent) else {
            return;
        };
        let old = std::mem::replace(&mut e.pinned_blocks, blocks);
        let total = self.pinned.entry(e.spec.namespace.clone()).or_insert(0);
        *total = total.saturating_sub(old).saturating_add(blocks);
    }

    fn renew(&mut self, agent: AgentId, now_ms: u64) {
        let mut next = Some(agent);
        while let Some(id) = next {
            let Some(e) = self.agents.get_mut(&id) else {
                break;
            };
            let deadline = now_ms.saturating_add(e.spec.lease_ms).max(e.deadline);
            if deadline != e.deadline {
                self.leases.remove(&(e.deadline, id));
                self.leases.insert((deadline, id));
                e.deadline = deadline;
            }
            next = e.spec.parent;
        }
    }
}

#[cfg(test)]
mod tests;
