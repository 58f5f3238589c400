//! Runs the agent: binds its Unix socket (the default: the engine is on the
//! same host) and, only when asked, a TCP listener (with TLS, tokens and the
//! plaintext rule of `kvtier-server`), serves `WorkerService` on them, runs
//! the vLLM event subscriber when configured, and stops everything it
//! started when `shutdown` completes.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;

use kvtier_proto::hashing::{effective_seed, BlockHasher};
use kvtier_proto::v1::worker_service_server::WorkerServiceServer;

use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::service::Service;
use crate::state::AgentState;
use crate::tier::MAX_MESSAGE_BYTES;
use crate::vllm::ingest::{self, Ingestor, ZmqSettings};
use crate::vllm::translate::Translator;

/// Permissions of the agent's Unix socket: its user and group (the engine's
/// container shares one of them); nobody else may connect.
pub const UDS_MODE: u32 = 0o660;

/// Where the agent listens, once bound.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    /// TCP address, when TCP was asked for.
    pub grpc: Option<SocketAddr>,
    /// Unix socket path, if any.
    pub uds: Option<PathBuf>,
    /// `/metrics` address, if enabled.
    pub metrics: Option<SocketAddr>,
}

/// Binds the Unix socket at `path`: refuses when another process serves it
/// (a second agent must not take a running one's socket), replaces a stale
/// socket file, refuses any other kind of file, and restricts the socket to
/// [`UDS_MODE`].
pub fn bind_unix_socket(path: &Path) -> Result<UnixListener> {
    let listen_err =
        |what: String| AgentError::Listener(format!("unix socket {}: {what}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| listen_err(format!("cannot create {}: {e}", parent.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(listen_err(
                    "exists and is not a socket; refusing to replace it".into(),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(listen_err(
                    "another process is serving it (a second agent needs its own --uds)".into(),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| listen_err(format!("cannot remove the stale socket: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e.to_string())),
    }
    let listener = UnixListener::bind(path).map_err(|e| listen_err(format!("bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(UDS_MODE))
        .map_err(|e| listen_err(format!("chmod {UDS_MODE:o}: {e}")))?;
    Ok(listener)
}

/// Runs until `shutdown` completes; `ready` is called once listening.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&BoundAddrs),
) -> Result<()> {
    if config.listen.is_none() && config.uds.is_none() {
        return Err(AgentError::Listener(
            "neither a Unix socket (--uds) nor a TCP address (--listen) to serve on".into(),
        ));
    }
    let security = &config.security;
    let (tcp, tcp_tls) = match config.listen {
        Some(addr) => {
            if !addr.ip().is_loopback() && !security.tokens_on() {
                return Err(AgentError::Listener(format!(
                    "--listen {addr} is not a loopback address: whoever reaches it can copy \
                     files into the cache and cache bytes into pools, so a non-loopback TCP \
                     listener needs bearer tokens (--tokens-file) and TLS (--tls-cert/--tls-key)"
                )));
            }
            let tls = security
                .grpc_tls("agent gRPC", addr)
                .map_err(|e| AgentError::Listener(e.to_string()))?;
            (Some(TcpListener::bind(addr).await?), tls)
        }
        None => (None, None),
    };
    let uds = match &config.uds {
        Some(path) => Some(bind_unix_socket(path)?),
        None => None,
    };
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let addrs = BoundAddrs {
        grpc: match &tcp {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
        uds: config.uds.clone(),
        metrics: match &metrics {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
    };
    let reload_task = security
        .spawn_reload()
        .map_err(|e| AgentError::Listener(format!("SIGHUP handler for token reloads: {e}")))?;

    // Engines create their pools here; AttachPool accepts nothing else.
    if let Err(e) = std::fs::create_dir_all(&config.pool_dir) {
        tracing::warn!(dir = %config.pool_dir.display(), error = %e, "cannot create the pool directory; shared-memory attaches will be refused");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AgentState::new(config.clone(), stop_rx.clone())?;
    let service = WorkerServiceServer::new(Service::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // With tokens configured, every call on either listener needs one.
    let service = InterceptedService::new(service, security.auth.interceptor());

    // grpc.health.v1 on both listeners, for probes (Kubernetes `grpc:` probes).
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<WorkerServiceServer<Service>>()
        .await;

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(tcp) = tcp {
        let service = service.clone();
        let health_service = health_service.clone();
        let mut stop = stop_rx.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tcp_tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| AgentError::Listener(format!("TLS: {e}")))?;
        }
        tasks.spawn(async move {
            builder
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
    tracing::info!(grpc = ?addrs.grpc, uds = ?addrs.uds, worker = %config.worker_id, tls = config.security.tls.is_some(), tokens = config.security.tokens_on(), "kvtier-agent serving");

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
    if let Some(task) = reload_task {
        task.abort();
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
