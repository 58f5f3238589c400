//! The router's event sources against the real binaries: a `kvtier-server`
//! and `kvtier-agent`s on loopback, driven as an engine would (AttachPool,
//! ReportBlocks) and as a cache client would (Put); the sources run
//! in-process and the test reads the index they feed. One fake agent (the
//! only way to make a real stream skip an id) checks gap resync and refusal
//! of a mismatched worker id.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use kvtier_integration_tests::*;
use kvtier_proto::v1::worker_service_client::WorkerServiceClient;
use kvtier_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use kvtier_proto::v1::*;
use kvtier_router::index::{LocalityIndex, PrefixMatches, SharedIndex};
use kvtier_router::sources::{
    spawn_cache_source, spawn_worker_source, AgentEndpoint, CacheSourceConfig, CacheState,
    WorkerSourceConfig, WorkerStates,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const BLOCK_BYTES: u64 = 64 * 1024;
const BLOCK_TOKENS: usize = 16;
const NAMESPACE: &str = "sim";

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

fn shm_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(kvtier_testkit::dir::shm_tempdir()?)
}

fn new_index() -> SharedIndex {
    kvtier_router::index::shared(LocalityIndex::new())
}

fn matches(index: &SharedIndex, hashes: &[u64]) -> PrefixMatches {
    index.read().find_matches(hashes)
}

/// The next event of a watch, waiting at most 10 s.
async fn next_cache_event(stream: &mut tonic::Streaming<CacheEvent>) -> anyhow::Result<CacheEvent> {
    tokio::time::timeout(WAIT, stream.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("event stream ended"))
}

/// HBM blocks of worker slot 0 for `hashes`.
fn hbm(index: &SharedIndex, hashes: &[u64]) -> u32 {
    matches(index, hashes)
        .workers
        .first()
        .map_or(0, |w| w.hbm_blocks)
}

/// Polls `f` every 20 ms until it holds or `timeout` passes; returns whether it held.
async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attaches a 64-block pool file over gRPC, as an engine connector would.
async fn attach(
    agent: &mut WorkerServiceClient<Channel>,
    pool: &Path,
) -> anyhow::Result<AttachPoolResponse> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(pool)?;
    f.set_len(64 * BLOCK_BYTES)?;
    Ok(agent
        .attach_pool(AttachPoolRequest {
            namespace: NAMESPACE.into(),
            layout: Some(PoolLayout {
                num_blocks: 64,
                block_bytes: BLOCK_BYTES,
                ..Default::default()
            }),
            hashing: Some(sim_config()),
            memory: Some(attach_pool_request::Memory::SharedMemory(
                SharedMemoryPool {
                    path: pool.display().to_string(),
                    offset: 0,
                },
            )),
            engine_name: "router-sources-test".into(),
        })
        .await?
        .into_inner())
}

/// Reports a chain of blocks stored in the pool; returns the event id.
async fn report_stored(
    agent: &mut WorkerServiceClient<Channel>,
    pool_id: u64,
    hashes: &[u64],
) -> anyhow::Result<u64> {
    let blocks = hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| PoolBlock {
            block_id: i as u64,
            hash: h,
            parent_hash: i.checked_sub(1).map(|p| hashes[p]),
        })
        .collect();
    Ok(agent
        .report_blocks(ReportBlocksRequest {
            pool_id,
            kind: WorkerEventKind::Stored as i32,
            blocks,
        })
        .await?
        .into_inner()
        .event_id)
}

async fn report_removed(
    agent: &mut WorkerServiceClient<Channel>,
    pool_id: u64,
    hashes: &[u64],
) -> anyhow::Result<u64> {
    Ok(agent
        .report_blocks(ReportBlocksRequest {
            pool_id,
            kind: WorkerEventKind::Removed as i32,
            blocks: hashes
                .iter()
                .map(|&hash| PoolBlock {
                    hash,
                    ..Default::default()
                })
                .collect(),
        })
        .await?
        .into_inner()
        .event_id)
}

async fn agent_epoch(agent: &mut WorkerServiceClient<Channel>) -> anyhow::Result<u64> {
    Ok(agent
        .worker_stats(WorkerStatsRequest {})
        .await?
        .into_inner()
        .epoch)
}

fn fast_worker_config(expiry: Duration) -> WorkerSourceConfig {
    WorkerSourceConfig {
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(1),
        keepalive: Duration::from_secs(5),
        expiry,
        ..WorkerSourceConfig::default()
    }
}

