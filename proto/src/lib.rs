//! kvtier-proto: the `kvtier.v1` wire contract and the canonical block hash.
//!
//! # Layout
//! - [`v1`]: generated prost/tonic code for `proto/kvtier/v1/*.proto`
//!   (messages, `CacheService` client and server).
//! - [`hashing`]: the Dynamo-compatible block hash (XXH3-64 with seed, chained
//!   sequence hashes, namespace salt folded into the seed).
//! - [`dataplane`]: the binary data plane's frames and its client
//!   (`proto/data_plane.md`).
//! - [`codec`]: the gRPC codec of every generated client and server.
//!
//! Everything else in kvtier depends on this crate; it depends on nothing of ours.

pub mod codec;
pub mod dataplane;
pub mod hashing;

/// Generated code for the `kvtier.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("kvtier.v1");
}

/// The `index`-th message of a `Put` stream carrying `block`: the stream's
/// first message names the session, the others leave it empty (the server
/// reads it once per stream).
// `..Default::default()`: fields added to PutRequest later keep their defaults.
#[allow(clippy::needless_update)]
pub fn put_message(session_id: &str, index: usize, block: v1::BlockData) -> v1::PutRequest {
    v1::PutRequest {
        session_id: if index == 0 {
            session_id.to_owned()
        } else {
            String::new()
        },
        block: Some(block),
        ..Default::default()
    }
}

/// Metadata key under which clients may also pass their session id.
pub const SESSION_METADATA_KEY: &str = "kvtier-session";

/// Whether the cache server refused a call for want of a live session (none
/// given, or one it no longer knows: expired, or the server restarted). The
/// client's remedy is to `Handshake` again and retry; the server words these
/// refusals as FAILED_PRECONDITION "no session: ..." / "unknown session ...".
pub fn is_unknown_session(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && (status.message().contains("unknown session") || status.message().contains("no session"))
}
