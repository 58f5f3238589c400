//! The connection to the cluster's etcd, shared by registration, the
//! membership watch and the namespace configs.
//!
//! `etcd-client` connects lazily and reconnects by itself: a call made
//! while etcd is down fails after the request timeout, the next one after
//! etcd is back succeeds on the same [`Etcd`].

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp, TxnOpResponse};

use crate::url::ClusterUrl;
use crate::ClusterError;

/// Default deadline of one etcd request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to the cluster's etcd, with the cluster's key prefix.
/// Cheap to clone (one HTTP/2 channel underneath).
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    url: ClusterUrl,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("url", &self.url).finish()
    }
}

/// What [`Etcd::create_or_get`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key did not exist; this call created it with the given value.
    Created,
    /// The key existed: its value (unchanged).
    Existing(Vec<u8>),
}

impl Etcd {
    /// A connection to `url`'s endpoints; each request fails after
    /// `request_timeout`. Does not wait for etcd (see [`Etcd::check`]).
    pub async fn connect(
        url: &ClusterUrl,
        request_timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(request_timeout.min(Duration::from_secs(2)))
            .with_timeout(request_timeout)
            // Notices a silently dead etcd on an idle watch or keep-alive stream.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&url.endpoints, Some(options))
            .await
            .map_err(|source| ClusterError::Etcd {
                endpoints: url.endpoints.join(","),
                what: "connecting",
                source,
            })?;
        Ok(Self {
            client,
            url: url.clone(),
        })
    }

    /// The cluster URL (endpoints and key prefix).
    pub fn url(&self) -> &ClusterUrl {
        &self.url
    }

    /// A clone of the raw client, for calls this module does not wrap.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Wraps an `etcd-client` error with the endpoints and what was done.
    pub fn error(&self, what: &'static str, source: etcd_client::Error) -> ClusterError {
        ClusterError::Etcd {
            endpoints: self.url.endpoints.join(","),
            what,
            source,
        }
    }

    /// A protocol surprise with the endpoints.
    pub fn protocol(&self, what: impl Into<String>) -> ClusterError {
        ClusterError::Protocol {
            endpoints: self.url.endpoints.join(","),
            what: what.into(),
        }
    }

    /// One round trip (etcd's status): succeeds when etcd answers.
    pub async fn check(&self) -> Result<(), ClusterError> {
        self.client
            .clone()
            .status()
            .await
            .map(|_| ())
            .map_err(|e| self.error("checking that etcd answers", e))
    }

    /// Creates `key` = `value` unless the key exists, in one transaction;
    /// says which happened (and the existing value).
    pub async fn create_or_get(&self, key: &str, value: &[u8]) -> Result<Claim, ClusterError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.error("create-if-absent transaction", e))?;
        if response.succeeded() {
            return Ok(Claim::Created);
        }
        existing_value(&response.op_responses())
            .map(Claim::Existing)
            .ok_or_else(|| {
                self.protocol(format!(
                    "{key}: transaction failed but the key has no value"
                ))
            })
    }
}

/// The value of the first key of the first Get in a transaction's answer.
pub(crate) fn existing_value(ops: &[TxnOpResponse]) -> Option<Vec<u8>> {
    ops.iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    })
}
