//! The worker source: one task per worker, a thin I/O shell around
//! [`WorkerSync`]: connect to the agent, subscribe, apply, resync, reconnect.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Streaming;

use kvtier_proto::v1::worker_service_client::WorkerServiceClient;
use kvtier_proto::v1::{SubscribeWorkerEventsRequest, WorkerEvent};

use super::backoff::Backoff;
use kvtier_security::ServerClient;

use super::connect::connect_secure;
use super::state::WorkerStates;
use super::sync::{apply_worker_step, WorkerStep, WorkerSync};
use crate::index::{SharedIndex, WorkerSlot};

/// Largest event message accepted (a SNAPSHOT lists every block of the pool).
const MAX_EVENT_MESSAGE_BYTES: usize = 256 << 20;

/// A worker as the router's configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// The worker id its agent's events must carry.
    pub worker_id: String,
    /// Its agent's gRPC URL: `http://host:port` or `unix:/path`.
    pub agent_url: String,
}

/// Timing of a worker source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSourceConfig {
    /// First reconnect delay after a failure.
    pub reconnect_min: Duration,
    /// Longest reconnect delay (also the wait after a worker-id mismatch).
    pub reconnect_max: Duration,
    /// Bound on one connection attempt.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval and timeout (zero: none): a silent agent
    /// is noticed within about twice this.
    pub keepalive: Duration,
    /// A worker unavailable for longer than this has its index entries cleared.
    pub expiry: Duration,
    /// How to reach the agents: the bearer token their TCP fronts require
    /// (`--tokens-file` on the agent), and the CA for `https://` agent URLs.
    pub agent_client: ServerClient,
}

impl Default for WorkerSourceConfig {
    fn default() -> Self {
        Self {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(5),
            expiry: Duration::from_secs(10),
            agent_client: ServerClient::plain(),
        }
    }
}

/// Registers the worker in `index` and `states` (unavailable until its stream
/// is up) and spawns the task that keeps its index entries in step with its
/// agent's events. The task runs until `shutdown` becomes true (or its sender
/// is dropped). Must be called inside a Tokio runtime.
pub fn spawn_worker_source(
    endpoint: AgentEndpoint,
    index: SharedIndex,
    states: WorkerStates,
    config: WorkerSourceConfig,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let slot = index.write().add_worker(&endpoint.worker_id);
    states.register(&endpoint.worker_id, &endpoint.agent_url, slot);
    let task = WorkerTask {
        backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
        sync: WorkerSync::new(endpoint.worker_id.clone()),
        endpoint,
        slot,
        index,
        states,
        config,
        shutdown,
        down_since: Some(Instant::now()),
        outage_logged: false,
        expired: false,
    };
    tokio::spawn(task.run())
}

/// How a subscription ended.
enum End {
    Shutdown,
    Resync(String),
    Down(String),
    Refused(String),
}

struct WorkerTask {
    endpoint: AgentEndpoint,
    slot: WorkerSlot,
    index: SharedIndex,
    states: WorkerStates,
    config: WorkerSourceConfig,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    sync: WorkerSync,
    /// Since when the worker has been unavailable (None while up).
    down_since: Option<Instant>,
    /// Its entries were cleared after the expiry (until it comes back).
    expired: bool,
    /// This outage was logged as a warning (reset when the worker is up).
    outage_logged: bool,
}

impl WorkerTask {
    /// Applies a step to the index, in one write: queries see the whole
    /// event or none of it, and never wait for it (see [`crate::index::IndexLock`]).
    /// Returns the worker's indexed blocks.
    fn apply(&self, step: &WorkerStep) -> u64 {
        let mut index = self.index.write();
        apply_worker_step(&mut index, self.slot, step);
        index.worker_blocks(self.slot)
    }

    fn id(&self) -> &str {
        &self.endpoint.worker_id
    }

