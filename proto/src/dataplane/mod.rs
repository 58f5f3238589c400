//! The binary data plane beside gRPC (`proto/data_plane.md`): frames
//! ([`wire`]) and an async client ([`client`]). The server side is in
//! `kvtier-cache-server`.

pub mod client;
pub mod wire;
