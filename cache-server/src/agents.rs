//! Agent lifecycles on the server side: validates lifecycle calls with the
//! pure [`AgentRegistry`] and forwards each accepted change to the store's
//! eviction policy through [`TieredStore::with_policy`]. The storage layer
//! never sees an agent.
//!
//! Client agent ids are strings scoped to a namespace; inside, an agent is the
//! XXH3 of (namespace id, string), so two tenants never share an agent.
//!
//! An agent belongs to the client (token principal) that registered it: no
//! other client may register it again, hint it, end it, or register a
//! sub-agent under it. Without tokens every caller is the same anonymous
//! client. Each namespace holds at most [`AgentLimits::max_agents_per_namespace`]
//! live agents.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use kvtier_policy::{AgentId, AgentRegistry, AgentSpec, Answer, CallEnd, LifecycleError};

use crate::block::{BlockKey, NamespaceId};
use crate::metrics as m;
use crate::store::TieredStore;

/// The agent id a client string maps to inside one namespace.
pub fn agent_key(namespace: NamespaceId, agent: &str) -> AgentId {
    xxh3_64_with_seed(agent.as_bytes(), u64::from(namespace) ^ 0x6167_656e_7473)
}

/// Priority class of an agent, for metric labels.
pub fn priority_class(priority: i32) -> &'static str {
    match priority {
        p if p > 0 => "high",
        0 => "normal",
        _ => "low",
    }
}

/// What a lifecycle request is about.
#[derive(Debug, Clone)]
pub struct AgentRef<'a> {
    /// Namespace id (from the session).
    pub namespace: NamespaceId,
    /// Namespace name, for quotas and metrics.
    pub namespace_name: &'a str,
    /// The client's agent id.
    pub agent: &'a str,
    /// Who is calling: the token's principal, `None` without authentication.
    pub caller: Option<&'a str>,
}

/// Bounds of the agent book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLimits {
    /// Blocks each namespace may pin through hints.
    pub pin_quota_blocks: u64,
    /// Live agents each namespace may hold.
    pub max_agents_per_namespace: usize,
    /// Longest lease a registration may ask for, in milliseconds.
    pub max_lease_ms: u64,
}

/// A lifecycle call the book refuses.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The policy's registry refused it.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The agent (or the named parent) belongs to another client.
    #[error(
        "{role} {agent:?} was registered with another token; only that token may register, \
         hint or end it, or register sub-agents under it: use an agent id of your own"
    )]
    NotOwner {
        /// `agent` or `parent agent`.
        role: &'static str,
        /// The client's agent id.
        agent: String,
    },
    /// The namespace holds its limit of live agents.
    #[error(
        "namespace '{namespace}' already has {limit} live agents, this server's limit \
         (--max-agents-per-namespace); end finished agents with EndAgent or let their leases expire"
    )]
    TooManyAgents {
        /// Namespace name.
        namespace: String,
        /// The limit.
        limit: usize,
    },
}

/// A live agent's client names and owner.
#[derive(Debug)]
struct AgentName {
    namespace: String,
    owner: Option<String>,
}

/// Client-side facts of live agents, beside the policy's registry.
#[derive(Debug, Default)]
struct Names {
    by_id: HashMap<AgentId, AgentName>,
    /// Live agents per namespace name.
    per_namespace: HashMap<String, usize>,
}

