//! `kvtier-bench throughput`: put/get of large blocks through a real
//! `kvtier-server` on loopback, over gRPC and over its binary data plane,
//! side by side with a plain TCP copy of the same bytes over the same number
//! of connections (and Redis 7 SET/GET when `redis-server` is installed,
//! pipelined like kvtier's client, plus `redis-benchmark -P` beside it, and
//! Mooncake Store over its TCP transport with `--mooncake-python`), all
//! measured in one run; plus warm-restart time of the server with the data
//! set on disk, against a cold start.
//!
//! Figures are printed as ratios to the TCP baseline: the machines are shared
//! and noisy, bare times are not comparable between runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use clap::Parser;
use kvtier_process::size::parse_byte_size as parse_size;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{BlockData, GetRequest, HandshakeRequest, HashingConfig, PutRequest};
use kvtier_testkit::stats::median;
use kvtier_testkit::{Binary, Launch, Process};
use tonic::transport::Channel;

/// Flags of `kvtier-bench throughput`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Block payload size (e.g. 2MiB).
    #[arg(long, default_value = "2MiB", value_parser = parse_size)]
    block_size: u64,
    /// Blocks moved per measurement (total bytes = blocks × block size).
    #[arg(long, default_value_t = 512)]
    blocks: usize,
    /// Concurrent connections (gRPC channels, TCP sockets, Redis clients).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Rounds of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// kvtier-server binary (default: next to this binary).
    #[arg(long, env = "KVTIER_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// The server's host capacity (at least blocks × block size: each
    /// round's gets must find its puts). Default: room for every round of
    /// both paths, so that nothing is evicted; smaller, later rounds put
    /// into slots recycled from evicted blocks (the steady state of a full
    /// cache).
    #[arg(long, value_parser = parse_size)]
    host_capacity: Option<u64>,
    /// Skip the Redis baseline even when redis-server is installed.
    #[arg(long)]
    no_redis: bool,
    /// Mooncake Store baseline: a Python with PyPI's
    /// `mooncake-transfer-engine-non-cuda` (bench/scripts/setup_mooncake.sh
    /// installs one and prints its path). Without it, no Mooncake row.
    #[arg(long, env = "KVTIER_MOONCAKE_PYTHON", value_name = "PYTHON")]
    mooncake_python: Option<PathBuf>,
    /// Blocks written to disk for the warm-restart measurement (0 skips it).
    #[arg(long, default_value_t = 2048)]
    restart_blocks: usize,
    /// Block size of the warm-restart data set.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    restart_block_size: u64,
}

/// A kvtier-server child process, killed on drop.
struct Server {
    process: Process,
    grpc: SocketAddr,
    /// Binary data plane (`data=` in the ready line), when served.
    data: Option<SocketAddr>,
}

impl Server {
    /// Starts it and returns it with the time it took to report ready (a
    /// warm restart reads its data set first: no deadline worth failing on).
    fn start(bin: &Path, data_dir: &Path, args: &[&str]) -> Result<(Self, Duration)> {
        let process = Launch::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .env("KVTIER_LOG", "warn")
            .ready("kvtier-server ready")
            .timeout(Duration::from_secs(3600))
            .spawn()?;
        let ready = process.ready_after();
        let grpc = process.line().parse("grpc")?;
        let data = process.line().get("data").and_then(|a| a.parse().ok());
        Ok((
            Self {
                process,
                grpc,
                data,
            },
            ready,
        ))
    }

    /// Resident set size of the server process, in bytes (Linux).
    fn rss_bytes(&self) -> Option<u64> {
        Some(self.process.status_kib("VmRSS").ok()? * 1024)
    }

    /// SIGTERM, and wait for it to exit.
    fn terminate(mut self) -> Result<()> {
        self.process.terminate(Duration::MAX)?;
        Ok(())
    }
}

fn server_bin(args: &Args) -> Result<PathBuf> {
    Ok(Binary::new("kvtier-server")
        .explicit(args.server_bin.as_deref())
        .hint("pass --server-bin")
        .find()?)
}

async fn connect(addr: SocketAddr) -> Result<CacheServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(1 << 20))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(CacheServiceClient::new(channel)
        .max_decoding_message_size(512 << 20)
        .max_encoding_message_size(512 << 20))
}

async fn session(client: &mut CacheServiceClient<Channel>, block_bytes: u64) -> Result<String> {
    Ok(client
        .handshake(HandshakeRequest {
            namespace: "bench".into(),
            config: Some(HashingConfig {
                block_tokens: 16,
                seed: 0,
                salt: String::new(),
                block_bytes,
                kv_layout: "bench".into(),
                model: "bench".into(),
            }),
            client_name: "kvtier-bench".into(),
        })
        .await?
        .into_inner()
        .session_id)
}