fn fast_cache_config(url: String) -> CacheSourceConfig {
    let mut c = CacheSourceConfig::new(url, NAMESPACE, sim_config());
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(300);
    c
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_cache_blocks_reach_the_index_with_their_tiers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    // Host holds 4 blocks: a chain put before another one is demoted to disk.
    let server = ServerProcess::start(&dir.path().join("data"), &["--host-capacity", "256KiB"])?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &["--worker-id", "A"],
    )?;
    let mut agent = a.client().await?;
    let pool = attach(&mut agent, &shm.path().join("pool")).await?;
    assert_eq!(pool.worker_id, "A");

    // Before the sources start: 4 HBM blocks (they arrive in the snapshot), and
    // a disk-resident chain in the cache server.
    let early = prompt_hashes(1, 4, BLOCK_TOKENS);
    report_stored(&mut agent, pool.pool_id, &early).await?;
    let mut cache = server.client().await?;
    let session = handshake(&mut cache, NAMESPACE, sim_config()).await?;
    let on_disk = prompt_hashes(2, 4, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &on_disk, BLOCK_BYTES as usize).await?;
    let in_host = prompt_hashes(3, 4, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &in_host, BLOCK_BYTES as usize).await?;

    let index = new_index();
    let states = WorkerStates::default();
    let cache_state = CacheState::default();
    let (stop_tx, stop) = watch::channel(false);
    let worker_task = spawn_worker_source(
        AgentEndpoint {
            worker_id: "A".into(),
            agent_url: format!("http://{}", a.grpc),
        },
        index.clone(),
        states.clone(),
        fast_worker_config(Duration::from_secs(10)),
        stop.clone(),
    );
    let cache_task = spawn_cache_source(
        fast_cache_config(format!("http://{}", server.grpc)),
        index.clone(),
        cache_state.clone(),
        stop.clone(),
    );

    assert!(
        eventually(WAIT, || hbm(&index, &early) == 4).await,
        "the snapshot's blocks reach the index"
    );
    // Live events after the snapshot.
    let live = prompt_hashes(4, 3, BLOCK_TOKENS);
    let last = report_stored(&mut agent, pool.pool_id, &live).await?;
    assert!(eventually(WAIT, || hbm(&index, &live) == 3).await);
    let last = last.max(report_removed(&mut agent, pool.pool_id, &live[2..]).await?);
    assert!(eventually(WAIT, || hbm(&index, &live) == 2).await);
    let epoch = agent_epoch(&mut agent).await?;
    assert!(
        eventually(WAIT, || states
            .get("A")
            .is_some_and(|s| s.last_event_id == last))
        .await
    );
    let status = states.get("A").expect("registered");
    assert!(status.available, "{status:?}");
    assert_eq!((status.epoch, status.indexed_blocks), (epoch, 6));
    assert_eq!(index.read().worker_blocks(status.slot), 6);

    // Cache-server tiers: a snapshot, then live events.
    assert!(
        eventually(WAIT, || {
            let m = matches(&index, &in_host);
            m.cache_prefix_blocks == 4 && m.workers[0].host_blocks == 4
        })
        .await,
        "host-tier chain: {:?}",
        matches(&index, &in_host)
    );
    let m = matches(&index, &on_disk);
    assert_eq!(m.cache_prefix_blocks, 4);
    assert_eq!((m.workers[0].host_blocks, m.workers[0].disk_blocks), (0, 4));
    assert!(cache_state.get().synced);
    // A live put demotes `in_host` to disk and lands in host itself.
    let later = prompt_hashes(5, 4, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &later, BLOCK_BYTES as usize).await?;
    assert!(
        eventually(WAIT, || {
            matches(&index, &later).workers[0].host_blocks == 4
                && matches(&index, &in_host).workers[0].disk_blocks == 4
        })
        .await,
        "live moves: {:?} / {:?}",
        matches(&index, &later),
        matches(&index, &in_host)
    );
    // The worker's HBM blocks come before the cache's in one prefix's answer.
    let m = matches(&index, &early);
    assert_eq!((m.workers[0].hbm_blocks, m.cache_prefix_blocks), (4, 0));
    assert!(cache_state.get().last_event_id > 0);

    stop_tx.send(true)?;
    tokio::time::timeout(WAIT, worker_task).await??;
    tokio::time::timeout(WAIT, cache_task).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_unavailable_at_once_and_its_blocks_expire() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let a = AgentProcess::start(
        &dir.path().join("a.log"),
        server.grpc,
        &["--worker-id", "A"],
    )?;
    let mut agent = a.client().await?;
    let pool = attach(&mut agent, &shm.path().join("pool")).await?;
    let hashes = prompt_hashes(7, 5, BLOCK_TOKENS);
    report_stored(&mut agent, pool.pool_id, &hashes).await?;

    let index = new_index();
    let states = WorkerStates::default();
    let (_stop_tx, stop) = watch::channel(false);
    let expiry = Duration::from_millis(1500);
    spawn_worker_source(
        AgentEndpoint {
            worker_id: "A".into(),
            agent_url: format!("http://{}", a.grpc),
        },
        index.clone(),
        states.clone(),
        fast_worker_config(expiry),
        stop,
    );
    assert!(
        eventually(WAIT, || hbm(&index, &hashes) == 5
            && states.is_available("A"))
        .await
    );

    // kill -9 (drop): unavailable within 2 s, entries kept until the expiry.
    drop(agent);
    let killed = Instant::now();
    drop(a);
    assert!(
        eventually(Duration::from_secs(2), || !states.is_available("A")).await,
        "still available {:?} after the agent died",
        killed.elapsed()
    );
    let down_after = killed.elapsed();
    let status = states.get("A").expect("registered");
    assert!(status.reason.is_some(), "{status:?}");
    assert!(!status.expired);
    if killed.elapsed() < expiry / 2 {
        assert_eq!(hbm(&index, &hashes), 5, "entries stay until the expiry");
    }
    assert!(
        eventually(expiry + Duration::from_secs(3), || hbm(&index, &hashes)
            == 0)
        .await,
        "entries not cleared after the expiry"
    );
    let expired_after = killed.elapsed();
    assert!(
        expired_after >= expiry,
        "cleared after {expired_after:?}, before the {expiry:?} expiry"
    );
    let status = states.get("A").expect("registered");
    assert!(status.expired && status.indexed_blocks == 0, "{status:?}");
    eprintln!("unavailable after {down_after:?}, expired after {expired_after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_and_cache_server_resync() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &["--host-capacity", "256KiB"])?;
    let sock = dir.path().join("agent.sock");
    let sock_arg = sock.display().to_string();
    let agent_args = ["--worker-id", "A", "--uds", sock_arg.as_str()];
    let a = AgentProcess::start(&dir.path().join("a.log"), server.grpc, &agent_args)?;
    let mut agent = a.client().await?;
    let pool = attach(&mut agent, &shm.path().join("pool")).await?;
    let old = prompt_hashes(8, 4, BLOCK_TOKENS);
    report_stored(&mut agent, pool.pool_id, &old).await?;
    let old_epoch = agent_epoch(&mut agent).await?;

    let mut cache = server.client().await?;
    let session = handshake(&mut cache, NAMESPACE, sim_config()).await?;
    let on_disk = prompt_hashes(9, 4, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &on_disk, BLOCK_BYTES as usize).await?;
    let in_host = prompt_hashes(10, 4, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &in_host, BLOCK_BYTES as usize).await?;

    let index = new_index();
    let states = WorkerStates::default();
    let cache_state = CacheState::default();
    let (_stop_tx, stop) = watch::channel(false);
    // Over the Unix socket, whose path survives the restart.
    spawn_worker_source(
        AgentEndpoint {
            worker_id: "A".into(),
            agent_url: format!("unix:{}", sock.display()),
        },
        index.clone(),
        states.clone(),
        fast_worker_config(Duration::from_secs(30)),
        stop.clone(),
    );
    spawn_cache_source(
        fast_cache_config(format!("http://{}", server.grpc)),
        index.clone(),
        cache_state.clone(),
        stop,
    );
    assert!(eventually(WAIT, || hbm(&index, &old) == 4).await);
    assert!(
        eventually(WAIT, || matches(&index, &in_host).workers[0].host_blocks
            == 4)
        .await
    );
    let first_cache_epoch = cache_state.get().epoch;

    // Agent restart: a new epoch; its empty pool replaces the old blocks.
    drop(agent);
    drop(a);
    assert!(eventually(Duration::from_secs(2), || !states.is_available("A")).await);
    assert_eq!(
        hbm(&index, &old),
        4,
        "entries stay while the worker is away"
    );
    let a = AgentProcess::start(&dir.path().join("a2.log"), server.grpc, &agent_args)?;
    let mut agent = a.client().await?;
    let new_epoch = agent_epoch(&mut agent).await?;
    assert_ne!(new_epoch, old_epoch);
    assert!(
        eventually(WAIT, || states
            .get("A")
            .is_some_and(|s| s.available && s.epoch == new_epoch))
        .await,
        "{:?}",
        states.get("A")
    );
    assert!(eventually(WAIT, || hbm(&index, &old) == 0).await);
    let pool = attach(&mut agent, &shm.path().join("pool2")).await?;
    let new = prompt_hashes(11, 3, BLOCK_TOKENS);
    report_stored(&mut agent, pool.pool_id, &new).await?;
    assert!(eventually(WAIT, || hbm(&index, &new) == 3).await);
    assert_eq!(states.get("A").map(|s| s.indexed_blocks), Some(3));

    // Cache-server restart (same address, same data): host blocks are gone,
    // disk blocks came back; the new epoch's snapshot replaces the old view.
    let grpc = server.grpc;
    server.kill9()?;
    assert!(eventually(WAIT, || !cache_state.get().synced).await);
    assert_eq!(
        matches(&index, &in_host).workers[0].host_blocks,
        4,
        "cache entries stay while the server is away"
    );
    let _server = ServerProcess::start_at(&data, grpc, &["--host-capacity", "256KiB"])?;
    assert!(
        eventually(WAIT, || {
            let s = cache_state.get();
            s.synced && s.epoch != first_cache_epoch
        })
        .await,
        "{:?}",
        cache_state.get()
    );
    assert_eq!(matches(&index, &in_host).cache_prefix_blocks, 0);
    let m = matches(&index, &on_disk);
    assert_eq!((m.cache_prefix_blocks, m.workers[0].disk_blocks), (4, 4));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_snapshot_lists_resident_blocks_then_synced_then_live() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let mut cache = server.client().await?;
    let session = handshake(&mut cache, NAMESPACE, sim_config()).await?;
    let chain = prompt_hashes(12, 3, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &chain, BLOCK_BYTES as usize).await?;
    let mut stream = cache
        .watch_events(WatchEventsRequest {
            namespace: NAMESPACE.into(),
            snapshot: true,
        })
        .await?
        .into_inner();
    let mut stored = Vec::new();
    for _ in 0..3 {
        let e = next_cache_event(&mut stream).await?;
        assert_eq!(
            (e.kind, e.tier),
            (EventKind::Stored as i32, Tier::Host as i32)
        );
        assert_eq!(e.event_id, 3);
        stored.push((e.hash, e.parent_hash));
    }
    stored.sort_unstable();
    let mut want: Vec<(u64, Option<u64>)> = chain
        .iter()
        .enumerate()
        .map(|(i, &h)| (h, i.checked_sub(1).map(|p| chain[p])))
        .collect();
    want.sort_unstable();
    assert_eq!(stored, want);
    let synced = next_cache_event(&mut stream).await?;
    assert_eq!(
        (synced.kind, synced.event_id, synced.namespace.as_str()),
        (EventKind::Synced as i32, 3, NAMESPACE)
    );
    let more = prompt_hashes(13, 1, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &more, BLOCK_BYTES as usize).await?;
    let live = next_cache_event(&mut stream).await?;
    assert_eq!(
        (live.kind, live.event_id, live.hash, live.epoch),
        (EventKind::Stored as i32, 4, more[0], synced.epoch)
    );

    // An empty namespace still gets its SYNCED (id 0); old clients get no snapshot.
    let mut other = server.client().await?;
    handshake(&mut other, "empty", sim_config()).await?;
    let mut empty = other
        .watch_events(WatchEventsRequest {
            namespace: "empty".into(),
            snapshot: true,
        })
        .await?
        .into_inner();
    let e = tokio::time::timeout(WAIT, empty.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    assert_eq!((e.kind, e.event_id), (EventKind::Synced as i32, 0));
    let mut plain = other
        .watch_events(WatchEventsRequest {
            namespace: NAMESPACE.into(),
            snapshot: false,
        })
        .await?
        .into_inner();
    let more = prompt_hashes(14, 1, BLOCK_TOKENS);
    put_chain(&mut cache, &session, &more, BLOCK_BYTES as usize).await?;
    let e = tokio::time::timeout(WAIT, plain.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    assert_eq!(
        (e.kind, e.event_id, e.hash),
        (EventKind::Stored as i32, 5, more[0])
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// A scripted agent: a real stream never skips an id, so a gap needs a fake.
// ---------------------------------------------------------------------------

type EventStream = Pin<Box<dyn Stream<Item = Result<WorkerEvent, Status>> + Send>>;

/// Answers each subscription with the next script (then keeps the stream
/// open) and records the `from_event_id`s asked for.
#[derive(Default)]
struct ScriptedAgent {
    scripts: parking_lot::Mutex<Vec<Vec<WorkerEvent>>>,
    asked: Arc<parking_lot::Mutex<Vec<u64>>>,
}

#[tonic::async_trait]
impl WorkerService for ScriptedAgent {
    async fn attach_pool(
        &self,
        _: Request<AttachPoolRequest>,
    ) -> Result<Response<AttachPoolResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn offload(
        &self,
        _: Request<OffloadRequest>,
    ) -> Result<Response<OffloadResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn onboard(
        &self,
        _: Request<OnboardRequest>,
    ) -> Result<Response<OnboardResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn pool_lookup(
        &self,
        _: Request<PoolLookupRequest>,
    ) -> Result<Response<PoolLookupResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn report_blocks(
        &self,
        _: Request<ReportBlocksRequest>,
    ) -> Result<Response<ReportBlocksResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    type SubscribeWorkerEventsStream = EventStream;
    async fn subscribe_worker_events(
        &self,
        request: Request<SubscribeWorkerEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.asked.lock().push(request.into_inner().from_event_id);
        let mut scripts = self.scripts.lock();
        let script = if scripts.is_empty() {
            Vec::new()
        } else {
            scripts.remove(0)
        };
        let events = futures::stream::iter(script.into_iter().map(Ok));
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            events,
            futures::stream::pending(),
        ))))
    }
    async fn worker_snapshot(
        &self,
        _: Request<WorkerSnapshotRequest>,
    ) -> Result<Response<WorkerSnapshotResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn worker_stats(
        &self,
        _: Request<WorkerStatsRequest>,
    ) -> Result<Response<WorkerStatsResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

fn event(
    worker: &str,
    id: u64,
    kind: WorkerEventKind,
    hashes: &[u64],
    parents: &[u64],
) -> WorkerEvent {
    WorkerEvent {
        event_id: id,
        epoch: 77,
        worker_id: worker.into(),
        kind: kind as i32,
        hashes: hashes.to_vec(),
        parent_hash: None,
        parents: parents.to_vec(),
        medium: "GPU".into(),
    }
}

/// Serves `agent` on a loopback port; returns its URL and the recorded requests.
async fn serve(
    agent: ScriptedAgent,
) -> anyhow::Result<(String, Arc<parking_lot::Mutex<Vec<u64>>>)> {
    let asked = agent.asked.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((url, asked))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_event_ids_resyncs_from_a_snapshot() -> anyhow::Result<()> {
    use WorkerEventKind::{Snapshot, Stored};
    let agent = ScriptedAgent::default();
    *agent.scripts.lock() = vec![
        // snapshot at id 5, then 6, then 8: 7 was lost
        vec![
            event("A", 5, Snapshot, &[1], &[0]),
            event("A", 6, Stored, &[2], &[]),
            event("A", 8, Stored, &[99], &[]),
        ],
        // the resync's snapshot
        vec![event("A", 8, Snapshot, &[1, 2, 3], &[0, 1, 2])],
    ];
    let (url, asked) = serve(agent).await?;
    let index = new_index();
    let states = WorkerStates::default();
    let (_stop_tx, stop) = watch::channel(false);
    spawn_worker_source(
        AgentEndpoint {
            worker_id: "A".into(),
            agent_url: url,
        },
        index.clone(),
        states.clone(),
        fast_worker_config(Duration::from_secs(10)),
        stop,
    );
    assert!(
        eventually(WAIT, || states
            .get("A")
            .is_some_and(|s| s.last_event_id == 8))
        .await,
        "{:?}",
        states.get("A")
    );
    assert_eq!(*asked.lock(), vec![0, 0], "the gap resubscribes from 0");
    assert_eq!(hbm(&index, &[1, 2, 3]), 3);
    assert_eq!(
        hbm(&index, &[99]),
        0,
        "the event after the gap was not applied"
    );
    let s = states.get("A").expect("registered");
    assert!(s.available && s.resyncs == 1 && s.epoch == 77, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_another_worker_id_are_refused() -> anyhow::Result<()> {
    let agent = ScriptedAgent::default();
    *agent.scripts.lock() = vec![vec![event("B", 1, WorkerEventKind::Snapshot, &[1], &[0])]];
    let (url, _asked) = serve(agent).await?;
    let index = new_index();
    let states = WorkerStates::default();
    let (_stop_tx, stop) = watch::channel(false);
    spawn_worker_source(
        AgentEndpoint {
            worker_id: "A".into(),
            agent_url: url,
        },
        index.clone(),
        states.clone(),
        fast_worker_config(Duration::from_secs(10)),
        stop,
    );
    assert!(
        eventually(WAIT, || states
            .get("A")
            .and_then(|s| s.reason)
            .is_some_and(|r| r.contains("\"B\"")))
        .await,
        "{:?}",
        states.get("A")
    );
    assert!(!states.is_available("A"));
    assert_eq!(hbm(&index, &[1]), 0);
    Ok(())
}
