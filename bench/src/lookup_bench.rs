//! `kvtier-bench lookup-latency`: how long a router's presence check
//! (`Lookup` of a prefix over gRPC) takes on an idle `kvtier-server`, and
//! while writers put new blocks at full speed through the data plane, once
//! into a server whose full host tier demotes every victim to its RocksDB
//! disk tier (a disk write per put) and once into one without a disk tier
//! (victims are dropped: the same writers and CPU load, no disk writes).
//! All three in one run, on the same machine; latencies are reported as
//! ratios to the idle server's (the goal: p99 while demoting ≤ 2× idle).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Parser;
use kvtier_cache_server::dataplane::client::DataClient;
use kvtier_process::size::parse_byte_size as parse_size;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{BlockData, HandshakeRequest, HashingConfig, LookupRequest};
use kvtier_testkit::{Binary, Launch, Process};
use tonic::transport::Channel;

/// Flags of `kvtier-bench lookup-latency`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Block payload size of the writers' puts.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    block_size: u64,
    /// The servers' host tier: the writers fill it within a second, then
    /// every put makes room (demoting to disk, or dropping).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    host_capacity: u64,
    /// The demoting server's disk tier (large enough that nothing is dropped).
    #[arg(long, default_value = "64GiB", value_parser = parse_size)]
    disk_capacity: u64,
    /// Writer connections (data plane, pipelined puts).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Blocks per pipelined batch of a writer.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Lookups timed per phase (one at a time, each of --prefix-blocks hashes).
    #[arg(long, default_value_t = 3000)]
    lookups: usize,
    /// Hashes per Lookup.
    #[arg(long, default_value_t = 64)]
    prefix_blocks: usize,
    /// kvtier-server binary (default: next to this binary).
    #[arg(long, env = "KVTIER_SERVER_BIN")]
    server_bin: Option<PathBuf>,
}

struct Server {
    _process: Process,
    grpc: SocketAddr,
    data: SocketAddr,
}

fn start(bin: &Path, dir: &Path, host: u64, disk: u64) -> Result<Server> {
    let process = Launch::new(bin)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--data-listen", "127.0.0.1:0", "--host-prefault", "false"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--host-capacity", &host.to_string()])
        .args(["--disk-capacity", &disk.to_string()])
        .args(["--policy", "lru"])
        .env("KVTIER_LOG", "warn")
        .ready("kvtier-server ready")
        .timeout(Duration::from_secs(120))
        .spawn()?;
    let grpc = process.line().parse("grpc")?;
    let data = process.line().parse("data")?;
    Ok(Server {
        _process: process,
        grpc,
        data,
    })
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
            client_name: "kvtier-bench lookup-latency".into(),
        })
        .await?
        .into_inner()
        .session_id)
}

/// Percentiles of one phase's lookup latencies.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// What one server measured: idle lookups, then lookups under the writers.
struct Phase {
    idle: Latency,
    loaded: Latency,
    /// Writers' payload bytes per second during the loaded lookups.
    write_mib_s: f64,
    /// Of the writers' first blocks, the share on disk afterwards.
    first_on_disk: f64,
}

async fn timed_lookups(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    prefix: &[u64],
    n: usize,
) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .lookup(LookupRequest {
                session_id: session.to_string(),
                hashes: prefix.to_vec(),
            })
            .await?
            .into_inner();
        out.push(t.elapsed());
        if r.tiers.len() != prefix.len() {
            bail!(
                "lookup answered {} tiers for {} hashes",
                r.tiers.len(),
                prefix.len()
            );
        }
    }
    Ok(out)
}

