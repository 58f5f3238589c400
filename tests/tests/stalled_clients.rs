//! Stalled clients must not lock everyone out (the real `kvtier-server`).
//!
//! Data plane: 300 connections send HELLO and a PUT header, then stall. The
//! server takes its server-wide slot only once a payload is complete and
//! closes a frame left incomplete past `--frame-timeout-ms`, so a
//! well-behaved client's PUT+GET p99 stays within 2x its unloaded p99 (both
//! measured here), every block it had acknowledged reads back, and the
//! stalled connections are closed by the deadline. A connection idle between
//! frames is closed after `--data-idle-timeout-ms`.
//!
//! gRPC: Put streams opened without a message (3x `--max-concurrent-requests`
//! of them) hold no server-wide slot, and one that sent a block and then
//! stopped holds its slot only until `--frame-timeout-ms`; a well-behaved
//! client's Put+Get p99 stays within 2x, and every stalled stream ends with
//! DEADLINE_EXCEEDED after the deadline.
//!
//! Both use separate token principals for the stalled and the well-behaved
//! client: per-client limits count per principal (per IP without tokens).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvtier_cache_server::dataplane::{client, wire};
use kvtier_integration_tests::*;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::Request;

const BLOCK: usize = 64 << 10;
const FRAME_TIMEOUT_MS: u64 = 4_000;
const IDLE_TIMEOUT_MS: u64 = 1_500;
/// Round trips per measurement window (data plane, gRPC).
const DATA_ROUNDS: usize = 800;
const GRPC_ROUNDS: usize = 300;

fn tokens() -> String {
    format!(
        "good {} tenant=t ns=rw;bad {} tenant=t ns=rw",
        kvtier_security::tokens::token_digest_line("tok-good"),
        kvtier_security::tokens::token_digest_line("tok-bad"),
    )
}

fn authed<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

async fn session_as(grpc: &mut CacheServiceClient<Channel>, token: &str) -> anyhow::Result<String> {
    let req = authed(
        HandshakeRequest {
            namespace: "ns".into(),
            config: Some(config(16, BLOCK as u64)),
            client_name: "stalled-clients-test".into(),
        },
        token,
    )?;
    Ok(grpc.handshake(req).await?.into_inner().session_id)
}

/// A gRPC client of `server` with TCP_NODELAY and HTTP/2 windows larger than
/// a block (without them, every round trip waits tens of milliseconds for
/// delayed ACKs and window updates).
async fn channel(server: &ServerProcess) -> anyhow::Result<CacheServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{}", server.grpc))?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .connect()
        .await?;
    Ok(CacheServiceClient::new(channel))
}

/// The best p99 of up to 3 measurement windows while the stalls are held,
/// stopping at the first within 2x `before` (a loaded 2-core CI machine has
/// scheduling noise at this scale; every request of every window must
/// succeed). `window(first)` runs one window, its block ids from `first`.
async fn best_p99_of_three(
    before: Duration,
    mut window: impl AsyncFnMut(u64) -> anyhow::Result<Vec<Duration>>,
) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for w in 0..3u64 {
        best = best.min(p99(&window(20_000 + w * 1_000).await?));
        if best <= before * 2 {
            break;
        }
    }
    Ok(best)
}

fn p99(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let i = ((s.len() as f64 * 0.99).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

fn hash_of(i: u64) -> u64 {
    kvtier_testkit::rng::mix64(i ^ 0x5eed_0000_0000)
}

/// `DATA_ROUNDS` PUT+GET round trips of fresh blocks over one data-plane
/// connection; each latency, and the hashes acknowledged.
async fn data_rounds(
    addr: SocketAddr,
    session: &str,
    first: u64,
    acked: &mut Vec<u64>,
) -> anyhow::Result<Vec<Duration>> {
    let mut dp = client::DataClient::connect(addr, session, "tok-good", "").await?;
    let mut lat = Vec::with_capacity(DATA_ROUNDS);
    for i in first..first + DATA_ROUNDS as u64 {
        let h = hash_of(i);
        let payload = payload_for(h, BLOCK);
        let started = Instant::now();
        let ack = dp
            .put(h, None, &payload)
            .await
            .map_err(|e| anyhow::anyhow!("well-behaved PUT {i} failed: {e}"))?;
        acked.push(ack.hash);
        let got = dp
            .get(h)
            .await
            .map_err(|e| anyhow::anyhow!("well-behaved GET {i} failed: {e}"))?;
        lat.push(started.elapsed());
        anyhow::ensure!(
            got.payload.as_ref() == Some(&payload),
            "block {i} read back wrong"
        );
    }
    Ok(lat)
}

/// A connection that sends HELLO (and sees it accepted) and a PUT header,
/// then nothing.
async fn stalled_put(addr: SocketAddr, session: &str, i: u64) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&wire::encode_hello(session, "tok-bad", ""))
        .await?;
    let mut head = [0u8; wire::HEADER_LEN];
    s.read_exact(&mut head).await?;
    let h = wire::ResponseHeader::decode(&head);
    anyhow::ensure!(h.status == wire::Status::Ok as u8, "HELLO refused: {h:?}");
    let put = wire::RequestHeader::put(hash_of(1 << 40 | i), None, BLOCK as u64);
    s.write_all(&put.encode()).await?;
    Ok(s)
}

