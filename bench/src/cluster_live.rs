//! `kvtier-bench cluster --live`: real processes on loopback (one etcd,
//! three clustered `kvtier-server`s, one plain `kvtier-server`, one
//! `kvtier-router --cluster`), measured through `kvtier_cluster::ShardedClient`.
//!
//! - **Fan-out**: a 2,000-block prefix `Lookup` through the sharded client
//!   (one Lookup per shard, in parallel, combined) against one plain
//!   Lookup of the same prefix on a single server; medians and p99 of
//!   `--rounds` calls each, and their ratio.
//! - **Throughput**: Put then Get of fresh 256 KiB blocks through the
//!   sharded client, several calls in flight, against a one-member cluster
//!   (same client, same server binary, its own etcd prefix) in the same
//!   run: MiB/s per round, medians, and the 3-shard ÷ 1-shard ratio.
//! - **Failover**: `kill -9` of the shard that owns the prefix's first
//!   block while a client reads the prefix in a loop: the time to the first
//!   read that returns (the dead shard's blocks as misses), to the first
//!   read that does not touch the dead shard at all (it is skipped after one
//!   failed call), to the client's membership without it (lease TTL), and
//!   to the router's `FindMatches` no longer counting its blocks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kvtier_cluster::{ClusterUrl, Etcd, MembershipWatch, ShardedClient};
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::{
    BlockData, FindMatchesRequest, HandshakeRequest, HashingConfig, LookupRequest, PrefixQuery,
};
use kvtier_testkit::{Binary, EtcdProcess, Launch, Process};
use tonic::transport::Channel;

/// Blocks in the prefix.
const PREFIX_BLOCKS: usize = 2_000;
/// Bytes per block (small: the benchmark measures control, not bytes).
const BLOCK_BYTES: usize = 4096;
/// Lease TTL of the servers, in seconds.
const TTL_S: u64 = 2;
/// Bytes per block of the throughput part.
const TPUT_BLOCK_BYTES: usize = 256 << 10;
/// Blocks put and got per throughput round (128 MiB).
const TPUT_BLOCKS: usize = 512;
/// Blocks per Put/Get call of the throughput part (2 MiB).
const TPUT_BATCH: usize = 8;
/// Calls in flight in the throughput part.
const TPUT_IN_FLIGHT: usize = 4;

fn config() -> HashingConfig {
    HashingConfig {
        block_tokens: 16,
        seed: kvtier_proto::hashing::DEFAULT_SEED,
        salt: String::new(),
        block_bytes: BLOCK_BYTES as u64,
        kv_layout: "bench:cluster".into(),
        model: "bench-model".into(),
    }
}

fn tput_config() -> HashingConfig {
    HashingConfig {
        block_bytes: TPUT_BLOCK_BYTES as u64,
        kv_layout: "bench:cluster-throughput".into(),
        ..config()
    }
}

/// MiB/s of one Put pass and one Get pass of fresh blocks through `client`.
async fn put_get_round(client: &ShardedClient, tag: u64) -> Result<(f64, f64)> {
    use futures::StreamExt;
    let hashes: Vec<u64> = (0..TPUT_BLOCKS as u64)
        .map(|i| splitmix(tag << 32 | i))
        .collect();
    let payload = |h: u64| {
        let mut v = vec![(h >> 8) as u8; TPUT_BLOCK_BYTES];
        v[..8].copy_from_slice(&h.to_le_bytes());
        Bytes::from(v)
    };
    let calls: Vec<Vec<BlockData>> = hashes
        .chunks(TPUT_BATCH)
        .map(|c| {
            c.iter()
                .map(|&h| BlockData {
                    hash: h,
                    parent_hash: None,
                    payload: payload(h),
                })
                .collect()
        })
        .collect();
    let mib = (TPUT_BLOCKS * TPUT_BLOCK_BYTES) as f64 / f64::from(1 << 20);
    let t = Instant::now();
    let puts: Vec<_> = futures::stream::iter(calls)
        .map(|blocks| client.put(blocks))
        .buffer_unordered(TPUT_IN_FLIGHT)
        .collect()
        .await;
    let put_s = t.elapsed().as_secs_f64();
    let stored: usize = puts.iter().map(|p| p.acknowledged).sum();
    if stored != TPUT_BLOCKS {
        bail!("throughput put stored {stored} of {TPUT_BLOCKS}: {puts:?}");
    }
    let t = Instant::now();
    let gets: Vec<(usize, Vec<Option<Bytes>>)> =
        futures::stream::iter(hashes.chunks(TPUT_BATCH).enumerate())
            .map(|(k, h)| async move { (k, client.get(h).await) })
            .buffer_unordered(TPUT_IN_FLIGHT)
            .collect()
            .await;
    let get_s = t.elapsed().as_secs_f64();
    for (k, got) in gets {
        for (j, block) in got.into_iter().enumerate() {
            let h = hashes[k * TPUT_BATCH + j];
            if block.as_deref() != Some(&payload(h)[..]) {
                bail!("throughput get: block {h:#x} missing or wrong bytes");
            }
        }
    }
    Ok((mib / put_s, mib / get_s))
}

