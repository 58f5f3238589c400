//! The agent's client side: how an engine connector (or a simulator, or a
//! test) reaches a `kvtier-agent`'s `WorkerService`.
//!
//! It lives here, next to the server, so that callers dial the agent with the
//! same message-size limit the agent serves with ([`MAX_MESSAGE_BYTES`]: a
//! full block in one message) and the same two transports: loopback TCP
//! (`http://host:port`) and the agent's Unix socket (`unix:/path/to.sock`).
//! Callers need nothing else of the agent's internals.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use kvtier_proto::v1::worker_service_client::WorkerServiceClient;

pub use crate::tier::MAX_MESSAGE_BYTES;

/// A client of one agent's `WorkerService`.
pub type AgentClient = WorkerServiceClient<Channel>;

/// The agent could not be reached, or its address is malformed.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the agent: {0}")]
pub struct ConnectError(String);

/// How long a lazily connected client waits for the agent to accept a
/// connection: the agent is local, so a longer wait means it is down.
const LAZY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The URI tonic is given for a Unix-socket channel; never dialled (the
/// connector opens the socket), but an `Endpoint` needs a valid one.
const UDS_PLACEHOLDER: &str = "http://[::1]:1";

/// Connects to an agent at `http://host:port` or `unix:/path/to.sock`.
pub async fn connect(agent: &str) -> Result<AgentClient, ConnectError> {
    let channel = if let Some(path) = agent.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        Endpoint::from_static(UDS_PLACEHOLDER)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
    } else {
        Endpoint::from_shared(agent.to_string())
            .map_err(|e| ConnectError(e.to_string()))?
            .connect()
            .await
    }
    .map_err(|e| ConnectError(format!("{agent}: {e}")))?;
    Ok(with_limits(channel))
}

/// Like [`connect`], but dials nothing until the first call (and redials a
/// lost connection on the next call): calls fail with UNAVAILABLE while the
/// agent is down instead of the constructor failing.
pub fn connect_lazy(agent: &str) -> Result<AgentClient, ConnectError> {
    let endpoint = |uri: String| {
        Endpoint::from_shared(uri)
            .map(|e| e.connect_timeout(LAZY_CONNECT_TIMEOUT))
            .map_err(|e| ConnectError(format!("{agent}: {e}")))
    };
    let channel = if let Some(path) = agent.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        endpoint(UDS_PLACEHOLDER.into())?.connect_with_connector_lazy(tower::service_fn(
            move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            },
        ))
    } else {
        endpoint(agent.to_string())?.connect_lazy()
    };
    Ok(with_limits(channel))
}

/// A `WorkerService` client on `channel` with the agent's message-size limits.
fn with_limits(channel: Channel) -> AgentClient {
    WorkerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_address_is_a_connect_error() {
        let err = connect("not a uri").await.unwrap_err();
        assert!(
            err.to_string().starts_with("cannot reach the agent: "),
            "{err}"
        );
        let err = connect_lazy("not a uri").unwrap_err();
        assert!(err.to_string().contains("not a uri"), "{err}");
    }

    #[tokio::test]
    async fn a_lazy_client_is_built_without_an_agent() {
        let sock = std::env::temp_dir().join(format!("kvtier-absent-{}.sock", std::process::id()));
        assert!(connect_lazy(&format!("unix:{}", sock.display())).is_ok());
        assert!(connect_lazy("http://127.0.0.1:1").is_ok());
        assert!(connect(&format!("unix:{}", sock.display())).await.is_err());
    }
}
