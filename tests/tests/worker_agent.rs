//! The worker agent end to end: the real `kvtier-server`, `kvtier-agent`s and
//! `kvtier-sim-engine`s as separate processes on loopback, talking gRPC and
//! sharing KV pools through shared-memory files.

// Messages of the shared wire contract gain optional fields over time.
#![allow(clippy::needless_update)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvtier_integration_tests::*;
use kvtier_proto::v1::*;
use tonic::Code;

/// Bytes per block in these tests.
const BLOCK_BYTES: u64 = 64 * 1024;
/// Tokens per block (the agent's and the simulated engine's default).
const BLOCK_TOKENS: usize = 16;

/// A directory for pool files where the agent accepts them (beneath
/// `/dev/shm/kvtier`, as an engine would use).
fn shm_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(kvtier_testkit::dir::shm_tempdir()?)
}

fn num(fields: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {fields:?}"))
}

const POOL: [&str; 4] = ["--blocks", "160", "--block-bytes", "65536"];

fn compute(agent: &str, pool: &Path, seed: u32, blocks: usize) -> anyhow::Result<(u64, u64)> {
    let (s, b) = (seed.to_string(), blocks.to_string());
    let mut args = POOL.to_vec();
    args.extend(["compute", "--prompt-seed", &s, "--prompt-blocks", &b]);
    let out = sim_engine(agent, pool, &args)?;
    Ok((num(&out, "stored"), num(&out, "skipped")))
}

/// (loaded_prefix, verified, degraded)
fn onboard(
    agent: &str,
    pool: &Path,
    seed: u32,
    blocks: usize,
    first: u64,
) -> anyhow::Result<(u64, u64, u64)> {
    let (s, b, f) = (seed.to_string(), blocks.to_string(), first.to_string());
    let mut args = POOL.to_vec();
    args.extend([
        "onboard",
        "--prompt-seed",
        &s,
        "--prompt-blocks",
        &b,
        "--first-block",
        &f,
    ]);
    let out = sim_engine(agent, pool, &args)?;
    Ok((
        num(&out, "loaded_prefix"),
        num(&out, "verified"),
        num(&out, "degraded"),
    ))
}

fn expected_bytes(seed: u32, blocks: usize) -> Vec<u8> {
    prompt_hashes(seed, blocks, BLOCK_TOKENS)
        .into_iter()
        .flat_map(|h| payload_for(h, BLOCK_BYTES as usize).to_vec())
        .collect()
}