/// SplitMix64: distinct, well-spread block hashes.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn server(bin: &Path, data: &Path, args: &[&str]) -> Result<(Process, SocketAddr)> {
    let process = Launch::new(bin)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .arg("--data-dir")
        .arg(data)
        .args(["--host-prefault", "false"])
        .args(args)
        .env("KVTIER_LOG", "warn")
        .ready("kvtier-server ready")
        .timeout(Duration::from_secs(120))
        .spawn()?;
    let grpc = process.line().parse("grpc")?;
    Ok((process, grpc))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs the live part and prints its tables.
pub async fn run(
    server_bin: Option<&Path>,
    router_bin: Option<&Path>,
    rounds: usize,
    tput_rounds: usize,
) -> Result<()> {
    let etcd_bin = kvtier_testkit::find_etcd()
        .context("no etcd binary: run scripts/setup.sh (it installs etcd 3.5.1)")?;
    let server_bin: PathBuf = Binary::new("kvtier-server")
        .explicit(server_bin)
        .hint("pass --server-bin")
        .find()?;
    let router_bin: PathBuf = Binary::new("kvtier-router")
        .explicit(router_bin)
        .hint("pass --router-bin")
        .find()?;
    let etcd = EtcdProcess::start(&etcd_bin)?;
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let ttl = TTL_S.to_string();
    let mut shards = Vec::new();
    for i in 0..3 {
        let id = format!("n{i}");
        let (p, grpc) = server(
            &server_bin,
            &dir.path().join(&id),
            &[
                "--cluster",
                &url,
                "--node-id",
                &id,
                "--cluster-lease-ttl-s",
                &ttl,
            ],
        )?;
        shards.push((id, p, grpc));
    }
    let (_single, single_addr) = server(&server_bin, &dir.path().join("single"), &[])?;
    let membership = {
        let etcd = Etcd::connect(&ClusterUrl::parse(&url)?, Duration::from_secs(2)).await?;
        MembershipWatch::start(etcd)
    };
    let (_, ok) = membership
        .wait_for(Duration::from_secs(10), |m| m.members.len() == 3)
        .await;
    if !ok {
        bail!("the three servers did not all register");
    }
    let cfg = config();
    let client = ShardedClient::new(membership.clone(), "bench", cfg.clone(), "kvtier-bench");
    let hashes: Vec<u64> = kvtier_proto::hashing::BlockHasher::new(16, cfg.seed)
        .sequence_hashes(&(0..(PREFIX_BLOCKS * 16) as u32).collect::<Vec<_>>());
    let blocks: Vec<BlockData> = hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| BlockData {
            hash: h,
            parent_hash: i.checked_sub(1).map(|p| hashes[p]),
            payload: Bytes::from(vec![(h & 0xff) as u8; BLOCK_BYTES]),
        })
        .collect();
    let put = client.put(blocks.clone()).await;
    if put.acknowledged != PREFIX_BLOCKS {
        bail!("sharded put: {put:?}");
    }
    // The same prefix on the single server.
    let channel = Channel::from_shared(format!("http://{single_addr}"))?
        .connect()
        .await?;
    let mut single = CacheServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let session = single
        .handshake(HandshakeRequest {
            namespace: "bench".into(),
            config: Some(cfg.clone()),
            client_name: "kvtier-bench".into(),
        })
        .await?
        .into_inner()
        .session_id;
    let messages: Vec<_> = blocks
        .into_iter()
        .enumerate()
        .map(|(k, b)| kvtier_proto::put_message(&session, k, b))
        .collect();
    single.put(tokio_stream::iter(messages)).await?;

    // Fan-out.
    let placement = client.membership().placement();
    let per_shard: Vec<usize> = shards
        .iter()
        .map(|(id, _, _)| {
            hashes
                .iter()
                .filter(|&&h| placement.owner(h).is_some_and(|o| &o.id == id))
                .count()
        })
        .collect();
    let mut sharded_times = Vec::with_capacity(rounds);
    let mut single_times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let n = client.lookup_prefix(&hashes).await;
        sharded_times.push(t.elapsed());
        if n != PREFIX_BLOCKS {
            bail!("sharded lookup found {n} of {PREFIX_BLOCKS}");
        }
        let t = Instant::now();
        let r = single
            .lookup(LookupRequest {
                session_id: session.clone(),
                hashes: hashes.clone(),
            })
            .await?
            .into_inner();
        single_times.push(t.elapsed());
        if r.prefix_len as usize != PREFIX_BLOCKS {
            bail!("single lookup found {} of {PREFIX_BLOCKS}", r.prefix_len);
        }
    }
    sharded_times.sort();
    single_times.sort();
    let (s50, s99) = (
        percentile(&sharded_times, 0.5),
        percentile(&sharded_times, 0.99),
    );
    let (o50, o99) = (
        percentile(&single_times, 0.5),
        percentile(&single_times, 0.99),
    );
    println!(
        "\n## Live: fan-out of a {PREFIX_BLOCKS}-block prefix Lookup ({rounds} rounds each)\n"
    );
    println!(
        "blocks per shard: {}\n",
        per_shard
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| client | p50 µs | p99 µs | p50 ÷ single |");
    println!("|---|---:|---:|---:|");
    println!(
        "| one server, one Lookup | {:.0} | {:.0} | 1.00 |",
        us(o50),
        us(o99)
    );
    println!(
        "| 3 shards, ShardedClient::lookup_prefix | {:.0} | {:.0} | {:.2} |",
        us(s50),
        us(s99),
        s50.as_secs_f64() / o50.as_secs_f64()
    );

    // Throughput: the same client over one member and over three.
    let one_url = format!("{url}/kvtier-one");
    let (_one, _) = server(
        &server_bin,
        &dir.path().join("one"),
        &[
            "--cluster",
            &one_url,
            "--node-id",
            "solo",
            "--cluster-lease-ttl-s",
            &ttl,
        ],
    )?;
    let one_membership = {
        let etcd = Etcd::connect(&ClusterUrl::parse(&one_url)?, Duration::from_secs(2)).await?;
        MembershipWatch::start(etcd)
    };
    let (_, ok) = one_membership
        .wait_for(Duration::from_secs(10), |m| m.members.len() == 1)
        .await;
    if !ok {
        bail!("the one-member cluster did not register");
    }
    let one = ShardedClient::new(one_membership, "bench-tput", tput_config(), "kvtier-bench");
    let three = ShardedClient::new(
        membership.clone(),
        "bench-tput",
        tput_config(),
        "kvtier-bench",
    );
    let (mut one_put, mut one_get, mut three_put, mut three_get) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..tput_rounds {
        // Alternated, fresh blocks each round (the host tiers hold them all).
        let (p, g) = put_get_round(&one, 2 * round as u64).await?;
        one_put.push(p);
        one_get.push(g);
        let (p, g) = put_get_round(&three, 2 * round as u64 + 1).await?;
        three_put.push(p);
        three_get.push(g);
    }
    let (op, og, tp, tg) = (
        median(one_put),
        median(one_get),
        median(three_put),
        median(three_get),
    );
    println!(
        "\n## Live: Put/Get throughput, 1 vs 3 shards ({tput_rounds} rounds each, alternated; \
         {TPUT_BLOCKS} fresh {} KiB blocks a round, {TPUT_BATCH} blocks a call, \
         {TPUT_IN_FLIGHT} calls in flight; medians)\n",
        TPUT_BLOCK_BYTES >> 10
    );
    println!("| cluster | Put MiB/s | Get MiB/s | Put ÷ 1 shard | Get ÷ 1 shard |");
    println!("|---|---:|---:|---:|---:|");
    println!("| 1 shard | {op:.0} | {og:.0} | 1.00 | 1.00 |");
    println!(
        "| 3 shards | {tp:.0} | {tg:.0} | {:.2} | {:.2} |",
        tp / op,
        tg / og
    );

    // Failover.
    let router = Launch::new(&router_bin)
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--cluster",
            &url,
            "--worker",
            "w0=http://127.0.0.1:9@http://127.0.0.1:9",
            "--model",
            &cfg.model,
            "--namespace",
            "bench",
            "--block-tokens",
            "16",
            "--block-bytes",
            &cfg.block_bytes.to_string(),
            "--kv-layout",
            &cfg.kv_layout,
        ])
        .env("KVTIER_LOG", "warn")
        .ready("kvtier-router ready")
        .timeout(Duration::from_secs(60))
        .spawn()?;
    let router_grpc: SocketAddr = router.line().parse("grpc")?;
    let mut router_client = RouterServiceClient::connect(format!("http://{router_grpc}")).await?;
    let ask = || FindMatchesRequest {
        prefix: Some(PrefixQuery {
            model: cfg.model.clone(),
            hashes: hashes.clone(),
            ..Default::default()
        }),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while router_client
        .find_matches(ask())
        .await?
        .into_inner()
        .cache_prefix_blocks as usize
        != PREFIX_BLOCKS
    {
        if Instant::now() > deadline {
            bail!("the router never saw the whole prefix");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = placement.owner(hashes[0]).map(|o| o.id.clone());
    let Some(k) = shards
        .iter()
        .position(|(id, _, _)| Some(id) == victim.as_ref())
    else {
        bail!("no owner for the first block");
    };
    let victim_id = shards[k].0.clone();
    let on_victim = per_shard[k];
    let killed = Instant::now();
    shards[k].1.kill()?;
    let mut first_read = None;
    let mut untouched = None;
    let mut gone = None;
    let mut router_dropped = None;
    let mut reads = 0u64;
    let limit = killed + Duration::from_secs(TTL_S * 10 + 10);
    while gone.is_none() || router_dropped.is_none() || untouched.is_none() {
        if Instant::now() > limit {
            bail!("failover did not finish: read={first_read:?} untouched={untouched:?} gone={gone:?} router={router_dropped:?}");
        }
        let failed_before = client.stats().failed_calls;
        let got = client.get(&hashes).await;
        reads += 1;
        let missing = got.iter().filter(|b| b.is_none()).count();
        if first_read.is_none() {
            first_read = Some((killed.elapsed(), missing));
        } else if untouched.is_none() && client.stats().failed_calls == failed_before {
            untouched = Some(killed.elapsed());
        }
        if gone.is_none() && !client.membership().members.contains_key(&victim_id) {
            gone = Some(killed.elapsed());
        }
        if router_dropped.is_none() {
            let m = router_client.find_matches(ask()).await?.into_inner();
            if m.cache_prefix_blocks == 0 {
                router_dropped = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let (first, missing) = first_read.unwrap_or((Duration::ZERO, 0));
    println!(
        "\n## Live: failover after kill -9 of shard {victim_id} ({on_victim} of {PREFIX_BLOCKS} blocks; lease TTL {TTL_S} s; {reads} reads of the prefix in a loop)\n"
    );
    println!("| event | ms after kill -9 |");
    println!("|---|---:|");
    println!(
        "| first read returns (its blocks as misses: {missing}; no error) | {:.1} |",
        first.as_secs_f64() * 1e3
    );
    println!(
        "| first read that does not touch the dead shard | {:.1} |",
        ms(untouched)
    );
    println!(
        "| client's membership without it (lease expiry) | {:.0} |",
        ms(gone)
    );
    println!(
        "| router's FindMatches no longer counts its blocks | {:.0} |",
        ms(router_dropped)
    );
    drop(router);
    drop(etcd);
    Ok(())
}
