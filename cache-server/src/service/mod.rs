//! Thin gRPC shell over the store: one file per handler group.
//!
//! - [`session`] — handshake sessions (no data call without one).
//! - [`handshake`] — `Handshake`.
//! - [`put`] — `Put` (client-streaming).
//! - [`read`] — `Get` (server-streaming) and `Lookup`.
//! - [`watch`] — `WatchEvents`.
//! - [`stats`] — `Stats`.
//! - [`agents`] — `RegisterAgent`, `Hint`, `EndAgent`.
//!
//! Every handler validates its input and maps failures to the status code a
//! client can act on, with a message that says what to change.

mod agents;
mod handshake;
mod put;
mod read;
pub mod session;
mod stats;
mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use kvtier_security::{Authenticator, Client, ClientLimiter, ClientPermit};

use kvtier_proto::v1::cache_service_server::CacheService;
use kvtier_proto::v1::*;

use crate::metrics as m;
use crate::namespace::NamespaceRegistry;
use crate::store::{StoreError, TieredStore};
use crate::tier::TierError;
use session::Sessions;

/// Most hashes one Get or Lookup may carry.
pub const MAX_HASHES_PER_REQUEST: usize = 65_536;

/// How long a request waits for a free slot before it is refused.
const ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// Shared state of the handlers.
#[derive(Debug)]
pub struct ServiceState {
    /// The block store.
    pub store: Arc<TieredStore>,
    /// Namespaces and their configurations.
    pub namespaces: NamespaceRegistry,
    /// Open sessions.
    pub sessions: Sessions,
    /// Agent lifecycles.
    pub agents: crate::agents::AgentBook,
    /// Identifies this process in events.
    pub epoch: u64,
    /// Largest gRPC message accepted.
    pub max_message_bytes: u64,
    /// Bounds the requests served at once (back-pressure, not OOM).
    pub admission: Arc<Semaphore>,
    /// Slots in `admission`.
    pub max_concurrent_requests: usize,
    /// Bearer-token authentication (disabled: every caller is anonymous).
    pub auth: Arc<Authenticator>,
    /// Per-client concurrency and byte-rate limits.
    pub limits: ClientLimiter,
    /// This server's cluster membership (`--cluster`); `None`: a single server.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

impl ServiceState {
    /// The caller stamped by the authentication interceptor. With tokens on,
    /// a request that did not pass the interceptor is refused rather than
    /// treated as anonymous (defence in depth against a mis-wired server).
    pub fn client<T>(&self, request: &Request<T>) -> Result<Client, Status> {
        let client = Client::of(request);
        if self.auth.enabled() && client.principal.is_none() {
            return Err(Status::unauthenticated(
                "this server requires a bearer token: send `authorization: Bearer <token>`",
            ));
        }
        Ok(client)
    }
}

/// A request's slots: one of the server's and one of its client's.
#[derive(Debug)]
pub struct Admission {
    _client: ClientPermit,
    _server: OwnedSemaphorePermit,
}

impl ServiceState {
    /// Takes a request slot of `client` (refused at once when the client is
    /// at its own limit) and one of the server's, waiting briefly; refuses
    /// with RESOURCE_EXHAUSTED and a retry hint when the server stays saturated.
    pub async fn admit(&self, method: &'static str, client: &Client) -> Result<Admission, Status> {
        let client_permit = self.client_slot(method, client)?;
        let server_permit = self.server_slot(method).await?;
        Ok(Admission {
            _client: client_permit,
            _server: server_permit,
        })
    }

    /// Takes one of `client`'s request slots, or refuses at once with
    /// RESOURCE_EXHAUSTED and a retry hint. Holds no server-wide slot: PUTs
    /// take this one before their payload arrives (it bounds what one client
    /// can keep buffered) and the server's only once the payload is complete.
    pub fn client_slot(
        &self,
        method: &'static str,
        client: &Client,
    ) -> Result<ClientPermit, Status> {
        self.limits.acquire(&client.id).map_err(|t| {
            metrics::counter!(m::REQUESTS_REJECTED, "method" => method).increment(1);
            Status::from(t)
        })
    }

    /// Takes one of the server's request slots, waiting up to 2 s; then
    /// RESOURCE_EXHAUSTED with a retry hint.
    pub async fn server_slot(&self, method: &'static str) -> Result<OwnedSemaphorePermit, Status> {
        match tokio::time::timeout(ADMISSION_WAIT, self.admission.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics::counter!(m::REQUESTS_REJECTED, "method" => method).increment(1);
                let mut status = Status::resource_exhausted(format!(
                    "server busy: {} requests in flight (--max-concurrent-requests); retry after 100 ms",
                    self.max_concurrent_requests
                ));
                if let Ok(v) = "100".parse() {
                    status.metadata_mut().insert("retry-after-ms", v);
                }
                Err(status)
            }
        }
    }
}