async fn measure(server: &Server, args: &Args) -> Result<Phase> {
    let channel = Channel::from_shared(format!("http://{}", server.grpc))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = CacheServiceClient::new(channel);
    let sid = session(&mut client, args.block_size).await?;
    // The prefix the lookups ask for: stored first, so that they find it (on
    // whichever tier the writers leave it).
    let prefix: Vec<u64> = (0..args.prefix_blocks as u64)
        .map(|i| 1 << 62 | i)
        .collect();
    let payload = Bytes::from(vec![0x5a; args.block_size as usize]);
    let blocks: Vec<BlockData> = prefix
        .iter()
        .map(|&h| BlockData {
            hash: h,
            parent_hash: None,
            payload: payload.clone(),
        })
        .collect();
    let messages: Vec<_> = blocks
        .into_iter()
        .enumerate()
        .map(|(i, b)| kvtier_proto::put_message(&sid, i, b))
        .collect();
    client.put(tokio_stream::iter(messages)).await?;
    // Warm-up, then idle.
    timed_lookups(&mut client, &sid, &prefix, args.lookups / 10).await?;
    let idle = latency(timed_lookups(&mut client, &sid, &prefix, args.lookups).await?);

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let mut c = client.clone();
        let s = session(&mut c, args.block_size).await?;
        let mut dp = DataClient::connect(server.data, &s, "", "").await?;
        let (stop, written, payload, batch) =
            (stop.clone(), written.clone(), payload.clone(), args.batch);
        writers.push(tokio::spawn(async move {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let blocks: Vec<(u64, Option<u64>, Bytes)> = (0..batch as u64)
                    .map(|i| ((w as u64) << 48 | (next + i), None, payload.clone()))
                    .collect();
                next += batch as u64;
                dp.put_many(&blocks).await?;
                written.fetch_add(batch as u64 * payload.len() as u64, Ordering::Relaxed);
            }
            Ok::<u64, anyhow::Error>(next)
        }));
    }
    // Let the writers fill the host tier first: the lookups below run while
    // every put makes room.
    let fill = args.host_capacity.div_ceil(args.writers.max(1) as u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while written.load(Ordering::Relaxed) < args.host_capacity + fill && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = written.load(Ordering::Relaxed);
    let t = Instant::now();
    let loaded = latency(timed_lookups(&mut client, &sid, &prefix, args.lookups).await?);
    let write_mib_s = (written.load(Ordering::Relaxed) - before) as f64
        / (1 << 20) as f64
        / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    // Where the writers' first blocks went: disk when the server demotes.
    let first: Vec<u64> = (0..64u64).collect();
    let tiers = client
        .lookup(LookupRequest {
            session_id: sid.clone(),
            hashes: first,
        })
        .await?
        .into_inner()
        .tiers;
    let disk = tiers
        .iter()
        .filter(|&&t| t == kvtier_proto::v1::Tier::Disk as i32)
        .count();
    Ok(Phase {
        idle,
        loaded,
        write_mib_s,
        first_on_disk: disk as f64 / tiers.len().max(1) as f64,
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs the benchmark and prints its table.
pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<()> {
    let bin = Binary::new("kvtier-server")
        .explicit(args.server_bin.as_deref())
        .hint("pass --server-bin")
        .find()?;
    let dir = tempfile::tempdir()?;
    let demoting = start(
        &bin,
        &dir.path().join("demoting"),
        args.host_capacity,
        args.disk_capacity,
    )?;
    let with_disk = measure(&demoting, &args).await?;
    drop(demoting);
    let dropping = start(&bin, &dir.path().join("dropping"), args.host_capacity, 0)?;
    let without_disk = measure(&dropping, &args).await?;
    drop(dropping);
    println!(
        "lookup-latency: Lookup of {} hashes over gRPC, {} timed per phase; writers: {} data-plane \
         connections putting {} KiB blocks in batches of {} into a full {} MiB host tier",
        args.prefix_blocks,
        args.lookups,
        args.writers,
        args.block_size >> 10,
        args.batch,
        args.host_capacity >> 20
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "server / phase", "p50 µs", "p99 µs", "p50 / idle", "p99 / idle", "write MiB/s"
    );
    for (name, p) in [
        ("demotes to disk (RocksDB)", &with_disk),
        ("no disk tier (victims dropped)", &without_disk),
    ] {
        println!(
            "{:<44} {:>10.0} {:>10.0} {:>12} {:>12} {:>10}",
            format!("{name}: idle"),
            us(p.idle.p50),
            us(p.idle.p99),
            "1.00",
            "1.00",
            "-"
        );
        println!(
            "{:<44} {:>10.0} {:>10.0} {:>12.2} {:>12.2} {:>10.0}",
            format!("{name}: writers at full speed"),
            us(p.loaded.p50),
            us(p.loaded.p99),
            us(p.loaded.p50) / us(p.idle.p50),
            us(p.loaded.p99) / us(p.idle.p99),
            p.write_mib_s
        );
    }
    println!(
        "demoting server: {:.0}% of the writers' first blocks on disk afterwards (demotions happened); \
         p99 while demoting / idle = {:.2} (goal ≤ 2); / p99 under the same writers without a disk tier = {:.2}",
        with_disk.first_on_disk * 100.0,
        us(with_disk.loaded.p99) / us(with_disk.idle.p99),
        us(with_disk.loaded.p99) / us(without_disk.loaded.p99)
    );
    if with_disk.first_on_disk == 0.0 {
        bail!("the demoting server demoted nothing: raise the writers' volume or lower --host-capacity");
    }
    Ok(())
}
