//! `kvtier-bench agent`: offload and onboard throughput through a real
//! `kvtier-agent` + `kvtier-server` on loopback, for block sizes 256 KiB–8 MiB,
//! as ratios to a plain memcpy and to a plain loopback TCP transfer of the
//! same bytes measured in the same run (the machines are shared and noisy:
//! bare numbers are not comparable between runs, ratios are).
//!
//! The engine side is simulated: the KV pool is a shared-memory file
//! (`/dev/shm` when present) that the agent maps, as `kvtier-sim-engine`
//! does; this module drives the agent's `WorkerService` directly. Each round
//! offloads fresh blocks (new hashes), so every offload really copies; each
//! onboard then reads those blocks back into the pool.
//!
//! Self-contained: depends only on kvtier-proto, kvtier-testkit (processes,
//! sizes, medians) and the bench crate's deps.

// Wire messages gain optional fields over time; `..Default::default()` keeps
// this module compiling when they do.
#![allow(clippy::needless_update)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use clap::Parser;
use kvtier_process::size::parse_byte_size as parse_size;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::worker_service_client::WorkerServiceClient;
use kvtier_proto::v1::{
    attach_pool_request, AttachPoolRequest, BlockData, GetRequest, HandshakeRequest, HashingConfig,
    OffloadRequest, OnboardRequest, PoolBlock, PoolLayout, PutRequest, SharedMemoryPool,
};
use kvtier_testkit::rng::splitmix64 as splitmix;
use kvtier_testkit::size::size_label;
use kvtier_testkit::stats::median;
use kvtier_testkit::{Binary, Launch};
use tonic::transport::Channel;

/// Flags of `kvtier-bench agent`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Block sizes to measure (comma-separated, e.g. 256KiB,1MiB,4MiB,8MiB).
    #[arg(long, value_delimiter = ',', default_value = "256KiB,1MiB,2MiB,4MiB,8MiB", value_parser = parse_size)]
    block_sizes: Vec<u64>,
    /// Bytes moved per measurement (blocks = this / block size).
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    bytes: u64,
    /// Rounds per block size; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Agent staging memory (its in-flight bound).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    staging: u64,
    /// kvtier-server binary (default: next to this binary).
    #[arg(long, env = "KVTIER_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// kvtier-agent binary (default: next to this binary).
    #[arg(long, env = "KVTIER_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Also write the results table (markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start the agent with `--server-data`: payloads over the server's
    /// binary data plane instead of gRPC streams.
    #[arg(long)]
    data_plane: bool,
    /// Cluster mode instead: this many servers (`--cluster`, on a real etcd:
    /// `scripts/setup.sh` installs one) and two agents with `--cluster`, one
    /// moving payloads over gRPC and one over each owner's data plane
    /// (`--cluster-data-plane`), rounds alternating between them; reports
    /// the data plane / gRPC ratios of the same run. `--data-plane` is
    /// ignored then.
    #[arg(long)]
    cluster: Option<usize>,
}

/// `name` at `explicit`, else next to this binary.
fn sibling(name: &str, explicit: &Option<PathBuf>) -> Result<PathBuf> {
    Ok(Binary::new(name).explicit(explicit.as_deref()).find()?)
}

/// Spawns `bin args` (stderr inherited, killed on drop) and returns it with
/// the `grpc=` address of its ready line.
fn spawn(bin: &Path, args: &[String], ready: &str) -> Result<(kvtier_testkit::Process, String)> {
    let proc = Launch::new(bin)
        .args(args)
        .env("KVTIER_LOG", "warn")
        .ready(ready)
        .spawn()?;
    let grpc = proc.line().parse("grpc")?;
    Ok((proc, grpc))
}

/// GiB/s of `bytes` in `d`.
fn gibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64().max(1e-9)
}

