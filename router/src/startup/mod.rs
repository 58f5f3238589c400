//! Starting a router in-process: the models it serves, each with its index,
//! event sources, cache-server session and prompt model, from plain config
//! (no command-line types). The `kvtier-router` binary turns its flags into a
//! [`StartConfig`]; [`crate::server::serve`] then puts the started models
//! behind the HTTP front and the gRPC service.
//!
//! - [`model`]: one model's set-up (handshake, prompt model, index, sources,
//!   placement).
//! - [`weights`]: the cost weights as flags give them, checked.

mod model;
mod weights;

use std::path::PathBuf;
use std::time::Duration;

use kvtier_security::ServerClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::AdmissionConfig;
use crate::app::Models;
use crate::cost::CostWeights;
use crate::models_file::{self, ModelSpec, ModelsFileError, WorkerSpecError};
use crate::routing::RoutingMode;

pub use weights::{weights_from_flags, WeightsError};

/// What the router starts with; every field is shared by all models.
#[derive(Debug, Clone)]
pub struct StartConfig {
    /// The models served (names and worker ids unique across them).
    pub models: Vec<ModelSpec>,
    /// The cache server's gRPC URL; None: route on worker HBM only, no
    /// hints, no lifecycle API.
    pub cache_server: Option<String>,
    /// A cluster of cache servers (`--cluster etcd://...`): one event
    /// stream per member instead of `cache_server`'s, the hashing seed from
    /// one member's handshake, and hints and lifecycle calls sent to every
    /// member. None: one server or none.
    pub cluster: Option<kvtier_cluster::ClusterUrl>,
    /// How to reach the cache server (TLS material, token).
    pub security: ServerClient,
    /// How to reach the workers' agents (token; CA for `https://` agents).
    pub agent_client: ServerClient,
    /// The cost model's weights (see [`weights_from_flags`]).
    pub weights: CostWeights,
    /// How workers are picked.
    pub routing: RoutingMode,
    /// The admission queue; None: every call is sent at once.
    pub admission: Option<AdmissionConfig>,
    /// A worker whose event stream stays down this long loses its index
    /// entries (`--expire-ms`, 10 s).
    pub expiry: Duration,
    /// A worker whose endpoint refused a connection gets no traffic for this
    /// long, unless its agent's events show it alive sooner
    /// (`--unreachable-ms`, 5 s).
    pub unreachable: Duration,
}

/// Why the router could not start its models.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The list of models is not valid.
    #[error(transparent)]
    Models(#[from] ModelsFileError),
    /// A worker that does not parse.
    #[error(transparent)]
    Worker(#[from] WorkerSpecError),
    /// The cache server's address or TLS set-up is unusable.
    #[error("{0}")]
    Lifecycle(String),
    /// The cache server refused the model's namespace (a hashing config that
    /// differs from the namespace's).
    #[error("the cache server refused namespace {namespace:?} of model {model:?}: {message}")]
    NamespaceRefused {
        /// The namespace.
        namespace: String,
        /// The model.
        model: String,
        /// The server's reason.
        message: String,
    },
    /// The cache server refused the router's credentials: hashing with the
    /// local seed would silently miss a tenant's blocks.
    #[error(
        "the cache server refused the router's credentials for namespace {namespace:?} of \
         model {model:?} ({code:?}: {message}): check --server-token / --server-token-file and \
         the token's grants (r on the namespace once a worker's agent has created it; rw lets \
         the router create it when it starts first)"
    )]
    Credentials {
        /// The namespace.
        namespace: String,
        /// The model.
        model: String,
        /// Unauthenticated or PermissionDenied.
        code: tonic::Code,
        /// The server's reason.
        message: String,
    },
    /// The cluster's etcd cannot be used (a client that cannot be made).
    #[error("cluster: {0}")]
    Cluster(#[from] kvtier_cluster::ClusterError),
    /// The model's tokenizer or chat template does not load.
    #[error("model {model:?}: load the tokenizer {}", path.display())]
    Tokenizer {
        /// The model.
        model: String,
        /// The tokenizer.json.
        path: PathBuf,
        /// Why.
        #[source]
        source: kvtier_prompt::PromptError,
    },
}

/// The started models, their event sources and the channel that stops them.
///
/// Dropping it closes the stop channel, which ends the sources too.
pub struct Started {
    /// The models served, for the HTTP front and the gRPC service.
    pub models: Models,
    pub(crate) sources: Vec<JoinHandle<()>>,
    pub(crate) stop_tx: watch::Sender<bool>,
    pub(crate) stop_rx: watch::Receiver<bool>,
}

/// Starts every model of `config`, one after the other: checks the list,
/// registers the per-worker metrics at zero, then for each model handshakes
/// with the cache server, loads the prompt model and spawns its sources.
pub async fn start(config: &StartConfig) -> Result<Started, StartError> {
    models_file::validate(&config.models)?;
    let mut all_workers = Vec::new();
    for spec in &config.models {
        all_workers.extend(spec.endpoints()?.into_iter().map(|w| w.worker_id));
    }
    crate::metrics::register_zeroes(all_workers.iter().map(String::as_str));

    let (stop_tx, stop_rx) = watch::channel(false);
    let membership = match &config.cluster {
        Some(url) => {
            let etcd =
                kvtier_cluster::Etcd::connect(url, kvtier_cluster::etcd::DEFAULT_REQUEST_TIMEOUT)
                    .await?;
            tracing::info!(%url, "cluster: following the membership of the cache servers");
            Some(kvtier_cluster::MembershipWatch::start(etcd))
        }
        None => None,
    };
    let mut models = Models::default();
    let mut sources = Vec::new();
    for spec in &config.models {
        let started = model::start_model(spec, config, membership.as_ref(), &stop_rx).await?;
        models.push(started.state);
        sources.extend(started.sources);
    }
    Ok(Started {
        models,
        sources,
        stop_tx,
        stop_rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_name_the_flags_and_the_grants() {
        let error = StartError::Credentials {
            namespace: "n".into(),
            model: "m".into(),
            code: tonic::Code::PermissionDenied,
            message: "no grant".into(),
        };
        assert_eq!(
            error.to_string(),
            "the cache server refused the router's credentials for namespace \"n\" of model \
             \"m\" (PermissionDenied: no grant): check --server-token / --server-token-file and \
             the token's grants (r on the namespace once a worker's agent has created it; rw \
             lets the router create it when it starts first)"
        );
    }
}
