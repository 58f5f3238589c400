//! Per-client limits and memory under 10x overload.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kvtier_integration_tests::{config, handshake, put_chain};
use kvtier_proto::v1::*;
use tonic::Code;

use crate::support::*;

fn retry_hint(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_client_limits_answer_resource_exhausted_with_retry_hint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Proc::start_with_tokens(
        dir.path(),
        &(token_line("greedy", "tok-g", "tenant=t shared/*=rw")
            + &token_line("polite", "tok-p", "tenant=t shared/*=rw")),
        &[
            "--client-max-concurrent",
            "2",
            "--client-max-bytes-per-sec",
            "1MiB",
        ],
    )?;
    let mut c = server.client().await?;
    let block = 256 << 10;
    let (sg, seed) = handshake_as(&mut c, "tok-g", "shared/x", config(16, block)).await?;
    let (sp, _) = handshake_as(&mut c, "tok-p", "shared/x", config(16, block)).await?;

    // Concurrency: two Put streams held open fill greedy's slots.
    let mut held = Vec::new();
    for i in 0..2u64 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let h = prompt_hashes_seeded(100 + i as u32, 1, 16, seed);
        tx.send(kvtier_integration_tests::put_messages(&sg, &h, block as usize)[0].clone())
            .await?;
        let mut cc = c.clone();
        let task = tokio::spawn(async move {
            cc.put(authed(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                "tok-g",
            ))
            .await
        });
        held.push((tx, task));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let h = prompt_hashes_seeded(1, 1, 16, seed);
    let refused = lookup_as(&mut c, "tok-g", &sg, &h).await.expect_err("3rd");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(retry_hint(&refused).is_some(), "{refused:?}");
    assert!(refused.message().contains("concurrency"), "{refused:?}");
    // Another client is not affected.
    lookup_as(&mut c, "tok-p", &sp, &h).await?;
    for (tx, task) in held {
        drop(tx);
        task.await??;
    }
    lookup_as(&mut c, "tok-g", &sg, &h).await?;

    // Byte rate: 1 MiB/s with a 1 MiB burst; the held Puts used 512 KiB.
    let hashes = prompt_hashes_seeded(2, 8, 16, seed);
    let err = put_as(&mut c, "tok-g", &sg, &hashes, block as usize)
        .await
        .expect_err("over the byte rate");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let wait = retry_hint(&err).expect("retry hint");
    assert!(wait > 0 && wait <= 1000, "retry after {wait} ms");
    assert!(err.message().contains("byte-rate"), "{err:?}");
    // The polite client still has its own budget.
    put_as(
        &mut c,
        "tok-p",
        &sp,
        &prompt_hashes_seeded(3, 2, 16, seed),
        block as usize,
    )
    .await?;
    // Honouring the hint, greedy gets through.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    put_as(&mut c, "tok-g", &sg, &hashes[..1], block as usize).await?;

    // Long-lived watches count against the client's slots too.
    let watch = |c: &mut kvtier_proto::v1::cache_service_client::CacheServiceClient<_>| {
        let mut c = c.clone();
        async move {
            c.watch_events(authed(
                WatchEventsRequest {
                    namespace: "shared/x".into(),
                    snapshot: false,
                },
                "tok-g",
            ))
            .await
        }
    };
    let w1 = watch(&mut c).await?;
    let w2 = watch(&mut c).await?;
    let w3 = watch(&mut c).await.expect_err("third watch");
    assert_eq!(w3.code(), Code::ResourceExhausted);
    drop((w1, w2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_bounded_under_10x_overload() -> Result<()> {
    // 10x the per-client limit: the excess is refused at once.
    overload("--client-max-concurrent", true, 128).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_bounded_under_10x_overload_of_the_server_limit() -> Result<()> {
    // 10x the server-wide limit, no per-client limit: the excess waits up to
    // 2 s for a slot, each waiting stream holding at most its HTTP/2 window
    // (8 MiB per stream, 32 MiB per connection; 4 connections here).
    overload("--max-concurrent-requests", false, 4 * 32 + 128).await
}

/// 40 concurrent Puts of 24 MiB against a limit of 4 set by `limit_flag`;
/// RSS must stay within baseline + host capacity + `overhead_mib`.
async fn overload(limit_flag: &str, expect_refusals: bool, overhead_mib: u64) -> Result<()> {
    const HOST_MIB: u64 = 64;
    const LIMIT: usize = 4;
    const PUTS: usize = 10 * LIMIT;
    const BLOCK: usize = 1 << 20;
    const BLOCKS_PER_PUT: usize = 24;
    let dir = tempfile::tempdir()?;
    let server = Proc::start(
        &dir.path().join("data"),
        &[
            "--host-capacity",
            &format!("{HOST_MIB}MiB"),
            "--disk-capacity",
            "0",
            limit_flag,
            &LIMIT.to_string(),
        ],
    )?;
    let mut c = server.client().await?;
    let session = handshake(&mut c, "overload", config(16, BLOCK as u64)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = server.status_kib("VmRSS")?;

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (done, peak, pid) = (Arc::clone(&done), Arc::clone(&peak), server.pid);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let text =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // 4 connections, 40 concurrent Put streams of 24 MiB each (960 MiB offered).
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(server.client().await?);
    }
    let mut tasks = Vec::new();
    for i in 0..PUTS {
        let mut cc = channels[i % 4].clone();
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let hashes = prompt_hashes_seeded(1000 + i as u32, BLOCKS_PER_PUT, 16, 1);
            put_chain(&mut cc, &session, &hashes, BLOCK).await
        }));
    }
    let (mut ok, mut exhausted, mut other) = (0, 0, Vec::new());
    for t in tasks {
        match t.await? {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted && retry_hint(&s).is_some() => {
                exhausted += 1
            }
            Err(s) => other.push(s),
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak_kib = peak
        .load(Ordering::Relaxed)
        .max(server.status_kib("VmHWM")?);
    println!(
        "overload ({limit_flag}): {PUTS} concurrent Puts vs limit {LIMIT}: {ok} ok, {exhausted} RESOURCE_EXHAUSTED; \
         RSS baseline {} MiB, peak {} MiB (host capacity {HOST_MIB} MiB, stated overhead {overhead_mib} MiB)",
        baseline / 1024,
        peak_kib / 1024
    );
    assert!(other.is_empty(), "unexpected failures: {other:?}");
    assert!(ok >= 1, "ok {ok}, exhausted {exhausted}");
    assert!(
        !expect_refusals || exhausted >= 1,
        "no refusals at 10x the limit"
    );
    assert!(
        peak_kib <= baseline + (HOST_MIB + overhead_mib) * 1024,
        "RSS peaked at {} MiB: over baseline {} MiB + host {HOST_MIB} MiB + {overhead_mib} MiB",
        peak_kib / 1024,
        baseline / 1024
    );
    // Still serving.
    let h = prompt_hashes_seeded(1, 1, 16, 1);
    c.lookup(LookupRequest {
        session_id: session,
        hashes: h,
    })
    .await?;
    Ok(())
}
