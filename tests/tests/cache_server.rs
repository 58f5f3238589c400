//! The real `kvtier-server` binary on loopback, driven over gRPC.

use std::time::Duration;

use kvtier_integration_tests::*;
use kvtier_proto::v1::{
    GetRequest, LookupRequest, PutRequest, StatsRequest, Tier, WatchEventsRequest,
};
use tonic::Code;

const KIB: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_lookup_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "llama", config(16, 64 * KIB as u64)).await?;
    let hashes = prompt_hashes(7, 16, 16);
    let put = put_chain(&mut client, &session, &hashes, 64 * KIB).await?;
    assert_eq!((put.stored, put.already_present), (16, 0));
    assert!(put.placements.iter().all(|p| p.tier == Tier::Host as i32));
    // write-once: the same blocks again are skipped
    let again = put_chain(&mut client, &session, &hashes[..4], 64 * KIB).await?;
    assert_eq!((again.stored, again.already_present), (0, 4));

    let got = get_all(&mut client, &session, &hashes).await?;
    assert_eq!(got.len(), 16);
    for (i, block) in got.iter().enumerate() {
        assert!(block.found, "block {i} missing");
        assert_eq!(block.hash, hashes[i]);
        assert_eq!(block.payload, payload_for(hashes[i], 64 * KIB));
        assert_eq!(block.parent_hash, i.checked_sub(1).map(|p| hashes[p]));
    }

    // a prefix that diverges after 10 blocks
    let mut probe = hashes[..10].to_vec();
    probe.extend(prompt_hashes(99, 3, 16));
    let lookup = client
        .lookup(LookupRequest {
            session_id: session.clone(),
            hashes: probe,
        })
        .await?
        .into_inner();
    assert_eq!(lookup.prefix_len, 10);
    assert_eq!(lookup.tiers.len(), 13);
    assert_eq!(lookup.tiers[12], Tier::None as i32);

    // stop_at_first_miss ends a prefix read at the first hole
    let mut holey = hashes[..3].to_vec();
    holey.push(12345);
    holey.push(hashes[5]);
    let mut stream = client
        .get(GetRequest {
            session_id: session.clone(),
            hashes: holey,
            stop_at_first_miss: true,
            agent_id: String::new(),
        })
        .await?
        .into_inner();
    let mut found = Vec::new();
    while let Some(m) = stream.message().await? {
        found.push(m.found);
    }
    assert_eq!(found, vec![true, true, true, false, false]);

    let stats = client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.namespaces.len(), 1);
    assert_eq!(stats.namespaces[0].blocks, 16);

    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(
            &metrics,
            "kvtier_block_hits_total",
            &[("op", "get"), ("namespace", "llama")]
        ),
        19.0
    );
    assert_eq!(
        metric_sum(&metrics, "kvtier_block_misses_total", &[("op", "get")]),
        2.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_mismatch_is_refused_and_data_needs_a_session() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let mut client = server.client().await?;
    handshake(&mut client, "ns", config(16, 4096)).await?;

    let err = handshake(&mut client, "ns", config(64, 4096))
        .await
        .expect_err("block size mismatch must be refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("block_tokens=16"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("block_tokens=64"),
        "{}",
        err.message()
    );

    let mut salted = config(16, 4096);
    salted.salt = "lora-a".into();
    let err = handshake(&mut client, "ns", salted)
        .await
        .expect_err("salt mismatch");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("salt"), "{}", err.message());

    // no data call before a handshake
    let err = client
        .lookup(LookupRequest {
            session_id: String::new(),
            hashes: vec![1],
        })
        .await
        .expect_err("no session");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("Handshake"), "{}", err.message());
    let err = client
        .lookup(LookupRequest {
            session_id: "made-up".into(),
            hashes: vec![1],
        })
        .await
        .expect_err("bad session");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(
            &metrics,
            "kvtier_handshakes_total",
            &[("result", "mismatch")]
        ),
        2.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--allowed-namespaces",
            "alpha,beta",
            "--max-block-bytes",
            "1MiB",
        ],
    )?;
    let mut client = server.client().await?;

    let err = handshake(&mut client, "gamma", config(16, 4096))
        .await
        .expect_err("unknown namespace");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("alpha, beta"), "{}", err.message());

    let err = handshake(&mut client, "alpha", config(0, 4096))
        .await
        .expect_err("zero block_tokens");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = handshake(&mut client, "alpha", config(16, 2 << 20))
        .await
        .expect_err("block_bytes over the limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max-block-bytes"),
        "{}",
        err.message()
    );
    let err = handshake(&mut client, "bad name!", config(16, 4096))
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);

    let session = handshake(&mut client, "alpha", config(16, 4096)).await?;
    let err = client
        .lookup(LookupRequest {
            session_id: session.clone(),
            hashes: vec![],
        })
        .await
        .expect_err("empty hash list");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("empty"), "{}", err.message());
    let err = get_all(&mut client, &session, &[])
        .await
        .expect_err("empty get");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = get_all(&mut client, &session, &vec![1u64; 70_000])
        .await
        .expect_err("too many hashes");
    assert_eq!(err.code(), Code::InvalidArgument);

    // a block of the wrong size (oversized and undersized) is refused, nothing stored
    for len in [8192usize, 100] {
        let err = put_chain(&mut client, &session, &[42], len)
            .await
            .expect_err("wrong block size");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("block_bytes=4096"),
            "{}",
            err.message()
        );
    }
    let err = client
        .put(tokio_stream::iter(vec![PutRequest {
            session_id: session.clone(),
            block: None,
        }]))
        .await
        .expect_err("message without block");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .put(tokio_stream::iter(Vec::<PutRequest>::new()))
        .await
        .expect_err("empty stream");
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = client
        .watch_events(WatchEventsRequest {
            namespace: "nope".into(),
            snapshot: false,
        })
        .await
        .expect_err("unknown namespace");
    assert_eq!(err.code(), Code::NotFound);

    let stats = client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.namespaces[0].blocks, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_pressure_demotes_to_disk_within_host_capacity() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host_capacity = 4 << 20;
    let server = ServerProcess::start(&dir.path().join("data"), &["--host-capacity", "4MiB"])?;
    let mut client = server.client().await?;
    let block = 1 << 20;
    let session = handshake(&mut client, "ns", config(16, block as u64)).await?;
    let hashes = prompt_hashes(1, 20, 16);
    for chunk in hashes.chunks(5) {
        put_chain(&mut client, &session, chunk, block).await?;
        let stats = client.stats(StatsRequest {}).await?.into_inner();
        let host = stats
            .tiers
            .iter()
            .find(|t| t.tier == Tier::Host as i32)
            .expect("host tier");
        assert!(
            host.used_bytes <= host_capacity,
            "host tier over capacity: {host:?}"
        );
    }
    let stats = client.stats(StatsRequest {}).await?.into_inner();
    let blocks_in = |tier: Tier| {
        stats
            .tiers
            .iter()
            .find(|t| t.tier == tier as i32)
            .map(|t| t.blocks)
            .unwrap_or(0)
    };
    assert_eq!(blocks_in(Tier::Host), 4);
    assert_eq!(blocks_in(Tier::Disk), 16);
    let got = get_all(&mut client, &session, &hashes).await?;
    assert!(got.iter().all(|b| b.found));
    for (b, h) in got.iter().zip(&hashes) {
        assert_eq!(b.payload, payload_for(*h, block));
    }
    let metrics = server.metrics_text()?;
    assert!(
        metric_sum(
            &metrics,
            "kvtier_demotions_total",
            &[("from", "host"), ("to", "disk")]
        ) >= 16.0
    );
    assert!(metric_sum(&metrics, "kvtier_tier_bytes", &[("tier", "host")]) <= host_capacity as f64);
    assert!(metric_sum(&metrics, "kvtier_block_hits_total", &[("tier", "disk")]) >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_every_acknowledged_block_even_after_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // Host tier off: every acknowledged block is on disk (placement TIER_DISK).
    let args = ["--host-capacity", "0"];
    let block = 128 * KIB;
    let mut server = ServerProcess::start(&data, &args)?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, block as u64)).await?;
    let acked = prompt_hashes(3, 40, 16);
    let put = put_chain(&mut client, &session, &acked, block).await?;
    assert_eq!(put.placements.len(), acked.len(), "one placement per block");
    assert!(put.placements.iter().all(|p| p.tier == Tier::Disk as i32));

    // Start a slow stream and kill -9 the server in the middle of it.
    let inflight = prompt_hashes(4, 200, 16);
    let messages = put_messages(&session, &inflight, block);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut streaming_client = server.client().await?;
    let put_task = tokio::spawn(async move {
        streaming_client
            .put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let feeder = tokio::spawn(async move {
        for m in messages {
            if tx.send(m).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9()?;
    let result = put_task.await?;
    assert!(result.is_err(), "the stream must fail when the server dies");
    feeder.abort();

    let restarted = ServerProcess::start(&data, &args)?;
    let mut client = restarted.client().await?;
    let session = handshake(&mut client, "ns", config(16, block as u64)).await?;
    let got = get_all(&mut client, &session, &acked).await?;
    // zip stops at the shorter list: a reply short of blocks must not pass.
    assert_eq!(
        got.len(),
        acked.len(),
        "the reply has {} blocks for {} acknowledged",
        got.len(),
        acked.len()
    );
    for (b, h) in got.iter().zip(&acked) {
        assert!(b.found, "acknowledged block {h:#x} lost after kill -9");
        assert_eq!(b.payload, payload_for(*h, block), "torn block served");
    }
    // Unacknowledged blocks may or may not be there, but never torn.
    let got = get_all(&mut client, &session, &inflight).await?;
    assert_eq!(got.len(), inflight.len(), "one answer per in-flight block");
    let present = got.iter().filter(|b| b.found).count();
    for (b, h) in got.iter().zip(&inflight) {
        if b.found {
            assert_eq!(
                b.payload,
                payload_for(*h, block),
                "torn in-flight block served"
            );
        }
    }
    assert!(
        present < inflight.len(),
        "the kill came too late to test anything"
    );
    // The namespace config survived too: a mismatch is still refused.
    let err = handshake(&mut client, "ns", config(32, block as u64))
        .await
        .expect_err("config persisted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    Ok(())
}

/// Puts 12 blocks of 64 KiB into a server whose host tier holds 4, stops it
/// with SIGTERM, restarts it, and counts the blocks it serves again.
async fn blocks_kept_across_graceful_restart(extra: &[&str]) -> anyhow::Result<(usize, String)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut args = vec!["--host-capacity", "256KiB"];
    args.extend_from_slice(extra);
    let mut server = ServerProcess::start(&data, &args)?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, 64 * KIB as u64)).await?;
    let hashes = prompt_hashes(5, 12, 16);
    put_chain(&mut client, &session, &hashes, 64 * KIB).await?;
    drop(client);
    assert_eq!(server.terminate()?, 0, "log:\n{}", server.log());
    let log = server.log();
    assert!(log.contains("stopped cleanly"));

    let server = ServerProcess::start(&data, &["--host-capacity", "256KiB"])?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, 64 * KIB as u64)).await?;
    let got = get_all(&mut client, &session, &hashes).await?;
    for block in got.iter().filter(|b| b.found) {
        assert_eq!(
            block.payload,
            payload_for(block.hash, 64 * KIB),
            "wrong bytes after restart"
        );
    }
    Ok((got.iter().filter(|b| b.found).count(), log))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_spills_the_host_tier_to_disk() -> anyhow::Result<()> {
    let (kept, log) = blocks_kept_across_graceful_restart(&[]).await?;
    // 8 were demoted to disk while running; the 4 in the host tier were spilled at SIGTERM.
    assert_eq!(kept, 12, "log:\n{log}");
    assert!(
        log.contains("spilled to disk") && log.contains("kept=4"),
        "log:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_without_spill_keeps_only_disk_blocks() -> anyhow::Result<()> {
    let (kept, _) = blocks_kept_across_graceful_restart(&["--shutdown-spill-ms", "0"]).await?;
    assert_eq!(kept, 8, "4 blocks lived in the host tier only");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_disk_block_is_a_miss_never_returned() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let args = ["--host-capacity", "0"];
    let block = 64 * KIB;
    let mut server = ServerProcess::start(&data, &args)?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, block as u64)).await?;
    let hashes = prompt_hashes(11, 3, 16);
    put_chain(&mut client, &session, &hashes, block).await?;
    drop(client);
    assert_eq!(server.terminate()?, 0);

    // Flip one byte in the middle of block 1's payload, wherever RocksDB put it.
    let needle = payload_for(hashes[1], block);
    let needle = &needle[1000..1064];
    let mut corrupted = 0;
    for entry in std::fs::read_dir(&data)? {
        let path = entry?.path();
        let mut bytes = std::fs::read(&path)?;
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[pos + 10] ^= 0xff;
            std::fs::write(&path, &bytes)?;
            corrupted += 1;
        }
    }
    assert!(corrupted >= 1, "payload not found in the data directory");

    let server = ServerProcess::start(&data, &args)?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, block as u64)).await?;
    let got = get_all(&mut client, &session, &hashes).await?;
    assert!(got[0].found && got[2].found);
    assert_eq!(got[0].payload, payload_for(hashes[0], block));
    assert!(!got[1].found, "a corrupt block was returned");
    assert!(got[1].payload.is_empty());
    let stats = client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.checksum_failures, 1);
    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(&metrics, "kvtier_checksum_failures_total", &[]),
        1.0
    );
    // and it stays a miss
    let got = get_all(&mut client, &session, &hashes[1..2]).await?;
    assert!(!got[0].found);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_stream_stored_moved_removed_with_gap_free_ids() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--host-capacity", "8KiB", "--disk-capacity", "8KiB"],
    )?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "ns", config(16, 4096)).await?;
    let other = handshake(&mut client, "other", config(16, 4096)).await?;
    let mut events = client
        .watch_events(WatchEventsRequest {
            namespace: "ns".into(),
            snapshot: false,
        })
        .await?
        .into_inner();
    put_chain(&mut client, &other, &prompt_hashes(2, 3, 16), 4096).await?;
    put_chain(&mut client, &session, &prompt_hashes(1, 6, 16), 4096).await?;
    let mut seen = Vec::new();
    while seen.len() < 6 + 4 + 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await??
            .expect("stream open");
        assert_eq!(event.namespace, "ns");
        seen.push(event);
    }
    let ids: Vec<u64> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids,
        (1..=12).collect::<Vec<_>>(),
        "ids are gap-free per namespace"
    );
    use kvtier_proto::v1::EventKind;
    let count = |k: EventKind| seen.iter().filter(|e| e.kind == k as i32).count();
    assert_eq!(count(EventKind::Stored), 6);
    assert_eq!(count(EventKind::Moved), 4);
    assert_eq!(count(EventKind::Removed), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_service_reports_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "kvtier.v1.CacheService"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(reply.status, 1, "{service:?} not SERVING");
    }
    Ok(())
}
