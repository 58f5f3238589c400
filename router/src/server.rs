//! Serving the started models: the HTTP front and the gRPC `RouterService`
//! (with gRPC health) on their listeners, until [`Running::stop`].
//!
//! The caller installs its shutdown handling, calls [`serve`], announces the
//! bound addresses, waits, and stops: the sources end first, then the two
//! servers get up to [`DRAIN`] to finish in-flight streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use kvtier_security::{FrontSecurity, SecurityError};
use tonic::service::interceptor::InterceptedService;

use crate::http::{self, HttpFront};
use crate::service::RouterGrpc;
use crate::startup::Started;
use kvtier_proto::v1::router_service_server::RouterServiceServer;

/// How long in-flight streams get to finish once the router stops.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Where the router serves.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// HTTP front (the three model APIs, /v1/models, /health, /metrics).
    pub http_listen: SocketAddr,
    /// gRPC RouterService.
    pub grpc_listen: SocketAddr,
    /// Largest request body accepted by the HTTP front (larger: 413).
    pub max_body_bytes: usize,
    /// TLS, bearer tokens and the plaintext rule of both fronts.
    pub security: FrontSecurity,
}

/// Why the router could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP address cannot be bound.
    #[error("bind the HTTP front on {addr}")]
    BindHttp {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC address cannot be bound.
    #[error("bind gRPC on {addr}")]
    BindGrpc {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A bound listener has no local address.
    #[error(transparent)]
    LocalAddr(std::io::Error),
    /// TLS files, the token file or the plaintext rule.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The token reload handler cannot be installed.
    #[error("install the SIGHUP handler for token reloads")]
    Signal(#[source] std::io::Error),
    /// gRPC TLS cannot be configured.
    #[error("gRPC TLS")]
    GrpcTls(#[source] tonic::transport::Error),
    /// The HTTP front's client to the workers cannot be built.
    #[error("build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

/// The addresses the router serves on (the actual ports when 0 was asked).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// HTTP front.
    pub http: SocketAddr,
    /// gRPC RouterService.
    pub grpc: SocketAddr,
}

/// A serving router. Dropping it without [`Running::stop`] closes the stop
/// channel, which ends the sources and shuts both servers down gracefully in
/// the background.
pub struct Running {
    /// Where it serves.
    pub addrs: BoundAddrs,
    stop_tx: watch::Sender<bool>,
    sources: Vec<JoinHandle<()>>,
    http_task: JoinHandle<std::io::Result<()>>,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    reload_task: Option<JoinHandle<()>>,
}

/// Binds both listeners and serves `started`'s models on them.
pub async fn serve(
    started: Started,
    front: &FrontConfig,
    metrics: Option<PrometheusHandle>,
) -> Result<Running, ServeError> {
    let Started {
        models,
        sources,
        stop_tx,
        stop_rx,
    } = started;
    let http_listener = TcpListener::bind(front.http_listen)
        .await
        .map_err(|source| ServeError::BindHttp {
            addr: front.http_listen,
            source,
        })?;
    let grpc_listener = TcpListener::bind(front.grpc_listen)
        .await
        .map_err(|source| ServeError::BindGrpc {
            addr: front.grpc_listen,
            source,
        })?;
    let addrs = BoundAddrs {
        http: http_listener.local_addr().map_err(ServeError::LocalAddr)?,
        grpc: grpc_listener.local_addr().map_err(ServeError::LocalAddr)?,
    };

    let security = &front.security;
    let http_tls = security.http_tls("the router's HTTP front", addrs.http)?;
    let grpc_tls = security.grpc_tls("the router's gRPC front", addrs.grpc)?;
    let reload_task = security.spawn_reload().map_err(ServeError::Signal)?;

    let http_front = Arc::new(
        HttpFront::new(models.clone(), metrics)
            .map_err(ServeError::HttpClient)?
            .with_max_body_bytes(front.max_body_bytes)
            .with_auth(Arc::clone(&security.auth)),
    );
    let mut http_stop = stop_rx.clone();
    let app = http::app(http_front);
    let http_shutdown = async move {
        let _ = http_stop.wait_for(|s| *s).await;
    };
    let http_task = match http_tls {
        Some(tls) => {
            let listener = kvtier_security::http_tls::TlsListener::new(http_listener, tls)
                .map_err(ServeError::LocalAddr)?;
            // Small SSE frames must leave at once (no Nagle delay).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tls| {
                let _ = tls.get_ref().0.set_nodelay(true);
            });
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(http_shutdown)
                    .await
            })
        }
        None => {
            let listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(http_shutdown)
                    .await
            })
        }
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RouterServiceServer<RouterGrpc>>()
        .await;
    let mut grpc_stop = stop_rx;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = grpc_tls {
        builder = builder.tls_config(tls).map_err(ServeError::GrpcTls)?;
    }
    // With tokens on, every RouterService call carries its caller (the
    // service authorizes it per namespace); health probes stay open.
    let router_service = InterceptedService::new(
        RouterServiceServer::new(RouterGrpc::new(models)),
        security.auth.interceptor(),
    );
    let grpc_task = tokio::spawn(
        builder
            // Token-id queries exceed HTTP/2's default 64 KiB window: larger
            // windows, and no Nagle delay on replies.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .add_service(health_service)
            .add_service(router_service)
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    |stream| {
                        if let Ok(tcp) = &stream {
                            let _ = tcp.set_nodelay(true);
                        }
                        stream
                    },
                ),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            ),
    );
    Ok(Running {
        addrs,
        stop_tx,
        sources,
        http_task,
        grpc_task,
        reload_task,
    })
}

impl Running {
    /// Stops the router: the sources end (awaited), then in-flight streams
    /// get up to [`DRAIN`] to finish.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        if let Some(task) = &self.reload_task {
            task.abort();
        }
        for task in self.sources {
            let _ = task.await;
        }
        let (http_task, grpc_task) = (self.http_task, self.grpc_task);
        let _ = tokio::time::timeout(DRAIN, async move {
            let _ = http_task.await;
            let _ = grpc_task.await;
        })
        .await;
    }
}