/// A plain memcpy of `total` bytes in `block`-sized pieces between two
/// buffers whose pages are already touched (the second of two passes).
fn memcpy_rate(total: u64, block: u64) -> f64 {
    let src: Vec<u8> = (0..total).map(|i| i as u8).collect();
    let mut dst = vec![0u8; total as usize];
    let mut took = Duration::ZERO;
    for _ in 0..2 {
        let start = Instant::now();
        for (d, s) in dst
            .chunks_mut(block as usize)
            .zip(src.chunks(block as usize))
        {
            d.copy_from_slice(s);
        }
        took = start.elapsed();
        std::hint::black_box(&mut dst);
    }
    gibps(total, took)
}

/// A plain loopback TCP transfer of `total` bytes written `block` at a time.
fn tcp_rate(total: u64, block: u64) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    let data = vec![7u8; block as usize];
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&data)?;
        sent += block;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| anyhow!("tcp reader panicked"))??;
    let took = start.elapsed();
    if got != sent {
        bail!("tcp baseline moved {got} of {sent} bytes");
    }
    Ok(gibps(total, took))
}

/// Connections the agent and the direct client use (the agent's default).
const CONNECTIONS: usize = 4;

/// Clients on `CONNECTIONS` separate connections to the cache server.
async fn direct_clients(server: &str) -> Result<Vec<CacheServiceClient<Channel>>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{server}"))?
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .max_frame_size(Some(1 << 20))
            .connect()
            .await?;
        out.push(
            CacheServiceClient::new(channel)
                .max_decoding_message_size(65 << 20)
                .max_encoding_message_size(65 << 20),
        );
    }
    Ok(out)
}