    async fn run(mut self) {
        tracing::info!(worker = self.id(), url = %self.endpoint.agent_url, "worker source started");
        'connect: while !self.stopping() {
            let url = &self.endpoint.agent_url;
            // TLS for https:// agents only; the token goes to every agent.
            let credentials = if url.starts_with("https://") {
                self.config.agent_client.clone()
            } else {
                self.config.agent_client.without_tls()
            };
            let channel = match connect_secure(
                url,
                &credentials,
                self.config.connect_timeout,
                self.config.keepalive,
            )
            .await
            {
                Ok(channel) => channel,
                Err(e) => {
                    self.down(&e.to_string());
                    let delay = self.backoff.next_delay();
                    self.wait_down(delay).await;
                    continue;
                }
            };
            let mut client = WorkerServiceClient::new(credentials.intercept(channel))
                .max_decoding_message_size(MAX_EVENT_MESSAGE_BYTES);
            while !self.stopping() {
                let from = self.sync.resume_from();
                let stream = match client
                    .subscribe_worker_events(SubscribeWorkerEventsRequest {
                        from_event_id: from,
                    })
                    .await
                {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        self.down(&format!(
                            "SubscribeWorkerEvents refused: {} ({:?})",
                            status.message(),
                            status.code()
                        ));
                        let delay = self.backoff.next_delay();
                        self.wait_down(delay).await;
                        continue 'connect;
                    }
                };
                tracing::debug!(worker = self.id(), from, "subscribed to worker events");
                // Resuming a stream whose worker id was already checked: up
                // now (no event may come for a while). From 0, the snapshot
                // that comes at once must pass the check first.
                if from > 0 {
                    self.up();
                }
                match self.pump(stream).await {
                    End::Shutdown => break 'connect,
                    End::Resync(reason) => {
                        tracing::info!(worker = self.id(), %reason, "worker events: resync from a snapshot");
                        self.states.resynced(self.id());
                        self.sync.reset();
                    }
                    End::Down(reason) => {
                        self.down(&reason);
                        let delay = self.backoff.next_delay();
                        self.wait_down(delay).await;
                        continue 'connect;
                    }
                    End::Refused(reason) => {
                        tracing::error!(worker = self.id(), url = %self.endpoint.agent_url, %reason, "worker events refused");
                        self.down(&reason);
                        let delay = self.backoff.max_delay();
                        self.wait_down(delay).await;
                        continue 'connect;
                    }
                }
            }
        }
        tracing::info!(worker = self.id(), "worker source stopped");
    }

    /// Applies the stream's events until it ends, fails, or needs a resync.
    async fn pump(&mut self, mut stream: Streaming<WorkerEvent>) -> End {
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stopped(&mut self.shutdown) => return End::Shutdown,
            };
            let event = match message {
                Ok(Some(event)) => event,
                Ok(None) => return End::Down("the agent ended the event stream".into()),
                Err(status) => {
                    return End::Down(format!(
                        "event stream failed: {} ({:?})",
                        status.message(),
                        status.code()
                    ))
                }
            };
            let step = self.sync.on_event(&event);
            match &step {
                WorkerStep::Resync(reason) => return End::Resync(reason.to_string()),
                WorkerStep::Refuse(reason) => return End::Refused(reason.clone()),
                WorkerStep::Skip => continue,
                _ => {}
            }
            let blocks = self.apply(&step);
            if let WorkerStep::Replace(chains) = &step {
                tracing::info!(
                    worker = self.id(),
                    event_id = event.event_id,
                    epoch = event.epoch,
                    chains = chains.len(),
                    blocks,
                    "worker snapshot applied"
                );
            }
            self.states.applied(
                &self.endpoint.worker_id,
                self.sync.last_id(),
                self.sync.epoch().unwrap_or(0),
                blocks,
            );
            self.expired = false;
            self.backoff.reset();
            if self.down_since.is_some() {
                self.up();
            }
        }
    }

    fn up(&mut self) {
        self.down_since = None;
        self.outage_logged = false;
        self.states.set_up(&self.endpoint.worker_id);
    }

    fn down(&mut self, reason: &str) {
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
        }
        // The first failure of an outage is a warning even for a worker that
        // never came up (e.g. its agent refuses this router's token).
        let first = !self.outage_logged;
        self.outage_logged = true;
        if self.states.set_down(&self.endpoint.worker_id, reason) || first {
            tracing::warn!(worker = self.id(), %reason, "worker unavailable");
        } else {
            tracing::debug!(worker = self.id(), %reason, "worker still unavailable");
        }
    }

    /// Waits `delay` before the next attempt; clears the worker's entries when
    /// it has been down past the expiry meanwhile.
    async fn wait_down(&mut self, delay: Duration) {
        let deadline = tokio::time::Instant::now() + delay;
        if !self.expired {
            if let Some(since) = self.down_since {
                let expires_at = tokio::time::Instant::from_std(since + self.config.expiry);
                if expires_at <= deadline {
                    if !self.sleep_until(expires_at).await {
                        return;
                    }
                    self.expire();
                }
            }
        }
        self.sleep_until(deadline).await;
    }

    /// Sleeps until `at`; false when shutdown came first.
    async fn sleep_until(&mut self, at: tokio::time::Instant) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at) => true,
            _ = stopped(&mut self.shutdown) => false,
        }
    }

    fn expire(&mut self) {
        self.expired = true;
        self.index.write().worker_cleared(self.slot);
        self.sync.reset();
        self.states.expired(&self.endpoint.worker_id);
        tracing::warn!(
            worker = self.id(),
            expiry = ?self.config.expiry,
            "worker unavailable past the expiry: its blocks are forgotten"
        );
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}