async fn next_event(stream: &mut tonic::Streaming<WorkerEvent>) -> anyhow::Result<WorkerEvent> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("event stream ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_worker_sharing_bit_for_bit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &["--worker-id", "A"],
    )?;
    let sock = dir.path().join("b.sock");
    let b = AgentProcess::start(
        &dir.path().join("b.log"),
        server.grpc,
        &["--worker-id", "B", "--uds", &sock.display().to_string()],
    )?;
    let (pool_a, pool_b) = (shm.path().join("pool-a"), shm.path().join("pool-b"));

    // Engine A computes a 16-block prefix and offloads it through agent A (TCP).
    assert_eq!(compute(&a.endpoint(), &pool_a, 7, 16)?, (16, 0));
    // The conversation grows by 4 blocks: write-once skips the 16 the tier holds.
    assert_eq!(compute(&a.endpoint(), &pool_a, 7, 20)?, (4, 16));

    // Engine B onboards 24 blocks through agent B (Unix socket) for a
    // high-priority coding agent: the 20 that exist load, into pool blocks
    // 100.., and match A's bytes bit for bit.
    let mut client = server.client().await?;
    let session = handshake(&mut client, "sim", sim_config()).await?;
    client
        .register_agent(RegisterAgentRequest {
            session_id: session.clone(),
            agent_id: "coder-1".into(),
            priority: 4,
            ..Default::default()
        })
        .await?;
    let mut args = POOL.to_vec();
    args.extend([
        "onboard",
        "--prompt-seed",
        "7",
        "--prompt-blocks",
        "24",
        "--first-block",
        "100",
        "--agent-id",
        "coder-1",
    ]);
    let out = sim_engine(&b.endpoint(), &pool_b, &args)?;
    assert_eq!(
        (
            num(&out, "loaded_prefix"),
            num(&out, "verified"),
            num(&out, "degraded")
        ),
        (20, 20, 0)
    );
    // the hits count under the agent's priority class on the server
    assert_eq!(
        metric_sum(
            &server.metrics_text()?,
            "kvtier_block_hits_total",
            &[("op", "get"), ("priority", "high")]
        ),
        20.0
    );
    // Each agent counts its calls: A two offloads, B one onboard.
    let a_metrics = a.metrics_text()?;
    assert_eq!(
        metric_sum(&a_metrics, "kvtier_agent_calls_total", &[("op", "offload")]),
        2.0
    );
    assert_eq!(
        metric_sum(
            &b.metrics_text()?,
            "kvtier_agent_calls_total",
            &[("op", "onboard")]
        ),
        1.0
    );
    let from_a = pool_blocks(&pool_a, 0, 20, BLOCK_BYTES)?;
    let on_b = pool_blocks(&pool_b, 100, 20, BLOCK_BYTES)?;
    assert!(
        from_a == on_b,
        "B's onboarded blocks differ from A's computed ones"
    );
    assert!(
        from_a == expected_bytes(7, 20),
        "A's blocks are not the prompt's KV"
    );
    let rest = pool_blocks(&pool_b, 120, 4, BLOCK_BYTES)?;
    assert!(
        rest.iter().all(|&x| x == 0),
        "blocks not in the tier must stay untouched"
    );

    // The tier holds exactly those 20, as seen through B's agent and the server.
    let hashes = prompt_hashes(7, 24, BLOCK_TOKENS);
    let lookup = client
        .lookup(LookupRequest {
            session_id: session,
            hashes: hashes.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(lookup.prefix_len, 20);

    // Worker A's events: ids 1, 2 without a gap, with kvtier's hashes.
    let mut agent_a = a.client().await?;
    let mut events = agent_a
        .subscribe_worker_events(SubscribeWorkerEventsRequest { from_event_id: 1 })
        .await?
        .into_inner();
    let e1 = next_event(&mut events).await?;
    let e2 = next_event(&mut events).await?;
    assert_eq!((e1.event_id, e2.event_id), (1, 2));
    assert_eq!(e1.kind, WorkerEventKind::Stored as i32);
    assert_eq!(e1.worker_id, "A");
    assert_eq!(e1.hashes, hashes[..16].to_vec());
    assert_eq!(e2.hashes, hashes[..20].to_vec());
    let stats = agent_a
        .worker_stats(WorkerStatsRequest {})
        .await?
        .into_inner();
    assert_eq!((stats.offload_blocks, stats.offload_skipped), (20, 16));
    assert_eq!(
        stats.staging_free, stats.staging_buffers,
        "every staging buffer came back"
    );
    Ok(())
}

/// The hashing configuration `kvtier-sim-engine` uses by default.
fn sim_config() -> HashingConfig {
    HashingConfig {
        block_tokens: BLOCK_TOKENS as u32,
        seed: kvtier_proto::hashing::DEFAULT_SEED,
        salt: String::new(),
        block_bytes: BLOCK_BYTES,
        kv_layout: "sim:layers=1,kv=2".into(),
        model: "sim-model".into(),
    }
}

/// Attaches a pool file directly over gRPC (as an engine connector would).
async fn attach(
    agent: &mut kvtier_proto::v1::worker_service_client::WorkerServiceClient<
        tonic::transport::Channel,
    >,
    pool: &Path,
    config: HashingConfig,
) -> Result<AttachPoolResponse, tonic::Status> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(pool)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    f.set_len(64 * config.block_bytes)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(agent
        .attach_pool(AttachPoolRequest {
            namespace: "sim".into(),
            layout: Some(PoolLayout {
                num_blocks: 64,
                block_bytes: config.block_bytes,
                ..Default::default()
            }),
            hashing: Some(config),
            memory: Some(attach_pool_request::Memory::SharedMemory(
                SharedMemoryPool {
                    path: pool.display().to_string(),
                    offset: 0,
                },
            )),
            engine_name: "test".into(),
        })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_gap_free_and_a_gap_resyncs_from_a_snapshot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &["--worker-id", "A", "--event-buffer", "8"],
    )?;
    let mut agent = a.client().await?;
    let pool = attach(&mut agent, &shm.path().join("pool"), sim_config()).await?;
    let mut live = agent
        .subscribe_worker_events(SubscribeWorkerEventsRequest { from_event_id: 1 })
        .await?
        .into_inner();

    // 30 single-block chains stored, then 5 of them removed: ids 1..=35.
    let hashes = prompt_hashes(3, 30, BLOCK_TOKENS);
    for (i, &h) in hashes.iter().enumerate() {
        let r = agent
            .report_blocks(ReportBlocksRequest {
                pool_id: pool.pool_id,
                kind: WorkerEventKind::Stored as i32,
                blocks: vec![PoolBlock {
                    block_id: i as u64,
                    hash: h,
                    parent_hash: i.checked_sub(1).map(|p| hashes[p]),
                }],
            })
            .await?
            .into_inner();
        assert_eq!(r.event_id, i as u64 + 1);
    }
    agent
        .report_blocks(ReportBlocksRequest {
            pool_id: pool.pool_id,
            kind: WorkerEventKind::Removed as i32,
            blocks: hashes[25..]
                .iter()
                .map(|&h| PoolBlock {
                    hash: h,
                    ..Default::default()
                })
                .collect(),
        })
        .await?;
    for want in 1..=31u64 {
        let e = next_event(&mut live).await?;
        assert_eq!(e.event_id, want, "live event ids must be gap-free");
    }

    // A subscriber that lost events and asks from an id no longer buffered
    // (only the last 8 are) resyncs from a snapshot, then gets live events.
    let mut late = agent
        .subscribe_worker_events(SubscribeWorkerEventsRequest { from_event_id: 5 })
        .await?
        .into_inner();
    let snap = next_event(&mut late).await?;
    assert_eq!(snap.kind, WorkerEventKind::Snapshot as i32);
    assert_eq!(snap.event_id, 31);
    let mut want: Vec<u64> = hashes[..25].to_vec();
    want.sort_unstable();
    assert_eq!(snap.hashes, want);
    let parent_of_first = snap
        .hashes
        .iter()
        .position(|&h| h == hashes[1])
        .map(|i| snap.parents[i]);
    assert_eq!(parent_of_first, Some(hashes[0]));

    // A subscriber within the buffer gets the missed events themselves.
    let mut recent = agent
        .subscribe_worker_events(SubscribeWorkerEventsRequest { from_event_id: 28 })
        .await?
        .into_inner();
    for want in 28..=31u64 {
        assert_eq!(next_event(&mut recent).await?.event_id, want);
    }

    agent
        .report_blocks(ReportBlocksRequest {
            pool_id: pool.pool_id,
            kind: WorkerEventKind::Cleared as i32,
            blocks: vec![],
        })
        .await?;
    for stream in [&mut live, &mut late, &mut recent] {
        let e = next_event(stream).await?;
        assert_eq!((e.event_id, e.kind), (32, WorkerEventKind::Cleared as i32));
    }
    let snapshot = agent
        .worker_snapshot(WorkerSnapshotRequest {})
        .await?
        .into_inner()
        .snapshot
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    assert_eq!((snapshot.event_id, snapshot.hashes.len()), (32, 0));

    // A client-side gap (an id skipped) is detected the same way: ids jump.
    let ids = [30u64, 31, 33];
    let gap = ids.windows(2).find(|w| w[1] != w[0] + 1);
    assert_eq!(gap, Some(&[31, 33][..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_outside_the_pool_directory_are_refused_untouched() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let a = AgentProcess::start(&dir.path().join("a.log"), server.grpc, &[])?;
    let mut agent = a.client().await?;
    // Any file the agent's user can write, outside /dev/shm/kvtier: a caller
    // must not get it copied into the cache or overwritten with cache bytes.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, vec![0x5au8; 64 * 65_536])?;
    let err = attach(&mut agent, &victim, sim_config())
        .await
        .expect_err("a file outside the pool directory was attached");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("--pool-dir"), "{}", err.message());
    // A symbolic link inside the directory, pointing at it, is refused too.
    let link = shm.path().join("link");
    std::os::unix::fs::symlink(&victim, &link)?;
    let err = attach(&mut agent, &link, sim_config())
        .await
        .expect_err("a symbolic link was followed");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(std::fs::read(&victim)?.iter().all(|&b| b == 0x5a));
    // The same kind of file beneath the directory attaches.
    attach(&mut agent, &shm.path().join("pool"), sim_config()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_config_mismatch_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &["--worker-id", "A"],
    )?;
    let mut agent = a.client().await?;

    // engine ≠ agent
    let mut wrong = sim_config();
    wrong.block_tokens = 32;
    let err = attach(&mut agent, &shm.path().join("p1"), wrong)
        .await
        .expect_err("a block_tokens mismatch must be refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("block_tokens: engine 32 vs agent 16"),
        "unclear message: {}",
        err.message()
    );
    let mut salted = sim_config();
    salted.salt = "lora-a".into();
    let err = attach(&mut agent, &shm.path().join("p1"), salted)
        .await
        .expect_err("a salt mismatch must be refused");
    assert!(err.message().contains("salt"), "{}", err.message());

    // engine = agent ≠ server: the namespace was created with another layout.
    let mut client = server.client().await?;
    let mut other = sim_config();
    other.kv_layout = "sim:layers=2,kv=2".into();
    handshake(&mut client, "sim", other).await?;
    let err = attach(&mut agent, &shm.path().join("p2"), sim_config())
        .await
        .expect_err("a server-side mismatch must be refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("cache server refused namespace \"sim\""),
        "unclear message: {}",
        err.message()
    );
    assert!(err.message().contains("layers=2"), "{}", err.message());

    // the same through the simulated engine process: it fails, saying why
    let mut args = POOL.to_vec();
    args.extend(["--block-tokens", "8", "compute"]);
    let failed = sim_engine(&a.endpoint(), &shm.path().join("p3"), &args)
        .expect_err("the engine must not start with a mismatched config");
    assert!(
        failed
            .to_string()
            .contains("block_tokens: engine 8 vs agent 16"),
        "{failed}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_leaves_the_servers_blocks_intact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let log = dir.path().join("a.log");
    let mut a = AgentProcess::start(&log, server.grpc, &["--worker-id", "A"])?;
    let pool = shm.path().join("pool");
    assert_eq!(compute(&a.endpoint(), &pool, 11, 12)?, (12, 0));
    let mut client = a.client().await?;
    let epoch = client
        .worker_stats(WorkerStatsRequest {})
        .await?
        .into_inner()
        .epoch;
    // a router still subscribed does not hold the agent up: its stream ends
    let mut events = client
        .subscribe_worker_events(SubscribeWorkerEventsRequest { from_event_id: 1 })
        .await?
        .into_inner();
    assert_eq!(next_event(&mut events).await?.event_id, 1);
    assert_eq!(a.terminate()?, 0, "SIGTERM must exit cleanly");
    let end = tokio::time::timeout(Duration::from_secs(10), events.message()).await?;
    assert!(
        !matches!(end, Ok(Some(_))),
        "the stream must end with the agent"
    );
    drop(a);

    let a = AgentProcess::start(&log, server.grpc, &["--worker-id", "A"])?;
    let (loaded, verified, degraded) = onboard(&a.endpoint(), &pool, 11, 12, 40)?;
    assert_eq!((loaded, verified, degraded), (12, 12, 0));
    let stats = a
        .client()
        .await?
        .worker_stats(WorkerStatsRequest {})
        .await?
        .into_inner();
    assert_ne!(
        stats.epoch, epoch,
        "a restarted agent starts a new event epoch"
    );
    // ids start again at 1: the onboarded blocks, reported by the engine
    assert_eq!(stats.last_event_id, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_cache_server_makes_onboard_answer_not_loaded_quickly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let data = dir.path().join("data");
    // Host tier off: blocks go straight to disk, so a restart finds them.
    let mut server = ServerProcess::start(&data, &["--host-capacity", "0"])?;
    let addr = server.grpc;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        addr,
        &["--worker-id", "A", "--onboard-timeout-ms", "1500"],
    )?;
    let pool = shm.path().join("pool");
    assert_eq!(compute(&a.endpoint(), &pool, 5, 8)?, (8, 0));

    server.kill9()?;
    let started = Instant::now();
    let (loaded, _, degraded) = onboard(&a.endpoint(), &pool, 5, 8, 50)?;
    let took = started.elapsed();
    assert_eq!((loaded, degraded), (0, 1), "a dead tier means: recompute");
    assert!(took < Duration::from_secs(5), "onboard took {took:?}");
    // an offload fails fast (the engine keeps its blocks; nothing hangs)
    let started = Instant::now();
    assert!(compute(&a.endpoint(), &pool, 6, 4).is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    // an engine that starts while the tier is down can still attach
    let (loaded, _, degraded) = onboard(&a.endpoint(), &shm.path().join("fresh"), 5, 8, 0)?;
    assert_eq!((loaded, degraded), (0, 1));

    // The server comes back where it was: the agent renews its session and
    // the blocks (on disk) load again.
    let server = ServerProcess::start_at(&data, addr, &["--host-capacity", "0"])?;
    let (loaded, verified, degraded) = onboard(&a.endpoint(), &pool, 5, 8, 50)?;
    assert_eq!(
        (loaded, verified, degraded),
        (8, 8, 0),
        "server log:\n{}",
        server.log()
    );
    Ok(())
}

/// A vLLM-format publisher in Python: vLLM's own event classes (copied from
/// `vllm/distributed/kv_events.py`, both the older `array_like` layout and the
/// current map layout) encoded by `msgspec` exactly as vLLM encodes them, sent
/// as vLLM's `ZmqEventPublisher` does — multipart `[topic, seq (8-byte BE),
/// payload]` on PUB, and a ROUTER replay socket answering `[id, b"", start]`.
const PUBLISHER: &str = r#"
import sys, time, zmq, msgspec
from typing import Any, Optional, Union
port, replay_port, bs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

# older vLLM (array_like batches and events)
class OldEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: Optional[int] = None
class OldKVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass
class OldBlockStored(OldKVCacheEvent, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: Optional[int]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]
class OldBlockRemoved(OldKVCacheEvent, tag="BlockRemoved"):
    block_hashes: list[int]
    medium: Optional[str]

# current vLLM (map batches, "type"-tagged map events, bytes or int hashes)
ExternalBlockHash = Union[bytes, int]
class EventBatch(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: Optional[int] = None
class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass
class BlockStored(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: Optional[ExternalBlockHash]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]
    lora_name: Optional[str]
    extra_keys: Optional[list[Optional[tuple[Any, ...]]]] = None
    group_idx: Optional[int] = None
    kv_cache_spec_kind: Optional[str] = None
    kv_cache_spec_sliding_window: Optional[int] = None
class BlockRemoved(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    medium: Optional[str]
    group_idx: Optional[int] = None
class AllBlocksCleared(KVCacheEvent):
    pass

def tokens(seed, n):
    return [((i * 2654435761) + seed) & 0xFFFFFFFF for i in range(n * bs)]
t = tokens(9, 4)
B3 = b"\x03" * 32
now = time.time()
batches = [
    (0, OldEventBatch(now, [OldBlockStored([1001, 1002], None, t[:2*bs], bs, None, "GPU")], 0)),
    (1, EventBatch(now, [BlockStored([B3], 1002, t[2*bs:3*bs], bs, None, "GPU", None)], 0)),
    # wrong block_size: a counted error
    (2, OldEventBatch(now, [OldBlockStored([1004], 1002, t[:2*bs], 2*bs, None, "GPU")], 0)),
    # lost on the PUB socket (a gap), served by the replay socket
    (3, EventBatch(now, [BlockStored([1003], B3, t[3*bs:], bs, None, "GPU", None)], 0)),
    (4, EventBatch(now, [BlockRemoved([B3], "GPU")])),
    # unknown parent: a counted error; another medium: ignored and counted
    (5, OldEventBatch(now, [OldBlockStored([1005], 4242, t[3*bs:], bs, None, "GPU"),
                            OldBlockRemoved([1001], "CPU")], 0)),
]

ctx = zmq.Context()
pub = ctx.socket(zmq.XPUB)
pub.bind(f"tcp://127.0.0.1:{port}")
replay = ctx.socket(zmq.ROUTER)
replay.bind(f"tcp://127.0.0.1:{replay_port}")
pub.setsockopt(zmq.RCVTIMEO, 30000)
pub.recv()  # wait for the agent's subscription
encoder = msgspec.msgpack.Encoder()
buffer = []
for seq, batch in batches:
    payload = encoder.encode(batch)
    buffer.append((seq, payload))
    if seq != 3:
        pub.send_multipart((b"kv@test", seq.to_bytes(8, "big"), payload))
deadline = time.time() + 2.0
while time.time() < deadline:
    if replay.poll(100):
        ident, _, start = replay.recv_multipart()
        start = int.from_bytes(start, "big")
        for seq, payload in buffer:
            if seq >= start:
                replay.send_multipart((ident, b"", seq.to_bytes(8, "big"), payload))
        replay.send_multipart((ident, b"", (-1).to_bytes(8, "big", signed=True), b""))
pub.close(linger=1000)
replay.close(linger=1000)
ctx.term()
"#;

/// `python3` with `pyzmq` and `msgspec` (vLLM's encoder), installed from PyPI
/// when missing. `None` only when there is no `python3` with pip; a failed
/// install with pip present fails the test. Done once per test binary.
fn python_with_zmq() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Result<Option<PathBuf>, String>> =
        std::sync::OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let run = |args: &[&str]| {
            std::process::Command::new("python3")
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if run(&["-c", "import zmq, msgspec"]) {
            return Ok(Some(PathBuf::from("python3")));
        }
        if !run(&["-m", "pip", "--version"]) {
            return Ok(None);
        }
        if run(&["-m", "pip", "install", "--quiet", "pyzmq", "msgspec"])
            && run(&["-c", "import zmq, msgspec"])
        {
            Ok(Some(PathBuf::from("python3")))
        } else {
            Err("pip is there but `pip install pyzmq msgspec` failed".into())
        }
    });
    match found {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_zmq_events_are_ingested_with_kvtier_hashes() -> anyhow::Result<()> {
    let Some(python) = python_with_zmq() else {
        kvtier_testkit::prereq::missing(
            "python3 with pyzmq and msgspec",
            "the test pip-installs them when python3 has pip: install python3-pip",
        );
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let (port, replay_port) = (free_port()?, free_port()?);
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let replay = format!("tcp://127.0.0.1:{replay_port}");
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &[
            "--worker-id",
            "vllm-0",
            "--vllm-events",
            &endpoint,
            "--vllm-replay",
            &replay,
        ],
    )?;
    let script = dir.path().join("publisher.py");
    std::fs::write(&script, PUBLISHER)?;
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(replay_port.to_string())
            .arg(BLOCK_TOKENS.to_string())
            .status()
    })
    .await??;
    assert!(status.success(), "publisher failed: {status}");

    let mut agent = a.client().await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let s = agent
            .worker_stats(WorkerStatsRequest {})
            .await?
            .into_inner();
        if s.engine_batches >= 6 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // 5 live batches and the lost one, fetched from the replay socket
    assert_eq!(stats.engine_batches, 6, "log:\n{}", a.log());
    assert_eq!(stats.engine_seq_gaps, 1);
    assert_eq!(stats.engine_events, 4);
    let errors = |k: &str| stats.engine_errors.get(k).copied().unwrap_or(0);
    assert_eq!(
        errors("block_size_mismatch"),
        1,
        "{:?}",
        stats.engine_errors
    );
    assert_eq!(errors("unknown_parent"), 1, "{:?}", stats.engine_errors);
    assert_eq!(errors("other_medium"), 1, "{:?}", stats.engine_errors);

    // kvtier's own hashes, recomputed from the token ids: blocks 0, 1 stored,
    // block 2 stored, block 3 stored (replayed, chained on 2), block 2 removed.
    let hashes = prompt_hashes(9, 4, BLOCK_TOKENS);
    let mut events = agent
        .subscribe_worker_events(SubscribeWorkerEventsRequest { from_event_id: 1 })
        .await?
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut events).await?);
    }
    let ids: Vec<u64> = got.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(got[0].hashes, hashes[..2].to_vec());
    assert_eq!(got[0].parent_hash, None);
    assert_eq!(got[1].hashes, vec![hashes[2]]);
    assert_eq!(got[1].parent_hash, Some(hashes[1]));
    assert_eq!(got[2].hashes, vec![hashes[3]]);
    assert_eq!(got[2].parent_hash, Some(hashes[2]));
    assert_eq!(got[3].kind, WorkerEventKind::Removed as i32);
    assert_eq!(got[3].hashes, vec![hashes[2]]);
    let snapshot = agent
        .worker_snapshot(WorkerSnapshotRequest {})
        .await?
        .into_inner()
        .snapshot
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    let mut want = vec![hashes[0], hashes[1], hashes[3]];
    want.sort_unstable();
    assert_eq!(snapshot.hashes, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_split_over_connections_stay_bit_exact() -> anyhow::Result<()> {
    const BIG: u64 = 2 << 20;
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &["--host-capacity", "256MiB"])?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &[
            "--worker-id",
            "A",
            "--tier-connections",
            "4",
            "--staging-bytes",
            "16MiB",
        ],
    )?;
    let b = AgentProcess::start(
        &dir.path().join("b.log"),
        server.grpc,
        &["--worker-id", "B"],
    )?;
    let (pool_a, pool_b) = (shm.path().join("big-a"), shm.path().join("big-b"));
    let big = |extra: &[&str]| {
        let mut v = vec![
            "--blocks",
            "64",
            "--block-bytes",
            "2097152",
            "--namespace",
            "big",
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |agent: &AgentProcess, pool: &Path, extra: &[&str]| {
        let args = big(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sim_engine(&agent.endpoint(), pool, &refs)
    };
    // 24 blocks of 2 MiB (48 MiB) go out over 4 concurrent Put streams
    // through 8 staging buffers; then 8 more, the first 24 skipped.
    let out = run(
        &a,
        &pool_a,
        &["compute", "--prompt-seed", "4", "--prompt-blocks", "24"],
    )?;
    assert_eq!((num(&out, "stored"), num(&out, "skipped")), (24, 0));
    let out = run(
        &a,
        &pool_a,
        &["compute", "--prompt-seed", "4", "--prompt-blocks", "32"],
    )?;
    assert_eq!((num(&out, "stored"), num(&out, "skipped")), (8, 24));
    // B asks for 40: the 32 present come back over concurrent Get streams.
    let out = run(
        &b,
        &pool_b,
        &[
            "onboard",
            "--prompt-seed",
            "4",
            "--prompt-blocks",
            "40",
            "--first-block",
            "10",
        ],
    )?;
    assert_eq!(
        (
            num(&out, "loaded_prefix"),
            num(&out, "loaded"),
            num(&out, "verified")
        ),
        (32, 32, 32)
    );
    assert!(pool_blocks(&pool_a, 0, 32, BIG)? == pool_blocks(&pool_b, 10, 32, BIG)?);
    let stats = a
        .client()
        .await?
        .worker_stats(WorkerStatsRequest {})
        .await?
        .into_inner();
    assert_eq!(stats.staging_buffers, 8);
    assert_eq!(stats.staging_free, 8, "every staging buffer came back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_engine_requests_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &["--worker-id", "A"],
    )?;
    let mut agent = a.client().await?;
    let onboard = |pool_id: u64, hashes: Vec<u64>, block_ids: Vec<u64>| OnboardRequest {
        pool_id,
        hashes,
        block_ids,
        agent_id: String::new(),
    };
    // nothing attached yet
    let err = agent
        .onboard(onboard(1, vec![1], vec![0]))
        .await
        .expect_err("no pool");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("AttachPool"), "{}", err.message());

    // a pool file too small for its layout
    let small = shm.path().join("small");
    std::fs::write(&small, vec![0u8; 1024])?;
    let err = agent
        .attach_pool(AttachPoolRequest {
            namespace: "sim".into(),
            hashing: Some(sim_config()),
            layout: Some(PoolLayout {
                num_blocks: 4,
                block_bytes: BLOCK_BYTES,
                ..Default::default()
            }),
            memory: Some(attach_pool_request::Memory::SharedMemory(
                SharedMemoryPool {
                    path: small.display().to_string(),
                    offset: 0,
                },
            )),
            engine_name: "test".into(),
        })
        .await
        .expect_err("too small");
    assert!(err.message().contains("needs"), "{}", err.message());

    let pool = attach(&mut agent, &shm.path().join("pool"), sim_config()).await?;
    let id = pool.pool_id;
    for (request, what) in [
        (
            onboard(id, vec![1, 2], vec![0]),
            "2 hashes but 1 destination",
        ),
        (onboard(id, vec![1, 2], vec![3, 3]), "appears twice"),
        (onboard(id, vec![1], vec![64]), "outside the pool"),
        (onboard(id, vec![], vec![]), "0 blocks"),
    ] {
        let err = agent.onboard(request).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert!(err.message().contains(what), "{}", err.message());
    }
    // an old attachment's id after a re-attach
    let again = attach(&mut agent, &shm.path().join("pool"), sim_config()).await?;
    assert_ne!(again.pool_id, id);
    let err = agent
        .offload(OffloadRequest {
            pool_id: id,
            blocks: vec![PoolBlock::default()],
        })
        .await
        .expect_err("stale pool id");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // a stored report whose blocks do not chain
    let err = agent
        .report_blocks(ReportBlocksRequest {
            pool_id: again.pool_id,
            kind: WorkerEventKind::Stored as i32,
            blocks: vec![
                PoolBlock {
                    hash: 1,
                    ..Default::default()
                },
                PoolBlock {
                    hash: 2,
                    parent_hash: Some(9),
                    ..Default::default()
                },
            ],
        })
        .await
        .expect_err("not a chain");
    assert_eq!(err.code(), Code::InvalidArgument);
    Ok(())
}

/// One vLLM run: publishes `n` batches (seq 0..n), each storing one more
/// block of the prompt with token seed `seed`, then exits.
const ONE_RUN: &str = r#"
import sys, time, zmq, msgspec
port, bs, seed, n = (int(a) for a in sys.argv[1:5])
t = [((i * 2654435761) + seed) & 0xFFFFFFFF for i in range(n * bs)]
ctx = zmq.Context()
pub = ctx.socket(zmq.XPUB)
pub.bind(f"tcp://127.0.0.1:{port}")
pub.setsockopt(zmq.RCVTIMEO, 30000)
pub.recv()
enc = msgspec.msgpack.Encoder()
for seq in range(n):
    parent = None if seq == 0 else seed * 1000 + seq - 1
    event = ["BlockStored", [seed * 1000 + seq], parent, t[seq*bs:(seq+1)*bs], bs, None, "GPU"]
    pub.send_multipart((b"kv", seq.to_bytes(8, "big"), enc.encode([time.time(), [event], 0])))
time.sleep(0.5)
pub.close(linger=500)
ctx.term()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_vllm_publisher_is_followed_and_clears_the_worker() -> anyhow::Result<()> {
    let Some(python) = python_with_zmq() else {
        kvtier_testkit::prereq::missing(
            "python3 with pyzmq and msgspec",
            "the test pip-installs them when python3 has pip: install python3-pip",
        );
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let port = free_port()?;
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &[
            "--vllm-events",
            &endpoint,
            "--vllm-idle-reconnect-ms",
            "300",
        ],
    )?;
    let script = dir.path().join("one_run.py");
    std::fs::write(&script, ONE_RUN)?;
    // vLLM runs twice on the same port: 3 blocks, then (restarted) 2 others
    for (seed, n) in [(21u32, 3usize), (22, 2)] {
        let (python, script) = (python.clone(), script.clone());
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .arg(script)
                .args([port.to_string(), BLOCK_TOKENS.to_string()])
                .args([seed.to_string(), n.to_string()])
                .status()
        })
        .await??;
        assert!(
            status.success(),
            "run {seed} failed: {status}; log:\n{}",
            a.log()
        );
    }
    let mut agent = a.client().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent
        .worker_stats(WorkerStatsRequest {})
        .await?
        .into_inner()
        .engine_batches
        < 5
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut events = agent
        .subscribe_worker_events(SubscribeWorkerEventsRequest { from_event_id: 1 })
        .await?
        .into_inner();
    let mut kinds = Vec::new();
    for _ in 0..6 {
        kinds.push(WorkerEventKind::try_from(
            next_event(&mut events).await?.kind,
        )?);
    }
    use WorkerEventKind::{Cleared, Stored};
    assert_eq!(kinds, vec![Stored, Stored, Stored, Cleared, Stored, Stored]);
    let snapshot = agent
        .worker_snapshot(WorkerSnapshotRequest {})
        .await?
        .into_inner()
        .snapshot
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    let mut want = prompt_hashes(22, 2, BLOCK_TOKENS);
    want.sort_unstable();
    assert_eq!(snapshot.hashes, want, "only the second run's blocks remain");
    Ok(())
}

