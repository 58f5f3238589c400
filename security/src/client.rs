//! The client side: how a kvtier binary (worker agent, router) reaches a
//! cache server that requires TLS and a bearer token.
//!
//! [`ServerClientArgs`] are the flags both binaries share; they resolve to a
//! [`ServerClient`], which configures a tonic [`Endpoint`] (TLS when the URL
//! is `https://`) and makes the [`BearerToken`] interceptor that stamps every
//! request with `authorization: Bearer <token>`.

use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::tls::{client_config, ClientTlsFiles};
use crate::SecurityError;

/// A channel whose requests carry the bearer token (when one is configured).
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every request; without a token it
/// leaves requests as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The interceptor for `token` (`None`: no header).
    pub fn new(token: Option<&str>) -> Result<Self, SecurityError> {
        token
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    SecurityError::Token(
                        "the bearer token has characters a header cannot carry (use the \
                         token exactly as kvtier-token printed it)"
                            .into(),
                    )
                })
            })
            .transpose()
            .map(Self)
    }

    /// Whether requests carry a token.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Flags for reaching the cache server securely, shared by `kvtier-agent`
/// and `kvtier-router` (flatten into a binary's clap arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerClientArgs {
    /// Bearer token presented to the cache server (a `kvtier-token new` token).
    /// Prefer --server-token-file: environment and arguments are visible to
    /// other local users.
    #[arg(long, env = "KVTIER_SERVER_TOKEN", hide_env_values = true)]
    pub server_token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored).
    #[arg(
        long,
        env = "KVTIER_SERVER_TOKEN_FILE",
        conflicts_with = "server_token"
    )]
    pub server_token_file: Option<PathBuf>,
    /// CA (PEM) that the cache server's certificate must chain to; needed for
    /// an `https://` server URL.
    #[arg(long, env = "KVTIER_SERVER_CA")]
    pub server_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mutual TLS.
    #[arg(long, env = "KVTIER_SERVER_CERT", requires = "server_key")]
    pub server_cert: Option<PathBuf>,
    /// Private key (PEM) of --server-cert.
    #[arg(long, env = "KVTIER_SERVER_KEY", requires = "server_cert")]
    pub server_key: Option<PathBuf>,
    /// Name to verify in the server's certificate (default: the URL's host).
    #[arg(long, env = "KVTIER_SERVER_TLS_DOMAIN")]
    pub server_tls_domain: Option<String>,
}

impl ServerClientArgs {
    /// For the members of a cluster, whose addresses come from the
    /// membership rather than a URL: TLS when --server-ca is given.
    pub fn resolve_for_cluster(&self) -> Result<ServerClient, SecurityError> {
        self.resolve(if self.server_ca.is_some() {
            "https://cluster-members"
        } else {
            "http://cluster-members"
        })
    }

    /// Checks the flags against the server URL and reads the token file.
    pub fn resolve(&self, server_url: &str) -> Result<ServerClient, SecurityError> {
        let https = server_url.starts_with("https://");
        let tls_flags = self.server_ca.is_some()
            || self.server_cert.is_some()
            || self.server_tls_domain.is_some();
        let tls = if https {
            let Some(ca) = self.server_ca.clone() else {
                return Err(SecurityError::Tls(format!(
                    "{server_url} is https: pass --server-ca with the CA (PEM) that signed the \
                     cache server's certificate"
                )));
            };
            Some(ClientTlsFiles {
                ca: Some(ca),
                identity: self.server_cert.clone().zip(self.server_key.clone()),
                domain: self.server_tls_domain.clone(),
            })
        } else if tls_flags {
            return Err(SecurityError::Tls(format!(
                "--server-ca/--server-cert/--server-tls-domain need an https:// server URL, \
                 not {server_url}"
            )));
        } else {
            None
        };
        let token = match (&self.server_token, &self.server_token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| SecurityError::Io {
                    path: path.display().to_string(),
                    source: e,
                })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(SecurityError::Token(format!(
                        "{} holds no token",
                        path.display()
                    )));
                }
                Some(token)
            }
            (None, None) => None,
        };
        Ok(ServerClient {
            bearer: BearerToken::new(token.as_deref())?,
            token,
            tls,
        })
    }
}