/// The same blocks put then got by a client talking to the server directly
/// over `CONNECTIONS` concurrent streams (payload from one shared buffer: no
/// pool, no agent): the ceiling the agent's data path works under.
async fn direct_rates(
    clients: &[CacheServiceClient<Channel>],
    config: &HashingConfig,
    namespace: &str,
    hashes: &[u64],
    payload: &Bytes,
) -> Result<(f64, f64)> {
    let mut first = clients[0].clone();
    let session = first
        .handshake(HandshakeRequest {
            namespace: namespace.into(),
            config: Some(config.clone()),
            client_name: "kvtier-bench-direct".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .session_id;
    let total = hashes.len() as u64 * payload.len() as u64;
    let per = hashes.len().div_ceil(clients.len());
    let start = Instant::now();
    let puts = hashes.chunks(per).zip(clients).map(|(chunk, client)| {
        let mut client = client.clone();
        let messages: Vec<PutRequest> = chunk
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                kvtier_proto::put_message(
                    &session,
                    i,
                    BlockData {
                        hash: h,
                        payload: payload.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        async move { client.put(tokio_stream::iter(messages)).await }
    });
    futures::future::try_join_all(puts).await?;
    let put = gibps(total, start.elapsed());
    let start = Instant::now();
    let gets = hashes.chunks(per).zip(clients).map(|(chunk, client)| {
        let mut client = client.clone();
        let request = GetRequest {
            session_id: session.clone(),
            hashes: chunk.to_vec(),
            stop_at_first_miss: true,
            ..Default::default()
        };
        async move {
            let mut stream = client.get(request).await?.into_inner();
            let mut n = 0usize;
            while let Some(m) = stream.message().await? {
                n += usize::from(m.found);
            }
            Ok::<_, tonic::Status>(n)
        }
    });
    let found: usize = futures::future::try_join_all(gets).await?.into_iter().sum();
    if found != hashes.len() {
        bail!("direct get found {found} of {} blocks", hashes.len());
    }
    Ok((put, gibps(total, start.elapsed())))
}

/// One row of results (GiB/s, medians).
#[derive(Debug, Clone, Copy)]
struct Row {
    block: u64,
    blocks: u64,
    offload: f64,
    onboard: f64,
    direct_put: f64,
    direct_get: f64,
    memcpy: f64,
    tcp: f64,
}

/// Offload then onboard rounds through `agent`; `tag` (0 to 255) keeps the
/// hashes of separate calls apart. Without `direct` clients the direct
/// rates are NaN.
async fn measure(
    agent: &mut WorkerServiceClient<Channel>,
    direct: &[CacheServiceClient<Channel>],
    pool_dir: &Path,
    block: u64,
    args: &Args,
    tag: u64,
) -> Result<Row> {
    let n = (args.bytes / block).max(1);
    let total = n * block;
    let path = pool_dir.join(format!("kvtier-bench-pool-{block}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.set_len(total)?;
    // KV-like bytes (not zero pages), each block stamped with its id.
    let chunk: Vec<u8> = (0..block).map(|i| splitmix(i) as u8).collect();
    for i in 0..n {
        file.write_all_at(&stamped(&chunk, i), i * block)?;
    }
    let config = HashingConfig {
        block_tokens: 16,
        seed: 1337,
        salt: String::new(),
        block_bytes: block,
        kv_layout: format!("bench:block={block}"),
        model: "bench".into(),
    };
    let attached = agent
        .attach_pool(AttachPoolRequest {
            namespace: format!("bench-{block}"),
            hashing: Some(config.clone()),
            layout: Some(PoolLayout {
                num_blocks: n,
                block_bytes: block,
                ..Default::default()
            }),
            memory: Some(attach_pool_request::Memory::SharedMemory(
                SharedMemoryPool {
                    path: path.display().to_string(),
                    offset: 0,
                },
            )),
            engine_name: "kvtier-bench".into(),
        })
        .await?
        .into_inner();
    let (mut offload, mut onboard, mut memcpy, mut tcp) = (vec![], vec![], vec![], vec![]);
    let (mut direct_put, mut direct_get) = (vec![], vec![]);
    let payload = Bytes::from(chunk.clone());
    for round in 0..args.rounds.max(1) {
        let hashes: Vec<u64> = (0..n)
            .map(|i| splitmix(block ^ ((round as u64) << 48) ^ (tag << 56) ^ i))
            .collect();
        let blocks: Vec<PoolBlock> = (0..n)
            .map(|i| PoolBlock {
                block_id: i,
                hash: hashes[i as usize],
                parent_hash: i.checked_sub(1).map(|p| hashes[p as usize]),
            })
            .collect();
        let start = Instant::now();
        let out = agent
            .offload(OffloadRequest {
                pool_id: attached.pool_id,
                blocks,
            })
            .await?
            .into_inner();
        let took = start.elapsed();
        if out.stored as u64 != n {
            bail!("offload stored {} of {n} blocks (tier full?)", out.stored);
        }
        offload.push(gibps(total, took));

        // Onboard into a cleared pool, so that every block checked afterwards
        // was written by this onboard (not left over from the start).
        clear_pool(&file, total)?;
        let start = Instant::now();
        let back = agent
            .onboard(OnboardRequest {
                pool_id: attached.pool_id,
                hashes: hashes.clone(),
                block_ids: (0..n).collect(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let took = start.elapsed();
        if back.loaded_prefix as u64 != n {
            bail!(
                "onboard loaded {} of {n} blocks: {}",
                back.loaded_prefix,
                back.degraded_reason
            );
        }
        check_onboarded(&file, &chunk, n)
            .map_err(|e| anyhow!("block size {block}, round {round}: {e}"))?;
        onboard.push(gibps(total, took));
        let direct_hashes: Vec<u64> = hashes.iter().map(|h| splitmix(h ^ 0xD1)).collect();
        let (put, get) = if direct.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            direct_rates(
                direct,
                &config,
                &format!("bench-{block}"),
                &direct_hashes,
                &payload,
            )
            .await?
        };
        direct_put.push(put);
        direct_get.push(get);
        memcpy.push(memcpy_rate(total, block));
        tcp.push(tcp_rate(total, block)?);
    }
    let _ = std::fs::remove_file(&path);
    // Rounds are at least one: every list has a median.
    let mid = |v: Vec<f64>| median(&v).unwrap_or(f64::NAN);
    Ok(Row {
        block,
        blocks: n,
        offload: mid(offload),
        onboard: mid(onboard),
        direct_put: mid(direct_put),
        direct_get: mid(direct_get),
        memcpy: mid(memcpy),
        tcp: mid(tcp),
    })
}

/// Block `i`'s bytes: `chunk` with `i` stamped over its first and last 8
/// bytes, so a block onboarded into the wrong slot is caught as well.
fn stamped(chunk: &[u8], i: u64) -> Vec<u8> {
    let mut b = chunk.to_vec();
    let id = i.to_le_bytes();
    let k = b.len().min(8);
    b[..k].copy_from_slice(&id[..k]);
    let len = b.len();
    b[len - k..].copy_from_slice(&id[..k]);
    b
}

/// Zero-fills the first `total` bytes of the pool file.
fn clear_pool(file: &std::fs::File, total: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (total.min(8 << 20)) as usize];
    let mut at = 0;
    while at < total {
        let n = (total - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Checks every one of the `n` blocks of the pool against what was
/// offloaded (`stamped(chunk, i)`); an error names the first wrong block and
/// how many are wrong.
fn check_onboarded(file: &std::fs::File, chunk: &[u8], n: u64) -> Result<()> {
    let block = chunk.len() as u64;
    let mut readback = vec![0u8; chunk.len()];
    let (mut first, mut wrong) = (None, 0u64);
    for i in 0..n {
        file.read_exact_at(&mut readback, i * block)?;
        if readback != stamped(chunk, i) {
            first.get_or_insert(i);
            wrong += 1;
        }
    }
    match first {
        None => Ok(()),
        Some(i) => bail!(
            "{wrong} of {n} onboarded blocks differ from the offloaded ones (the first: block {i})"
        ),
    }
}

fn table(rows: &[Row], args: &Args) -> String {
    let mut s = format!(
        "agent + server on loopback, {} per measurement, median of {} rounds, {CONNECTIONS} \
         connections; GiB/s, and ratios of offload (off) and onboard (on) to a plain memcpy, \
         a plain loopback TCP transfer, and a direct put / get to the server (no agent)\n\n\
         | block | blocks | offload | onboard | direct put | direct get | memcpy | TCP | \
         off/memcpy | on/memcpy | off/TCP | on/TCP | off/direct put | on/direct get |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        size_label(args.bytes),
        args.rounds.max(1)
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            size_label(r.block),
            r.blocks,
            r.offload,
            r.onboard,
            r.direct_put,
            r.direct_get,
            r.memcpy,
            r.tcp,
            r.offload / r.memcpy,
            r.onboard / r.memcpy,
            r.offload / r.tcp,
            r.onboard / r.tcp,
            r.offload / r.direct_put,
            r.onboard / r.direct_get,
        ));
    }
    s
}

/// `--cluster N`: N servers in one cluster, an agent over gRPC and one over
/// the owners' data planes, rounds alternating; prints the ratios table.
async fn run_cluster(args: &Args, servers: usize) -> Result<()> {
    let server_bin = sibling("kvtier-server", &args.server_bin)?;
    let agent_bin = sibling("kvtier-agent", &args.agent_bin)?;
    let etcd_bin = kvtier_testkit::find_etcd()
        .ok_or_else(|| anyhow!("no etcd binary: run scripts/setup.sh (it installs etcd 3.5.1)"))?;
    let etcd = kvtier_testkit::EtcdProcess::start(&etcd_bin)?;
    let url = etcd.url();
    let data = tempfile::tempdir()?;
    let pool_dir = kvtier_testkit::dir::shm_tempdir()?;
    let rounds = args.rounds.max(1);
    // Both agents store fresh blocks each round; a shard holds about 1/N of them.
    let host = (2 * args.bytes * rounds as u64 * args.block_sizes.len() as u64)
        / servers.max(1) as u64
        * 2
        + (64 << 20);
    let mut nodes = Vec::new();
    for i in 0..servers.max(1) {
        let dir = data.path().join(format!("n{i}"));
        let (proc, _) = spawn(
            &server_bin,
            &[
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--metrics-listen".into(),
                "off".into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--host-capacity".into(),
                host.to_string(),
                "--host-prefault".into(),
                "false".into(),
                "--disk-capacity".into(),
                "0".into(),
                "--cluster".into(),
                url.clone(),
                "--node-id".into(),
                format!("n{i}"),
            ],
            "kvtier-server ready",
        )?;
        nodes.push(proc);
    }
    let mut agents = Vec::new();
    let mut held = Vec::new();
    for data_plane in [false, true] {
        let mut agent_args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "off".into(),
            "--uds".into(),
            "off".into(),
            "--cluster".into(),
            url.clone(),
            "--staging-bytes".into(),
            args.staging.to_string(),
        ];
        if data_plane {
            agent_args.push("--cluster-data-plane".into());
        }
        let (proc, addr) = spawn(&agent_bin, &agent_args, "kvtier-agent ready")?;
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        agents.push(WorkerServiceClient::new(channel));
        held.push(proc);
    }
    eprintln!("{servers} servers in one cluster; agent 1 over gRPC, agent 2 over the data planes");
    let one_round = Args {
        rounds: 1,
        block_sizes: args.block_sizes.clone(),
        out: None,
        server_bin: None,
        agent_bin: None,
        cluster: args.cluster,
        ..*args
    };
    let mut text = format!(
        "{servers} kvtier-servers in one cluster (real etcd), two kvtier-agents with --cluster, \
         one moving payloads over gRPC, one over each owner's data plane \
         (--cluster-data-plane), all on loopback; {} per measurement, rounds alternating \
         between the agents, median of {rounds}; GiB/s\n\n\
         | block | blocks | gRPC offload | gRPC onboard | data-plane offload | data-plane onboard | \
         offload dp/gRPC | onboard dp/gRPC | TCP |\n|---|---|---|---|---|---|---|---|---|\n",
        size_label(args.bytes),
    );
    let mut tag = 1u64;
    for &block in &args.block_sizes {
        let (mut grpc, mut dp, mut tcp) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            for (k, agent) in agents.iter_mut().enumerate() {
                let row = measure(agent, &[], pool_dir.path(), block, &one_round, tag).await?;
                tag = (tag + 1) % 256;
                if k == 0 {
                    grpc.push(row);
                } else {
                    tcp.push(row.tcp);
                    dp.push(row);
                }
            }
        }
        let mid = |v: Vec<f64>| median(&v).unwrap_or(f64::NAN);
        let ratio =
            |f: fn(&Row) -> f64| mid(grpc.iter().zip(&dp).map(|(g, d)| f(d) / f(g)).collect());
        let (off_ratio, on_ratio) = (ratio(|r| r.offload), ratio(|r| r.onboard));
        let line = format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            size_label(block),
            grpc.first().map_or(0, |r| r.blocks),
            mid(grpc.iter().map(|r| r.offload).collect()),
            mid(grpc.iter().map(|r| r.onboard).collect()),
            mid(dp.iter().map(|r| r.offload).collect()),
            mid(dp.iter().map(|r| r.onboard).collect()),
            off_ratio,
            on_ratio,
            mid(tcp),
        );
        eprint!("{line}");
        text.push_str(&line);
    }
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text)?;
    }
    drop(held);
    drop(nodes);
    drop(etcd);
    Ok(())
}

/// Runs the benchmark and prints the table.
pub async fn run(args: Args) -> Result<()> {
    if let Some(servers) = args.cluster {
        return run_cluster(&args, servers).await;
    }
    let server_bin = sibling("kvtier-server", &args.server_bin)?;
    let agent_bin = sibling("kvtier-agent", &args.agent_bin)?;
    let data = tempfile::tempdir()?;
    let pool_dir = kvtier_testkit::dir::shm_tempdir()?;
    // Every round stores fresh blocks twice (agent and direct): keep them all in host memory.
    let host =
        2 * args.bytes * args.rounds.max(1) as u64 * args.block_sizes.len() as u64 + (64 << 20);
    let data_listen = format!("127.0.0.1:{}", kvtier_testkit::free_port()?);
    let (_server, server_addr) = spawn(
        &server_bin,
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "off".into(),
            "--data-dir".into(),
            data.path().display().to_string(),
            "--host-capacity".into(),
            host.to_string(),
            "--disk-capacity".into(),
            "0".into(),
            "--data-listen".into(),
            data_listen.clone(),
        ],
        "kvtier-server ready",
    )?;
    let mut agent_args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "off".into(),
        "--server".into(),
        format!("http://{server_addr}"),
        "--staging-bytes".into(),
        args.staging.to_string(),
    ];
    if args.data_plane {
        agent_args.extend(["--server-data".into(), data_listen]);
    }
    eprintln!(
        "agent payloads over {}",
        if args.data_plane {
            "the binary data plane"
        } else {
            "gRPC streams"
        }
    );
    let (_agent, agent_addr) = spawn(&agent_bin, &agent_args, "kvtier-agent ready")?;
    let channel = Channel::from_shared(format!("http://{agent_addr}"))?
        .connect()
        .await?;
    let mut agent = WorkerServiceClient::new(channel);
    let direct = direct_clients(&server_addr).await?;
    let mut rows = Vec::new();
    for &block in &args.block_sizes {
        let row = measure(&mut agent, &direct, pool_dir.path(), block, &args, 0).await?;
        eprintln!(
            "{}: offload {:.2}, onboard {:.2}, direct put {:.2} / get {:.2}, memcpy {:.2}, tcp {:.2} GiB/s",
            size_label(block),
            row.offload,
            row.onboard,
            row.direct_put,
            row.direct_get,
            row.memcpy,
            row.tcp
        );
        rows.push(row);
    }
    let text = table(&rows, &args);
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text)?;
    }
    Ok(())
}