/// With `--server-data`, agents move payloads over the server's binary data
/// plane: sharing stays bit for bit, write-once still skips what the tier
/// holds, and the server counts the transfers as data-plane PUTs and GETs
/// (none as gRPC Put/Get).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_move_payloads_over_the_data_plane_when_configured() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let data = format!("127.0.0.1:{port}");
    let data_dir = dir.path().join("data");
    // Host tier off: blocks go straight to disk, so a restart finds them.
    let server_args = ["--data-listen", data.as_str(), "--host-capacity", "0"];
    let mut server = ServerProcess::start(&data_dir, &server_args)?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &["--worker-id", "A", "--server-data", &data],
    )?;
    let b = AgentProcess::start(
        &dir.path().join("b.log"),
        server.grpc,
        &["--worker-id", "B", "--server-data", &data],
    )?;
    let (pool_a, pool_b) = (shm.path().join("pool-a"), shm.path().join("pool-b"));

    assert_eq!(compute(&a.endpoint(), &pool_a, 11, 16)?, (16, 0));
    assert_eq!(compute(&a.endpoint(), &pool_a, 11, 20)?, (4, 16));
    assert_eq!(onboard(&b.endpoint(), &pool_b, 11, 24, 100)?, (20, 20, 0));
    let from_a = pool_blocks(&pool_a, 0, 20, BLOCK_BYTES)?;
    let on_b = pool_blocks(&pool_b, 100, 20, BLOCK_BYTES)?;
    assert!(from_a == on_b, "B's onboarded blocks differ from A's");
    assert!(
        from_a == expected_bytes(11, 20),
        "A's blocks are not the prompt's KV"
    );

    let text = server.metrics_text()?;
    let count = |method: &str| {
        metric_sum(
            &text,
            "kvtier_request_duration_seconds_count",
            &[("method", method)],
        )
    };
    // 20 blocks stored by PUT frames; one GET frame per hash onboarded (24 asked, 20 hits).
    assert_eq!(count("data_put"), 20.0, "{text}");
    assert!(count("data_get") >= 1.0, "{text}");
    assert_eq!(
        count("Put") + count("put") + count("Get") + count("get"),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "kvtier_block_hits_total", &[("op", "get")]),
        20.0
    );

    // A pool attached for good (as a serving engine's is): 4 blocks offloaded
    // before the server dies, onboarded after it comes back below.
    let mut engine = b.client().await?;
    let long_lived = shm.path().join("pool-long-lived");
    let attached = attach(&mut engine, &long_lived, sim_config()).await?;
    let block = BLOCK_BYTES as usize;
    let written: Vec<u8> = (0..4 * block).map(|i| (i * 7 % 251) as u8).collect();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&long_lived)?,
        &written,
        0,
    )?;
    let hashes: Vec<u64> = (0..4u64).map(|i| 0xDA7A_0000 + i).collect();
    let out = engine
        .offload(OffloadRequest {
            pool_id: attached.pool_id,
            blocks: (0..4u64)
                .map(|i| PoolBlock {
                    block_id: i,
                    hash: hashes[i as usize],
                    parent_hash: i.checked_sub(1).map(|p| hashes[p as usize]),
                })
                .collect(),
        })
        .await?
        .into_inner();
    assert_eq!(out.stored, 4);

    // A dead server: the onboard answers "not loaded" at once (the data-plane
    // connection is refused). Back where it was, the server has forgotten the
    // session: HELLO says NO_SESSION, the agent handshakes again and loads.
    let grpc = server.grpc;
    server.kill9()?;
    let onboard_request = OnboardRequest {
        pool_id: attached.pool_id,
        hashes: hashes.clone(),
        block_ids: (10..14).collect(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let dead = engine.onboard(onboard_request.clone()).await?.into_inner();
    assert_eq!(dead.loaded_prefix, 0, "{dead:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let server = ServerProcess::start_at(&data_dir, grpc, &server_args)?;
    let back = engine.onboard(onboard_request).await?.into_inner();
    assert_eq!(
        back.loaded_prefix,
        4,
        "{back:?}\nagent log:\n{}\nserver log:\n{}",
        b.log(),
        server.log()
    );
    let mut read = vec![0u8; 4 * block];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&long_lived)?,
        &mut read,
        10 * block as u64,
    )?;
    assert!(read == written, "blocks onboarded after the restart differ");
    Ok(())
}
