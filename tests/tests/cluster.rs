//! Several real `kvtier-server`s as one cluster (`--cluster etcd://...`)
//! on one real etcd, all on loopback: registration, a node killed, frozen
//! or restarted, etcd lost and back (with and without its data), bad input,
//! and namespace configurations that hold cluster-wide.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_cluster::{Membership, MembershipWatch, ShardedClient, ShardedOptions};
use kvtier_integration_tests::cluster::{start_etcd, start_node, watch, TTL_S};
use kvtier_integration_tests::*;
use kvtier_proto::v1::{BlockData, FindMatchesRequest, PrefixQuery};
use kvtier_testkit::process::signal::{SIGCONT, SIGSTOP, SIGTERM};
use kvtier_testkit::NotReady;
use tonic::Code;

const BLOCK: usize = 4096;
const TTL: Duration = Duration::from_secs(TTL_S);
/// On top of the TTL: etcd checks expiries every 500 ms, the watch and the
/// keep-alive cadence add a little, and the machine is shared.
const SLACK: Duration = Duration::from_secs(4);

async fn until(
    watch: &MembershipWatch,
    within: Duration,
    what: &str,
    ok: impl Fn(&Membership) -> bool,
) -> Arc<Membership> {
    let (m, met) = watch.wait_for(within, ok).await;
    assert!(met, "{what}: not within {within:?}; membership {m:?}");
    m
}

fn epoch(m: &Membership, id: &str) -> u64 {
    m.members.get(id).map_or(0, |m| m.epoch)
}

/// Puts `hashes` on their owners (as a client computes them from the
/// membership) and returns the hashes each node got.
async fn put_by_owner(
    servers: &[&ServerProcess],
    membership: &Membership,
    hashes: &[u64],
) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    let placement = membership.placement();
    let mut by_owner: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for &h in hashes {
        let owner = placement.owner(h).expect("an owner");
        by_owner.entry(owner.id.clone()).or_default().push(h);
    }
    for (id, owned) in &by_owner {
        let server = servers
            .iter()
            .find(|s| s.node.as_deref() == Some(id))
            .expect("a server per member");
        assert_eq!(
            membership.members[id].grpc,
            server.grpc.to_string(),
            "the record advertises the bound address"
        );
        let mut client = server.client().await?;
        let session = handshake(&mut client, "ns", config(16, BLOCK as u64)).await?;
        put_chain(&mut client, &session, owned, BLOCK).await?;
    }
    Ok(by_owner)
}

/// A client of namespace `ns` (the tests' hashing config) that follows the
/// membership under `url`.
async fn sharded(url: &str, options: ShardedOptions) -> anyhow::Result<ShardedClient> {
    Ok(ShardedClient::with_options(
        watch(url).await?,
        "ns",
        config(16, BLOCK as u64),
        "test",
        options,
    ))
}

