//! kvtier-security: the pieces every kvtier binary needs to face a network.
//!
//! # Layout
//! - [`client`] — the client side: flags, TLS and the bearer token with
//!   which the worker agent and the router reach a secured cache server.
//! - [`front`] — the same TLS, tokens and plaintext rule for the agent's and
//!   the router's listeners, and the per-namespace access check of their calls.
//! - [`tls`] — rustls server/client configuration from PEM files (optional
//!   mTLS), and the plaintext rule (loopback only unless explicitly allowed).
//! - [`tokens`] — bearer tokens hashed at rest (SHA-256), principals, tenants
//!   and their namespace grants; constant-time lookup.
//! - [`auth`] — the [`auth::Authenticator`]: a tonic interceptor that stamps
//!   each request with its [`auth::Client`], reloadable on SIGHUP.
//! - [`http_tls`] — the same TLS for axum HTTP listeners ([`http_tls::TlsListener`]).
//! - [`limits`] — per-client concurrency and byte-rate limits that refuse with
//!   a retry hint instead of queueing without bound.
//!
//! See `README.md` for the threat model and how a binary adopts this crate.

pub mod auth;
pub mod client;
pub mod front;
pub mod http_tls;
pub mod limits;
pub mod tls;
pub mod tokens;

pub use auth::{Authenticator, Client};
pub use client::{AuthChannel, BearerToken, ServerClient, ServerClientArgs};
pub use front::{FrontSecurity, FrontSecurityArgs, Need};
pub use limits::{ClientLimiter, ClientPermit, LimitConfig, Throttled};
pub use tokens::{hash_token, token_digest_line, Access, Principal, TokenTable};

/// Errors of configuration loading.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token file entry is malformed.
    #[error("token file, entry {entry}: {reason}")]
    TokenFile {
        /// 1-based line (or `;`-separated entry) number.
        entry: usize,
        /// What is wrong.
        reason: String,
    },
    /// A client's bearer token is unusable.
    #[error("bearer token: {0}")]
    Token(String),
    /// TLS material is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Plaintext on a non-loopback address without the explicit flag.
    #[error(
        "refusing to serve {what} in plaintext on {addr}, which is not a loopback address: \
         configure TLS (--tls-cert/--tls-key) or pass --allow-plaintext"
    )]
    Plaintext {
        /// Which listener.
        what: String,
        /// Its address.
        addr: std::net::SocketAddr,
    },
}
