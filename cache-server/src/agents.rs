//! Agent lifecycles on the server side: validates lifecycle calls with the
//! pure [`AgentRegistry`] and forwards each accepted change to the store's
//! eviction policy through [`TieredStore::with_policy`]. The storage layer
//! never sees an agent.
//!
//! Client agent ids are strings scoped to a namespace; inside, an agent is the
//! XXH3 of (namespace id, string), so two tenants never share an agent.

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
}

/// Live agents of all namespaces and their link to the policy.
pub struct AgentBook {
    registry: Mutex<AgentRegistry>,
    /// Client names of live agents, for logs and metrics.
    names: Mutex<HashMap<AgentId, (String, String)>>,
    store: Arc<TieredStore>,
}

impl std::fmt::Debug for AgentBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBook")
            .field("live", &self.registry.lock().len())
            .finish()
    }
}

impl AgentBook {
    /// A book over `store`; each namespace may pin `pin_quota_blocks` blocks.
    pub fn new(store: Arc<TieredStore>, pin_quota_blocks: u64) -> Self {
        Self {
            registry: Mutex::new(AgentRegistry::new(pin_quota_blocks)),
            names: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// Registers an agent; `Ok(true)` when it is new.
    pub fn register(
        &self,
        who: &AgentRef<'_>,
        parent: Option<&str>,
        priority: i32,
        latency_sensitivity: f32,
        lease_ms: u64,
    ) -> Result<bool, LifecycleError> {
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
            let mut registry = self.registry.lock();
            let outcome = registry.register(id, spec.clone(), now)?;
            self.store
                .with_policy(|policy, now| policy.on_agent_register(id, &spec, now));
            outcome == kvtier_policy::lifecycle::Registered::New
        };
        if created {
            self.names
                .lock()
                .insert(id, (who.namespace_name.to_string(), who.agent.to_string()));
            metrics::gauge!(m::AGENTS_LIVE, "namespace" => who.namespace_name.to_string())
                .increment(1.0);
        }
        Ok(created)
    }

    /// A call of the agent arrived with its context `blocks` (prefix order).
    /// Returns how many of them the store holds.
    pub fn call(&self, who: &AgentRef<'_>, blocks: &[u64]) -> Result<usize, LifecycleError> {
        let id = agent_key(who.namespace, who.agent);
        let keys: Vec<BlockKey> = blocks
            .iter()
            .map(|&h| BlockKey::new(who.namespace, h))
            .collect();
        let now = self.store.now_ms();
        let mut registry = self.registry.lock();
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
    pub fn answered(&self, who: &AgentRef<'_>, answer: Answer) -> Result<(), LifecycleError> {
        let id = agent_key(who.namespace, who.agent);
        let now = self.store.now_ms();
        let mut registry = self.registry.lock();
        registry.answered(id, &answer, now)?;
        self.store
            .with_policy(|policy, now| policy.on_agent_answered(id, &answer, now));
        metrics::counter!(m::AGENT_HINTS, "ending" => answer.ended.as_str()).increment(1);
        Ok(())
    }

    /// Ends the agent and its live sub-agents; returns how many ended.
    pub fn end(&self, who: &AgentRef<'_>) -> Result<usize, LifecycleError> {
        let id = agent_key(who.namespace, who.agent);
        let now = self.store.now_ms();
        let ended = self.registry.lock().end(id, now)?;
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
                policy.on_agent_end(agent, now);
            }
        });
        let mut names = self.names.lock();
        for agent in ended {
            let ns = names.remove(agent).map(|(ns, _)| ns).unwrap_or_default();
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
