//! The cache-server side: one handshaken session per attached pool, renewed
//! transparently when the server forgets it (restart, session eviction).
//!
//! The channel connects lazily with a short connect timeout, so a dead server
//! costs a request a refused connection, not a hang.

use std::future::Future;
use std::time::Duration;

use kvtier_security::{AuthChannel, ServerClient};
use parking_lot::Mutex;
use tonic::transport::Endpoint;
use tonic::Code;

use kvtier_proto::dataplane::client::{DataClient, DataError};
use kvtier_proto::dataplane::wire::Status as DataStatus;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{HandshakeRequest, HandshakeResponse, HashingConfig};

use crate::error::{AgentError, Result};

/// Largest message exchanged with the server (blocks up to 64 MiB, as the server).
pub const MAX_MESSAGE_BYTES: usize = 65 << 20;

/// A client of the cache server on one connection, stamping the bearer token.
pub type CacheClient = CacheServiceClient<AuthChannel>;

/// A lazily connected channel to the cache server: TLS when `security` says
/// so, and its bearer token on every request.
pub fn connect_lazy(
    server: &str,
    security: &ServerClient,
    connect_timeout: Duration,
) -> Result<AuthChannel> {
    let endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| {
            AgentError::InvalidRequest(format!("bad cache server address {server:?}: {e}"))
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Large blocks: big flow-control windows and 1 MiB HTTP/2 frames (the
        // default 16 KiB frames cost a frame header and a wake-up each), as
        // the server is configured.
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .max_frame_size(1 << 20);
    let endpoint = security
        .configure(endpoint)
        .map_err(|e| AgentError::InvalidRequest(format!("cache server {server}: {e}")))?;
    Ok(security.intercept(endpoint.connect_lazy()))
}

/// A handshaken session with the cache server for one namespace.
#[derive(Debug)]
pub struct TierSession {
    /// One client per connection; concurrent streams spread over them.
    clients: Vec<CacheClient>,
    request: HandshakeRequest,
    /// The current session id; replaced when the server no longer knows it.
    session_id: Mutex<String>,
    /// The server's binary data plane (`host:port`), when payloads go over it.
    data_plane: Option<String>,
    /// Bearer token for the data plane's hello ("" without authentication).
    data_token: String,
}

impl TierSession {
    /// Handshakes `namespace` with `config`. A configuration the server's
    /// namespace does not share is refused (FAILED_PRECONDITION, both
    /// configs). An unreachable server is not an error: the session is opened
    /// by the first call that reaches it, so an engine can start (and
    /// recompute everything) while the cache tier is down.
    /// `channels` are separate connections to the same server (at least one),
    /// each stamping the agent's bearer token.
    pub async fn open(
        channels: &[AuthChannel],
        namespace: &str,
        config: HashingConfig,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let session = Self::unopened(channels, namespace, config, client_name)?;
        match handshake(&session.clients[0], &session.request, timeout).await {
            Ok(response) => *session.session_id.lock() = response.session_id,
            Err(e @ AgentError::ConfigMismatch(_)) => return Err(e),
            Err(AgentError::Tier(s)) if s.code() != Code::Unavailable => {
                return Err(AgentError::Tier(s))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache server unreachable; the session opens on first use");
            }
        }
        Ok(session)
    }

    /// A session of `namespace` that handshakes on first use (no call now):
    /// for an agent whose tier I/O goes to a cluster instead.
    pub fn unopened(
        channels: &[AuthChannel],
        namespace: &str,
        config: HashingConfig,
        client_name: &str,
    ) -> Result<Self> {
        let clients: Vec<_> = channels
            .iter()
            .map(|c| {
                CacheServiceClient::new(c.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            })
            .collect();
        if clients.is_empty() {
            return Err(AgentError::InvalidRequest(
                "no connection to the cache server".into(),
            ));
        }
        Ok(Self {
            clients,
            request: HandshakeRequest {
                namespace: namespace.to_string(),
                config: Some(config),
                client_name: client_name.to_string(),
                ..Default::default()
            },
            session_id: Mutex::new(String::new()),
            data_plane: None,
            data_token: String::new(),
        })
    }

    /// Moves payloads over the server's binary data plane at `addr`
    /// (`host:port`, resolved at each connection; None: gRPC), presenting
    /// `token` (the gRPC bearer token; "" without authentication).
    pub fn with_data_plane(mut self, addr: Option<String>, token: &str) -> Self {
        self.data_plane = addr;
        self.data_token = token.to_string();
        self
    }

    /// Whether payloads go over the binary data plane.
    pub fn uses_data_plane(&self) -> bool {
        self.data_plane.is_some()
    }

    /// A data-plane connection under the current session (handshaking again
    /// if the server no longer knows it), with `agent` (may be empty) for
    /// the server's hit attribution; None when payloads go over gRPC.
    pub async fn data_connection(
        &self,
        agent: &str,
        timeout: Duration,
    ) -> Result<Option<DataClient<tokio::net::TcpStream>>> {
        let Some(target) = self.data_plane.as_deref() else {
            return Ok(None);
        };
        let attempt = async {
            let addr = tokio::net::lookup_host(target)
                .await
                .map_err(|e| AgentError::DataPlane(format!("resolve {target}: {e}")))?
                .next()
                .ok_or_else(|| AgentError::DataPlane(format!("{target} resolves to no address")))?;
            let mut id = self.session_id();
            if id.is_empty() {
                id = self.renew(timeout).await?;
            }
            match DataClient::connect(addr, &id, &self.data_token, agent).await {
                Err(DataError::Refused {
                    status: DataStatus::NoSession,
                    ..
                }) => {
                    let id = self.renew(timeout).await?;
                    DataClient::connect(addr, &id, &self.data_token, agent)
                        .await
                        .map_err(data_error)
                }
                other => other.map_err(data_error),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| AgentError::Timeout(timeout))?
            .map(Some)
    }

    /// Connections to the server.
    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    /// A client on connection `k % connections()` (cheap clone).
    pub fn client(&self, k: usize) -> CacheClient {
        self.clients[k % self.clients.len()].clone()
    }

    /// The current session id.
    pub fn session_id(&self) -> String {
        self.session_id.lock().clone()
    }

    async fn renew(&self, timeout: Duration) -> Result<String> {
        let response = handshake(&self.client(0), &self.request, timeout).await?;
        tracing::info!(namespace = %self.request.namespace, "cache server session renewed");
        *self.session_id.lock() = response.session_id.clone();
        Ok(response.session_id)
    }

    /// Runs `call(client, session_id)` on the first connection; see [`Self::call_on`].
    pub async fn call<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T>
    where
        F: Fn(CacheClient, String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.call_on(0, timeout, call).await
    }

    /// Runs `call(client, session_id)` on connection `k` within `timeout`;
    /// when the server no longer knows the session, handshakes again and
    /// retries once.
    pub async fn call_on<T, F, Fut>(&self, k: usize, timeout: Duration, call: F) -> Result<T>
    where
        F: Fn(CacheClient, String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempt = async {
            let mut id = self.session_id();
            if id.is_empty() {
                id = self.renew(timeout).await?;
            }
            match call(self.client(k), id).await {
                Err(AgentError::Tier(status)) if kvtier_proto::is_unknown_session(&status) => {
                    let id = self.renew(timeout).await?;
                    call(self.client(k), id).await
                }
                other => other,
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| AgentError::Timeout(timeout))?
    }
}

/// A data-plane failure as the agent reports it.
pub fn data_error(error: DataError) -> AgentError {
    AgentError::DataPlane(error.to_string())
}

async fn handshake(
    client: &CacheClient,
    request: &HandshakeRequest,
    timeout: Duration,
) -> Result<HandshakeResponse> {
    let mut client = client.clone();
    let call = client.handshake(request.clone());
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(AgentError::Timeout(timeout)),
        Ok(Err(status)) if status.code() == Code::FailedPrecondition => {
            Err(AgentError::ConfigMismatch(format!(
                "the cache server refused namespace {:?}: {}",
                request.namespace,
                status.message()
            )))
        }
        Ok(Err(status)) => Err(AgentError::Tier(status)),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}
