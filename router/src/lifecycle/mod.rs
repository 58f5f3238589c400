//! Agent lifecycles at the cache: the router registers the agents it sees,
//! sends each call's hints (blocks when the call arrives, how it ended once
//! answered) and forwards the gRPC lifecycle calls of custom routers.
//!
//! [`Lifecycle`] is what the rest of the router calls, whichever the
//! cache is:
//! - [`CacheLifecycle`] (`server`): one `--cache-server`.
//! - [`ClusterLifecycle`] (`cluster`): every member of a `--cluster`,
//!   concurrently, one `CacheLifecycle` per member; [`fanout`] is its pure
//!   side (which members, which sessions, merged answers).

mod cluster;
pub mod fanout;
mod server;

pub use cluster::ClusterLifecycle;
pub use server::CacheLifecycle;

use kvtier_proto::v1::{EndAgentResponse, HintRequest, HintResponse, RegisterAgentResponse};
use tonic::Status;

/// An agent as the router registers it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSpec {
    /// The agent id.
    pub agent_id: String,
    /// Its parent (sub-agents); empty for a root agent.
    pub parent_agent_id: String,
    /// -8..=8.
    pub priority: i32,
    /// 0.0..=1.0.
    pub latency_sensitivity: f32,
    /// Lease; None: the server's default.
    pub lease_ms: Option<u64>,
}

/// The lifecycle client of one namespace: one server or a cluster.
#[derive(Debug)]
pub enum Lifecycle {
    /// One cache server (`--cache-server`).
    Server(CacheLifecycle),
    /// Every member of a cluster (`--cluster`).
    Cluster(ClusterLifecycle),
}

impl Lifecycle {
    /// Registers an agent (forwarded as is; in a cluster, to every member).
    pub async fn register_agent(&self, agent: &AgentSpec) -> Result<RegisterAgentResponse, Status> {
        match self {
            Self::Server(s) => s.register_agent(agent).await,
            Self::Cluster(c) => c.register_agent(agent).await,
        }
    }

    /// A call's arrival: registers its agent unless this router did, then
    /// sends the hint.
    pub async fn register_and_hint(
        &self,
        agent: &AgentSpec,
        request: HintRequest,
    ) -> Result<HintResponse, Status> {
        match self {
            Self::Server(s) => {
                s.ensure_registered(agent).await?;
                s.hint(request, Some(agent)).await
            }
            Self::Cluster(c) => c.register_and_hint(agent, request).await,
        }
    }

    /// Sends a hint. An agent the server does not know is registered again
    /// with `agent` and the hint retried (in a cluster, also with the
    /// parameters it was registered with through this router).
    pub async fn hint(
        &self,
        request: HintRequest,
        agent: Option<&AgentSpec>,
    ) -> Result<HintResponse, Status> {
        match self {
            Self::Server(s) => s.hint(request, agent).await,
            Self::Cluster(c) => c.hint(request, agent).await,
        }
    }

    /// Ends an agent.
    pub async fn end_agent(&self, agent_id: &str) -> Result<EndAgentResponse, Status> {
        match self {
            Self::Server(s) => s.end_agent(agent_id).await,
            Self::Cluster(c) => c.end_agent(agent_id).await,
        }
    }
}
