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

    let http_front = Arc::new(
        HttpFront::new(models.clone(), metrics)
            .map_err(ServeError::HttpClient)?
            .with_max_body_bytes(front.max_body_bytes),
    );
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        // Small SSE frames must leave at once (no Nagle delay).
        let listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, http::app(http_front))
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RouterServiceServer<RouterGrpc>>()
        .await;
    let mut grpc_stop = stop_rx;
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            // Token-id queries exceed HTTP/2's default 64 KiB window: larger
            // windows, and no Nagle delay on replies.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .add_service(health_service)
            .add_service(RouterServiceServer::new(RouterGrpc::new(models)))
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
    })
}

impl Running {
    /// Stops the router: the sources end (awaited), then in-flight streams
    /// get up to [`DRAIN`] to finish.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
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
