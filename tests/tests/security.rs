//! Security and hardening on the real `kvtier-server`: TLS and mTLS with
//! certificates generated at test time, hashed bearer tokens reloaded on
//! SIGHUP, tenant isolation with identical prompts, per-client limits,
//! bounded memory under 10x overload, kill -9 during heavy writes (20
//! rounds), a full disk, and stalled clients.
//!
//! Build the binaries first: `cargo build --release --workspace --bins`.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvtier_integration_tests::{config, get_all, handshake, payload_for, put_chain};
use kvtier_proto::hashing::{effective_seed, DEFAULT_SEED};
use kvtier_proto::v1::*;
use support::*;
use tonic::Code;

const BLOCK_TOKENS: usize = 16;

// ---------------------------------------------------------------- TLS ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_and_mutual_tls_with_generated_certificates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("kvtier test CA")?;
    let other_ca = TestCa::new("someone else's CA")?;
    let server_pem = ca.leaf("kvtier-server")?;
    let (cert, key) = server_pem.write(dir.path(), "server")?;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.pem.cert)?;
    let (cert, key, ca_path) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca_path.display().to_string(),
    );

    // TLS: a client trusting the CA works; plaintext and untrusted clients fail.
    let server = Proc::start_with(
        &dir.path().join("d1"),
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        &["--tls-cert", &cert, "--tls-key", &key],
    )?;

    let mut client = server.tls_client(&ca.pem, None).await?;
    handshake(&mut client, "tls-ns", config(16, 64)).await?;
    let hashes = kvtier_integration_tests::prompt_hashes(1, 4, 16);
    let session = handshake(&mut client, "tls-ns", config(16, 64)).await?;
    put_chain(&mut client, &session, &hashes, 64).await?;
    assert_eq!(get_all(&mut client, &session, &hashes).await?.len(), 4);
    // /metrics is served over TLS with the same certificate.
    let metrics = server.metrics.expect("metrics address");
    let ca_file = dir.path().join("ca-for-curl.pem");
    std::fs::write(&ca_file, &ca.pem.cert)?;
    let https = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", metrics.port()),
        ])
        .arg(format!("https://localhost:{}/metrics", metrics.port()))
        .output();
    if let Ok(out) = https {
        assert!(out.status.success(), "HTTPS /metrics failed: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("kvtier_"));
    } else {
        eprintln!("curl not found: HTTPS /metrics checked only by refusing plaintext");
    }
    assert!(
        kvtier_integration_tests::http_get(metrics, "/metrics").is_err(),
        "plaintext /metrics on a TLS server"
    );
    let mut plain = server.client().await?;
    assert!(
        handshake(&mut plain, "tls-ns", config(16, 64))
            .await
            .is_err(),
        "plaintext client must not talk to a TLS server"
    );
    assert!(
        server.tls_client(&other_ca.pem, None).await.is_err()
            || handshake(
                &mut server.tls_client(&other_ca.pem, None).await?,
                "tls-ns",
                config(16, 64)
            )
            .await
            .is_err(),
        "a client that does not trust the server's CA must fail"
    );
    drop(server);

    // --metrics-plaintext keeps /metrics plain (loopback) beside TLS gRPC.
    let server = Proc::start_with(
        &dir.path().join("d3"),
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--metrics-plaintext",
        ],
    )?;
    kvtier_integration_tests::http_get(server.metrics.expect("metrics"), "/metrics")?;
    drop(server);

    // mTLS: only clients with a certificate from the client CA get in.
    let server = Proc::start(
        &dir.path().join("d2"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca_path,
        ],
    )?;
    let good = ca.leaf("worker-1")?;
    let mut client = server.tls_client(&ca.pem, Some(&good)).await?;
    handshake(&mut client, "mtls-ns", config(16, 64)).await?;
    for (what, identity) in [
        ("no client certificate", None),
        (
            "a certificate from another CA",
            Some(other_ca.leaf("intruder")?),
        ),
    ] {
        let refused = match server.tls_client(&ca.pem, identity.as_ref()).await {
            Err(_) => true,
            Ok(mut c) => handshake(&mut c, "mtls-ns", config(16, 64)).await.is_err(),
        };
        assert!(refused, "mTLS server accepted a client with {what}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_off_loopback_needs_the_explicit_flag() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let refused = Proc::spawn(&dir.path().join("d1"), &["--listen", "0.0.0.0:0"], &[])?;
    let Err((code, log)) = refused else {
        bail!("server served plaintext on 0.0.0.0 without --allow-plaintext");
    };
    assert_ne!(code, Some(0));
    assert!(log.contains("--allow-plaintext"), "{log}");
    let server = Proc::start_with(
        &dir.path().join("d2"),
        &["--listen", "0.0.0.0:0"],
        &["--allow-plaintext"],
    )?;
    assert!(server.log().contains("PLAINTEXT"), "{}", server.log());
    Ok(())
}

// ------------------------------------------------------------- tokens ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashed_token_file_reloaded_on_sighup() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        token_line("alice", "tok-alice-1", "tenant=a a/*=rw")
            + &token_line("bob", "tok-bob-1", "tenant=b b/*=rw"),
    )?;
    let file = std::fs::read_to_string(&tokens)?;
    assert!(!file.contains("tok-alice-1"), "tokens are stored hashed");
    let server = Proc::start(
        &dir.path().join("data"),
        &["--tokens-file", &tokens.display().to_string()],
    )?;
    let mut c = server.client().await?;

    let no_token = handshake(&mut c, "a/m", config(16, 64)).await;
    assert_eq!(
        no_token.expect_err("no token").code(),
        Code::Unauthenticated
    );
    let wrong = handshake_as(&mut c, "tok-alice-2", "a/m", config(16, 64)).await;
    assert_eq!(
        wrong.expect_err("wrong token").code(),
        Code::Unauthenticated
    );
    let (session, _) = handshake_as(&mut c, "tok-alice-1", "a/m", config(16, 64)).await?;
    let hashes = prompt_hashes_seeded(1, 2, 16, 1);
    put_as(&mut c, "tok-alice-1", &session, &hashes, 64).await?;

    // Rotate alice's token, revoke bob, add carol; SIGHUP.
    std::fs::write(
        &tokens,
        token_line("alice", "tok-alice-2", "tenant=a a/*=rw")
            + &token_line("carol", "tok-carol", "tenant=c c/*=rw"),
    )?;
    server.signal("HUP")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let old = lookup_as(&mut c, "tok-alice-1", &session, &hashes).await;
        if matches!(&old, Err(s) if s.code() == Code::Unauthenticated) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "SIGHUP did not revoke the old token: {old:?}\n{}",
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new token works, even on the session opened with the old one
    // (the session belongs to the principal, not to the token).
    let r = lookup_as(&mut c, "tok-alice-2", &session, &hashes).await?;
    assert_eq!(r.prefix_len, 2);
    let bob = handshake_as(&mut c, "tok-bob-1", "b/m", config(16, 64)).await;
    assert_eq!(bob.expect_err("revoked").code(), Code::Unauthenticated);
    handshake_as(&mut c, "tok-carol", "c/m", config(16, 64)).await?;

    // A broken file keeps the last good table.
    std::fs::write(&tokens, "alice not-a-digest a/*=rw\n")?;
    server.signal("HUP")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lookup_as(&mut c, "tok-alice-2", &session, &hashes).await?;
    assert!(server.log().contains("reload failed"), "{}", server.log());
    Ok(())
}

