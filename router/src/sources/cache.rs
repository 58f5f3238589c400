//! The cache source: one task per model namespace, a thin I/O shell around
//! [`CacheSync`]: connect to the cache server, handshake, watch with a
//! snapshot, apply, resync, reconnect.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Streaming};

use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{CacheEvent, HandshakeRequest, HashingConfig, WatchEventsRequest};

use super::backoff::Backoff;
use super::connect::connect_secure;
use super::shards::SharedShardViews;
use super::state::CacheState;
use super::sync::{apply_cache_step, CacheStep, CacheSync};
use super::worker::stopped;
use crate::index::SharedIndex;
use kvtier_security::ServerClient;

/// What the cache source connects to and how.
#[derive(Debug, Clone)]
pub struct CacheSourceConfig {
    /// The cache server's gRPC URL: `http://host:port` or `unix:/path`.
    pub url: String,
    /// The model's namespace on the cache server.
    pub namespace: String,
    /// The model's hashing configuration (a mismatch with the namespace's is
    /// refused by the server; the source then retries at the longest delay).
    pub hashing: HashingConfig,
    /// Name announced in the handshake, for the server's logs.
    pub client_name: String,
    /// TLS (for `https://`) and the bearer token, when the server requires
    /// one (read access to the namespace).
    pub security: ServerClient,
    /// First reconnect delay after a failure.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Bound on one connection attempt.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval and timeout (zero: none).
    pub keepalive: Duration,
}

