//! Test harness: starts the real kvtier binaries on loopback ports with temp
//! data directories and talks to them as a client would.
//!
//! Binaries are looked up next to the test executable's target directory
//! (`target/<profile>/`), or at `$KVTIER_SERVER_BIN` (`$KVTIER_AGENT_BIN`,
//! ...). Build them first: `cargo build --release --workspace --bins` (the
//! project's test script does). Starting, waiting for the ready line and
//! killing are [`kvtier_testkit`]'s; this crate holds what is kvtier's own.
//!
//! # Layout
//! - [`running`]: what every started binary shares (a log, kill, SIGTERM).
//! - [`server`], [`agent`], [`sim_worker`], [`router`]: one file per binary.
//! - [`model_api`]: the OpenAI / Anthropic request shapes of the HTTP front.
//! - [`cluster`]: servers joined through a real etcd (`--cluster`).
//! - here: hashing configs, prompts, payloads and the cache's gRPC calls.

use anyhow::Result;
use bytes::Bytes;
use kvtier_proto::hashing::{effective_seed, BlockHasher, DEFAULT_SEED};
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::*;
use tonic::transport::Channel;

pub mod agent;
pub mod cluster;
pub mod model_api;
pub mod router;
pub mod running;
pub mod server;
pub mod sim_worker;

pub use agent::{pool_blocks, sim_engine, AgentProcess};
pub use kvtier_testkit::{binary, free_port, http_get, metric_sum};
pub use router::RouterProcess;
pub use server::ServerProcess;
pub use sim_worker::SimWorkerProcess;

/// A hashing configuration for tests.
pub fn config(block_tokens: u32, block_bytes: u64) -> HashingConfig {
    HashingConfig {
        block_tokens,
        seed: DEFAULT_SEED,
        salt: String::new(),
        block_bytes,
        kv_layout: "test:layers=2,kv=2".into(),
        model: "test-model".into(),
    }
}

/// Handshakes `namespace` with `config` and returns the session id.
pub async fn handshake(
    client: &mut CacheServiceClient<Channel>,
    namespace: &str,
    config: HashingConfig,
) -> Result<String, tonic::Status> {
    Ok(client
        .handshake(HandshakeRequest {
            namespace: namespace.into(),
            config: Some(config),
            client_name: "integration-test".into(),
        })
        .await?
        .into_inner()
        .session_id)
}

/// Sequence hashes of a synthetic prompt: `n` blocks of `block_tokens` tokens
/// derived from `seed` (distinct seeds give distinct prefixes).
pub fn prompt_hashes(seed: u32, n: usize, block_tokens: usize) -> Vec<u64> {
    let tokens: Vec<u32> = (0..(n * block_tokens) as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(seed))
        .collect();
    BlockHasher::new(block_tokens, effective_seed(DEFAULT_SEED, "")).sequence_hashes(&tokens)
}

/// Deterministic payload for a block, derived from its hash (the bytes
/// `kvtier-sim-engine` writes for it).
pub fn payload_for(hash: u64, len: usize) -> Bytes {
    Bytes::from(kvtier_testkit::rng::xorshift_bytes(hash, len))
}

/// Put messages for a chain of hashes with deterministic payloads.
pub fn put_messages(session: &str, hashes: &[u64], len: usize) -> Vec<PutRequest> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| {
            kvtier_proto::put_message(
                session,
                i,
                BlockData {
                    hash: h,
                    parent_hash: i.checked_sub(1).map(|p| hashes[p]),
                    payload: payload_for(h, len),
                },
            )
        })
        .collect()
}

/// Puts a chain of blocks in one stream.
pub async fn put_chain(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    hashes: &[u64],
    len: usize,
) -> Result<PutResponse, tonic::Status> {
    let messages = put_messages(session, hashes, len);
    Ok(client.put(tokio_stream::iter(messages)).await?.into_inner())
}

/// Gets blocks and collects the whole response stream.
pub async fn get_all(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    hashes: &[u64],
) -> Result<Vec<GetResponse>, tonic::Status> {
    let mut stream = client
        .get(GetRequest {
            session_id: session.into(),
            hashes: hashes.to_vec(),
            stop_at_first_miss: false,
            agent_id: String::new(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await? {
        out.push(item);
    }
    Ok(out)
}

/// Registers `agent` (its parent, priority and lease) in `session`'s
/// namespace: whether it was new.
pub async fn register_agent(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    agent: &str,
    parent: &str,
    priority: i32,
    lease_ms: Option<u64>,
) -> Result<bool, tonic::Status> {
    Ok(client
        .register_agent(RegisterAgentRequest {
            session_id: session.into(),
            agent_id: agent.into(),
            parent_agent_id: parent.into(),
            priority,
            latency_sensitivity: 0.5,
            lease_ms,
        })
        .await?
        .into_inner()
        .created)
}

/// A call's hint: `agent` reads `blocks` and ended its turn with `ending`;
/// the blocks resident now.
pub async fn hint(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    agent: &str,
    blocks: &[u64],
    ending: CallEnding,
    pin: bool,
) -> Result<u32, tonic::Status> {
    Ok(client
        .hint(HintRequest {
            session_id: session.into(),
            agent_id: agent.into(),
            blocks: blocks.to_vec(),
            ending: ending as i32,
            keep_warm_ms: None,
            pin,
        })
        .await?
        .into_inner()
        .resident_blocks)
}

/// Ends `agent`: how many agents ended (0 when it was unknown).
pub async fn end_agent(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    agent: &str,
) -> Result<u32, tonic::Status> {
    Ok(client
        .end_agent(EndAgentRequest {
            session_id: session.into(),
            agent_id: agent.into(),
        })
        .await?
        .into_inner()
        .ended)
}