/// Reads until the server closes `s`; false when it is still open after `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The two tests measure latency: they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serially(test: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(test)
}

#[test]
fn stalled_data_plane_puts_do_not_lock_out_others() -> anyhow::Result<()> {
    serially(data_plane_stalls())
}

#[test]
fn stalled_grpc_put_streams_do_not_lock_out_others() -> anyhow::Result<()> {
    serially(grpc_stalls())
}

async fn data_plane_stalls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let (frame, idle) = (FRAME_TIMEOUT_MS.to_string(), IDLE_TIMEOUT_MS.to_string());
    let tokens = tokens();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--data-listen",
            &listen,
            "--tokens",
            &tokens,
            "--frame-timeout-ms",
            &frame,
            "--data-idle-timeout-ms",
            &idle,
        ],
    )?;
    let addr: SocketAddr = listen.parse()?;
    let mut grpc = server.client().await?;
    let good = session_as(&mut grpc, "tok-good").await?;
    let bad = session_as(&mut grpc, "tok-bad").await?;
    let mut acked = Vec::new();

    // Warm up, then the unloaded baseline.
    data_rounds(addr, &good, 0, &mut acked).await?;
    let unloaded = data_rounds(addr, &good, 10_000, &mut acked).await?;

    // 300 connections stall after a PUT header.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..300 {
        stalled.push(stalled_put(addr, &bad, i).await?);
    }
    let before = p99(&unloaded);
    let under = best_p99_of_three(before, async |first| {
        data_rounds(addr, &good, first, &mut acked).await
    })
    .await?;
    let stalled_for = started.elapsed();
    assert!(
        stalled_for < Duration::from_millis(FRAME_TIMEOUT_MS),
        "the measurement outlasted the frame deadline ({stalled_for:?}): it no longer shows stalled PUTs"
    );

    // Nothing acknowledged is lost.
    let mut dp = client::DataClient::connect(addr, &good, "tok-good", "").await?;
    let got = dp.get_many(&acked, false).await?;
    assert_eq!(got.len(), acked.len());
    for (r, h) in got.iter().zip(&acked) {
        assert_eq!(r.payload.as_ref(), Some(&payload_for(*h, BLOCK)), "{h:#x}");
    }
    drop(dp);

    // The stalled connections are closed by the frame deadline.
    let left = Duration::from_millis(FRAME_TIMEOUT_MS + 2_000).saturating_sub(started.elapsed());
    let mut open = 0;
    for s in &mut stalled {
        if !closed_by_server(s, left.max(Duration::from_millis(10))).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "stalled connections still open past the frame deadline"
    );

    // The unloaded p99 is the larger of the windows before and after the
    // stalls (the machine's own load drifts).
    let after = p99(&data_rounds(addr, &good, 30_000, &mut acked).await?);
    let base = before.max(after);
    let ratio = under.as_secs_f64() / base.as_secs_f64();
    println!(
        "data plane PUT+GET p99: unloaded {before:?} before, {after:?} after; with 300 stalled PUTs \
         {under:?} (ratio {ratio:.2}); stalls held {stalled_for:?} of the measurement"
    );
    assert!(
        under <= base * 2,
        "p99 {under:?} with 300 stalled PUTs is over 2x the unloaded {base:?}"
    );

    // A connection idle between frames is closed after the idle timeout.
    let mut idle = client::DataClient::connect(addr, &good, "tok-good", "").await?;
    idle.put(hash_of(99_999), None, &payload_for(hash_of(99_999), BLOCK))
        .await?;
    tokio::time::sleep(Duration::from_millis(IDLE_TIMEOUT_MS + 500)).await;
    assert!(
        idle.get(hash_of(99_999)).await.is_err(),
        "an idle connection survived the idle timeout"
    );
    Ok(())
}

