//! gRPC channels to agents and the cache server: `http://host:port` (TCP) or
//! `unix:/path/to.sock`, with a connect timeout and HTTP/2 keepalive so that a
//! peer that vanishes without closing its connection is noticed.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kvtier_security::ServerClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Failure to open a channel.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is neither `http(s)://host:port` nor `unix:/path`.
    #[error("bad endpoint URL {url:?}: {reason} (use http://host:port or unix:/path)")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered (refused, unreachable, timed out).
    #[error("cannot connect to {url}: {reason}")]
    Unreachable {
        /// The URL given.
        url: String,
        /// The transport's error, with its causes.
        reason: String,
    },
}

/// Opens a channel to `url` (`http://host:port`, `https://...` or
/// `unix:/path`), waiting at most `timeout`; HTTP/2 pings every `keepalive`
/// (zero: none) detect a silent peer within about twice that.
pub async fn connect(
    url: &str,
    timeout: Duration,
    keepalive: Duration,
) -> Result<Channel, ConnectError> {
    connect_secure(url, &ServerClient::plain(), timeout, keepalive).await
}

/// [`connect`] with TLS when `security` has it (an `https://` URL).
pub async fn connect_secure(
    url: &str,
    security: &ServerClient,
    timeout: Duration,
    keepalive: Duration,
) -> Result<Channel, ConnectError> {
    let (endpoint, uds) = match url.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => (
            Endpoint::from_static("http://[::1]:1"),
            Some(PathBuf::from(path)),
        ),
        Some(_) => {
            return Err(ConnectError::BadUrl {
                url: url.into(),
                reason: "empty socket path".into(),
            })
        }
        None => (
            Endpoint::from_shared(url.to_string()).map_err(|e| ConnectError::BadUrl {
                url: url.into(),
                reason: e.to_string(),
            })?,
            None,
        ),
    };
    let mut endpoint = security
        .configure(endpoint.connect_timeout(timeout).tcp_nodelay(true))
        .map_err(|e| ConnectError::BadUrl {
            url: url.into(),
            reason: e.to_string(),
        })?;
    if !keepalive.is_zero() {
        endpoint = endpoint
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .keep_alive_while_idle(true);
    }
    let connected = match uds {
        Some(path) => {
            let attempt = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
            match tokio::time::timeout(timeout, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(ConnectError::Unreachable {
                        url: url.into(),
                        reason: format!("timed out after {timeout:?}"),
                    })
                }
            }
        }
        None => endpoint.connect().await,
    };
    connected.map_err(|e| ConnectError::Unreachable {
        url: url.into(),
        reason: error_chain(&e),
    })
}

/// An error and its sources, joined (tonic's top-level "transport error" alone
/// does not say what failed).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_and_dead_peers_are_errors() {
        let t = Duration::from_millis(500);
        assert!(matches!(
            connect("unix:", t, Duration::ZERO).await,
            Err(ConnectError::BadUrl { .. })
        ));
        assert!(matches!(
            connect("not a url", t, Duration::ZERO).await,
            Err(ConnectError::BadUrl { .. })
        ));
        assert!(matches!(
            connect("unix:/nonexistent/kvtier.sock", t, Duration::ZERO).await,
            Err(ConnectError::Unreachable { .. })
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let err = connect(&format!("http://127.0.0.1:{port}"), t, Duration::ZERO)
            .await
            .expect_err("nothing listens");
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
