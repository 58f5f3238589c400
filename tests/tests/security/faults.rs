//! kill -9 during heavy writes, a full disk, stalled clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use kvtier_integration_tests::{config, get_all, handshake, payload_for, put_chain};
use kvtier_proto::v1::*;
use tonic::Code;

use crate::support::*;

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
        kvtier_testkit::prereq::missing(
            "a size-limited tmpfs for the disk-full test",
            "run as root (mount -t tmpfs), e.g. in a container with CAP_SYS_ADMIN",
        );
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