/// `GRPC_ROUNDS` gRPC Put (one block) + Get round trips; each latency.
async fn grpc_rounds(
    grpc: &mut CacheServiceClient<Channel>,
    session: &str,
    first: u64,
    acked: &mut Vec<u64>,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(GRPC_ROUNDS);
    for i in first..first + GRPC_ROUNDS as u64 {
        let h = hash_of(i);
        let started = Instant::now();
        let msgs = put_messages(session, &[h], BLOCK);
        grpc.put(authed(tokio_stream::iter(msgs), "tok-good")?)
            .await
            .map_err(|e| anyhow::anyhow!("well-behaved Put {i} failed: {e}"))?;
        acked.push(h);
        let got = get_as(grpc, session, &[h]).await?;
        lat.push(started.elapsed());
        anyhow::ensure!(
            got.first().map(|g| (g.found, &g.payload)) == Some((true, &payload_for(h, BLOCK))),
            "block {i} read back wrong"
        );
    }
    Ok(lat)
}

async fn get_as(
    grpc: &mut CacheServiceClient<Channel>,
    session: &str,
    hashes: &[u64],
) -> anyhow::Result<Vec<GetResponse>> {
    let req = authed(
        GetRequest {
            session_id: session.into(),
            hashes: hashes.to_vec(),
            stop_at_first_miss: false,
            agent_id: String::new(),
        },
        "tok-good",
    )?;
    let mut stream = grpc
        .get(req)
        .await
        .map_err(|e| anyhow::anyhow!("well-behaved Get failed: {e}"))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

async fn grpc_stalls() -> anyhow::Result<()> {
    const SLOTS: usize = 16;
    const STALLED: usize = 3 * SLOTS;
    let dir = tempfile::tempdir()?;
    let frame = FRAME_TIMEOUT_MS.to_string();
    let slots = SLOTS.to_string();
    let tokens = tokens();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--tokens",
            &tokens,
            "--frame-timeout-ms",
            &frame,
            "--max-concurrent-requests",
            &slots,
        ],
    )?;
    let mut grpc = channel(&server).await?;
    let good = session_as(&mut grpc, "tok-good").await?;
    let bad = session_as(&mut grpc, "tok-bad").await?;
    let mut acked = Vec::new();

    grpc_rounds(&mut grpc, &good, 0, &mut acked).await?;
    let unloaded = grpc_rounds(&mut grpc, &good, 10_000, &mut acked).await?;

    // Streams (on a connection of their own) that stop: the first sends one
    // block, the others nothing.
    let bad_channel = channel(&server).await?;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..=STALLED as u64 {
        let (tx, rx) = tokio::sync::mpsc::channel::<PutRequest>(4);
        if i == 0 {
            tx.send(put_messages(&bad, &[hash_of(1 << 41 | i)], BLOCK)[0].clone())
                .await?;
        }
        let mut c = bad_channel.clone();
        let req = authed(tokio_stream::wrappers::ReceiverStream::new(rx), "tok-bad")?;
        let task = tokio::spawn(async move { c.put(req).await });
        stalled.push((tx, task));
    }
    // Let every stalled stream reach the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = p99(&unloaded);
    let under = best_p99_of_three(before, async |first| {
        grpc_rounds(&mut grpc, &good, first, &mut acked).await
    })
    .await?;
    let stalled_for = started.elapsed();
    assert!(
        stalled_for < Duration::from_millis(FRAME_TIMEOUT_MS),
        "the measurement outlasted the message deadline ({stalled_for:?}): it no longer shows stalled streams"
    );

    // Nothing acknowledged is lost.
    let got = get_as(&mut grpc, &good, &acked).await?;
    assert_eq!(got.len(), acked.len());
    for (r, h) in got.iter().zip(&acked) {
        assert!(r.found && r.payload == payload_for(*h, BLOCK), "{h:#x}");
    }

    // The stalled streams end with DEADLINE_EXCEEDED (their senders still open).
    let left = Duration::from_millis(FRAME_TIMEOUT_MS + 2_000).saturating_sub(started.elapsed());
    let end = tokio::time::Instant::now() + left;
    let mut senders = Vec::new();
    for (tx, task) in stalled {
        senders.push(tx);
        let outcome = tokio::time::timeout_at(end, task)
            .await
            .map_err(|_| anyhow::anyhow!("a stalled Put stream still open past the deadline"))??;
        let err = outcome.expect_err("a stalled Put stream succeeded");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    }
    drop(senders);

    // The unloaded p99: the larger of the windows before and after.
    let after = p99(&grpc_rounds(&mut grpc, &good, 30_000, &mut acked).await?);
    let base = before.max(after);
    let ratio = under.as_secs_f64() / base.as_secs_f64();
    println!(
        "gRPC Put+Get p99: unloaded {before:?} before, {after:?} after; with {STALLED} stalled Put \
         streams + 1 after a block ({SLOTS} server slots) {under:?} (ratio {ratio:.2}); stalls held {stalled_for:?} \
         of the measurement"
    );
    assert!(
        under <= base * 2,
        "p99 {under:?} with {STALLED} stalled Put streams is over 2x the unloaded {base:?}"
    );
    Ok(())
}