/// How many of `hashes` `server` serves, checking the bytes of each.
async fn hits(server: &ServerProcess, hashes: &[u64]) -> anyhow::Result<usize> {
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, BLOCK as u64)).await?;
    let got = get_all(&mut client, &session, hashes).await?;
    assert_eq!(got.len(), hashes.len());
    let mut found = 0;
    for (b, h) in got.iter().zip(hashes) {
        if b.found {
            assert_eq!(b.payload, payload_for(*h, BLOCK), "wrong bytes for {h:#x}");
            found += 1;
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_register_and_blocks_spread_over_all() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let servers: Vec<ServerProcess> = (0..3)
        .map(|i| {
            let data = dir.path().join(format!("n{i}"));
            start_node(&url, &data, Some(&format!("n{i}")), &[])
        })
        .collect::<anyhow::Result<_>>()?;
    let watch = watch(&url).await?;
    let m = until(&watch, SLACK, "three members", |m| m.members.len() == 3).await;
    assert_eq!(m.ids(), ["n0", "n1", "n2"]);
    for s in &servers {
        let id = s.node.as_deref().expect("node= in the ready line");
        let member = &m.members[id];
        assert_eq!(member.grpc, s.grpc.to_string());
        assert!(member.data.is_some(), "the data plane is advertised");
        assert!(member.is_active());
    }
    let hashes = prompt_hashes(1, 300, 16);
    let refs: Vec<&ServerProcess> = servers.iter().collect();
    let by_owner = put_by_owner(&refs, &m, &hashes).await?;
    assert_eq!(by_owner.len(), 3, "every shard owns some of 300 blocks");
    for s in &servers {
        let owned = &by_owner[s.node.as_deref().expect("node")];
        assert!(owned.len() >= 50, "{} owns {} of 300", s.grpc, owned.len());
        assert_eq!(hits(s, owned).await?, owned.len());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_within_the_ttl_and_a_restart_serves_its_disk_again() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    // Host tier off: every acknowledged block is on disk.
    let disk_only = ["--host-capacity", "0"];
    let data1 = dir.path().join("n1");
    let s0 = start_node(&url, &dir.path().join("n0"), Some("n0"), &disk_only)?;
    let mut s1 = start_node(&url, &data1, Some("n1"), &disk_only)?;
    let watch = watch(&url).await?;
    let before = until(&watch, SLACK, "two members", |m| m.members.len() == 2).await;
    let hashes = prompt_hashes(2, 200, 16);
    let by_owner = put_by_owner(&[&s0, &s1], &before, &hashes).await?;
    let owned1 = by_owner["n1"].clone();

    let killed = Instant::now();
    s1.kill9()?;
    until(&watch, TTL + SLACK, "n1 gone after kill -9", |m| {
        m.ids() == ["n0"]
    })
    .await;
    let left_after = killed.elapsed();
    assert!(
        left_after >= Duration::from_millis(500),
        "it left by lease expiry, not at once: {left_after:?}"
    );
    // The survivor serves its own blocks throughout.
    assert_eq!(hits(&s0, &by_owner["n0"]).await?, by_owner["n0"].len());

    // Its data directory belongs to n1: another id is refused.
    let Err(err) = start_node(&url, &data1, Some("n9"), &disk_only) else {
        panic!("another node id on n1's data directory was accepted");
    };
    let text = format!("{err:#}");
    assert!(text.contains("does not match the node id \"n1\""), "{text}");

    // Restarted without --node-id, it takes n1 back and serves its disk.
    let s1 = start_node(&url, &data1, None, &disk_only)?;
    assert_eq!(s1.node.as_deref(), Some("n1"));
    let after = until(&watch, SLACK, "n1 back", |m| m.members.len() == 2).await;
    assert!(epoch(&after, "n1") > epoch(&before, "n1"), "a new epoch");
    assert_eq!(
        after.placement().owner(owned1[0]).map(|m| m.id.as_str()),
        Some("n1"),
        "the same share of the hash space"
    );
    assert_eq!(
        hits(&s1, &owned1).await?,
        owned1.len(),
        "its disk serves again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_id_is_refused() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let first = start_node(&url, &dir.path().join("a"), Some("same"), &[])?;
    let started = Instant::now();
    let Err(err) = start_node(&url, &dir.path().join("b"), Some("same"), &[]) else {
        panic!("a second process with node id \"same\" was accepted");
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("node id \"same\" is already registered by a live process"),
        "{text}"
    );
    assert!(
        matches!(
            err.downcast_ref::<kvtier_testkit::Error>(),
            Some(kvtier_testkit::Error::NotReady {
                reason: NotReady::Exited(Some(1)),
                ..
            })
        ),
        "exits with code 1: {text}"
    );
    // It waited out one TTL in case the holder was a killed previous run.
    assert!(started.elapsed() >= TTL, "{:?}", started.elapsed());
    let watch = watch(&url).await?;
    let m = until(&watch, SLACK, "the first stays", |m| m.members.len() == 1).await;
    assert_eq!(m.members["same"].grpc, first.grpc.to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cluster_urls_are_refused_with_the_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (url, says) in [
        ("http://127.0.0.1:2379", "scheme \"http\" is not supported"),
        ("etcd://127.0.0.1", "has no :PORT"),
        ("etcd://", "no etcd endpoint"),
        ("127.0.0.1:2379", "must start with etcd://"),
    ] {
        let Err(err) = ServerProcess::start(&dir.path().join("d"), &["--cluster", url]) else {
            panic!("--cluster {url} was accepted");
        };
        let text = format!("{err:#}");
        assert!(text.contains(says), "{url}: {text}");
        assert!(text.contains("exited with code"), "{url}: {text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_retried_until_it_answers() -> anyhow::Result<()> {
    let Some(bin) = kvtier_testkit::find_etcd() else {
        kvtier_testkit::prereq::missing("an etcd binary", kvtier_testkit::etcd::HOW_TO_GET);
        return Ok(());
    };
    let port = free_port()?;
    let url = format!("etcd://127.0.0.1:{port}");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("n0");
    let log = data.with_extension("log");
    let starting = {
        let (url, data) = (url.clone(), data.clone());
        std::thread::spawn(move || start_node(&url, &data, Some("n0"), &[]))
    };
    // It says why it waits, and does not announce itself ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cannot reach etcd")
    {
        assert!(
            Instant::now() < deadline,
            "no retry line in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!starting.is_finished(), "ready without etcd");
    // etcd appears: the server registers and becomes ready.
    let _etcd = kvtier_testkit::EtcdProcess::start_on(&bin, port)?;
    let server = starting.join().expect("thread")?;
    assert_eq!(server.node.as_deref(), Some("n0"));
    let watch = watch(&url).await?;
    until(&watch, SLACK, "registered", |m| m.ids() == ["n0"]).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_ttl_then_sigcont_registers_with_a_new_epoch() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let server = start_node(&url, &dir.path().join("n0"), Some("n0"), &[])?;
    let hashes = prompt_hashes(3, 20, 16);
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, BLOCK as u64)).await?;
    put_chain(&mut client, &session, &hashes, BLOCK).await?;
    let watch = watch(&url).await?;
    let first = until(&watch, SLACK, "registered", |m| m.ids() == ["n0"]).await;

    server.signal(SIGSTOP)?;
    until(&watch, TTL + SLACK, "gone while frozen", |m| {
        m.members.is_empty()
    })
    .await;
    server.signal(SIGCONT)?;
    let back = until(&watch, TTL + SLACK, "back with a new epoch", |m| {
        epoch(m, "n0") > epoch(&first, "n0")
    })
    .await;
    assert_eq!(back.members["n0"].grpc, server.grpc.to_string());
    assert!(server.log().contains("registering again with a new epoch"));
    // Still the same process, with its blocks.
    assert_eq!(hits(&server, &hashes).await?, hashes.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_the_servers_serve_on_and_register_again_when_it_returns() -> anyhow::Result<()> {
    let Some(mut etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let s0 = start_node(&url, &dir.path().join("n0"), Some("n0"), &[])?;
    let s1 = start_node(&url, &dir.path().join("n1"), Some("n1"), &[])?;
    let watch = watch(&url).await?;
    let before = until(&watch, SLACK, "two members", |m| m.members.len() == 2).await;
    let hashes = prompt_hashes(4, 100, 16);
    let by_owner = put_by_owner(&[&s0, &s1], &before, &hashes).await?;

    etcd.kill()?;
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    // The data path works on the last membership; known namespaces too.
    assert_eq!(watch.current().members, before.members);
    for s in [&s0, &s1] {
        let owned = &by_owner[s.node.as_deref().expect("node")];
        assert_eq!(hits(s, owned).await?, owned.len());
    }
    // A new namespace cannot be made cluster-wide now.
    let mut client = s0.client().await?;
    let err = handshake(&mut client, "new-ns", config(16, BLOCK as u64))
        .await
        .expect_err("etcd down");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("unreachable"), "{err}");

    // Back with its data: the same registrations (the leases held).
    etcd.restart(true)?;
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let m = until(&watch, SLACK, "both still there", |m| m.members.len() == 2).await;
    assert_eq!(epoch(&m, "n0"), epoch(&before, "n0"));
    assert_eq!(epoch(&m, "n1"), epoch(&before, "n1"));
    handshake(&mut client, "new-ns", config(16, BLOCK as u64)).await?;

    // Back without its data: every node registers again.
    etcd.restart(false)?;
    let m = until(&watch, TTL * 2 + SLACK, "both registered again", |m| {
        epoch(m, "n0") > epoch(&before, "n0") && epoch(m, "n1") > epoch(&before, "n1")
    })
    .await;
    assert_eq!(m.ids(), ["n0", "n1"]);
    for s in [&s0, &s1] {
        let owned = &by_owner[s.node.as_deref().expect("node")];
        assert_eq!(hits(s, owned).await?, owned.len());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_config_holds_across_servers() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let s0 = start_node(&url, &dir.path().join("n0"), Some("n0"), &[])?;
    let s1 = start_node(&url, &dir.path().join("n1"), Some("n1"), &[])?;
    let mut c0 = s0.client().await?;
    let mut c1 = s1.client().await?;
    let created = c0
        .handshake(kvtier_proto::v1::HandshakeRequest {
            namespace: "m".into(),
            config: Some(config(16, BLOCK as u64)),
            client_name: "test".into(),
        })
        .await?
        .into_inner();
    assert!(created.created);
    // The other server has never seen "m", and still refuses another config.
    let err = handshake(&mut c1, "m", config(32, BLOCK as u64))
        .await
        .expect_err("mismatch on the other server");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let msg = err.message();
    assert!(
        msg.contains("differs in block_tokens")
            && msg.contains("block_tokens=16")
            && msg.contains("block_tokens=32"),
        "{msg}"
    );
    // The same config is accepted there, and its first one there creates it locally.
    handshake(&mut c1, "m", config(16, BLOCK as u64)).await?;
    // A mismatch on the server that created it: refused as before clusters.
    let err = handshake(&mut c0, "m", config(16, 2 * BLOCK as u64))
        .await
        .expect_err("mismatch");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("differs in block_bytes"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_client_fans_out_and_a_dead_shard_is_only_misses() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let mut servers: Vec<ServerProcess> = (0..3)
        .map(|i| {
            start_node(
                &url,
                &dir.path().join(format!("n{i}")),
                Some(&format!("n{i}")),
                &[],
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let observer = watch(&url).await?;
    until(&observer, SLACK, "three members", |m| m.members.len() == 3).await;
    let client = sharded(&url, ShardedOptions::default()).await?;
    let (m, _) = client_membership(&client, 3).await;
    let hashes = prompt_hashes(5, 300, 16);
    let blocks: Vec<BlockData> = hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| BlockData {
            hash: h,
            parent_hash: i.checked_sub(1).map(|p| hashes[p]),
            payload: payload_for(h, BLOCK),
        })
        .collect();
    let put = client.put(blocks).await;
    assert_eq!((put.acknowledged, put.unstored), (300, 0), "{put:?}");
    // Each block is on its owner, as every client computes it.
    let placement = m.placement();
    for s in &servers {
        let id = s.node.as_deref().expect("node");
        let owned: Vec<u64> = hashes
            .iter()
            .copied()
            .filter(|&h| placement.owner(h).is_some_and(|o| o.id == id))
            .collect();
        assert!(!owned.is_empty());
        assert_eq!(hits(s, &owned).await?, owned.len(), "{id} holds its share");
    }
    let got = client.get(&hashes).await;
    for (b, &h) in got.iter().zip(&hashes) {
        assert_eq!(b.as_ref(), Some(&payload_for(h, BLOCK)), "{h:#x}");
    }
    assert_eq!(client.lookup_prefix(&hashes).await, hashes.len());

    // kill -9 one shard: its blocks are misses at once, never an error.
    servers[1].kill9()?;
    let on_dead = |h: u64| placement.owner(h).is_some_and(|o| o.id == "n1");
    let got = client.get(&hashes).await;
    for (b, &h) in got.iter().zip(&hashes) {
        if on_dead(h) {
            assert!(b.is_none(), "a dead shard's block {h:#x} served");
        } else {
            assert_eq!(b.as_ref(), Some(&payload_for(h, BLOCK)));
        }
    }
    let first_dead = hashes
        .iter()
        .position(|&h| on_dead(h))
        .expect("n1 owns some");
    assert_eq!(client.lookup_prefix(&hashes).await, first_dead);
    // Once it has left the membership its hashes have new owners (misses
    // there); the others still hit.
    until(&observer, TTL + SLACK, "n1 gone", |m| {
        m.ids() == ["n0", "n2"]
    })
    .await;
    client_membership(&client, 2).await;
    let got = client.get(&hashes).await;
    let served = got.iter().filter(|b| b.is_some()).count();
    assert_eq!(served, hashes.iter().filter(|&&h| !on_dead(h)).count());
    Ok(())
}

/// Waits until the client's own watch sees `n` members.
async fn client_membership(client: &ShardedClient, n: usize) -> (Arc<Membership>, bool) {
    let deadline = Instant::now() + SLACK;
    loop {
        let m = client.membership();
        if m.members.len() == n {
            return (m, true);
        }
        assert!(Instant::now() < deadline, "client sees {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocks of `hashes` with their test payloads, chained parent to child.
fn blocks_of(hashes: &[u64]) -> Vec<BlockData> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| BlockData {
            hash: h,
            parent_hash: i.checked_sub(1).map(|p| hashes[p]),
            payload: payload_for(h, BLOCK),
        })
        .collect()
}

/// Starts `n` nodes `n0..` and waits until `observer` sees them all.
async fn start_nodes<'a>(
    url: &str,
    dir: &std::path::Path,
    n: usize,
    extra: impl Fn(usize) -> Vec<&'a str>,
    observer: &MembershipWatch,
) -> anyhow::Result<Vec<ServerProcess>> {
    let servers = (0..n)
        .map(|i| {
            let extra = extra(i);
            start_node(
                url,
                &dir.join(format!("n{i}")),
                Some(&format!("n{i}")),
                &extra,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    until(observer, SLACK, "all members", |m| m.members.len() == n).await;
    Ok(servers)
}

/// Counts how many of `got` are the right bytes for `hashes` (a wrong
/// payload fails the test).
fn served(got: &[Option<bytes::Bytes>], hashes: &[u64]) -> usize {
    got.iter()
        .zip(hashes)
        .filter(|(b, &h)| match b {
            Some(b) => {
                assert_eq!(*b, payload_for(h, BLOCK), "wrong bytes for {h:#x}");
                true
            }
            None => false,
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_serves_reads_takes_no_writes_and_leaves_after_the_drain(
) -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let observer = watch(&url).await?;
    const DRAIN: Duration = Duration::from_secs(5);
    let mut servers = start_nodes(
        &url,
        dir.path(),
        3,
        |i| {
            if i == 1 {
                vec!["--cluster-drain-s", "5"]
            } else {
                vec![]
            }
        },
        &observer,
    )
    .await?;
    let options = ShardedOptions {
        copy_on_read: true,
        ..ShardedOptions::default()
    };
    let client = sharded(&url, options).await?;
    client_membership(&client, 3).await;
    let before = prompt_hashes(21, 300, 16);
    let put = client.put(blocks_of(&before)).await;
    assert_eq!((put.acknowledged, put.unstored), (300, 0), "{put:?}");
    let placement = client.membership().placement();
    let on_n1: Vec<u64> = before
        .iter()
        .copied()
        .filter(|&h| placement.owner(h).is_some_and(|o| o.id == "n1"))
        .collect();
    assert!(on_n1.len() > 50, "n1 owns {} of 300", on_n1.len());

    // SIGTERM: n1 turns draining and stays a member.
    let term = Instant::now();
    servers[1].signal(SIGTERM)?;
    let m = until(&observer, SLACK, "n1 draining", |m| {
        m.members
            .get("n1")
            .is_some_and(|n| n.state == kvtier_cluster::MemberState::Draining)
    })
    .await;
    assert_eq!(m.members.len(), 3);
    while client.membership().members.get("n1").map(|n| n.state)
        != Some(kvtier_cluster::MemberState::Draining)
    {
        assert!(term.elapsed() < DRAIN, "the client never saw n1 draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reads of everything, n1's blocks too, are served during the drain.
    let got = client.get(&before).await;
    assert_eq!(served(&got, &before), 300, "reads served while draining");
    assert!(
        term.elapsed() < DRAIN,
        "the reads were not made during the drain"
    );
    // New writes avoid n1 (all acknowledged, none on n1).
    let after = prompt_hashes(22, 300, 16);
    let put = client.put(blocks_of(&after)).await;
    assert_eq!((put.acknowledged, put.unstored), (300, 0), "{put:?}");
    assert_eq!(hits(&servers[1], &after).await?, 0, "a write reached n1");
    assert!(
        term.elapsed() < DRAIN,
        "the writes were not made during the drain"
    );

    // It leaves after the drain, not before, and exits cleanly.
    until(&observer, DRAIN + SLACK, "n1 gone after the drain", |m| {
        m.ids() == ["n0", "n2"]
    })
    .await;
    let left = term.elapsed();
    assert!(
        left >= DRAIN - Duration::from_millis(500),
        "left after {left:?}"
    );
    assert_eq!(servers[1].terminate()?, 0);
    assert!(servers[1].log().contains("draining"));

    // Copy-on-read moved what was read from n1 to the blocks' new owners:
    // every read served before the drain is served after n1 is gone.
    let deadline = Instant::now() + SLACK;
    while client.stats().copied < on_n1.len() as u64 {
        assert!(Instant::now() < deadline, "copies: {:?}", client.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client_membership(&client, 2).await;
    let got = client.get(&before).await;
    assert_eq!(served(&got, &before), 300, "a read lost after the drain");
    let got = client.get(&after).await;
    assert_eq!(served(&got, &after), 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_moves_a_quarter_and_second_owner_reads_hit_during_warm_up(
) -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let observer = watch(&url).await?;
    let _servers = start_nodes(&url, dir.path(), 3, |_| vec![], &observer).await?;
    let warm = sharded(&url, ShardedOptions::default()).await?;
    let copying = sharded(
        &url,
        ShardedOptions {
            copy_on_read: true,
            ..ShardedOptions::default()
        },
    )
    .await?;
    let no_warmup = sharded(
        &url,
        ShardedOptions {
            warmup: Duration::ZERO,
            ..ShardedOptions::default()
        },
    )
    .await?;
    for c in [&warm, &copying, &no_warmup] {
        client_membership(c, 3).await;
    }
    let hashes = prompt_hashes(31, 400, 16);
    let put = warm.put(blocks_of(&hashes)).await;
    assert_eq!((put.acknowledged, put.unstored), (400, 0), "{put:?}");
    let three = warm.membership().placement();

    let n3 = start_node(&url, &dir.path().join("n3"), Some("n3"), &[])?;
    until(&observer, SLACK, "four members", |m| m.members.len() == 4).await;
    for c in [&warm, &copying, &no_warmup] {
        client_membership(c, 4).await;
    }
    let four = warm.membership().placement();
    // 100k random hashes: the moved fraction is within 1 point of 1/4, all to n3.
    let mut rng = kvtier_testkit::rng::SplitMix64::new(16);
    let mut moved = 0;
    for _ in 0..100_000 {
        let k = rng.next_u64();
        let (a, b) = (
            three.owner(k).expect("owner"),
            four.owner(k).expect("owner"),
        );
        if a.id != b.id {
            assert_eq!(b.id, "n3");
            moved += 1;
        }
    }
    let fraction = moved as f64 / 100_000.0;
    assert!((fraction - 0.25).abs() < 0.01, "moved {fraction:.4}");
    let on_n3 = hashes
        .iter()
        .filter(|&&h| four.owner(h).is_some_and(|o| o.id == "n3"))
        .count();
    assert!(on_n3 > 50, "n3 owns {on_n3} of 400");
    // Nothing was copied in bulk: n3 holds none of them.
    assert_eq!(hits(&n3, &hashes).await?, 0);

    // Without a warm-up the moved blocks are misses on n3 ...
    let got = no_warmup.get(&hashes).await;
    assert_eq!(served(&got, &hashes), 400 - on_n3);
    // ... with it they are read from their previous owners.
    let got = warm.get(&hashes).await;
    assert_eq!(served(&got, &hashes), 400);
    assert_eq!(warm.stats().fallback_hits, on_n3 as u64);
    assert_eq!(warm.lookup_prefix(&hashes).await, 400);
    assert!(no_warmup.lookup_prefix(&hashes).await < 400);

    // Copy-on-read: the moved blocks land on n3, then hit without a fallback.
    let got = copying.get(&hashes).await;
    assert_eq!(served(&got, &hashes), 400);
    let deadline = Instant::now() + SLACK;
    while copying.stats().copied < on_n3 as u64 {
        assert!(Instant::now() < deadline, "copies: {:?}", copying.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hits(&n3, &hashes).await?, on_n3);
    let got = no_warmup.get(&hashes).await;
    assert_eq!(served(&got, &hashes), 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_shard_is_a_miss_within_the_call_timeout() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let observer = watch(&url).await?;
    // A long TTL: the frozen node stays a member during the test.
    let servers = (0..2)
        .map(|i| {
            ServerProcess::start(
                &dir.path().join(format!("n{i}")),
                &[
                    "--cluster",
                    &url,
                    "--node-id",
                    &format!("n{i}"),
                    "--cluster-lease-ttl-s",
                    "60",
                ],
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    until(&observer, SLACK, "two members", |m| m.members.len() == 2).await;
    let client = sharded(
        &url,
        ShardedOptions {
            call_timeout: Duration::from_secs(1),
            ..ShardedOptions::default()
        },
    )
    .await?;
    client_membership(&client, 2).await;
    let hashes = prompt_hashes(41, 100, 16);
    client.put(blocks_of(&hashes)).await;
    let placement = client.membership().placement();
    let on_n1 = hashes
        .iter()
        .filter(|&&h| placement.owner(h).is_some_and(|o| o.id == "n1"))
        .count();
    servers[1].signal(SIGSTOP)?;
    let started = Instant::now();
    let got = client.get(&hashes).await;
    let took = started.elapsed();
    servers[1].signal(SIGCONT)?;
    assert_eq!(served(&got, &hashes), 100 - on_n1);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(client.stats().failed_calls >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_sees_blocks_on_every_shard_and_drops_a_killed_one() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let observer = watch(&url).await?;
    let mut servers = start_nodes(&url, dir.path(), 3, |_| vec![], &observer).await?;
    let client = sharded(&url, ShardedOptions::default()).await?;
    client_membership(&client, 3).await;
    let cfg = config(16, BLOCK as u64);
    let block_bytes = cfg.block_bytes.to_string();
    let router = RouterProcess::start(
        &dir.path().join("router.log"),
        &[
            "--cluster",
            &url,
            "--worker",
            "w0=http://127.0.0.1:9@http://127.0.0.1:9",
            "--model",
            &cfg.model,
            "--namespace",
            "ns",
            "--block-tokens",
            "16",
            "--block-bytes",
            &block_bytes,
            "--kv-layout",
            &cfg.kv_layout,
        ],
    )?;
    let chain = prompt_hashes(51, 60, 16);
    let put = client.put(blocks_of(&chain)).await;
    assert_eq!(put.acknowledged, 60, "{put:?}");
    let placement = client.membership().placement();
    let owners: std::collections::BTreeSet<String> = chain
        .iter()
        .filter_map(|&h| placement.owner(h).map(|o| o.id.clone()))
        .collect();
    assert_eq!(owners.len(), 3, "the chain spans every shard");

    let mut grpc = router.grpc_client().await?;
    let ask = |hashes: Vec<u64>| FindMatchesRequest {
        prefix: Some(PrefixQuery {
            model: cfg.model.clone(),
            hashes,
            ..Default::default()
        }),
    };
    let deadline = Instant::now() + SLACK;
    loop {
        let m = grpc.find_matches(ask(chain.clone())).await?.into_inner();
        if m.cache_prefix_blocks == 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router sees {} of 60",
            m.cache_prefix_blocks
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // kill -9 the shard that owns the earliest block after the first one.
    let victim = placement.owner(chain[1]).expect("owner").id.clone();
    let first_lost = chain
        .iter()
        .position(|&h| placement.owner(h).is_some_and(|o| o.id == victim))
        .expect("victim owns some");
    let k = servers
        .iter()
        .position(|s| s.node.as_deref() == Some(victim.as_str()))
        .expect("victim server");
    let killed = Instant::now();
    servers[k].kill9()?;
    let deadline = killed + TTL + SLACK;
    let dropped_after = loop {
        let m = grpc.find_matches(ask(chain.clone())).await?.into_inner();
        if m.cache_prefix_blocks as usize == first_lost {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the router still sees {} (expected {first_lost} once {victim} left)",
            m.cache_prefix_blocks
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(router.log().contains("its blocks dropped from the index"));
    eprintln!("router dropped the killed shard after {dropped_after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_two_agents_a_block_offloaded_by_a_is_onboarded_bit_exact_by_b(
) -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let shm = kvtier_testkit::dir::shm_tempdir()?;
    let observer = watch(&url).await?;
    let servers = start_nodes(&url, dir.path(), 3, |_| vec![], &observer).await?;
    // Their --server points nowhere: only the cluster can serve them.
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let agent = |name: &str| {
        AgentProcess::start_url(
            &dir.path().join(format!("{name}.log")),
            &nowhere,
            &["--worker-id", name, "--cluster", &url],
        )
    };
    let (a, b) = (agent("A")?, agent("B")?);
    let (pool_a, pool_b) = (shm.path().join("pool-a"), shm.path().join("pool-b"));
    const POOL: [&str; 4] = ["--blocks", "160", "--block-bytes", "65536"];
    let mut args = POOL.to_vec();
    args.extend(["compute", "--prompt-seed", "9", "--prompt-blocks", "30"]);
    let out = sim_engine(&a.endpoint(), &pool_a, &args)?;
    assert_eq!(out.get("stored").map(String::as_str), Some("30"), "{out:?}");

    // The blocks spread over the shards, each on its owner.
    let sim = kvtier_proto::v1::HashingConfig {
        block_tokens: 16,
        seed: kvtier_proto::hashing::DEFAULT_SEED,
        salt: String::new(),
        block_bytes: 65536,
        kv_layout: "sim:layers=1,kv=2".into(),
        model: "sim-model".into(),
    };
    let hashes = prompt_hashes(9, 30, 16);
    let m = observer.current();
    let placement = m.placement();
    let mut shards_used = 0;
    for s in &servers {
        let id = s.node.as_deref().expect("node");
        let owned: Vec<u64> = hashes
            .iter()
            .copied()
            .filter(|&h| placement.owner(h).is_some_and(|o| o.id == id))
            .collect();
        let mut c = s.client().await?;
        let session = handshake(&mut c, "sim", sim.clone()).await?;
        let found = get_all(&mut c, &session, &owned)
            .await?
            .iter()
            .filter(|b| b.found)
            .count();
        assert_eq!(found, owned.len(), "{id} holds what it owns");
        shards_used += usize::from(!owned.is_empty());
    }
    assert_eq!(shards_used, 3, "30 blocks over 3 shards");

    // Agent B onboards them into other pool blocks: bit for bit A's bytes.
    let mut args = POOL.to_vec();
    args.extend([
        "onboard",
        "--prompt-seed",
        "9",
        "--prompt-blocks",
        "34",
        "--first-block",
        "100",
    ]);
    let out = sim_engine(&b.endpoint(), &pool_b, &args)?;
    let field = |k: &str| out.get(k).cloned().unwrap_or_default();
    assert_eq!(
        (field("loaded_prefix"), field("verified"), field("degraded")),
        ("30".to_string(), "30".to_string(), "0".to_string()),
        "{out:?}"
    );
    let expected: Vec<u8> = hashes
        .iter()
        .flat_map(|&h| payload_for(h, 65536).to_vec())
        .collect();
    assert_eq!(pool_blocks(&pool_b, 100, 30, 65536)?, expected);
    assert!(!a.log().contains("cache server unreachable"));
    Ok(())
}

/// Requests of `method` (`put`, `data_put`, ...) a server has answered.
fn served_requests(server: &ServerProcess, method: &str) -> anyhow::Result<f64> {
    Ok(metric_sum(
        &server.metrics_text()?,
        "kvtier_request_duration_seconds_count",
        &[("method", method)],
    ))
}

/// The simulated engine's hashing configuration (kvtier-sim-engine's pools).
fn sim_hashing() -> kvtier_proto::v1::HashingConfig {
    kvtier_proto::v1::HashingConfig {
        block_tokens: 16,
        seed: kvtier_proto::hashing::DEFAULT_SEED,
        salt: String::new(),
        block_bytes: 65536,
        kv_layout: "sim:layers=1,kv=2".into(),
        model: "sim-model".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_cluster_data_plane_move_payloads_over_each_owners_data_plane(
) -> anyhow::Result<()> {
    use kvtier_proto::v1::{attach_pool_request, AttachPoolRequest, OnboardRequest};
    use kvtier_proto::v1::{PoolLayout, SharedMemoryPool};

    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let shm = kvtier_testkit::dir::shm_tempdir()?;
    let observer = watch(&url).await?;
    let mut servers = start_nodes(&url, dir.path(), 3, |_| vec![], &observer).await?;
    let m = observer.current();
    assert!(
        m.members.values().all(|r| r.data.is_some()),
        "every record carries its data-plane address: {m:?}"
    );
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let agent = |name: &str| {
        AgentProcess::start_url(
            &dir.path().join(format!("{name}.log")),
            &nowhere,
            &[
                "--worker-id",
                name,
                "--cluster",
                &url,
                "--cluster-data-plane",
            ],
        )
    };
    let (a, b) = (agent("A")?, agent("B")?);
    let (pool_a, pool_b) = (shm.path().join("pool-a"), shm.path().join("pool-b"));
    const POOL: [&str; 4] = ["--blocks", "160", "--block-bytes", "65536"];
    let mut args = POOL.to_vec();
    args.extend(["compute", "--prompt-seed", "9", "--prompt-blocks", "30"]);
    let out = sim_engine(&a.endpoint(), &pool_a, &args)?;
    assert_eq!(out.get("stored").map(String::as_str), Some("30"), "{out:?}");

    // Each block went to its owner as one data-plane PUT; no gRPC Put at all.
    let hashes = prompt_hashes(9, 30, 16);
    let placement = m.placement();
    let owner_of = |h: u64| placement.owner(h).map(|o| o.id.clone());
    for s in &servers {
        let id = s.node.clone().expect("node");
        let owned = hashes.iter().filter(|&&h| owner_of(h) == Some(id.clone()));
        let owned = owned.count() as f64;
        assert!(owned > 0.0, "30 blocks over 3 shards: {id} owns none");
        assert_eq!(served_requests(s, "data_put")?, owned, "{id}: {}", s.log());
        assert_eq!(served_requests(s, "put")?, 0.0, "{id}: a gRPC Put");
    }

    // Agent B onboards them, bit for bit, over the data planes too.
    let onboard_args = |first: &'static str| {
        let mut args = POOL.to_vec();
        args.extend([
            "onboard",
            "--prompt-seed",
            "9",
            "--prompt-blocks",
            "30",
            "--first-block",
            first,
        ]);
        args
    };
    let out = sim_engine(&b.endpoint(), &pool_b, &onboard_args("100"))?;
    let field = |out: &std::collections::HashMap<String, String>, k: &str| {
        out.get(k).cloned().unwrap_or_default()
    };
    assert_eq!(
        (field(&out, "loaded_prefix"), field(&out, "verified")),
        ("30".to_string(), "30".to_string()),
        "{out:?}"
    );
    let expected: Vec<u8> = hashes
        .iter()
        .flat_map(|&h| payload_for(h, 65536).to_vec())
        .collect();
    assert_eq!(pool_blocks(&pool_b, 100, 30, 65536)?, expected);
    for s in &servers {
        assert!(served_requests(s, "data_get")? >= 1.0, "{:?}", s.node);
        assert_eq!(served_requests(s, "get")?, 0.0, "{:?}: a gRPC Get", s.node);
    }
    // And every shard holds its share (read back over gRPC).
    for s in &servers {
        let id = s.node.clone().expect("node");
        let owned: Vec<u64> = hashes
            .iter()
            .copied()
            .filter(|&h| owner_of(h) == Some(id.clone()))
            .collect();
        let mut c = s.client().await?;
        let session = handshake(&mut c, "sim", sim_hashing()).await?;
        let found = get_all(&mut c, &session, &owned).await?;
        assert_eq!(
            found.iter().filter(|b| b.found).count(),
            owned.len(),
            "{id}"
        );
    }

    // kill -9 the owner of a block in the middle of the prompt: B onboards
    // the survivors and reports the dead shard's blocks as misses, no error.
    let victim = owner_of(hashes[1]).expect("owner");
    let k = servers
        .iter()
        .position(|s| s.node.as_deref() == Some(victim.as_str()))
        .expect("victim");
    servers[k].kill9()?;
    let on_dead = |h: &u64| owner_of(*h) == Some(victim.clone());
    let first_dead = hashes.iter().position(on_dead).expect("victim owns some");
    let out = sim_engine(&b.endpoint(), &pool_b, &onboard_args("50"))?;
    assert_eq!(
        (field(&out, "loaded_prefix"), field(&out, "degraded")),
        (first_dead.to_string(), "0".to_string()),
        "the prefix up to the dead shard's first block, not degraded: {out:?}"
    );

    // The survivors first: every one loaded, then the dead shard's misses.
    let (alive, dead): (Vec<u64>, Vec<u64>) = hashes.iter().partition(|h| !on_dead(h));
    let mut engine = b.client().await?;
    let attached = engine
        .attach_pool(AttachPoolRequest {
            namespace: "sim".into(),
            hashing: Some(sim_hashing()),
            layout: Some(PoolLayout {
                num_blocks: 160,
                block_bytes: 65536,
                ..Default::default()
            }),
            memory: Some(attach_pool_request::Memory::SharedMemory(
                SharedMemoryPool {
                    path: pool_b.display().to_string(),
                    offset: 0,
                },
            )),
            engine_name: "test".into(),
        })
        .await?
        .into_inner();
    let asked: Vec<u64> = alive.iter().chain(&dead).copied().collect();
    let answer = engine
        .onboard(OnboardRequest {
            pool_id: attached.pool_id,
            hashes: asked.clone(),
            block_ids: (0..asked.len() as u64).collect(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let want: Vec<bool> = asked.iter().map(|h| !on_dead(h)).collect();
    assert_eq!(answer.loaded, want, "{answer:?}");
    assert_eq!(
        answer.degraded_reason, "",
        "a dead shard is misses, not an error"
    );
    let expected: Vec<u8> = alive
        .iter()
        .flat_map(|&h| payload_for(h, 65536).to_vec())
        .collect();
    assert_eq!(
        pool_blocks(&pool_b, 0, alive.len() as u64, 65536)?,
        expected
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_data_address_is_reached_over_grpc() -> anyhow::Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let observer = watch(&url).await?;
    // n2 serves no data plane: its record has no data address.
    let servers = start_nodes(
        &url,
        dir.path(),
        3,
        |i| match i {
            2 => vec!["--data-listen", "off"],
            _ => vec![],
        },
        &observer,
    )
    .await?;
    let m = observer.current();
    assert!(m.members["n2"].data.is_none() && m.members["n0"].data.is_some());
    let options = ShardedOptions {
        data_plane: true,
        ..ShardedOptions::default()
    };
    let client = sharded(&url, options).await?;
    client_membership(&client, 3).await;
    let hashes = prompt_hashes(6, 300, 16);
    let put = client.put(blocks_of(&hashes)).await;
    assert_eq!((put.acknowledged, put.unstored), (300, 0), "{put:?}");
    let got = client.get(&hashes).await;
    assert_eq!(served(&got, &hashes), 300);

    let placement = m.placement();
    let on_n2 = hashes
        .iter()
        .filter(|&&h| placement.owner(h).is_some_and(|o| o.id == "n2"))
        .count() as u64;
    assert!(on_n2 > 0 && on_n2 < 300);
    let stats = client.stats();
    // Each block once written and once read, over its owner's route.
    assert_eq!(stats.grpc_blocks, 2 * on_n2, "{stats:?}");
    assert_eq!(stats.data_plane_blocks, 2 * (300 - on_n2), "{stats:?}");
    assert!(stats.data_connections >= 2, "{stats:?}");
    for s in &servers {
        let (grpc, data) = (served_requests(s, "put")?, served_requests(s, "data_put")?);
        if s.node.as_deref() == Some("n2") {
            assert!(
                grpc >= 1.0 && data == 0.0,
                "n2: put {grpc}, data_put {data}"
            );
        } else {
            assert!(
                grpc == 0.0 && data >= 1.0,
                "{:?}: put {grpc}, data_put {data}",
                s.node
            );
        }
    }
    // The connections are kept: a second round opens none.
    let opened = stats.data_connections;
    assert_eq!(served(&client.get(&hashes).await, &hashes), 300);
    assert_eq!(client.stats().data_connections, opened);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_data_plane_is_refused_over_tls_and_without_a_cluster() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("agent.log");
    let ca = dir.path().join("ca.pem");
    for (args, says) in [
        (
            vec![
                "--cluster",
                "etcd://127.0.0.1:2379",
                "--cluster-data-plane",
                "--server-ca",
                ca.to_str().expect("utf-8"),
            ],
            "--cluster-data-plane moves payloads in plaintext",
        ),
        (vec!["--cluster-data-plane"], "--cluster"),
    ] {
        let Err(err) = AgentProcess::start_url(&log, "http://127.0.0.1:1", &args) else {
            panic!("{args:?} was accepted");
        };
        let text = format!("{err:#}");
        assert!(text.contains(says), "{args:?}: {text}");
    }
    Ok(())
}

/// The tokens of a tenant's worker and router, both `rw` on `ns`.
fn tenant_tokens(dir: &std::path::Path) -> anyhow::Result<String> {
    let line = |who: &str, token: &str| {
        format!(
            "{who} {} tenant=acme ns=rw\n",
            kvtier_security::token_digest_line(token)
        )
    };
    let file = dir.join("tokens");
    std::fs::write(
        &file,
        line("worker", "tok-worker") + &line("router", "tok-router"),
    )?;
    Ok(file.display().to_string())
}

fn bearer(token: &str) -> anyhow::Result<kvtier_security::ServerClient> {
    Ok(kvtier_security::ServerClientArgs {
        server_token: Some(token.to_string()),
        ..Default::default()
    }
    .resolve_for_cluster()?)
}

/// `kvtier_agents_live` of namespace `ns` on `server`.
fn agents_live(server: &ServerProcess) -> anyhow::Result<f64> {
    Ok(metric_sum(
        &server.metrics_text()?,
        "kvtier_agents_live",
        &[("namespace", "ns")],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_hashes_with_the_clusters_seed_and_its_agent_calls_reach_every_shard(
) -> anyhow::Result<()> {
    use kvtier_proto::v1::cache_service_client::CacheServiceClient;
    use kvtier_proto::v1::{
        CallEnding, HandshakeRequest, RouterEndAgentRequest, RouterHintRequest,
        RouterRegisterAgentRequest,
    };

    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let tokens = tenant_tokens(dir.path())?;
    // A tenant's namespace: the servers hash it with a seed that folds the
    // tenant in, which the router cannot compute from its flags. Disk only,
    // so a restarted shard still holds its blocks.
    let node_args = |_| vec!["--tokens-file", tokens.as_str(), "--host-capacity", "0"];
    let observer = watch(&url).await?;
    let mut servers = start_nodes(&url, dir.path(), 3, node_args, &observer).await?;
    let cfg = config(16, BLOCK as u64);

    // The writer's seed, as a worker's agent gets it from its handshake.
    let worker = bearer("tok-worker")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", servers[0].grpc))?
        .connect()
        .await?;
    let seed = CacheServiceClient::new(worker.intercept(channel))
        .handshake(HandshakeRequest {
            namespace: "ns".into(),
            config: Some(cfg.clone()),
            client_name: "test".into(),
        })
        .await?
        .into_inner()
        .effective_seed;
    let local = kvtier_proto::hashing::effective_seed(cfg.seed, &cfg.salt);
    assert_ne!(
        seed, local,
        "the tenant's seed differs from the router's local one"
    );
    let tokens_of_prompt: Vec<u32> = (0..60 * 16u32).map(|i| i.wrapping_mul(7919) + 3).collect();
    let chain =
        kvtier_proto::hashing::BlockHasher::new(16, seed).sequence_hashes(&tokens_of_prompt);
    let writer = ShardedClient::with_options(
        watch(&url).await?,
        "ns",
        cfg.clone(),
        "test",
        ShardedOptions {
            security: worker,
            ..ShardedOptions::default()
        },
    );
    client_membership(&writer, 3).await;
    let put = writer.put(blocks_of(&chain)).await;
    assert_eq!(put.acknowledged, 60, "{put:?}");
    let placement = writer.membership().placement();
    let on = |id: &str| {
        chain
            .iter()
            .filter(|&&h| placement.owner(h).is_some_and(|o| o.id == id))
            .count()
    };
    assert!(
        servers
            .iter()
            .all(|s| on(s.node.as_deref().unwrap_or("")) > 0),
        "the chain spans every shard"
    );

    let block_bytes = cfg.block_bytes.to_string();
    let router_args = |token: &'static str, block_bytes: &str| {
        let fixed: &[&str] = &[
            "--cluster",
            &url,
            "--server-token",
            token,
            "--worker",
            "w0=http://127.0.0.1:9@http://127.0.0.1:9",
            "--model",
            &cfg.model,
            "--namespace",
            "ns",
            "--block-tokens",
            "16",
            "--kv-layout",
            &cfg.kv_layout,
            "--block-bytes",
        ];
        let mut args: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
        args.push(block_bytes.to_string());
        args
    };
    let start_router = |name: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RouterProcess::start(&dir.path().join(name), &args)
    };
    // Refusals are the cluster's: another config, or a token the servers
    // do not know, stop the router at start with the reason.
    assert!(start_router("other.log", router_args("tok-router", "8192")).is_err());
    let log = std::fs::read_to_string(dir.path().join("other.log"))?;
    assert!(log.contains("refused namespace \"ns\""), "{log}");
    assert!(start_router("stranger.log", router_args("tok-nobody", &block_bytes)).is_err());
    let log = std::fs::read_to_string(dir.path().join("stranger.log"))?;
    assert!(log.contains("refused the router's credentials"), "{log}");

    let router = start_router("router.log", router_args("tok-router", &block_bytes))?;
    let mut grpc = router.grpc_client().await?;
    // Token ids, hashed by the router: only the cluster's seed finds them.
    let prefix = || PrefixQuery {
        model: cfg.model.clone(),
        token_ids: tokens_of_prompt.clone(),
        ..Default::default()
    };
    let deadline = Instant::now() + SLACK + SLACK;
    loop {
        let found = grpc
            .find_matches(FindMatchesRequest {
                prefix: Some(prefix()),
            })
            .await?
            .into_inner()
            .cache_prefix_blocks;
        if found == 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router finds {found} of 60 blocks by token ids:\n{}",
            router.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The lifecycle API reaches every shard.
    let registered = grpc
        .register_agent(RouterRegisterAgentRequest {
            model: cfg.model.clone(),
            agent_id: "coder-1".into(),
            priority: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(registered.created, "{registered:?}");
    for s in &servers {
        assert_eq!(agents_live(s)?, 1.0, "{:?} knows the agent", s.node);
    }
    let hint = |ending: CallEnding| RouterHintRequest {
        model: cfg.model.clone(),
        agent_id: "coder-1".into(),
        prefix: Some(prefix()),
        ending: ending as i32,
        ..Default::default()
    };
    let resident = grpc
        .hint(hint(CallEnding::ToolCall))
        .await?
        .into_inner()
        .resident_blocks;
    assert_eq!(resident, 60, "each shard counts the blocks it holds");
    for s in &servers {
        let text = s.metrics_text()?;
        let hints = metric_sum(
            &text,
            "kvtier_agent_hints_total",
            &[("ending", "tool_call")],
        );
        assert_eq!(hints, 1.0, "{:?} got the hint", s.node);
    }

    // A shard killed: the call still answers, without that shard's blocks.
    let victim = placement.owner(chain[1]).expect("owner").id.clone();
    let k = servers
        .iter()
        .position(|s| s.node.as_deref() == Some(victim.as_str()))
        .expect("victim server");
    servers[k].kill9()?;
    let asked = Instant::now();
    let resident = grpc
        .hint(hint(CallEnding::EndOfTurn))
        .await?
        .into_inner()
        .resident_blocks;
    let took = asked.elapsed();
    assert_eq!(resident as usize, 60 - on(&victim), "took {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Restarted (a new epoch), it learns the live agent at the next hint.
    let data = dir.path().join(format!("n{k}"));
    servers[k] = start_node(&url, &data, Some(&victim), &node_args(k))?;
    let deadline = Instant::now() + TTL + SLACK + SLACK;
    loop {
        let resident = grpc
            .hint(hint(CallEnding::ToolCall))
            .await?
            .into_inner()
            .resident_blocks;
        if resident == 60 && agents_live(&servers[k])? == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted shard: {} live agents, {resident} of 60 resident",
            agents_live(&servers[k])?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ended = grpc
        .end_agent(RouterEndAgentRequest {
            model: cfg.model.clone(),
            agent_id: "coder-1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(ended.ended, 1);
    for s in &servers {
        assert_eq!(agents_live(s)?, 0.0, "{:?} ended the agent", s.node);
    }
    assert!(!router.log().contains("hashing with the local seed"));
    Ok(())
}
