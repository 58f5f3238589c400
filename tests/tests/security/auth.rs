//! Hashed bearer tokens (SIGHUP reload) and tenant isolation.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvtier_integration_tests::{config, handshake};
use kvtier_proto::hashing::{effective_seed, DEFAULT_SEED};
use kvtier_proto::v1::*;
use tonic::Code;

use crate::support::*;

const BLOCK_TOKENS: usize = 16;

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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_with_identical_prompts_share_nothing_and_learn_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Proc::start_with_tokens(
        dir.path(),
        &(token_line("alice", "tok-a", "tenant=a a/*=rw")
            + &token_line("bob", "tok-b", "tenant=b b/*=rw")
            // A misconfigured grant: bob's reader may read a/*, but a/* belongs to tenant a.
            + &token_line("bob-reader", "tok-br", "tenant=b b/*=r a/*=r")),
        &[],
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
                    snapshot: false,
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
