//! Agent lifecycles and hints for a cluster of cache servers
//! (`--cluster etcd://...`): every server keeps its own agent book and
//! value policy, and a block lives on one shard, so every member learns
//! every agent and every hint. Each call goes to every member of the
//! current membership (active and draining) concurrently, through one
//! [`CacheLifecycle`] session per member, kept per (node id, epoch,
//! address): made when the member is first called, dropped at the first
//! call after it left. A member that joins (or registers again with a new
//! epoch) learns a live agent at its next hint: its session has not
//! registered the agent yet, so it registers it first (and a member that
//! answers "unknown agent" gets it registered again and the hint retried).
//!
//! A failing member costs only its own copy of a call; see
//! [`fanout::merge`] for the answer a custom router gets.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kvtier_cluster::MembershipWatch;
use kvtier_proto::v1::{
    EndAgentResponse, HandshakeResponse, HashingConfig, HintRequest, HintResponse,
    RegisterAgentResponse,
};
use kvtier_security::ServerClient;
use parking_lot::Mutex;
use tonic::Status;

use super::fanout::{self, MemberKey, Sessions};
use super::{AgentSpec, CacheLifecycle};

/// Agents remembered with their parameters (to register them on members
/// that do not know them yet); then the map starts again.
const SPECS_CAPACITY: usize = 200_000;

/// The lifecycle client of one namespace over a cluster's members.
#[derive(Debug)]
pub struct ClusterLifecycle {
    membership: MembershipWatch,
    security: ServerClient,
    namespace: String,
    config: HashingConfig,
    sessions: Mutex<Sessions<Arc<CacheLifecycle>>>,
    /// Agents registered through this router, by id.
    specs: Mutex<HashMap<String, AgentSpec>>,
}

impl ClusterLifecycle {
    /// A client of the members `membership` follows, for `namespace` hashed
    /// with `config`, with TLS (`https://<grpc>`) and the bearer token of
    /// `security`; connects lazily.
    pub fn new(
        membership: MembershipWatch,
        security: &ServerClient,
        namespace: &str,
        config: HashingConfig,
    ) -> Self {
        Self {
            membership,
            security: security.clone(),
            namespace: namespace.to_string(),
            config,
            sessions: Mutex::new(Sessions::default()),
            specs: Mutex::new(HashMap::new()),
        }
    }

    /// The sessions of `targets` (made for members not seen before).
    fn sessions(&self, targets: &[MemberKey]) -> Vec<(MemberKey, Arc<CacheLifecycle>)> {
        let scheme = if self.security.tls() { "https" } else { "http" };
        self.sessions.lock().sync(
            targets,
            |key| {
                CacheLifecycle::new(
                    &format!("{scheme}://{}", key.grpc),
                    &self.security,
                    &self.namespace,
                    self.config.clone(),
                )
                .map(Arc::new)
            },
            |key, error| {
                tracing::warn!(shard = %key.id, %error, "cluster: no lifecycle session for a member");
            },
        )
    }

    /// Handshakes the namespace with one member, for the hashing seed the
    /// servers use: waits up to `wait` for a membership, then asks active
    /// members first, the next one when a member cannot be reached. A
    /// member's refusal (a config that differs, credentials) is the
    /// cluster's: returned at once.
    pub async fn handshake(&self, wait: Duration) -> Result<HandshakeResponse, Status> {
        let (membership, _) = self
            .membership
            .wait_for(wait, |m| m.synced && !m.members.is_empty())
            .await;
        let order = fanout::handshake_order(&membership);
        let mut last = Status::unavailable(if membership.synced {
            "no cache server in the cluster's membership"
        } else {
            "the cluster's etcd has not answered"
        });
        for (key, session) in self.sessions(&order) {
            match session.handshake().await {
                Ok(response) => return Ok(response),
                Err(status) if !fanout::is_transport(status.code()) => return Err(status),
                Err(status) => {
                    tracing::warn!(shard = %key.id, error = %status.message(),
                        "cluster: handshake failed; trying the next member");
                    last = Status::new(status.code(), format!("{}: {}", key.id, status.message()));
                }
            }
        }
        Err(last)
    }

    /// Runs `call` on every member's session concurrently; the answers in
    /// node-id order.
    async fn fan<T, F, Fut>(&self, call: F) -> Vec<(String, Result<T, Status>)>
    where
        F: Fn(Arc<CacheLifecycle>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let members = self.sessions(&fanout::targets(&self.membership.current()));
        let calls = members.into_iter().map(|(key, session)| {
            let call = call(session);
            async move {
                let result = call.await;
                if let Err(status) = &result {
                    tracing::debug!(shard = %key.id, error = %status.message(),
                        "cluster: a member's copy of a lifecycle call failed");
                }
                (key.id, result)
            }
        });
        join_all(calls).await
    }

    fn remember(&self, agent: &AgentSpec) {
        let mut specs = self.specs.lock();
        if specs.len() >= SPECS_CAPACITY && !specs.contains_key(&agent.agent_id) {
            specs.clear();
        }
        specs.insert(agent.agent_id.clone(), agent.clone());
    }

    /// Registers an agent on every member (forwarded as is).
    pub async fn register_agent(&self, agent: &AgentSpec) -> Result<RegisterAgentResponse, Status> {
        self.remember(agent);
        let answers = self
            .fan(|s| async move { s.register_agent(agent).await })
            .await;
        fanout::merge(answers, fanout::combine_register)
    }

    /// A call's arrival: on every member, registers the agent unless that
    /// member's session did, then hints.
    pub async fn register_and_hint(
        &self,
        agent: &AgentSpec,
        request: HintRequest,
    ) -> Result<HintResponse, Status> {
        self.remember(agent);
        let hinted = request.blocks.len();
        let answers = self
            .fan(|s| {
                let request = request.clone();
                async move {
                    s.ensure_registered(agent).await?;
                    s.hint(request, Some(agent)).await
                }
            })
            .await;
        fanout::merge(answers, |a| fanout::combine_hint(a, hinted))
    }

    /// Sends a hint to every member. A member that does not know the agent
    /// registers it first when it was registered through this router
    /// (`agent`, else the parameters it was registered with).
    pub async fn hint(
        &self,
        request: HintRequest,
        agent: Option<&AgentSpec>,
    ) -> Result<HintResponse, Status> {
        let known = match agent {
            Some(agent) => Some(agent.clone()),
            None => self.specs.lock().get(&request.agent_id).cloned(),
        };
        let hinted = request.blocks.len();
        let answers = self
            .fan(|s| {
                let request = request.clone();
                let known = known.as_ref();
                async move { s.hint(request, known).await }
            })
            .await;
        fanout::merge(answers, |a| fanout::combine_hint(a, hinted))
    }

    /// Ends an agent on every member.
    pub async fn end_agent(&self, agent_id: &str) -> Result<EndAgentResponse, Status> {
        self.specs.lock().remove(agent_id);
        let answers = self
            .fan(|s| async move { s.end_agent(agent_id).await })
            .await;
        fanout::merge(answers, fanout::combine_end)
    }
}