/// Maps store failures to gRPC statuses.
pub fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::TooLarge { .. } => Status::invalid_argument(err.to_string()),
        // A full data volume is an overload the client can act on (retry
        // later, or elsewhere), not a server bug; reads keep working.
        StoreError::Tier(e) if e.to_string().contains("No space left") => {
            Status::resource_exhausted(format!(
                "disk tier full (no space left on the data volume): writes are refused until \
                 space is freed; reads keep working ({e})"
            ))
        }
        // Every host slot held by payloads still being read or received: a
        // moment's overload, not a failure.
        StoreError::Tier(TierError::NoSlot(_)) => {
            let mut st = Status::resource_exhausted(format!(
                "{err}: every slot is held by reads or writes in flight; retry shortly"
            ));
            if let Ok(v) = "50".parse() {
                st.metadata_mut().insert("retry-after-ms", v);
            }
            st
        }
        StoreError::Tier(e) => Status::internal(format!("storage failure: {e}")),
    }
}

/// Records a handler's latency with its outcome code.
fn observe<T>(method: &'static str, started: Instant, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => "ok".to_string(),
        Err(s) => format!("{:?}", s.code()).to_lowercase(),
    };
    metrics::histogram!(m::REQUEST_DURATION, "method" => method, "code" => code)
        .record(started.elapsed().as_secs_f64());
}

/// The `kvtier.v1.CacheService` implementation.
#[derive(Debug, Clone)]
pub struct CacheServiceImpl {
    state: Arc<ServiceState>,
    put_message_timeout: Duration,
}

impl CacheServiceImpl {
    /// A service over shared state.
    pub fn new(state: Arc<ServiceState>) -> Self {
        Self {
            state,
            put_message_timeout: Duration::from_millis(crate::config::DEFAULT_FRAME_TIMEOUT_MS),
        }
    }

    /// Sets the longest wait for each message of a Put stream (the server's
    /// `--frame-timeout-ms`); a stream silent for longer ends with
    /// DEADLINE_EXCEEDED and frees its slots.
    pub fn with_put_message_timeout(mut self, timeout: Duration) -> Self {
        self.put_message_timeout = timeout;
        self
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CacheService for CacheServiceImpl {
    async fn handshake(
        &self,
        request: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        let started = Instant::now();
        let result = match self.state.client(&request) {
            Ok(client) => handshake::handle(&self.state, &client, request.into_inner())
                .await
                .map(Response::new),
            Err(status) => Err(status),
        };
        observe("handshake", started, &result);
        result
    }

    async fn put(
        &self,
        request: Request<Streaming<PutRequest>>,
    ) -> Result<Response<PutResponse>, Status> {
        let started = Instant::now();
        let result = put::handle(&self.state, request, self.put_message_timeout)
            .await
            .map(Response::new);
        observe("put", started, &result);
        result
    }

    type GetStream = BoxStream<GetResponse>;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let started = Instant::now();
        let result = read::get(&self.state, request).await.map(Response::new);
        observe("get", started, &result);
        result
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let started = Instant::now();
        let result = read::lookup(&self.state, request).await.map(Response::new);
        observe("lookup", started, &result);
        result
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let started = Instant::now();
        let result = self
            .state
            .client(&request)
            .map(|client| Response::new(stats::handle(&self.state, &client)));
        observe("stats", started, &result);
        result
    }

    async fn register_agent(
        &self,
        request: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let started = Instant::now();
        let result = agents::register(&self.state, request).map(Response::new);
        observe("register_agent", started, &result);
        result
    }

    async fn hint(&self, request: Request<HintRequest>) -> Result<Response<HintResponse>, Status> {
        let started = Instant::now();
        let result = agents::hint(&self.state, request).map(Response::new);
        observe("hint", started, &result);
        result
    }

    async fn end_agent(
        &self,
        request: Request<EndAgentRequest>,
    ) -> Result<Response<EndAgentResponse>, Status> {
        let started = Instant::now();
        let result = agents::end(&self.state, request).map(Response::new);
        observe("end_agent", started, &result);
        result
    }

    type WatchEventsStream = BoxStream<CacheEvent>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let started = Instant::now();
        let result = self.state.client(&request).and_then(|client| {
            watch::handle(&self.state, &client, request.into_inner()).map(Response::new)
        });
        observe("watch_events", started, &result);
        result
    }
}

/// Converts a store tier to its wire enum.
pub fn wire_tier(tier: Option<crate::tier::Tier>) -> kvtier_proto::v1::Tier {
    use crate::tier::Tier as T;
    match tier {
        None => kvtier_proto::v1::Tier::None,
        Some(T::Gpu) => kvtier_proto::v1::Tier::Gpu,
        Some(T::Host) => kvtier_proto::v1::Tier::Host,
        Some(T::Disk) => kvtier_proto::v1::Tier::Disk,
    }
}
