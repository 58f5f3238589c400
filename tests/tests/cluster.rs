//! Several real `kvtier-server`s as one cluster (`--cluster etcd://...`)
//! on one real etcd, all on loopback: registration, a node killed, frozen
//! or restarted, etcd lost and back (with and without its data), bad input,
//! and namespace configurations that hold cluster-wide.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_cluster::{Membership, MembershipWatch, ShardedClient};
use kvtier_integration_tests::cluster::{start_etcd, start_node, watch, TTL_S};
use kvtier_integration_tests::*;
use kvtier_proto::v1::BlockData;
use kvtier_testkit::process::signal::{SIGCONT, SIGSTOP};
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
    let client = ShardedClient::new(watch(&url).await?, "ns", config(16, BLOCK as u64), "test");
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
