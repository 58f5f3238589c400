//! Wires the store, the gRPC services and `/metrics`, and runs until the
//! shutdown future completes; then stops accepting, drains, and flushes the
//! disk tier.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use kvtier_policy::{EvictionPolicy, Lru, ValueConfig, ValuePolicy};
use kvtier_proto::v1::cache_service_server::CacheServiceServer;
use kvtier_security::{Authenticator, ClientLimiter};
use tonic::service::interceptor::InterceptedService;

use crate::agents::{AgentBook, AgentLimits};
use crate::block::BlockKey;
use crate::cluster::ClusterNode;
use crate::config::{DataListen, PolicyKind, ServerConfig};
use crate::dataplane::{DataAddr, DataListener};
use crate::metrics as m;
use crate::namespace::NamespaceRegistry;
use crate::service::session::Sessions;
use crate::service::{CacheServiceImpl, ServiceState};
use crate::store::TieredStore;

/// How often leases are checked.
const LEASE_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Most sessions kept at once.
const MAX_SESSIONS: usize = 100_000;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Namespaces could not be loaded.
    #[error("cannot load namespaces: {0}")]
    Namespaces(#[from] crate::namespace::NamespaceError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// TLS, tokens or the plaintext rule. Transparent: the security error's
    /// own message is the whole reason (saying it again as a cause would
    /// print it twice).
    #[error(transparent)]
    Security(#[from] kvtier_security::SecurityError),
    /// The data plane cannot be served as configured.
    #[error("data plane: {0}")]
    DataPlane(String),
    /// This server cannot join its cluster (`--cluster`).
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::JoinError),
}

/// Binds the data plane as configured (see [`DataListen`]). The data plane
/// is plaintext: with TLS on gRPC an explicit address is refused, and the
/// embedded default turns it off.
async fn bind_data(
    config: &ServerConfig,
    tls_on: bool,
) -> Result<Option<DataListener>, ServerError> {
    let explicit = match &config.data_listen {
        DataListen::Off => return Ok(None),
        DataListen::Tcp { explicit, .. } => *explicit,
        DataListen::Unix(_) => true,
    };
    if tls_on {
        if explicit {
            return Err(ServerError::DataPlane(
                "the binary data plane is plaintext and gRPC is configured with TLS \
                 (--tls-cert): refusing to serve block payloads unencrypted. Use \
                 --data-listen off (payloads then go over gRPC with TLS)"
                    .into(),
            ));
        }
        tracing::info!("data plane off: gRPC uses TLS and the data plane is plaintext");
        return Ok(None);
    }
    match &config.data_listen {
        DataListen::Off => Ok(None),
        DataListen::Tcp { addr, explicit } => match TcpListener::bind(addr).await {
            Ok(listener) => {
                kvtier_security::tls::check_plaintext(
                    "data plane",
                    listener.local_addr()?,
                    config.security.allow_plaintext,
                )?;
                Ok(Some(DataListener::Tcp(listener)))
            }
            Err(e) if !explicit => {
                tracing::warn!(%addr, error = %e, "data plane off: cannot bind its default address; set --data-listen to serve it");
                Ok(None)
            }
            Err(e) => Err(ServerError::DataPlane(format!(
                "cannot bind --data-listen {addr}: {e}"
            ))),
        },
        #[cfg(unix)]
        DataListen::Unix(path) => DataListener::bind_unix(path).map(Some).map_err(|e| {
            ServerError::DataPlane(format!(
                "cannot bind --data-listen unix:{}: {e}",
                path.display()
            ))
        }),
        #[cfg(not(unix))]
        DataListen::Unix(_) => Err(ServerError::DataPlane(
            "Unix-domain sockets need a Unix system".into(),
        )),
    }
}

/// The authenticator the configuration asks for (file first, then inline text).
fn authenticator(config: &ServerConfig) -> Result<Arc<Authenticator>, ServerError> {
    let sec = &config.security;
    let auth = match (&sec.tokens_file, &sec.tokens_text) {
        (Some(path), _) => Authenticator::from_file(path)?,
        (None, Some(text)) if !text.trim().is_empty() => Authenticator::from_text(text)?,
        _ => Authenticator::disabled(),
    };
    if auth.enabled() {
        tracing::info!(
            principals = auth.principals(),
            "bearer-token authentication on"
        );
    }
    Ok(auth)
}

