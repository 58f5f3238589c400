//! The router's session with one cache server for agent lifecycles
//! (`--cache-server`, and each member of a cluster).
//!
//! The session is opened lazily and renewed when the server forgets it
//! (restart); an unreachable server costs a call its hint, never the call.

use std::collections::HashSet;
use std::time::Duration;

use kvtier_security::{AuthChannel, ServerClient};
use parking_lot::Mutex;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{
    EndAgentRequest, EndAgentResponse, HandshakeRequest, HandshakeResponse, HashingConfig,
    HintRequest, HintResponse, RegisterAgentRequest, RegisterAgentResponse,
};

use super::AgentSpec;

/// How long one lifecycle call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Agents remembered as registered (then the set starts again: a
/// re-registration with the same parameters only renews the lease).
const REGISTERED_CAPACITY: usize = 200_000;

/// The lifecycle client of one namespace on one server.
#[derive(Debug)]
pub struct CacheLifecycle {
    client: CacheServiceClient<AuthChannel>,
    handshake: HandshakeRequest,
    session: Mutex<String>,
    registered: Mutex<HashSet<String>>,
}

impl CacheLifecycle {
    /// A client of `url` for `namespace` hashed with `config`, with TLS and
    /// the bearer token of `security`; connects lazily.
    pub fn new(
        url: &str,
        security: &ServerClient,
        namespace: &str,
        config: HashingConfig,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad cache server address {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let channel = security
            .configure(endpoint)
            .map_err(|e| format!("cache server {url}: {e}"))?
            .connect_lazy();
        Ok(Self {
            client: CacheServiceClient::new(security.intercept(channel)),
            handshake: HandshakeRequest {
                namespace: namespace.to_string(),
                config: Some(config),
                client_name: "kvtier-router".to_string(),
            },
            session: Mutex::new(String::new()),
            registered: Mutex::new(HashSet::new()),
        })
    }

    /// Handshakes now (the router checks its hashing against the server's at start).
    pub async fn handshake(&self) -> Result<HandshakeResponse, Status> {
        let mut client = self.client.clone();
        let response = tokio::time::timeout(CALL_TIMEOUT, client.handshake(self.handshake.clone()))
            .await
            .map_err(|_| Status::deadline_exceeded("cache server handshake timed out"))??
            .into_inner();
        *self.session.lock() = response.session_id.clone();
        Ok(response)
    }

    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(CacheServiceClient<AuthChannel>, String) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let attempt = async {
            let mut session = self.session.lock().clone();
            if session.is_empty() {
                session = self.handshake().await?.session_id;
            }
            match call(self.client.clone(), session).await {
                Err(status) if kvtier_proto::is_unknown_session(&status) => {
                    let session = self.handshake().await?.session_id;
                    call(self.client.clone(), session).await
                }
                other => other,
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, attempt)
            .await
            .map_err(|_| Status::deadline_exceeded("cache server call timed out"))?
            .map(tonic::Response::into_inner)
    }

    /// Registers an agent (forwarded as is).
    pub async fn register_agent(&self, agent: &AgentSpec) -> Result<RegisterAgentResponse, Status> {
        let response = self
            .call(|mut c, session_id| {
                let request = RegisterAgentRequest {
                    session_id,
                    agent_id: agent.agent_id.clone(),
                    parent_agent_id: agent.parent_agent_id.clone(),
                    priority: agent.priority,
                    latency_sensitivity: agent.latency_sensitivity,
                    lease_ms: agent.lease_ms,
                };
                async move { c.register_agent(request).await }
            })
            .await?;
        self.remember(&agent.agent_id);
        Ok(response)
    }

    fn remember(&self, agent_id: &str) {
        let mut registered = self.registered.lock();
        if registered.len() >= REGISTERED_CAPACITY {
            registered.clear();
        }
        registered.insert(agent_id.to_string());
    }

    /// Registers the agent unless this router already did. A live agent
    /// registered with other parameters (ALREADY_EXISTS) keeps its first ones.
    pub async fn ensure_registered(&self, agent: &AgentSpec) -> Result<(), Status> {
        if self.registered.lock().contains(&agent.agent_id) {
            return Ok(());
        }
        match self.register_agent(agent).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                self.remember(&agent.agent_id);
                Ok(())
            }
            Err(status) => Err(status),
        }
    }

    /// Sends a hint (the session id is filled in). When the agent is unknown
    /// (its lease ran out, the server restarted) and `agent` is given, it is
    /// registered again and the hint retried once.
    pub async fn hint(
        &self,
        request: HintRequest,
        agent: Option<&AgentSpec>,
    ) -> Result<HintResponse, Status> {
        let send = |request: HintRequest| {
            self.call(move |mut c, session_id| {
                let request = HintRequest {
                    session_id,
                    ..request.clone()
                };
                async move { c.hint(request).await }
            })
        };
        match send(request.clone()).await {
            Err(status) if status.code() == Code::NotFound && agent.is_some() => {
                if let Some(agent) = agent {
                    self.registered.lock().remove(&agent.agent_id);
                    self.ensure_registered(agent).await?;
                }
                send(request).await
            }
            other => other,
        }
    }

    /// Ends an agent.
    pub async fn end_agent(&self, agent_id: &str) -> Result<EndAgentResponse, Status> {
        let response = self
            .call(|mut c, session_id| {
                let request = EndAgentRequest {
                    session_id,
                    agent_id: agent_id.to_string(),
                };
                async move { c.end_agent(request).await }
            })
            .await?;
        self.registered.lock().remove(agent_id);
        Ok(response)
    }
}