// ---------------------------------------------------------- isolation ----

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_with_identical_prompts_share_nothing_and_learn_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        token_line("alice", "tok-a", "tenant=a a/*=rw")
            + &token_line("bob", "tok-b", "tenant=b b/*=rw")
            // A misconfigured grant: bob's reader may read a/*, but a/* belongs to tenant a.
            + &token_line("bob-reader", "tok-br", "tenant=b b/*=r a/*=r"),
    )?;
    let server = Proc::start(
        &dir.path().join("data"),
        &["--tokens-file", &tokens.display().to_string()],
    )?;
    let mut c = server.client().await?;
    let cfg = config(BLOCK_TOKENS as u32, 256);
    let (sa, seed_a) = handshake_as(&mut c, "tok-a", "a/llama", cfg.clone()).await?;
    let (sb, seed_b) = handshake_as(&mut c, "tok-b", "b/llama", cfg.clone()).await?;
    assert_ne!(seed_a, seed_b, "the tenant is part of the hash salt");
    assert_ne!(seed_a, effective_seed(DEFAULT_SEED, ""));

    // The same prompt, hashed by each tenant with its own seed.
    let n = 64;
    let ha = prompt_hashes_seeded(7, n, BLOCK_TOKENS, seed_a);
    let hb = prompt_hashes_seeded(7, n, BLOCK_TOKENS, seed_b);
    let plain = prompt_hashes_seeded(7, n, BLOCK_TOKENS, effective_seed(DEFAULT_SEED, ""));
    assert!(ha.iter().all(|h| !hb.contains(h) && !plain.contains(h)));
    let put = put_as(&mut c, "tok-a", &sa, &ha, 256).await?;
    assert_eq!(put.stored as usize, n);

    // Bob cannot open, or even learn of, tenant a's namespace.
    let denied = handshake_as(&mut c, "tok-b", "a/llama", cfg.clone()).await;
    let missing = handshake_as(&mut c, "tok-b", "a/no-such-namespace", cfg.clone()).await;
    let (denied, missing) = (denied.expect_err("denied"), missing.expect_err("denied"));
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(missing.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message().replace("a/llama", "X"),
        missing.message().replace("a/no-such-namespace", "X"),
        "existing and missing namespaces must be refused alike"
    );
    // Not with a wrong config (which would leak a's config) either.
    let wrong = handshake_as(&mut c, "tok-b", "a/llama", config(64, 1)).await;
    assert_eq!(wrong.expect_err("denied").code(), Code::PermissionDenied);
    // A grant on another tenant's namespace does not open it.
    let br = handshake_as(&mut c, "tok-br", "a/llama", cfg.clone()).await;
    assert_eq!(br.expect_err("tenant").code(), Code::PermissionDenied);
    // A stolen session id is useless with bob's token.
    let stolen = lookup_as(&mut c, "tok-b", &sa, &ha).await;
    assert_eq!(stolen.expect_err("stolen").code(), Code::PermissionDenied);
    let stolen = get_as(&mut c, "tok-b", &sa, &ha[..1]).await;
    assert_eq!(stolen.expect_err("stolen").code(), Code::PermissionDenied);
    let stolen = put_as(&mut c, "tok-b", &sa, &hb[..1], 256).await;
    assert_eq!(stolen.expect_err("stolen").code(), Code::PermissionDenied);

    // In bob's own namespace, a's hashes (and the plain ones) are absent.
    for probe in [&ha, &plain] {
        let r = lookup_as(&mut c, "tok-b", &sb, probe).await?;
        assert_eq!(r.prefix_len, 0);
        assert!(r.tiers.iter().all(|&t| t == Tier::None as i32));
        let g = get_as(&mut c, "tok-b", &sb, probe).await?;
        assert!(g.iter().all(|b| !b.found && b.payload.is_empty()));
    }
    // Bob's identical prompt is stored anew: nothing is shared.
    let put = put_as(&mut c, "tok-b", &sb, &hb, 256).await?;
    assert_eq!((put.stored as usize, put.already_present), (n, 0));

    // Stats and events show bob only his own namespace.
    let stats = c
        .stats(authed(StatsRequest {}, "tok-b"))
        .await?
        .into_inner();
    let names: Vec<_> = stats.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["b/llama"]);
    assert!(
        stats.tiers.is_empty(),
        "tier totals would show a's activity"
    );
    for ns in ["a/llama", "a/no-such-namespace", ""] {
        let w = c
            .watch_events(authed(
                WatchEventsRequest {
                    namespace: ns.into(),
                },
                "tok-b",
            ))
            .await;
        assert_eq!(w.err().map(|s| s.code()), Some(Code::PermissionDenied));
    }

    // Timing is no oracle: bob's lookups of a's hashes and of never-stored
    // hashes take the same path (one index probe per key, keyed by bob's
    // namespace); interleave them and compare medians.
    let random: Vec<u64> = (0..n as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555)
        .collect();
    let (mut t_other, mut t_random) = (Vec::new(), Vec::new());
    for i in 0..400 {
        let (probe, out) = if i % 2 == 0 {
            (&ha, &mut t_other)
        } else {
            (&random, &mut t_random)
        };
        let t = Instant::now();
        let r = lookup_as(&mut c, "tok-b", &sb, probe).await?;
        out.push(t.elapsed());
        assert_eq!(r.prefix_len, 0);
    }
    let (mo, mr) = (median(t_other), median(t_random));
    let diff = mo.abs_diff(mr);
    println!("lookup medians: other tenant's hashes {mo:?}, random hashes {mr:?}");
    assert!(
        diff < Duration::from_micros(150) || diff < mo.min(mr) / 4,
        "lookup time depends on another tenant's data: {mo:?} vs {mr:?}"
    );
    Ok(())
}

