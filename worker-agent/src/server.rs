//! Runs the agent: binds loopback TCP (and optionally a Unix socket), serves
//! `WorkerService` on both, runs the vLLM event subscriber when configured,
//! and stops everything it started when `shutdown` completes.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use kvtier_proto::hashing::{effective_seed, BlockHasher};
use kvtier_proto::v1::worker_service_server::WorkerServiceServer;

use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::service::Service;
use crate::state::AgentState;
use crate::tier::MAX_MESSAGE_BYTES;
use crate::vllm::ingest::{self, Ingestor, ZmqSettings};
use crate::vllm::translate::Translator;

/// Where the agent listens, once bound.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    /// TCP address.
    pub grpc: SocketAddr,
    /// Unix socket path, if any.
    pub uds: Option<std::path::PathBuf>,
    /// `/metrics` address, if enabled.
    pub metrics: Option<SocketAddr>,
}

/// Runs until `shutdown` completes; `ready` is called once listening.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&BoundAddrs),
) -> Result<()> {
    let tcp = TcpListener::bind(config.listen).await?;
    let uds = match &config.uds {
        Some(path) => {
            // A stale socket file from a previous run would make bind fail.
            let _ = std::fs::remove_file(path);
            Some(UnixListener::bind(path).map_err(|e| {
                AgentError::Io(std::io::Error::new(
                    e.kind(),
                    format!("bind unix socket {}: {e}", path.display()),
                ))
            })?)
        }
        None => None,
    };
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let addrs = BoundAddrs {
        grpc: tcp.local_addr()?,
        uds: config.uds.clone(),
        metrics: match &metrics {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
    };

    // Engines create their pools here; AttachPool accepts nothing else.
    if let Err(e) = std::fs::create_dir_all(&config.pool_dir) {
        tracing::warn!(dir = %config.pool_dir.display(), error = %e, "cannot create the pool directory; shared-memory attaches will be refused");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AgentState::new(config.clone(), stop_rx.clone())?;
    let service = WorkerServiceServer::new(Service::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    // grpc.health.v1 on both listeners, for probes (Kubernetes `grpc:` probes).
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<WorkerServiceServer<Service>>()
        .await;

    let mut tasks = tokio::task::JoinSet::new();
    {
        let service = service.clone();
        let health_service = health_service.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(tcp), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|e| AgentError::Io(std::io::Error::other(e.to_string())))
        });
    }
    if let Some(uds) = uds {
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(uds), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|e| AgentError::Io(std::io::Error::other(e.to_string())))
        });
    }
    if let Some(listener) = metrics {
        let mut stop = stop_rx.clone();
        let state = state.clone();
        tasks.spawn(async move {
            crate::metrics::serve(listener, state, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .map_err(AgentError::Io)
        });
    }
    if let Some(endpoint) = &config.vllm_events {
        let hasher = BlockHasher::new(
            config.hashing.block_tokens.max(1) as usize,
            effective_seed(config.hashing.seed, &config.hashing.salt),
        );
        let ingestor = Ingestor::new(
            Translator::new(hasher),
            state.events.clone(),
            state.stats.clone(),
        );
        let settings = ZmqSettings {
            endpoint: endpoint.clone(),
            replay: config.vllm_replay.clone(),
            topic: config.vllm_topic.clone(),
            idle_reconnect: config.vllm_idle_reconnect,
        };
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            ingest::run(settings, ingestor, stop).await;
            Ok(())
        });
    }

    ready(&addrs);
    tracing::info!(grpc = %addrs.grpc, uds = ?addrs.uds, worker = %config.worker_id, "kvtier-agent serving");

    // Run until shutdown, or until a task fails.
    let mut failure = None;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        Some(done) = tasks.join_next() => {
            if let Ok(Err(e)) = done {
                failure = Some(e);
            }
        }
    }
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "task failed while stopping");
            }
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 10 s; aborting them");
        tasks.abort_all();
    }
    if let Some(path) = &addrs.uds {
        let _ = std::fs::remove_file(path);
    }
    drop(state);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