/// For a synchronous `main`: runs [`run`] on a fresh tokio runtime.
pub fn run_blocking(args: Args) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check the benchmark runs after each onboard: every block of a
    /// cleared pool, not only the last one of a pool that already held the
    /// right bytes (which passed even when onboard wrote nothing).
    #[test]
    fn every_onboarded_block_of_a_cleared_pool_is_checked() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("pool"))?;
        let (n, block) = (4u64, 64u64);
        let chunk: Vec<u8> = (0..block).map(|i| splitmix(i) as u8).collect();
        let write =
            |i: u64, as_block: u64| file.write_all_at(&stamped(&chunk, as_block), i * block);
        for i in 0..n {
            write(i, i)?;
        }
        check_onboarded(&file, &chunk, n)?;

        clear_pool(&file, n * block)?;
        let err = check_onboarded(&file, &chunk, n).unwrap_err().to_string();
        assert!(err.contains("4 of 4"), "{err}");
        // An onboard that skipped block 2 (the last one is right).
        for i in [0, 1, 3] {
            write(i, i)?;
        }
        let err = check_onboarded(&file, &chunk, n).unwrap_err().to_string();
        assert!(err.contains("1 of 4") && err.contains("block 2"), "{err}");
        // Block 1's bytes in slot 2.
        write(2, 1)?;
        let err = check_onboarded(&file, &chunk, n).unwrap_err().to_string();
        assert!(err.contains("block 2"), "{err}");
        write(2, 2)?;
        check_onboarded(&file, &chunk, n)
    }
}