// -------------------------------------------------------------- limits ----

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
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        token_line("greedy", "tok-g", "tenant=t shared/*=rw")
            + &token_line("polite", "tok-p", "tenant=t shared/*=rw"),
    )?;
    let server = Proc::start(
        &dir.path().join("data"),
        &[
            "--tokens-file",
            &tokens.display().to_string(),
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

// -------------------------------------------------------------- faults ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_heavy_writes_20_rounds_loses_no_acknowledged_block() -> Result<()> {
    const ROUNDS: u32 = 20;
    const BLOCK: usize = 64 << 10;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let args = ["--host-capacity", "0", "--disk-capacity", "8GiB"];
    let mut acked: HashMap<u64, ()> = HashMap::new();
    let mut unacked: Vec<u64> = Vec::new();
    for round in 0..ROUNDS {
        let mut server = Proc::start(&data, &args)?;
        let mut c = server.client().await?;
        let session = handshake(&mut c, "crash", config(16, BLOCK as u64)).await?;
        // Every block acknowledged so far is intact (and only those are served intact).
        let all: Vec<u64> = acked.keys().copied().collect();
        for chunk in all.chunks(4096) {
            for b in get_all(&mut c, &session, chunk).await? {
                assert!(
                    b.found,
                    "round {round}: acknowledged block {:#x} lost",
                    b.hash
                );
                assert_eq!(b.tier, Tier::Disk as i32);
                assert_eq!(
                    b.payload,
                    payload_for(b.hash, BLOCK),
                    "torn block {:#x}",
                    b.hash
                );
            }
        }
        for b in get_all(&mut c, &session, &unacked)
            .await
            .unwrap_or_default()
        {
            if b.found {
                assert_eq!(
                    b.payload,
                    payload_for(b.hash, BLOCK),
                    "torn block {:#x}",
                    b.hash
                );
            }
        }
        unacked.clear();
        // Heavy writes from 4 writers; kill -9 in the middle.
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u32 {
            let (mut cc, session, stop) = (c.clone(), session.clone(), Arc::clone(&stop));
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut sent = Vec::new();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let prompt = round * 1_000_000 + w * 100_000 + i;
                    let hashes = prompt_hashes_seeded(prompt, 8, 16, 1);
                    sent.extend_from_slice(&hashes);
                    match put_chain(&mut cc, &session, &hashes, BLOCK).await {
                        Ok(r) => acked.extend(
                            r.placements
                                .iter()
                                .filter(|p| p.tier == Tier::Disk as i32)
                                .map(|p| p.hash),
                        ),
                        Err(_) => break,
                    }
                    i += 1;
                }
                (acked, sent)
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 37 * round as u64 % 300)).await;
        server.kill9()?;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let (a, s) = w.await?;
            for h in a {
                acked.insert(h, ());
            }
            unacked.extend(s);
        }
        unacked.retain(|h| !acked.contains_key(h));
    }
    // The last round's writes, after a final restart.
    let server = Proc::start(&data, &args)?;
    let mut c = server.client().await?;
    let session = handshake(&mut c, "crash", config(16, BLOCK as u64)).await?;
    let all: Vec<u64> = acked.keys().copied().collect();
    let mut found = 0;
    for chunk in all.chunks(4096) {
        for b in get_all(&mut c, &session, chunk).await? {
            assert!(b.found, "acknowledged block {:#x} lost", b.hash);
            assert_eq!(b.payload, payload_for(b.hash, BLOCK));
            found += 1;
        }
    }
    println!("kill -9: {ROUNDS} rounds survived, {found} acknowledged blocks all intact");
    assert!(
        found > ROUNDS as usize * 8,
        "too few writes to mean anything: {found}"
    );
    Ok(())
}

