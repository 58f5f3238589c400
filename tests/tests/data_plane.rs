//! The real `kvtier-server` binary's binary data plane (`--data-listen`):
//! sessions from gRPC Handshake, pipelined PUT/GET frames, validation,
//! checksums, authentication, and acknowledged blocks surviving `kill -9`.
//! The client and the frames are the server crate's own.

use kvtier_cache_server::dataplane::{client, wire};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use client::{DataClient, DataError};
use kvtier_integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::{RequestHeader, ResponseHeader, Status, HEADER_LEN};

const KIB: usize = 1024;
const TIER_HOST: u8 = 2;
const TIER_DISK: u8 = 3;

/// A server with its data plane on a fixed free port (so a restart finds it again).
fn start(data: &std::path::Path, port: u16, extra: &[&str]) -> anyhow::Result<ServerProcess> {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--data-listen", &listen];
    args.extend_from_slice(extra);
    ServerProcess::start(data, &args)
}

fn data_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn chain(hashes: &[u64], len: usize) -> Vec<(u64, Option<u64>, Bytes)> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| (h, i.checked_sub(1).map(|p| hashes[p]), payload_for(h, len)))
        .collect()
}

fn refused(err: DataError) -> (Status, String) {
    match err {
        DataError::Refused {
            status, message, ..
        } => (status, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_validation_and_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let server = start(&dir.path().join("data"), port, &[])?;
    let mut grpc = server.client().await?;
    let block = 64 * KIB;
    let session = handshake(&mut grpc, "llama", config(16, block as u64)).await?;
    let mut dp = DataClient::connect(data_addr(port), &session, "", "").await?;
    assert_eq!(dp.block_bytes(), block as u64);

    let hashes = prompt_hashes(7, 16, 16);
    let acks = dp.put_many(&chain(&hashes, block)).await?;
    assert_eq!(acks.len(), 16);
    for (ack, h) in acks.iter().zip(&hashes) {
        assert_eq!(
            (ack.hash, ack.tier, ack.already_present),
            (*h, TIER_HOST, false)
        );
    }
    // write-once, as over gRPC
    let again = dp.put_many(&chain(&hashes[..4], block)).await?;
    assert!(again.iter().all(|a| a.already_present));

    let got = dp.get_many(&hashes, false).await?;
    assert_eq!(got.len(), 16);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.hash, hashes[i]);
        assert_eq!(r.tier, TIER_HOST);
        assert_eq!(r.payload.as_ref(), Some(&payload_for(hashes[i], block)));
        assert_eq!(r.parent, i.checked_sub(1).map(|p| hashes[p]));
    }
    // Blocks put over the data plane are the same blocks gRPC serves.
    let over_grpc = get_all(&mut grpc, &session, &hashes[..2]).await?;
    assert!(over_grpc.iter().all(|b| b.found));
    assert_eq!(over_grpc[1].payload, payload_for(hashes[1], block));

    // misses, and stop-at-first-miss
    let missing = dp.get(12345).await?;
    assert!(missing.payload.is_none());
    let holey = [hashes[0], 12345, hashes[2]];
    let got = dp.get_many(&holey, true).await?;
    assert_eq!(got.len(), 3);
    assert!(got[0].payload.is_some() && got[1].payload.is_none() && got[2].payload.is_none());

    // A wrong size is refused with a message that says what to send, and the
    // connection goes on.
    let err = dp
        .put(777, None, &Bytes::from(vec![1u8; 1000]))
        .await
        .expect_err("wrong size accepted");
    let (status, message) = refused(err);
    assert_eq!(status, Status::Invalid);
    assert!(
        message.contains("1000 payload bytes") && message.contains("block_bytes=65536"),
        "{message}"
    );
    let ok = dp.put(778, None, &payload_for(778, block)).await?;
    assert!(!ok.already_present);

    // Hits and misses count in gRPC Get's metrics (op="get").
    let metrics = server.metrics_text()?;
    let hits = metric_sum(
        &metrics,
        "kvtier_block_hits_total",
        &[("op", "get"), ("namespace", "llama"), ("tier", "host")],
    );
    assert!(hits >= 16.0 + 2.0 + 1.0, "hits {hits}");
    let misses = metric_sum(&metrics, "kvtier_block_misses_total", &[("op", "get")]);
    assert_eq!(misses, 3.0);
    assert!(
        metric_sum(
            &metrics,
            "kvtier_transfer_bytes_total",
            &[("direction", "in")]
        ) >= (17 * block) as f64
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_and_bad_frames_are_refused_then_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _server = start(&dir.path().join("data"), port, &[])?;

    let err = DataClient::connect(data_addr(port), "no-such-session", "", "")
        .await
        .expect_err("unknown session accepted");
    let (status, message) = refused(err);
    assert_eq!(status, Status::NoSession);
    assert!(message.contains("unknown session"), "{message}");

    // Not a data-plane client (e.g. HTTP/2 pointed at the wrong port).
    let mut raw = TcpStream::connect(data_addr(port)).await?;
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let (head, message) = read_error(&mut raw).await?;
    assert_eq!(head.status, Status::Protocol as u8);
    assert!(message.contains("KVTD"), "{message}");
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await?;
    assert!(
        rest.is_empty(),
        "the connection must close after a bad frame"
    );

    // A future version is refused with the version this server speaks.
    let mut raw = TcpStream::connect(data_addr(port)).await?;
    let mut hello = wire::encode_hello("x", "", "");
    hello[4] = 9;
    raw.write_all(&hello).await?;
    let (head, message) = read_error(&mut raw).await?;
    assert_eq!(head.status, Status::Protocol as u8);
    assert!(message.contains("version 9"), "{message}");
    Ok(())
}

async fn read_error(raw: &mut TcpStream) -> anyhow::Result<(ResponseHeader, String)> {
    let mut head = [0u8; HEADER_LEN];
    raw.read_exact(&mut head).await?;
    let head = ResponseHeader::decode(&head);
    let mut msg = vec![0u8; head.len as usize];
    raw.read_exact(&mut msg).await?;
    Ok((head, String::from_utf8(msg)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_op_after_hello_gets_a_protocol_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let server = start(&dir.path().join("data"), port, &[])?;
    let mut grpc = server.client().await?;
    let session = handshake(&mut grpc, "ns", config(16, 4096)).await?;
    let dp = DataClient::connect(data_addr(port), &session, "", "").await?;
    let mut raw = dp.into_inner();
    let mut frame = RequestHeader::put(1, None, 0);
    frame.op = 42;
    raw.write_all(&frame.encode()).await?;
    let (head, message) = read_error(&mut raw).await?;
    assert_eq!(head.status, Status::Protocol as u8);
    assert!(message.contains("unknown op 42"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_disk_block_is_a_miss() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port()?;
    let args = ["--host-capacity", "0"];
    let block = 64 * KIB;
    let mut server = start(&data, port, &args)?;
    let mut grpc = server.client().await?;
    let session = handshake(&mut grpc, "ns", config(16, block as u64)).await?;
    let hashes = prompt_hashes(11, 3, 16);
    let mut dp = DataClient::connect(data_addr(port), &session, "", "").await?;
    let acks = dp.put_many(&chain(&hashes, block)).await?;
    assert!(acks.iter().all(|a| a.tier == TIER_DISK));
    drop(dp);
    drop(grpc);
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

    let server = start(&data, port, &args)?;
    let mut grpc = server.client().await?;
    let session = handshake(&mut grpc, "ns", config(16, block as u64)).await?;
    let mut dp = DataClient::connect(data_addr(port), &session, "", "").await?;
    let got = dp.get_many(&hashes, false).await?;
    assert_eq!(
        got[0].payload.as_ref(),
        Some(&payload_for(hashes[0], block))
    );
    assert_eq!(got[0].tier, TIER_DISK);
    assert!(got[1].payload.is_none(), "a corrupt block was returned");
    assert!(got[2].payload.is_some());
    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(&metrics, "kvtier_checksum_failures_total", &[]),
        1.0
    );
    assert!(dp.get(hashes[1]).await?.payload.is_none(), "stays a miss");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_block() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port()?;
    // Host tier off: every acknowledged block is on disk (TIER_DISK).
    let args = ["--host-capacity", "0"];
    let block = 128 * KIB;
    let mut server = start(&data, port, &args)?;
    let mut grpc = server.client().await?;
    let session = handshake(&mut grpc, "ns", config(16, block as u64)).await?;

    // A slow pipelined stream: frames go out every 5 ms while the acks are
    // read as they come; the server is killed in the middle of it.
    let hashes = prompt_hashes(4, 300, 16);
    let dp = DataClient::connect(data_addr(port), &session, "", "").await?;
    let (mut rd, mut wr) = dp.into_inner().into_split();
    let to_send = hashes.clone();
    let writer = tokio::spawn(async move {
        for h in to_send {
            let payload = payload_for(h, block);
            let head = RequestHeader::put(h, None, block as u64).encode();
            if client::write_two(&mut wr, &head, &payload).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let reader = tokio::spawn(async move {
        let mut acked = Vec::new();
        loop {
            let mut head = [0u8; HEADER_LEN];
            if rd.read_exact(&mut head).await.is_err() {
                return acked;
            }
            let h = ResponseHeader::decode(&head);
            assert_eq!(h.status, Status::Ok as u8, "unexpected answer {h:?}");
            assert_eq!(h.tier, TIER_DISK);
            acked.push(h.hash);
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill9()?;
    let acked = reader.await?;
    writer.abort();
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the kill"
    );
    assert!(
        acked.len() < hashes.len(),
        "the kill came too late to test anything"
    );

    let restarted = start(&data, port, &args)?;
    let mut grpc = restarted.client().await?;
    let session = handshake(&mut grpc, "ns", config(16, block as u64)).await?;
    let mut dp = DataClient::connect(data_addr(port), &session, "", "").await?;
    let got = dp.get_many(&acked, false).await?;
    // zip stops at the shorter list: a reply short of blocks must not pass.
    assert_eq!(
        got.len(),
        acked.len(),
        "the reply has {} blocks for {} acknowledged",
        got.len(),
        acked.len()
    );
    for (r, h) in got.iter().zip(&acked) {
        assert_eq!(
            r.payload.as_ref(),
            Some(&payload_for(*h, block)),
            "acknowledged block {h:#x} lost (or torn) after kill -9"
        );
    }
    // Unacknowledged blocks may or may not be there, but never torn.
    let got = dp.get_many(&hashes, false).await?;
    assert_eq!(got.len(), hashes.len(), "one answer per block asked for");
    for (r, h) in got.iter().zip(&hashes) {
        if let Some(p) = &r.payload {
            assert_eq!(p, &payload_for(*h, block), "torn in-flight block served");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_data_plane_needs_the_same_bearer_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let tokens = format!(
        "alice {} tenant=t ns=rw;reader {} tenant=t ns=r",
        kvtier_security::tokens::token_digest_line("tok-alice"),
        kvtier_security::tokens::token_digest_line("tok-reader"),
    );
    let server = start(&dir.path().join("data"), port, &["--tokens", &tokens])?;
    let grpc = server.client().await?;
    let session_as = |token: &'static str| {
        let mut grpc = grpc.clone();
        async move {
            let mut req = tonic::Request::new(kvtier_proto::v1::HandshakeRequest {
                namespace: "ns".into(),
                config: Some(config(16, 4096)),
                client_name: "data-plane-test".into(),
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            anyhow::Ok(grpc.handshake(req).await?.into_inner().session_id)
        }
    };
    let alice = session_as("tok-alice").await?;

    let (status, message) = refused(
        DataClient::connect(data_addr(port), &alice, "", "")
            .await
            .expect_err("no token accepted"),
    );
    assert_eq!(status, Status::Unauthenticated);
    assert!(message.contains("bearer token"), "{message}");
    let (status, _) = refused(
        DataClient::connect(data_addr(port), &alice, "wrong", "")
            .await
            .expect_err("wrong token accepted"),
    );
    assert_eq!(status, Status::Unauthenticated);
    // Another principal's token cannot use alice's session.
    let (status, message) = refused(
        DataClient::connect(data_addr(port), &alice, "tok-reader", "")
            .await
            .expect_err("session hijacked"),
    );
    assert_eq!(status, Status::Denied);
    assert!(message.contains("another client"), "{message}");

    let mut dp = DataClient::connect(data_addr(port), &alice, "tok-alice", "").await?;
    dp.put(1, None, &payload_for(1, 4096)).await?;

    // A read-only principal reads, and its PUT is denied.
    let reader = session_as("tok-reader").await?;
    let mut dp = DataClient::connect(data_addr(port), &reader, "tok-reader", "").await?;
    assert!(dp.get(1).await?.payload.is_some());
    let (status, _) = refused(
        dp.put(2, None, &payload_for(2, 4096))
            .await
            .expect_err("write without write access"),
    );
    assert_eq!(status, Status::Denied);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("data.sock");
    let listen = format!("unix:{}", sock.display());
    let server = ServerProcess::start(&dir.path().join("data"), &["--data-listen", &listen])?;
    let mut grpc = server.client().await?;
    let session = handshake(&mut grpc, "ns", config(16, 4096)).await?;
    let mut dp = DataClient::connect_unix(&sock, &session, "", "").await?;
    let ack = dp.put(5, Some(4), &payload_for(5, 4096)).await?;
    assert_eq!(ack.tier, TIER_HOST);
    let got = dp.get(5).await?;
    assert_eq!(got.payload, Some(payload_for(5, 4096)));
    assert_eq!(got.parent, Some(4));
    Ok(())
}
