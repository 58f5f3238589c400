//! Securing a front that is not the cache server: the worker agent's TCP
//! listener and the router's gRPC and HTTP listeners. The same flags as
//! `kvtier-server` (`--tls-cert`, `--tls-key`, `--tls-client-ca`,
//! `--tokens-file`/`--tokens`, `--allow-plaintext`), resolved once into a
//! [`FrontSecurity`] that each listener asks for its TLS configuration, its
//! plaintext check and its [`Authenticator`].
//!
//! Authorization stays with the service: [`require`] checks a caller's
//! access to one namespace and answers with the status a person can act on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::Status;

use crate::auth::{Authenticator, Client};
use crate::tls::ServerTlsFiles;
use crate::tokens::Access;
use crate::SecurityError;

/// Flags securing a front's listeners (flatten into a binary's clap arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FrontSecurityArgs {
    /// TLS certificate chain (PEM); with --tls-key, the listeners serve TLS.
    #[arg(long, env = "KVTIER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "KVTIER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA that client certificates must chain to (turns on mutual TLS).
    #[arg(long, env = "KVTIER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Token file (`kvtier-token new` lines: hashed tokens, tenants, grants),
    /// reloaded on SIGHUP. Turns on bearer-token authentication.
    #[arg(long, env = "KVTIER_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Token table inline (entries separated by `;`), when there is no file.
    #[arg(
        long,
        env = "KVTIER_TOKENS",
        hide_env_values = true,
        conflicts_with = "tokens_file"
    )]
    pub tokens: Option<String>,
    /// Allow plaintext on non-loopback addresses (a warning is logged).
    #[arg(long, env = "KVTIER_ALLOW_PLAINTEXT", default_value_t = false)]
    pub allow_plaintext: bool,
}

impl FrontSecurityArgs {
    /// Reads the token table and checks the TLS files exist and parse.
    pub fn resolve(&self) -> Result<FrontSecurity, SecurityError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(SecurityError::Tls(
                    "--tls-cert and --tls-key go together".to_string(),
                ))
            }
        };
        if let Some(files) = &tls {
            // Fail at start, not at the first connection.
            crate::tls::server_config(files)?;
        }
        let auth = match (&self.tokens_file, &self.tokens) {
            (Some(path), _) => Authenticator::from_file(path)?,
            (None, Some(text)) if !text.trim().is_empty() => Authenticator::from_text(text)?,
            _ => Authenticator::disabled(),
        };
        Ok(FrontSecurity {
            tls,
            auth,
            allow_plaintext: self.allow_plaintext,
            reloadable: self.tokens_file.is_some(),
        })
    }
}

/// A front's resolved security: TLS files, the token check, the plaintext rule.
#[derive(Debug, Clone)]
pub struct FrontSecurity {
    /// TLS material; `None` serves plaintext (loopback only, unless allowed).
    pub tls: Option<ServerTlsFiles>,
    /// Bearer-token check (disabled when no tokens are configured).
    pub auth: Arc<Authenticator>,
    /// Plaintext allowed on non-loopback addresses.
    pub allow_plaintext: bool,
    reloadable: bool,
}

impl Default for FrontSecurity {
    fn default() -> Self {
        Self::open()
    }
}

impl FrontSecurity {
    /// No TLS, no tokens, plaintext only on loopback.
    pub fn open() -> Self {
        Self {
            tls: None,
            auth: Authenticator::disabled(),
            allow_plaintext: false,
            reloadable: false,
        }
    }

    /// Whether callers must present a bearer token.
    pub fn tokens_on(&self) -> bool {
        self.auth.enabled()
    }

    /// The gRPC TLS configuration of a listener on `addr` named `what`, after
    /// the plaintext rule: `Ok(None)` serves plaintext (loopback, or allowed).
    pub fn grpc_tls(
        &self,
        what: &str,
        addr: SocketAddr,
    ) -> Result<Option<tonic::transport::ServerTlsConfig>, SecurityError> {
        match &self.tls {
            Some(files) => Ok(Some(crate::tls::server_config(files)?)),
            None => {
                crate::tls::check_plaintext(what, addr, self.allow_plaintext)?;
                Ok(None)
            }
        }
    }

