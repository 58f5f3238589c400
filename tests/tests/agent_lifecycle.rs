//! Agent lifecycle on the real `kvtier-server`: register → calls with hints →
//! end; an ended agent's blocks leave before a live agent's under pressure.

use std::time::Duration;

use kvtier_integration_tests::*;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{CallEnding, GetRequest};
use tonic::transport::Channel;
use tonic::Code;

const BLOCK: usize = 4096;

/// One agent call: the harness stores the call's new blocks, then hints.
async fn call(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    agent: &str,
    blocks: &[u64],
) -> anyhow::Result<()> {
    put_chain(client, session, blocks, BLOCK).await?;
    let resident = hint(client, session, agent, blocks, CallEnding::ToolCall, false).await?;
    assert_eq!(resident as usize, blocks.len());
    Ok(())
}

/// Runs the scenario against a server with `policy`; returns which of A's and
/// B's blocks survive.
async fn scenario(policy: &str) -> anyhow::Result<(usize, usize)> {
    let dir = tempfile::tempdir()?;
    // 8 blocks fit; no disk tier, so pressure drops blocks.
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--host-capacity",
            "32KiB",
            "--disk-capacity",
            "0",
            "--policy",
            policy,
        ],
    )?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "agents", config(16, BLOCK as u64)).await?;
    let (a, b, c) = (
        prompt_hashes(1, 4, 16),
        prompt_hashes(2, 4, 16),
        prompt_hashes(3, 4, 16),
    );
    assert!(register_agent(&mut client, &session, "agent-b", "", 0, None).await?);
    assert!(register_agent(&mut client, &session, "agent-a", "", 0, None).await?);
    call(&mut client, &session, "agent-b", &b).await?;
    call(&mut client, &session, "agent-a", &a).await?;
    // A's blocks are the most recently used ones...
    let got = get_all(&mut client, &session, &a).await?;
    assert!(got.iter().all(|g| g.found));
    // ...but A is done.
    assert_eq!(end_agent(&mut client, &session, "agent-a").await?, 1);
    register_agent(&mut client, &session, "agent-c", "", 0, None).await?;
    call(&mut client, &session, "agent-c", &c).await?;

    let present = |hashes: &[u64], got: &[kvtier_proto::v1::GetResponse]| {
        hashes.iter().zip(got).filter(|(_, g)| g.found).count()
    };
    let got_a = get_all(&mut client, &session, &a).await?;
    let got_b = get_all(&mut client, &session, &b).await?;
    let got_c = get_all(&mut client, &session, &c).await?;
    assert_eq!(present(&c, &got_c), 4, "the newest call's blocks must stay");
    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(
            &metrics,
            "kvtier_agents_ended_total",
            &[("reason", "explicit")]
        ),
        1.0
    );
    assert_eq!(metric_sum(&metrics, "kvtier_agents_live", &[]), 2.0);
    Ok((present(&a, &got_a), present(&b, &got_b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_agents_blocks_are_evicted_before_a_live_agents() -> anyhow::Result<()> {
    let (a, b) = scenario("value").await?;
    assert_eq!(
        (a, b),
        (0, 4),
        "value policy: ended agent A must lose its blocks first"
    );
    // The same calls under LRU evict the live agent's older blocks instead:
    // the difference is the lifecycle, not the order of the calls.
    let (a, b) = scenario("lru").await?;
    assert_eq!(
        (a, b),
        (4, 0),
        "LRU keeps the recently read blocks of the ended agent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_errors_are_clear() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &["--pin-quota-blocks", "2"])?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "agents", config(16, BLOCK as u64)).await?;

    let err = hint(
        &mut client,
        &session,
        "ghost",
        &[1],
        CallEnding::ToolCall,
        false,
    )
    .await
    .expect_err("unknown agent");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("ghost"), "{}", err.message());

    let err = register_agent(&mut client, &session, "zero", "", 0, Some(0))
        .await
        .expect_err("lease 0");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("lease"), "{}", err.message());

    let err = register_agent(&mut client, &session, "orphan", "no-such-parent", 0, None)
        .await
        .expect_err("unknown parent");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let err = register_agent(&mut client, &session, "loud", "", 99, None)
        .await
        .expect_err("priority out of range");
    assert_eq!(err.code(), Code::InvalidArgument);

    // registration is idempotent; a conflicting one is refused
    assert!(register_agent(&mut client, &session, "main", "", 1, None).await?);
    assert!(!register_agent(&mut client, &session, "main", "", 1, None).await?);
    let err = register_agent(&mut client, &session, "main", "", 3, None)
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), Code::AlreadyExists);

    // sub-agents end with their parent
    assert!(register_agent(&mut client, &session, "sub", "main", 0, None).await?);
    let blocks = prompt_hashes(9, 4, 16);
    put_chain(&mut client, &session, &blocks, BLOCK).await?;
    // pins are bounded by the namespace quota (2 blocks here)
    hint(
        &mut client,
        &session,
        "main",
        &blocks,
        CallEnding::Unspecified,
        false,
    )
    .await?;
    let err = hint(
        &mut client,
        &session,
        "main",
        &[],
        CallEnding::EndOfTurn,
        true,
    )
    .await
    .expect_err("pin over quota");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("quota"), "{}", err.message());
    let err = hint(
        &mut client,
        &session,
        "main",
        &[],
        CallEnding::Unspecified,
        false,
    )
    .await
    .expect_err("empty hint");
    assert_eq!(err.code(), Code::InvalidArgument);

    // hits are attributed to the reading agent's priority class
    let mut stream = client
        .get(GetRequest {
            session_id: session.clone(),
            hashes: blocks.clone(),
            stop_at_first_miss: false,
            agent_id: "main".into(),
        })
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(
            &metrics,
            "kvtier_block_hits_total",
            &[("priority", "high"), ("op", "get")]
        ),
        4.0
    );

    assert_eq!(end_agent(&mut client, &session, "main").await?, 2);
    let err = end_agent(&mut client, &session, "sub")
        .await
        .expect_err("already ended");
    assert_eq!(err.code(), Code::NotFound);

    // a silent agent is ended when its lease runs out
    register_agent(&mut client, &session, "quiet", "", 0, Some(300)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = hint(
        &mut client,
        &session,
        "quiet",
        &blocks,
        CallEnding::ToolCall,
        false,
    )
    .await
    .expect_err("lease expired");
    assert_eq!(err.code(), Code::NotFound);
    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(
            &metrics,
            "kvtier_agents_ended_total",
            &[("reason", "lease")]
        ),
        1.0
    );
    Ok(())
}
