//! Starting one model: the cache-server handshake (which gives the hashing
//! seed; in a cluster, with one member), the prompt model, its own index fed by its workers' agents and its
//! cache namespace, and its router.

use std::sync::Arc;
use std::time::Duration;

use kvtier_proto::hashing::{effective_seed, BlockHasher};
use kvtier_proto::v1::{HandshakeResponse, HashingConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{StartConfig, StartError};
use crate::app::ModelState;
use crate::index::{LocalityIndex, SharedIndex};
use crate::lifecycle::{CacheLifecycle, ClusterLifecycle, Lifecycle};
use crate::load::LoadBook;
use crate::models_file::ModelSpec;
use crate::routing::ModelRouter;
use crate::sources;

/// How long a worker's load report counts (the `LoadBook` window).
const LOAD_REPORT_WINDOW: Duration = Duration::from_secs(2);
/// How long a router in a cluster waits at start for a membership to ask
/// the hashing seed from.
const CLUSTER_HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// What serving one model needs that outlives its set-up.
pub(super) struct StartedModel {
    pub(super) state: ModelState,
    /// Its event sources, which end when the stop channel says so.
    pub(super) sources: Vec<JoinHandle<()>>,
}

/// Sets one model up; its sources stop when `stop_rx` turns true.
pub(super) async fn start_model(
    spec: &ModelSpec,
    config: &StartConfig,
    membership: Option<&kvtier_cluster::MembershipWatch>,
    stop_rx: &watch::Receiver<bool>,
) -> Result<StartedModel, StartError> {
    let workers = spec.endpoints()?;
    let hashing = HashingConfig {
        block_tokens: spec.block_tokens,
        seed: spec.seed,
        salt: spec.salt.clone(),
        block_bytes: spec.block_bytes,
        kv_layout: spec.kv_layout.clone(),
        model: spec.model.clone(),
    };

    // The hashing seed: the cache server's answer wins (it folds a tenant
    // salt in when tokens are in use); without it, the local computation.
    let mut seed = effective_seed(spec.seed, &spec.salt);
    let lifecycle = match (&config.cache_server, membership) {
        (_, Some(membership)) => {
            let lifecycle = ClusterLifecycle::new(
                membership.clone(),
                &config.security,
                &spec.namespace,
                hashing.clone(),
            );
            let answer = lifecycle.handshake(CLUSTER_HANDSHAKE_WAIT).await;
            seed = checked_seed(answer, spec, "no cache server of the cluster answered")?
                .unwrap_or(seed);
            Some(Arc::new(Lifecycle::Cluster(lifecycle)))
        }
        (Some(url), None) => {
            let lifecycle =
                CacheLifecycle::new(url, &config.security, &spec.namespace, hashing.clone())
                    .map_err(StartError::Lifecycle)?;
            let answer = lifecycle.handshake().await;
            seed = checked_seed(answer, spec, "cache server unreachable")?.unwrap_or(seed);
            Some(Arc::new(Lifecycle::Server(lifecycle)))
        }
        (None, None) => None,
    };
    let prompt = match &spec.tokenizer {
        Some(path) => Some(
            kvtier_prompt::PromptModel::load(
                path,
                spec.chat_template.as_deref(),
                spec.block_tokens as usize,
                seed,
            )
            .map_err(|source| StartError::Tokenizer {
                model: spec.model.clone(),
                path: path.clone(),
                source,
            })?,
        ),
        None => {
            tracing::warn!(
                model = %spec.model,
                "no tokenizer: the HTTP front answers 503 for this model; gRPC queries by hash work"
            );
            None
        }
    };

    let index: SharedIndex = crate::index::shared(LocalityIndex::new());
    let states = sources::WorkerStates::new(config.unreachable);
    let source_config = sources::WorkerSourceConfig {
        expiry: config.expiry,
        agent_client: config.agent_client.clone(),
        ..sources::WorkerSourceConfig::default()
    };
    let mut source_tasks = Vec::new();
    for worker in &workers {
        source_tasks.push(sources::spawn_worker_source(
            sources::AgentEndpoint {
                worker_id: worker.worker_id.clone(),
                agent_url: worker.agent_url.clone(),
            },
            index.clone(),
            states.clone(),
            source_config.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(membership) = membership {
        source_tasks.push(sources::spawn_cluster_sources(
            sources::ClusterSourceConfig {
                namespace: spec.namespace.clone(),
                hashing: hashing.clone(),
                security: config.security.clone(),
            },
            membership.clone(),
            index.clone(),
            Default::default(),
            stop_rx.clone(),
        ));
    }
    if let Some(url) = &config.cache_server {
        source_tasks.push(sources::spawn_cache_source(
            sources::CacheSourceConfig {
                security: config.security.clone(),
                ..sources::CacheSourceConfig::new(url, &spec.namespace, hashing)
            },
            index.clone(),
            sources::CacheState::default(),
            stop_rx.clone(),
        ));
    }
    let router = ModelRouter::new(
        &spec.model,
        BlockHasher::new(spec.block_tokens as usize, seed),
        index,
        workers,
        Arc::new(states),
        LoadBook::new(LOAD_REPORT_WINDOW),
        config.weights.clone(),
    )
    .with_mode(config.routing);
    let router = match config.admission {
        Some(admission) => router.with_admission(admission),
        None => router,
    };
    Ok(StartedModel {
        state: ModelState {
            namespace: spec.namespace.clone(),
            router,
            prompt,
            lifecycle,
        },
        sources: source_tasks,
    })
}

/// The seed the cache server (or cluster) hashes the namespace with, from
/// its handshake `answer`; None when it is unreachable (logged with
/// `unreachable`: the router then hashes with the local seed). A refused
/// namespace or refused credentials stop the router.
fn checked_seed(
    answer: Result<HandshakeResponse, tonic::Status>,
    spec: &ModelSpec,
    unreachable: &str,
) -> Result<Option<u64>, StartError> {
    match answer {
        Ok(response) => Ok(Some(response.effective_seed)),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            Err(StartError::NamespaceRefused {
                namespace: spec.namespace.clone(),
                model: spec.model.clone(),
                message: status.message().to_string(),
            })
        }
        // Hashing with the local seed would silently miss a tenant's
        // blocks: wrong credentials stop the router.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) =>
        {
            Err(StartError::Credentials {
                namespace: spec.namespace.clone(),
                model: spec.model.clone(),
                code: status.code(),
                message: status.message().to_string(),
            })
        }
        Err(status) => {
            tracing::warn!(
                model = %spec.model,
                error = %status.message(),
                "{unreachable} at start; hashing with the local seed"
            );
            Ok(None)
        }
    }
}