/// How to reach the cache server: TLS material (for `https://`) and the
/// bearer token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerClient {
    tls: Option<ClientTlsFiles>,
    token: Option<String>,
    bearer: BearerToken,
}

impl ServerClient {
    /// Plaintext, no token (a loopback server without authentication).
    pub fn plain() -> Self {
        Self::default()
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The bearer token itself (the data plane's hello carries it), if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The interceptor that adds the token to each request.
    pub fn bearer(&self) -> BearerToken {
        self.bearer.clone()
    }

    /// Adds the TLS configuration to `endpoint` (unchanged without TLS).
    pub fn configure(&self, endpoint: Endpoint) -> Result<Endpoint, SecurityError> {
        match &self.tls {
            Some(files) => endpoint
                .tls_config(client_config(files)?)
                .map_err(|e| SecurityError::Tls(e.to_string())),
            None => Ok(endpoint),
        }
    }

    /// The same token without TLS (for a plaintext endpoint of a peer whose
    /// other endpoints use TLS).
    pub fn without_tls(&self) -> ServerClient {
        ServerClient {
            tls: None,
            ..self.clone()
        }
    }

    /// `channel` with the token stamped on every request.
    pub fn intercept(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self.bearer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_stamps_requests_and_refuses_header_breaking_tokens() {
        let mut token = BearerToken::new(Some("abc123")).expect("token");
        let request = token.call(Request::new(())).expect("call");
        assert_eq!(
            request.metadata().get("authorization").expect("header"),
            "Bearer abc123"
        );
        let mut none = BearerToken::new(None).expect("none");
        assert!(!none.is_set());
        let request = none.call(Request::new(())).expect("call");
        assert!(request.metadata().get("authorization").is_none());
        let err = BearerToken::new(Some("a\nb")).expect_err("newline");
        assert!(err.to_string().contains("kvtier-token"), "{err}");
    }

    #[test]
    fn flags_must_match_the_url_scheme() {
        let plain = ServerClientArgs::default()
            .resolve("http://127.0.0.1:50051")
            .expect("plain");
        assert!(!plain.tls() && !plain.bearer().is_set());

        let err = ServerClientArgs::default()
            .resolve("https://cache:50051")
            .expect_err("https without a CA");
        assert!(err.to_string().contains("--server-ca"), "{err}");

        let with_ca = ServerClientArgs {
            server_ca: Some("/etc/kvtier/ca.pem".into()),
            ..Default::default()
        };
        let err = with_ca
            .resolve("http://cache:50051")
            .expect_err("CA on a plaintext URL");
        assert!(err.to_string().contains("https://"), "{err}");
        assert!(with_ca.resolve("https://cache:50051").expect("tls").tls());
    }

    #[test]
    fn token_comes_from_the_flag_or_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").expect("write");
        let args = ServerClientArgs {
            server_token_file: Some(file.clone()),
            ..Default::default()
        };
        let client = args.resolve("http://127.0.0.1:1").expect("resolve");
        let request = client.bearer().call(Request::new(())).expect("call");
        assert_eq!(
            request.metadata().get("authorization").expect("header"),
            "Bearer s3cret"
        );
        std::fs::write(&file, "\n").expect("write");
        let err = args.resolve("http://127.0.0.1:1").expect_err("empty");
        assert!(err.to_string().contains("no token"), "{err}");
        let missing = ServerClientArgs {
            server_token_file: Some(dir.path().join("absent")),
            ..Default::default()
        };
        assert!(matches!(
            missing.resolve("http://127.0.0.1:1"),
            Err(SecurityError::Io { .. })
        ));
    }
}