/// Addresses the server actually bound (useful with port 0).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    /// gRPC.
    pub grpc: SocketAddr,
    /// `/metrics`, when enabled.
    pub metrics: Option<SocketAddr>,
    /// The binary data plane, when served.
    pub data: Option<DataAddr>,
    /// This node's id in its cluster (`--cluster`).
    pub node_id: Option<String>,
}

/// Binds the configured listeners.
pub async fn bind(config: &ServerConfig) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
    let grpc = TcpListener::bind(config.listen).await?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    Ok((grpc, metrics))
}

/// Runs the server on already-bound listeners until `shutdown` completes.
/// `on_ready` is called once the store is open and the listeners serve.
pub async fn run(
    config: ServerConfig,
    grpc_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(BoundAddrs),
) -> Result<(), ServerError> {
    // Install the recorder before opening the store: gauges set while opening
    // (tier capacities, recovered occupancy) would be lost otherwise.
    let metrics_handle = match &metrics_listener {
        Some(_) => match m::install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics disabled");
                None
            }
        },
        None => None,
    };
    let policy: Box<dyn EvictionPolicy<BlockKey>> = match config.policy {
        PolicyKind::Value => Box::new(ValuePolicy::<BlockKey>::new(ValueConfig::default())),
        PolicyKind::Lru => Box::new(Lru::<BlockKey>::new()),
    };
    tracing::info!(policy = policy.name(), "eviction policy");
    let store = tokio::task::block_in_place(|| TieredStore::open(&config.store, policy))?;
    let namespaces =
        NamespaceRegistry::new(config.allowed_namespaces.clone(), config.max_block_bytes);
    if let Some(disk) = store.disk() {
        let n = namespaces.load(disk)?;
        tracing::info!(namespaces = n, "namespaces loaded");
    }
    let max_message_bytes = config.max_block_bytes + (1 << 20);
    let tls = match &config.security.tls {
        Some(files) => Some(kvtier_security::tls::server_config(files)?),
        None => {
            kvtier_security::tls::check_plaintext(
                "gRPC",
                grpc_listener.local_addr()?,
                config.security.allow_plaintext,
            )?;
            None
        }
    };
    // /metrics is served with the gRPC listener's certificate (and client CA)
    // unless --metrics-plaintext.
    let metrics_tls_files = config
        .security
        .tls
        .as_ref()
        .filter(|_| !config.security.metrics_plaintext);
    let metrics_tls = match (metrics_tls_files, &metrics_listener) {
        (Some(files), Some(_)) => Some(kvtier_security::http_tls::rustls_config(files)?),
        (None, Some(listener)) => {
            kvtier_security::tls::check_plaintext(
                "/metrics",
                listener.local_addr()?,
                config.security.allow_plaintext,
            )?;
            None
        }
        _ => None,
    };
    let auth = authenticator(&config)?;
    #[cfg(unix)]
    let reload_task = if config.security.tokens_file.is_some() {
        Some(auth.spawn_sighup_reload()?)
    } else {
        None
    };
    let data_listener = bind_data(&config, tls.is_some()).await?;

    // One shutdown signal fans out to the listeners (and to a start-up that
    // waits for etcd).
    // In a cluster with `--cluster-drain-s`, the stop of the listeners
    // waits out the drain (below); `term_rx` is the signal itself.
    let (term_tx, term_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = term_tx.send(true);
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let grpc_addr = grpc_listener.local_addr()?;
    let data_addr = match &data_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    // In a cluster: register before serving (the listeners are bound, so
    // clients that see the record early wait in the accept queue).
    let cluster = match &config.cluster {
        Some(settings) => {
            let joined = ClusterNode::join(
                settings,
                &config.store.data_dir,
                grpc_addr,
                data_addr.as_ref(),
                term_rx.clone(),
            )
            .await;
            match joined {
                Ok(node) => Some(Arc::new(node)),
                Err(crate::cluster::JoinError::Stopped) => {
                    tracing::info!("stopped before joining the cluster");
                    tokio::task::block_in_place(|| store.flush())?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    // The stop signal stops the listeners, after a drain when asked for.
    {
        let mut term = term_rx.clone();
        let cluster = cluster.clone();
        let drain = config
            .cluster
            .as_ref()
            .map_or(std::time::Duration::ZERO, |c| c.drain);
        tokio::spawn(async move {
            let _ = term.wait_for(|t| *t).await;
            if let Some(node) = cluster.filter(|_| !drain.is_zero()) {
                node.drain();
                tracing::info!(
                    drain_s = drain.as_secs_f64(),
                    "draining before leaving the cluster (reads are served meanwhile)"
                );
                tokio::time::sleep(drain).await;
            }
            let _ = stop_tx.send(true);
        });
    }
    let state = Arc::new(ServiceState {
        store: Arc::clone(&store),
        namespaces,
        sessions: Sessions::new(MAX_SESSIONS),
        agents: AgentBook::new(
            Arc::clone(&store),
            AgentLimits {
                pin_quota_blocks: config.pin_quota_blocks,
                max_agents_per_namespace: config.max_agents_per_namespace,
                max_lease_ms: config.max_agent_lease_ms,
            },
        ),
        epoch: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        max_message_bytes,
        admission: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
        max_concurrent_requests: config.max_concurrent_requests.max(1),
        auth: Arc::clone(&auth),
        limits: ClientLimiter::new(config.security.limits),
        cluster: cluster.clone(),
    });

    // Ends agents silent past their lease; stops with the server.
    let lease_task = {
        let state = Arc::clone(&state);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let ended = state.agents.expire();
                        if ended > 0 {
                            tracing::info!(ended, "agents ended by lease expiry");
                        }
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        })
    };

    // Moves forecast disk blocks up ahead of their calls (`--prefetch`).
    let prefetch_task =
        crate::prefetch::spawn(Arc::clone(&store), config.prefetch.clone(), stop_rx.clone());

    let mut metrics_addr = None;
    let mut metrics_task = None;
    if let Some(listener) = metrics_listener {
        metrics_addr = Some(listener.local_addr()?);
        if let Some(handle) = metrics_handle {
            let stop = stopped(stop_rx.clone());
            metrics_task = Some(match metrics_tls {
                Some(tls) => {
                    let listener = kvtier_security::http_tls::TlsListener::new(listener, tls)?;
                    tokio::spawn(m::serve(listener, handle, stop))
                }
                None => tokio::spawn(m::serve(listener, handle, stop)),
            });
        }
    }

    let data_task = data_listener.map(|listener| {
        tokio::spawn(crate::dataplane::serve(
            listener,
            Arc::clone(&state),
            crate::dataplane::Deadlines {
                idle: config.data_idle_timeout,
                frame: config.frame_timeout,
            },
            stop_rx.clone(),
        ))
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CacheServiceServer<CacheServiceImpl>>()
        .await;
    let service = CacheServiceServer::new(
        CacheServiceImpl::new(Arc::clone(&state)).with_put_message_timeout(config.frame_timeout),
    )
    .max_decoding_message_size(max_message_bytes as usize)
    .max_encoding_message_size(max_message_bytes as usize);
    let service = InterceptedService::new(service, auth.interceptor());

    let data_display = data_addr
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    on_ready(BoundAddrs {
        grpc: grpc_addr,
        metrics: metrics_addr,
        data: data_addr,
        node_id: cluster.as_ref().map(|c| c.node_id().to_string()),
    });
    tracing::info!(%grpc_addr, ?metrics_addr, data = %data_display, tls = tls.is_some(), "kvtier-server serving");

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        // Large blocks: fewer, bigger HTTP/2 frames (the default is 16 KiB).
        .max_frame_size(Some(1 << 20))
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(
            // TCP_NODELAY on accepted sockets: `Server::tcp_nodelay` only
            // applies to listeners tonic binds itself; without it a small
            // Put or Get waits ~40 ms for a delayed ACK.
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        )
        .await?;

    // Out of the membership before the (possibly long) spill to disk.
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    let _ = lease_task.await;
    // Before the spill: a round in flight ends first (bounded by its interval).
    if let Some(task) = prefetch_task {
        let _ = task.await;
    }
    if let Some(task) = data_task {
        let _ = task.await;
    }
    #[cfg(unix)]
    if let Some(task) = reload_task {
        task.abort();
    }
    if !config.shutdown_spill.is_zero() {
        let budget = config.shutdown_spill;
        let spilled = tokio::task::block_in_place(|| store.spill_to_disk(budget));
        tracing::info!(
            kept = spilled.kept,
            kept_bytes = spilled.kept_bytes,
            no_room = spilled.no_room,
            left_by_deadline = spilled.left,
            failed = spilled.failed,
            "memory tiers spilled to disk for the restart (hottest first)"
        );
    }
    tracing::info!("gRPC stopped; flushing the disk tier");
    tokio::task::block_in_place(|| store.flush())?;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("kvtier-server stopped cleanly");
    Ok(())
}