/// Mounts a small tmpfs (needs root); `None` where mounting is impossible.
fn small_volume(dir: &std::path::Path, size: &str) -> Option<std::path::PathBuf> {
    let mnt = dir.join("vol");
    std::fs::create_dir_all(&mnt).ok()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .status()
        .ok()?
        .success();
    ok.then_some(mnt)
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_fails_writes_cleanly_and_reads_keep_working() -> Result<()> {
    const BLOCK: usize = 256 << 10;
    let dir = tempfile::tempdir()?;
    let Some(vol) = small_volume(dir.path(), "48m") else {
        // Not root / no mount namespace: say so loudly rather than fake it.
        eprintln!("SKIPPED: cannot mount a size-limited tmpfs here (needs root)");
        return Ok(());
    };
    let _unmount = Unmount(vol.clone());
    let mut server = Proc::start(
        &vol.join("data"),
        &["--host-capacity", "0", "--disk-capacity", "1GiB"],
    )?;
    let mut c = server.client().await?;
    let session = handshake(&mut c, "full", config(16, BLOCK as u64)).await?;
    let mut stored: Vec<u64> = Vec::new();
    let mut failure = None;
    for i in 0..1000u32 {
        let hashes = prompt_hashes_seeded(i, 4, 16, 1);
        match put_chain(&mut c, &session, &hashes, BLOCK).await {
            Ok(r) => stored.extend(
                r.placements
                    .iter()
                    .filter(|p| p.tier == Tier::Disk as i32)
                    .map(|p| p.hash),
            ),
            Err(s) => {
                failure = Some(s);
                break;
            }
        }
    }
    let failure = failure.expect("a 48 MiB volume must fill up");
    println!(
        "disk full after {} blocks: {:?} {}",
        stored.len(),
        failure.code(),
        failure.message()
    );
    assert_eq!(failure.code(), Code::ResourceExhausted, "{failure:?}");
    assert!(failure.message().contains("disk"), "{failure:?}");
    // Reads keep working, every acknowledged block intact; the server lives.
    for chunk in stored.chunks(64) {
        for b in get_all(&mut c, &session, chunk).await? {
            assert!(b.found, "block {:#x} lost on a full disk", b.hash);
            assert_eq!(b.payload, payload_for(b.hash, BLOCK));
        }
    }
    let r = c
        .lookup(LookupRequest {
            session_id: session.clone(),
            hashes: stored[..4].to_vec(),
        })
        .await?
        .into_inner();
    assert_eq!(r.prefix_len, 4);
    // Further writes keep failing cleanly (no crash, no hang).
    let again = put_chain(
        &mut c,
        &session,
        &prompt_hashes_seeded(5000, 4, 16, 1),
        BLOCK,
    )
    .await;
    assert!(again.is_err());
    assert!(
        server.status_kib("VmRSS").is_ok(),
        "server died on a full disk"
    );
    server.kill9()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_clients_do_not_block_others() -> Result<()> {
    const BLOCK: usize = 2 << 20;
    let dir = tempfile::tempdir()?;
    let server = Proc::start(&dir.path().join("data"), &[])?;
    let mut c = server.client().await?;
    let session = handshake(&mut c, "stall", config(16, BLOCK as u64)).await?;
    let hashes = prompt_hashes_seeded(1, 16, 16, 1);
    put_chain(&mut c, &session, &hashes, BLOCK).await?;

    // Stalled: raw TCP connections that never speak, Gets of 32 MiB never
    // read, Puts that send one block and go quiet.
    let mut raw = Vec::new();
    for _ in 0..16 {
        raw.push(std::net::TcpStream::connect(server.grpc)?);
    }
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut sc = server.client().await?;
        let stream = sc
            .get(GetRequest {
                session_id: session.clone(),
                hashes: hashes.clone(),
                stop_at_first_miss: false,
                agent_id: String::new(),
            })
            .await?
            .into_inner();
        stalled.push((sc, stream)); // never read
    }
    let mut quiet_puts = Vec::new();
    for i in 0..8u32 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let h = prompt_hashes_seeded(100 + i, 1, 16, 1);
        tx.send(kvtier_integration_tests::put_messages(&session, &h, BLOCK)[0].clone())
            .await?;
        let mut sc = server.client().await?;
        let task = tokio::spawn(async move {
            sc.put(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        quiet_puts.push((tx, task));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A well-behaved client is served promptly throughout.
    let mut worst = Duration::ZERO;
    for i in 0..20u32 {
        let t = Instant::now();
        let h = prompt_hashes_seeded(10_000 + i, 2, 16, 1);
        put_chain(&mut c, &session, &h, BLOCK).await?;
        let got = get_all(&mut c, &session, &h).await?;
        assert!(got.iter().all(|b| b.found));
        worst = worst.max(t.elapsed());
    }
    println!("stalled clients: worst put+get round trip of a live client {worst:?}");
    assert!(
        worst < Duration::from_secs(2),
        "live client slowed to {worst:?}"
    );
    drop(raw);
    drop(stalled);
    drop(quiet_puts);
    Ok(())
}