impl Names {
    /// Refuses `caller` on an agent some other client registered.
    fn check_owner(
        &self,
        id: AgentId,
        role: &'static str,
        agent: &str,
        caller: Option<&str>,
    ) -> Result<(), AgentError> {
        match self.by_id.get(&id) {
            Some(name) if name.owner.as_deref() != caller => Err(AgentError::NotOwner {
                role,
                agent: agent.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// Live agents of all namespaces and their link to the policy.
pub struct AgentBook {
    registry: Mutex<AgentRegistry>,
    /// Owners and namespaces of live agents (locked after `registry`).
    names: Mutex<Names>,
    store: Arc<TieredStore>,
    max_agents_per_namespace: usize,
    max_lease_ms: u64,
}

impl std::fmt::Debug for AgentBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBook")
            .field("live", &self.registry.lock().len())
            .finish()
    }
}

impl AgentBook {
    /// A book over `store` within `limits`.
    pub fn new(store: Arc<TieredStore>, limits: AgentLimits) -> Self {
        Self {
            registry: Mutex::new(AgentRegistry::new(limits.pin_quota_blocks)),
            names: Mutex::new(Names::default()),
            store,
            max_agents_per_namespace: limits.max_agents_per_namespace,
            max_lease_ms: limits.max_lease_ms,
        }
    }

    /// Longest lease a registration may ask for, in milliseconds.
    pub fn max_lease_ms(&self) -> u64 {
        self.max_lease_ms
    }

    /// Refuses a call on an agent another client registered (called with
    /// the registry locked).
    fn check_owner(&self, who: &AgentRef<'_>) -> Result<(), AgentError> {
        let id = agent_key(who.namespace, who.agent);
        self.names
            .lock()
            .check_owner(id, "agent", who.agent, who.caller)
    }

    /// Registers an agent; `Ok(true)` when it is new.
    pub fn register(
        &self,
        who: &AgentRef<'_>,
        parent: Option<&str>,
        priority: i32,
        latency_sensitivity: f32,
        lease_ms: u64,
    ) -> Result<bool, AgentError> {
        let id = agent_key(who.namespace, who.agent);
        let spec = AgentSpec {
            parent: parent.map(|p| agent_key(who.namespace, p)),
            priority,
            latency_sensitivity,
            namespace: who.namespace_name.to_string(),
            lease_ms,
        };
        let now = self.store.now_ms();
        let created = {
            // Checked and recorded under the registry's lock: two clients
            // racing for one agent id cannot both own it.
            let mut registry = self.registry.lock();
            let mut names = self.names.lock();
            names.check_owner(id, "agent", who.agent, who.caller)?;
            if let (Some(p), Some(parent)) = (spec.parent, parent) {
                names.check_owner(p, "parent agent", parent, who.caller)?;
            }
            let live = names
                .per_namespace
                .get(who.namespace_name)
                .copied()
                .unwrap_or(0);
            if !names.by_id.contains_key(&id) && live >= self.max_agents_per_namespace {
                return Err(AgentError::TooManyAgents {
                    namespace: who.namespace_name.to_string(),
                    limit: self.max_agents_per_namespace,
                });
            }
            let outcome = registry.register(id, spec.clone(), now)?;
            self.store
                .with_policy(|policy, now| policy.on_agent_register(id, &spec, now));
            let created = outcome == kvtier_policy::lifecycle::Registered::New;
            if created {
                names.by_id.insert(
                    id,
                    AgentName {
                        namespace: who.namespace_name.to_string(),
                        owner: who.caller.map(str::to_string),
                    },
                );
                *names
                    .per_namespace
                    .entry(who.namespace_name.to_string())
                    .or_default() += 1;
            }
            created
        };
        if created {
            metrics::gauge!(m::AGENTS_LIVE, "namespace" => who.namespace_name.to_string())
                .increment(1.0);
        }
        Ok(created)
    }

    /// A call of the agent arrived with its context `blocks` (prefix order).
    /// Returns how many of them the store holds.
    pub fn call(&self, who: &AgentRef<'_>, blocks: &[u64]) -> Result<usize, AgentError> {
        let id = agent_key(who.namespace, who.agent);
        let keys: Vec<BlockKey> = blocks
            .iter()
            .map(|&h| BlockKey::new(who.namespace, h))
            .collect();
        let now = self.store.now_ms();
        let mut registry = self.registry.lock();
        self.check_owner(who)?;
        registry.call(id, keys.len(), now)?;
        self.store
            .with_policy(|policy, now| policy.on_agent_call(id, &keys, now));
        drop(registry);
        Ok(self
            .store
            .lookup(&keys)
            .iter()
            .filter(|t| t.is_some())
            .count())
    }

    /// The agent's latest call was answered.
    pub fn answered(&self, who: &AgentRef<'_>, answer: Answer) -> Result<(), AgentError> {
        let id = agent_key(who.namespace, who.agent);
        let now = self.store.now_ms();
        let mut registry = self.registry.lock();
        self.check_owner(who)?;
        registry.answered(id, &answer, now)?;
        self.store
            .with_policy(|policy, now| policy.on_agent_answered(id, &answer, now));
        metrics::counter!(m::AGENT_HINTS, "ending" => answer.ended.as_str()).increment(1);
        Ok(())
    }

    /// Ends the agent and its live sub-agents; returns how many ended.
    pub fn end(&self, who: &AgentRef<'_>) -> Result<usize, AgentError> {
        let id = agent_key(who.namespace, who.agent);
        let now = self.store.now_ms();
        let ended = {
            let mut registry = self.registry.lock();
            self.check_owner(who)?;
            registry.end(id, now)?
        };
        self.forward_ends(&ended, "explicit");
        Ok(ended.len())
    }

    /// Ends every agent silent past its lease; returns how many ended.
    pub fn expire(&self) -> usize {
        let now = self.store.now_ms();
        let ended = self.registry.lock().expire(now);
        self.forward_ends(&ended, "lease");
        ended.len()
    }

    fn forward_ends(&self, ended: &[AgentId], reason: &'static str) {
        if ended.is_empty() {
            return;
        }
        self.store.with_policy(|policy, now| {
            for &agent in ended {
                // A lease that ran out is evidence that a wait may never end
                // in a call; the policy learns from it (issue 20).
                if reason == "lease" {
                    policy.on_agent_expired(agent, now);
                } else {
                    policy.on_agent_end(agent, now);
                }
            }
        });
        let mut names = self.names.lock();
        for agent in ended {
            let ns = names
                .by_id
                .remove(agent)
                .map(|name| name.namespace)
                .unwrap_or_default();
            if let Some(live) = names.per_namespace.get_mut(&ns) {
                *live = live.saturating_sub(1);
                if *live == 0 {
                    names.per_namespace.remove(&ns);
                }
            }
            metrics::gauge!(m::AGENTS_LIVE, "namespace" => ns.clone()).decrement(1.0);
            metrics::counter!(m::AGENTS_ENDED, "namespace" => ns, "reason" => reason).increment(1);
        }
    }

    /// Priority class of a live agent (`none` when unknown), for metrics.
    pub fn priority_class_of(&self, namespace: NamespaceId, agent: &str) -> &'static str {
        if agent.is_empty() {
            return "none";
        }
        let id = agent_key(namespace, agent);
        self.registry
            .lock()
            .get(id)
            .map_or("none", |spec| priority_class(spec.priority))
    }

    /// Live agents.
    pub fn live(&self) -> usize {
        self.registry.lock().len()
    }
}

/// Maps a wire ending to the policy's.
pub fn call_end(ending: i32) -> CallEnd {
    match kvtier_proto::v1::CallEnding::try_from(ending) {
        Ok(kvtier_proto::v1::CallEnding::ToolCall) => CallEnd::ToolCall,
        Ok(kvtier_proto::v1::CallEnding::EndOfTurn) => CallEnd::EndOfTurn,
        _ => CallEnd::Unknown,
    }
}
