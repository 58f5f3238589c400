//! Authentication: who is calling. A tonic interceptor checks the
//! `authorization: Bearer <token>` header against the [`TokenTable`] and puts
//! the caller's [`Client`] identity into the request's extensions, where the
//! handlers read it to authorize namespaces and to charge per-client limits.
//!
//! The table lives behind an `RwLock<Arc<_>>`: a reload (SIGHUP) swaps it in
//! one step; requests in flight keep the table they started with. A reload
//! that fails to parse keeps the old table and logs why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::tokens::{Principal, TokenTable};
use crate::SecurityError;

/// The caller of a request, as the interceptor identified it.
#[derive(Debug, Clone)]
pub struct Client {
    /// Rate-limit and log key: `principal:<name>`, or `addr:<ip>` without tokens.
    pub id: Arc<str>,
    /// The authenticated principal; `None` when authentication is off.
    pub principal: Option<Arc<Principal>>,
}

impl Client {
    /// The identity of an unauthenticated caller (authentication off).
    pub fn anonymous(remote: Option<SocketAddr>) -> Self {
        let id = match remote {
            Some(addr) => format!("addr:{}", addr.ip()),
            None => "addr:unknown".to_string(),
        };
        Self {
            id: id.into(),
            principal: None,
        }
    }

    /// The client a request was stamped with, or an anonymous one for a
    /// request that never passed the interceptor.
    pub fn of<T>(request: &Request<T>) -> Self {
        request
            .extensions()
            .get::<Client>()
            .cloned()
            .unwrap_or_else(|| Self::anonymous(request.remote_addr()))
    }
}

/// Where the token table comes from.
#[derive(Debug, Clone)]
enum Source {
    /// Authentication off: every caller is anonymous.
    Off,
    /// A file, re-read on [`Authenticator::reload`].
    File(PathBuf),
    /// Fixed text (an environment variable); not reloadable.
    Text,
}

/// Checks bearer tokens. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Authenticator {
    table: RwLock<Arc<TokenTable>>,
    source: Source,
}

fn read_table(path: &PathBuf) -> Result<TokenTable, SecurityError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecurityError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    TokenTable::parse(&text)
}

impl Authenticator {
    /// Authentication off: the interceptor stamps every request anonymous.
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            table: RwLock::new(Arc::new(TokenTable::default())),
            source: Source::Off,
        })
    }

    /// Tokens from a file (reloadable).
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Arc<Self>, SecurityError> {
        let path = path.into();
        let table = read_table(&path)?;
        Ok(Arc::new(Self {
            table: RwLock::new(Arc::new(table)),
            source: Source::File(path),
        }))
    }

    /// Tokens from text (e.g. the `KVTIER_TOKENS` environment variable).
    pub fn from_text(text: &str) -> Result<Arc<Self>, SecurityError> {
        Ok(Arc::new(Self {
            table: RwLock::new(Arc::new(TokenTable::parse(text)?)),
            source: Source::Text,
        }))
    }

    /// Whether callers must present a token.
    pub fn enabled(&self) -> bool {
        !matches!(self.source, Source::Off)
    }

    /// Principals known now.
    pub fn principals(&self) -> usize {
        self.table.read().len()
    }

    /// Re-reads the token file; on error the old table stays. Returns the
    /// number of principals now known.
    pub fn reload(&self) -> Result<usize, SecurityError> {
        match &self.source {
            Source::File(path) => {
                let table = read_table(path)?;
                let n = table.len();
                *self.table.write() = Arc::new(table);
                Ok(n)
            }
            Source::Off | Source::Text => Ok(self.principals()),
        }
    }

    /// The client behind a request's metadata: `Ok(None)` when authentication
    /// is off; UNAUTHENTICATED without a valid bearer token.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Option<Arc<Principal>>, Status> {
        if !self.enabled() {
            return Ok(None);
        }
        let header = match metadata.get("authorization") {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?,
            ),
            None => None,
        };
        self.authenticate_header(header)
    }

    /// The same check on an `authorization` header's text (HTTP fronts);
    /// `None` when the request has no such header.
    pub fn authenticate_header(
        &self,
        header: Option<&str>,
    ) -> Result<Option<Arc<Principal>>, Status> {
        if !self.enabled() {
            return Ok(None);
        }
        let header = header.ok_or_else(|| {
            Status::unauthenticated(
                "this server requires a bearer token: send `authorization: Bearer <token>`",
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("authorization header must be `Bearer <token>`")
            })?;
        let table = Arc::clone(&self.table.read());
        table
            .find(token)
            .map(Some)
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))
    }

    /// The [`Client`] of an authenticated principal (or an anonymous one).
    pub fn client(principal: Option<Arc<Principal>>, remote: Option<SocketAddr>) -> Client {
        match principal {
            Some(principal) => Client {
                id: format!("principal:{}", principal.name).into(),
                principal: Some(principal),
            },
            None => Client::anonymous(remote),
        }
    }

    /// A tonic interceptor: authenticates and stamps the request with its [`Client`].
    pub fn interceptor(
        self: &Arc<Self>,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        let auth = Arc::clone(self);
        move |mut request: Request<()>| {
            let principal = auth.authenticate(request.metadata())?;
            let client = Authenticator::client(principal, request.remote_addr());
            request.extensions_mut().insert(client);
            Ok(request)
        }
    }

    /// Reloads the token file on every SIGHUP until the returned task is
    /// aborted. Only for file-backed tables (no-op task otherwise).
    #[cfg(unix)]
    pub fn spawn_sighup_reload(self: &Arc<Self>) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let auth = Arc::clone(self);
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match auth.reload() {
                    Ok(n) => tracing::info!(principals = n, "token file reloaded (SIGHUP)"),
                    Err(e) => {
                        tracing::error!(error = %e, "token file reload failed; keeping the previous tokens")
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::token_digest_line;

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().expect("ascii"));
        m
    }

    #[test]
    fn bearer_tokens_and_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("a {} a=rw\n", token_digest_line("tok-a"))).expect("w");
        let auth = Authenticator::from_file(&path).expect("load");
        let p = auth.authenticate(&md("Bearer tok-a")).expect("ok");
        assert_eq!(p.expect("principal").name, "a");
        assert_eq!(
            auth.authenticate(&md("Bearer nope"))
                .expect_err("bad")
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(auth.authenticate(&md("Basic tok-a")).is_err());
        assert!(auth.authenticate(&MetadataMap::new()).is_err());
        // Revoke a, add b.
        std::fs::write(&path, format!("b {} b=r\n", token_digest_line("tok-b"))).expect("w");
        assert_eq!(auth.reload().expect("reload"), 1);
        assert!(auth.authenticate(&md("Bearer tok-a")).is_err());
        assert!(auth.authenticate(&md("Bearer tok-b")).is_ok());
        // A broken file keeps the last good table.
        std::fs::write(&path, "b plain-token b=r\n").expect("w");
        assert!(auth.reload().is_err());
        assert!(auth.authenticate(&md("Bearer tok-b")).is_ok());
    }

    #[test]
    fn disabled_is_anonymous() {
        let auth = Authenticator::disabled();
        assert!(!auth.enabled());
        assert!(auth
            .authenticate(&MetadataMap::new())
            .expect("ok")
            .is_none());
        let mut intercept = auth.interceptor();
        let req = intercept(Request::new(())).expect("pass");
        let client = req.extensions().get::<Client>().expect("stamped");
        assert!(client.id.starts_with("addr:"));
    }
}