fn payload(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>())
}

/// Puts `hashes` split over the clients; returns the elapsed time.
async fn grpc_put(
    clients: &[(CacheServiceClient<Channel>, String)],
    hashes: &[u64],
    payload: &Bytes,
) -> Result<Duration> {
    let per = hashes.len().div_ceil(clients.len());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((client, session), chunk) in clients.iter().zip(hashes.chunks(per)) {
        let mut client = client.clone();
        let messages: Vec<PutRequest> = chunk
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                kvtier_proto::put_message(
                    session,
                    i,
                    BlockData {
                        hash: h,
                        parent_hash: None,
                        payload: payload.clone(),
                    },
                )
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            client
                .put(tokio_stream::iter(messages))
                .await
                .map(|r| r.into_inner())
        }));
    }
    for task in tasks {
        let response = task.await??;
        if response.stored as usize + response.already_present as usize == 0 {
            bail!("nothing stored");
        }
    }
    Ok(started.elapsed())
}

/// Gets `hashes` split over the clients; checks sizes; returns the elapsed time.
async fn grpc_get(
    clients: &[(CacheServiceClient<Channel>, String)],
    hashes: &[u64],
    block: usize,
) -> Result<Duration> {
    let per = hashes.len().div_ceil(clients.len());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((client, session), chunk) in clients.iter().zip(hashes.chunks(per)) {
        let mut client = client.clone();
        let request = GetRequest {
            session_id: session.clone(),
            hashes: chunk.to_vec(),
            stop_at_first_miss: false,
            agent_id: String::new(),
        };
        tasks.push(tokio::spawn(async move {
            let mut stream = client.get(request).await?.into_inner();
            let mut n = 0usize;
            while let Some(m) = stream.message().await? {
                if !m.found || m.payload.len() != block {
                    return Err(anyhow!("block {:#x} missing or short", m.hash));
                }
                n += 1;
            }
            Ok::<usize, anyhow::Error>(n)
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// Plain loopback TCP: each connection sends `bytes_each` in `chunk`-sized
/// writes to a reader thread that discards them into a reusable buffer.
///
/// With `keep`, the reader instead reads each `chunk` into a fresh buffer of
/// its own and keeps them all until the end, as a store must: the ceiling
/// for any server that holds what it receives (fresh pages are faulted in
/// and the bytes land in cold memory).
fn tcp_copy(connections: usize, bytes_each: u64, chunk: usize, keep: bool) -> Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let readers = std::thread::spawn(move || -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..connections {
            let (mut sock, _) = listener.accept()?;
            handles.push(std::thread::spawn(move || -> Result<()> {
                let mut total = 0u64;
                if keep {
                    let mut kept: Vec<Vec<u8>> = Vec::new();
                    loop {
                        let mut buf = Vec::with_capacity(chunk);
                        let n = (&mut sock).take(chunk as u64).read_to_end(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                        kept.push(buf);
                    }
                    sock.write_all(&total.to_le_bytes())?;
                    drop(kept);
                    return Ok(());
                }
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = sock.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                sock.write_all(&total.to_le_bytes())?;
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow!("reader panicked"))??;
        }
        Ok(())
    });
    let data = vec![0x5au8; chunk];
    let started = Instant::now();
    let writers: Vec<_> = (0..connections)
        .map(|_| {
            let data = data.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut sock = TcpStream::connect(addr)?;
                let mut sent = 0u64;
                while sent < bytes_each {
                    sock.write_all(&data)?;
                    sent += data.len() as u64;
                }
                sock.shutdown(std::net::Shutdown::Write)?;
                let mut ack = [0u8; 8];
                sock.read_exact(&mut ack)?;
                if u64::from_le_bytes(ack) != sent {
                    bail!("tcp reader saw fewer bytes");
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| anyhow!("writer panicked"))??;
    }
    let elapsed = started.elapsed();
    readers
        .join()
        .map_err(|_| anyhow!("reader thread panicked"))??;
    Ok(elapsed)
}

mod data_plane;
mod mooncake;
mod redis;

/// Pipeline depth of the `redis-benchmark` run (`-P`): its client buffers
/// that many values per connection; beyond a few 2 MiB values in flight the
/// socket buffers, not the depth, bound a connection.
const REDIS_BENCHMARK_DEPTH: usize = 16;

/// The median round (zero without rounds).
fn mid(v: &[Duration]) -> Duration {
    median(v).unwrap_or_default()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Runs the benchmark and prints its table.
pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<()> {
    let bin = server_bin(&args)?;
    let block = args.block_size as usize;
    let total = args.block_size * args.blocks as u64;
    let dir = tempfile::tempdir()?;
    // Room for every round of both paths: the measurement must not depend
    // on eviction.
    let host_capacity = args
        .host_capacity
        .unwrap_or(total * (2 * args.rounds as u64 + 1));
    if host_capacity < total {
        bail!("--host-capacity must hold at least one round ({total} bytes)");
    }
    let host_capacity_arg = host_capacity.to_string();
    let mut server_args = vec![
        "--host-capacity",
        &host_capacity_arg,
        "--disk-capacity",
        "0",
    ];
    if args.host_capacity.is_some() {
        // An LRU order: a later round's puts evict the earlier rounds'
        // blocks, never the ones this round reads back.
        server_args.extend(["--policy", "lru"]);
    }
    let (server, _) = Server::start(&bin, &dir.path().join("tput"), &server_args)?;
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let mut c = connect(server.grpc).await?;
        let s = session(&mut c, args.block_size).await?;
        clients.push((c, s));
    }
    let data = payload(block);
    let sessions: Vec<String> = clients.iter().map(|(_, s)| s.clone()).collect();
    let mut dp_clients = match server.data {
        Some(addr) => Some(data_plane::connect(addr, &sessions).await?),
        None => None,
    };
    let redis = if args.no_redis {
        None
    } else {
        redis::RedisServer::start().ok()
    };
    let (mut put, mut get, mut tcp, mut rset, mut rget) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut dput, mut dget, mut tcp_keep) = (vec![], vec![], vec![]);
    let (mut mput, mut mget) = (vec![], vec![]);
    let mut mooncake_error = None;
    for round in 0..args.rounds {
        let hashes: Vec<u64> = (0..args.blocks as u64)
            .map(|i| (round as u64) << 40 | i)
            .collect();
        tcp.push(tcp_copy(
            args.connections,
            total / args.connections as u64,
            block,
            false,
        )?);
        tcp_keep.push(tcp_copy(
            args.connections,
            total / args.connections as u64,
            block,
            true,
        )?);
        // gRPC and the data plane take turns going first: both allocate
        // fresh server memory, which gets dearer as the machine fills up.
        for path in [round % 2, 1 - round % 2] {
            if path == 0 {
                put.push(grpc_put(&clients, &hashes, &data).await?);
                get.push(grpc_get(&clients, &hashes, block).await?);
            } else if let Some(dp) = dp_clients.take() {
                // Other hashes than gRPC's: every put stores a new block.
                let hashes: Vec<u64> = hashes.iter().map(|h| h | 1 << 39).collect();
                let (d, dp) = data_plane::put(dp, &hashes, &data).await?;
                dput.push(d);
                let (d, dp) = data_plane::get(dp, &hashes, block).await?;
                dget.push(d);
                dp_clients = Some(dp);
            }
        }
        if let Some(r) = &redis {
            let (s, g) = r.set_get(args.connections, args.blocks, &data, round)?;
            rset.push(s);
            rget.push(g);
        }
        if let (Some(python), None) = (&args.mooncake_python, &mooncake_error) {
            match mooncake::round(
                python,
                dir.path(),
                args.connections,
                args.blocks,
                args.block_size,
            ) {
                Ok((p, g)) => {
                    mput.push(p);
                    mget.push(g);
                }
                Err(e) => mooncake_error = Some(e),
            }
        }
    }
    let rss = server.rss_bytes();
    let r_bench = redis.as_ref().map(|r| {
        r.redis_benchmark(
            args.connections,
            args.blocks,
            REDIS_BENCHMARK_DEPTH.min(args.blocks.div_ceil(args.connections)),
            block,
        )
    });
    drop(clients);
    drop(dp_clients);
    server.terminate()?;
    let tcp = mid(&tcp);
    let row = |name: &str, d: Duration| {
        println!(
            "{name:<28} {:>10.0} MiB/s {:>8.2}x TCP",
            mib_s(total, d),
            tcp.as_secs_f64() / d.as_secs_f64()
        );
    };
    println!(
        "throughput: {} blocks of {} KiB, {} connections, median of {} rounds",
        args.blocks,
        args.block_size >> 10,
        args.connections,
        args.rounds
    );
    row("plain loopback TCP", tcp);
    row("TCP into kept fresh buffers", mid(&tcp_keep));
    row("kvtier put (host tier)", mid(&put));
    row("kvtier get (host tier)", mid(&get));
    if !dput.is_empty() {
        row("kvtier data-plane put", mid(&dput));
        row("kvtier data-plane get", mid(&dget));
    } else {
        println!("(data plane skipped: the server did not report a data= address)");
    }
    if let Some(rss) = rss {
        let paths = if dput.is_empty() { 1 } else { 2 };
        let held = (total * args.rounds as u64 * paths).min(host_capacity);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "server RSS {:.0} MiB holding {:.0} MiB of blocks ({:.2}x), host capacity {:.0} MiB ({:.2}x)",
            mib(rss),
            mib(held),
            rss as f64 / held as f64,
            mib(host_capacity),
            rss as f64 / host_capacity as f64
        );
    }
    if !rset.is_empty() {
        let (rs, rg) = (mid(&rset), mid(&rget));
        row("redis 7 SET (pipelined)", rs);
        row("redis 7 GET (pipelined)", rg);
        println!(
            "kvtier/redis: put {:.2}x, get {:.2}x",
            rs.as_secs_f64() / mid(&put).as_secs_f64(),
            rg.as_secs_f64() / mid(&get).as_secs_f64()
        );
        if !dput.is_empty() {
            println!(
                "kvtier data plane/redis: put {:.2}x, get {:.2}x",
                rs.as_secs_f64() / mid(&dput).as_secs_f64(),
                rg.as_secs_f64() / mid(&dget).as_secs_f64()
            );
        }
        // Beside it, Redis's own load generator, pipelined.
        let per = REDIS_BENCHMARK_DEPTH.min(args.blocks.div_ceil(args.connections));
        match r_bench {
            Some(Ok((set, get))) => println!(
                "redis-benchmark -P {per} (one key overwritten, one hot value read back): \
                 SET {set:.0} MiB/s ({:.2}x TCP), GET {get:.0} MiB/s ({:.2}x TCP)",
                set / mib_s(total, tcp),
                get / mib_s(total, tcp)
            ),
            Some(Err(e)) => println!("(redis-benchmark skipped: {e})"),
            None => {}
        }
    } else {
        println!("(redis baseline skipped: redis-server not installed or --no-redis)");
    }

    if !mput.is_empty() {
        let (mp, mg) = (mid(&mput), mid(&mget));
        row("mooncake store put (TCP)", mp);
        row("mooncake store get (TCP)", mg);
        if !dput.is_empty() {
            println!(
                "kvtier data plane/mooncake: put {:.2}x, get {:.2}x",
                mp.as_secs_f64() / mid(&dput).as_secs_f64(),
                mg.as_secs_f64() / mid(&dget).as_secs_f64()
            );
        }
        println!(
            "(mooncake: mooncake-transfer-engine-non-cuda, master + one storage process + {} client processes on loopback, protocol tcp; \
             each client one batch_put_from / batch_get_into of its share from a registered buffer)",
            args.connections
        );
    }
    if let Some(e) = mooncake_error {
        println!("(mooncake baseline failed: {e:#})");
    } else if args.mooncake_python.is_none() {
        println!("(mooncake baseline skipped: no --mooncake-python; bench/scripts/setup_mooncake.sh prints one)");
    }

    if args.restart_blocks > 0 {
        warm_restart(&bin, dir.path(), &args).await?;
    }
    Ok(())
}

async fn warm_restart(bin: &Path, root: &Path, args: &Args) -> Result<()> {
    let data_dir = root.join("restart");
    let disk_only = ["--host-capacity", "0"];
    let (cold, cold_ready) = Server::start(bin, &data_dir, &disk_only)?;
    let mut client = connect(cold.grpc).await?;
    let s = session(&mut client, args.restart_block_size).await?;
    let hashes: Vec<u64> = (0..args.restart_blocks as u64).collect();
    grpc_put(
        &[(client.clone(), s)],
        &hashes,
        &payload(args.restart_block_size as usize),
    )
    .await?;
    drop(client);
    cold.terminate()?;
    let (warm, warm_ready) = Server::start(bin, &data_dir, &disk_only)?;
    let mut client = connect(warm.grpc).await?;
    let s = session(&mut client, args.restart_block_size).await?;
    let first = Instant::now();
    grpc_get(&[(client, s)], &hashes, args.restart_block_size as usize).await?;
    let read_back = first.elapsed();
    warm.terminate()?;
    let gib = (args.restart_blocks as u64 * args.restart_block_size) as f64 / (1u64 << 30) as f64;
    println!(
        "warm restart: {} blocks ({gib:.2} GiB) on disk: ready in {:.0} ms vs {:.0} ms for an empty data dir ({:.2}x); \
         all blocks read back in {:.0} ms",
        args.restart_blocks,
        warm_ready.as_secs_f64() * 1e3,
        cold_ready.as_secs_f64() * 1e3,
        warm_ready.as_secs_f64() / cold_ready.as_secs_f64(),
        read_back.as_secs_f64() * 1e3
    );
    Ok(())
}
