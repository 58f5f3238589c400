//! What the cluster library can fail with.

/// Errors of the cluster library. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A malformed `--cluster` URL.
    #[error("{0}")]
    BadUrl(String),
    /// A malformed node id.
    #[error("{0}")]
    BadNodeId(String),
    /// A record in etcd that cannot be read as ours.
    #[error("malformed cluster record: {0}")]
    BadRecord(String),
    /// Another live process holds this node id.
    #[error(
        "node id {id:?} is already registered by a live process ({holder}) and its lease did not \
         expire within {waited_s} s: two servers with one id would split one shard; give this \
         server another --node-id (or data directory), or stop the other one"
    )]
    DuplicateNode {
        /// The node id.
        id: String,
        /// What the holder's record says (addresses, epoch).
        holder: String,
        /// How long this process waited for the holder's lease to expire.
        waited_s: u64,
    },
    /// etcd could not be reached or refused a request.
    #[error("etcd at {endpoints}: {what}: {source}")]
    Etcd {
        /// The endpoints, for the message.
        endpoints: String,
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd answered something this library does not expect.
    #[error("etcd at {endpoints}: {what}")]
    Protocol {
        /// The endpoints, for the message.
        endpoints: String,
        /// What went wrong.
        what: String,
    },
    /// A member answered this client's handshake with a refusal: its
    /// credentials, its namespace grant or its hashing config. An answer,
    /// not an outage: the client must not carry on as if every block were a
    /// miss.
    #[error(
        "cache server {node} ({grpc}) refused the handshake of namespace {namespace:?}: \
         {code:?}: {message}"
    )]
    HandshakeRefused {
        /// The member's node id.
        node: String,
        /// Its gRPC address.
        grpc: String,
        /// The namespace.
        namespace: String,
        /// The server's status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
}