impl CacheSourceConfig {
    /// A configuration with default timings for `namespace` at `url`.
    pub fn new(
        url: impl Into<String>,
        namespace: impl Into<String>,
        hashing: HashingConfig,
    ) -> Self {
        Self {
            url: url.into(),
            namespace: namespace.into(),
            hashing,
            client_name: "kvtier-router".into(),
            security: ServerClient::plain(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(5),
        }
    }
}

/// Spawns the task that keeps the index's cache-server view (host and disk
/// presence of `config.namespace`'s blocks) in step with the server's events.
/// While the server is away the entries stay; the next snapshot replaces
/// them. Runs until `shutdown` becomes true (or its sender is dropped). Must
/// be called inside a Tokio runtime.
pub fn spawn_cache_source(
    config: CacheSourceConfig,
    index: SharedIndex,
    state: CacheState,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    spawn_cache_source_into(config, index, state, None, shutdown)
}

/// [`spawn_cache_source`] for one shard of a cluster when `shard` is given
/// (its id and the model's shard views): the events change that shard's
/// view, merged into the index ([`super::ShardViews`]).
pub(crate) fn spawn_cache_source_into(
    config: CacheSourceConfig,
    index: SharedIndex,
    state: CacheState,
    shard: Option<(String, SharedShardViews)>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let task = CacheTask {
        shard,
        backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
        sync: CacheSync::new(config.namespace.clone()),
        config,
        index,
        state,
        shutdown,
    };
    tokio::spawn(task.run())
}

enum End {
    Shutdown,
    Resync(String),
    Down(String),
}

struct CacheTask {
    /// This source's shard of a cluster, and the model's shard views.
    shard: Option<(String, SharedShardViews)>,
    config: CacheSourceConfig,
    index: SharedIndex,
    state: CacheState,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    sync: CacheSync,
}

impl CacheTask {
    async fn run(mut self) {
        tracing::info!(url = %self.config.url, namespace = %self.config.namespace, "cache source started");
        'connect: while !self.stopping() {
            let channel = match connect_secure(
                &self.config.url,
                &self.config.security,
                self.config.connect_timeout,
                self.config.keepalive,
            )
            .await
            {
                Ok(channel) => channel,
                Err(e) => {
                    self.down(&e.to_string(), false).await;
                    continue;
                }
            };
            let mut client = CacheServiceClient::new(self.config.security.intercept(channel));
            let handshake = HandshakeRequest {
                namespace: self.config.namespace.clone(),
                config: Some(self.config.hashing.clone()),
                client_name: self.config.client_name.clone(),
            };
            if let Err(status) = client.handshake(handshake).await {
                let refused = matches!(
                    status.code(),
                    Code::FailedPrecondition
                        | Code::InvalidArgument
                        | Code::PermissionDenied
                        | Code::Unauthenticated
                );
                let reason = format!(
                    "handshake of namespace {:?} refused: {} ({:?})",
                    self.config.namespace,
                    status.message(),
                    status.code()
                );
                self.down(&reason, refused).await;
                continue;
            }
            while !self.stopping() {
                self.sync.begin_snapshot();
                let watch = WatchEventsRequest {
                    namespace: self.config.namespace.clone(),
                    snapshot: true,
                };
                let stream = match client.watch_events(watch).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        let reason = format!(
                            "WatchEvents refused: {} ({:?})",
                            status.message(),
                            status.code()
                        );
                        self.down(&reason, false).await;
                        continue 'connect;
                    }
                };
                match self.pump(stream).await {
                    End::Shutdown => break 'connect,
                    End::Resync(reason) => {
                        tracing::info!(namespace = %self.config.namespace, %reason, "cache events: resync from a snapshot");
                        self.state.resynced();
                    }
                    End::Down(reason) => {
                        self.down(&reason, false).await;
                        continue 'connect;
                    }
                }
            }
        }
        tracing::info!(namespace = %self.config.namespace, "cache source stopped");
    }

    /// Applies the stream's events until it ends, fails, or needs a resync.
    async fn pump(&mut self, mut stream: Streaming<CacheEvent>) -> End {
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stopped(&mut self.shutdown) => return End::Shutdown,
            };
            let event = match message {
                Ok(Some(event)) => event,
                Ok(None) => return End::Down("the cache server ended the event stream".into()),
                Err(status) => {
                    return End::Down(format!(
                        "cache event stream failed: {} ({:?})",
                        status.message(),
                        status.code()
                    ))
                }
            };
            let step = self.sync.on_event(&event);
            match &step {
                CacheStep::Skip => continue,
                CacheStep::Resync(reason) => return End::Resync(reason.to_string()),
                CacheStep::Set(_) => {
                    self.apply(&step);
                    self.state.applied(self.sync.last_id());
                }
                CacheStep::Replace(blocks) => {
                    self.apply(&step);
                    let epoch = self.sync.epoch().unwrap_or(0);
                    self.state
                        .synced(epoch, self.sync.last_id(), blocks.len() as u64);
                    self.backoff.reset();
                    tracing::info!(
                        namespace = %self.config.namespace,
                        blocks = blocks.len(),
                        event_id = self.sync.last_id(),
                        epoch,
                        "cache snapshot applied"
                    );
                }
            }
        }
    }

    /// Records the failure and waits before the next attempt (the longest
    /// delay when retrying soon cannot help).
    async fn down(&mut self, reason: &str, refused: bool) {
        let was_synced = self.state.get().synced;
        self.state.down(reason);
        if refused {
            tracing::error!(namespace = %self.config.namespace, %reason, "cache source refused");
        } else if was_synced {
            tracing::warn!(namespace = %self.config.namespace, %reason, "cache source disconnected");
        } else {
            tracing::debug!(namespace = %self.config.namespace, %reason, "cache source still disconnected");
        }
        let delay = if refused {
            self.backoff.max_delay()
        } else {
            self.backoff.next_delay()
        };
        if self.stopping() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut self.shutdown) => {}
        }
    }

    /// Applies a step to the index (through this shard's view in a cluster).
    fn apply(&self, step: &CacheStep) {
        match &self.shard {
            None => {
                apply_cache_step(&mut self.index.write(), step);
            }
            Some((id, views)) => {
                views.lock().apply(&mut self.index.write(), id, step);
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }
}