    /// The HTTP (axum) TLS configuration of a listener, after the plaintext rule.
    pub fn http_tls(
        &self,
        what: &str,
        addr: SocketAddr,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, SecurityError> {
        match &self.tls {
            Some(files) => Ok(Some(crate::http_tls::rustls_config(files)?)),
            None => {
                crate::tls::check_plaintext(what, addr, self.allow_plaintext)?;
                Ok(None)
            }
        }
    }

    /// Reloads a token file on SIGHUP (`None` when the tokens are not a file).
    #[cfg(unix)]
    pub fn spawn_reload(&self) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
        if self.reloadable {
            self.auth.spawn_sighup_reload().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// What a call needs in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reading: lookups, matches, listings.
    Read,
    /// Writing: anything that changes state others see (lifecycle, load, KV).
    Write,
}

/// Checks that `client` may do `need` in `namespace`; `Ok` for anonymous
/// callers when authentication is off (`client.principal` is `None`).
/// `what` names the call for the message. gRPC fronts use this.
pub fn require(client: &Client, namespace: &str, need: Need, what: &str) -> Result<(), Status> {
    permitted(client, namespace, need, what).map_err(Status::permission_denied)
}

/// The check of [`require`] for any front: `Err` carries the refusal's
/// message, naming the grant to add (an HTTP front answers it with 403).
pub fn permitted(client: &Client, namespace: &str, need: Need, what: &str) -> Result<(), String> {
    let Some(principal) = &client.principal else {
        return Ok(());
    };
    let access = principal.access(namespace);
    let ok = match need {
        Need::Read => access.read,
        Need::Write => access.write,
    };
    if ok {
        return Ok(());
    }
    Err(denied_message(
        &principal.name,
        access,
        namespace,
        need,
        what,
    ))
}

/// The message of a refused call.
fn denied_message(
    principal: &str,
    access: Access,
    namespace: &str,
    need: Need,
    what: &str,
) -> String {
    let needed = match need {
        Need::Read => "read (r)",
        Need::Write => "write (w)",
    };
    let has = match (access.read, access.write) {
        (false, false) => "no access",
        (true, false) => "read-only access",
        (false, true) => "write-only access",
        (true, true) => "read-write access",
    };
    format!(
        "{what} needs {needed} access to namespace {namespace:?}; principal {principal:?} has \
         {has} there: add a grant such as `{namespace}=rw` to its token line"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Grant, Principal};

    fn client(grants: &[&str]) -> Client {
        let grants = grants
            .iter()
            .map(|g| Grant::parse(g).expect("grant"))
            .collect();
        Client {
            id: "principal:p".into(),
            principal: Some(Arc::new(Principal::new("p", "acme", false, grants))),
        }
    }

    #[test]
    fn require_checks_the_namespace_and_the_kind_of_access() {
        let reader = client(&["acme/*=r"]);
        assert!(require(&reader, "acme/llama", Need::Read, "FindMatches").is_ok());
        let err = require(&reader, "acme/llama", Need::Write, "Hint").expect_err("read-only");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("read-only access"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("acme/llama=rw"), "{}", err.message());
        let err = require(&reader, "other/llama", Need::Read, "FindMatches").expect_err("tenant");
        assert!(err.message().contains("no access"), "{}", err.message());
        let writer = client(&["acme/*=rw"]);
        assert!(require(&writer, "acme/llama", Need::Write, "Hint").is_ok());
    }

    #[test]
    fn anonymous_callers_pass_only_when_tokens_are_off() {
        let anon = Client::anonymous(None);
        assert!(require(&anon, "any", Need::Write, "Hint").is_ok());
    }

    #[test]
    fn flags_resolve_and_explain_bad_files() {
        let open = FrontSecurityArgs::default().resolve().expect("open");
        assert!(!open.tokens_on());
        let lo: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert!(open.grpc_tls("grpc", lo).expect("loopback").is_none());
        let err = open
            .grpc_tls("grpc", any)
            .expect_err("plaintext off loopback");
        assert!(err.to_string().contains("--allow-plaintext"), "{err}");
        assert!(open.http_tls("http", any).is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        let args = FrontSecurityArgs {
            tls_cert: Some(dir.path().join("missing.pem")),
            tls_key: Some(dir.path().join("missing.key")),
            ..Default::default()
        };
        assert!(matches!(args.resolve(), Err(SecurityError::Io { .. })));

        let line = format!("r {} acme/*=r", crate::tokens::token_digest_line("tok"));
        let args = FrontSecurityArgs {
            tokens: Some(line),
            ..Default::default()
        };
        assert!(args.resolve().expect("tokens").tokens_on());
        let args = FrontSecurityArgs {
            tokens: Some("r plain-token acme/*=r".into()),
            ..Default::default()
        };
        assert!(matches!(
            args.resolve(),
            Err(SecurityError::TokenFile { .. })
        ));
    }
}
