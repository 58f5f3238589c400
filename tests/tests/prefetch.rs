//! Server-side prefetch on the real `kvtier-server --prefetch`: a live
//! agent's blocks pushed down to disk come back to the host tier on their
//! own (no client reads them) once the host holds only lower-valued blocks;
//! with a zero bandwidth budget the rounds run and nothing moves.

use std::time::{Duration, Instant};

use kvtier_integration_tests::*;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::{CallEnding, LookupRequest, Tier};
use tonic::transport::Channel;

const BLOCK: usize = 4096;

/// One answered call of `agent` over `blocks` (stored first).
async fn call(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    agent: &str,
    blocks: &[u64],
    ending: CallEnding,
) -> anyhow::Result<()> {
    put_chain(client, session, blocks, BLOCK).await?;
    hint(client, session, agent, blocks, ending, false).await?;
    Ok(())
}

async fn tiers(
    client: &mut CacheServiceClient<Channel>,
    session: &str,
    hashes: &[u64],
) -> anyhow::Result<Vec<Tier>> {
    let resp = client
        .lookup(LookupRequest {
            session_id: session.into(),
            hashes: hashes.to_vec(),
        })
        .await?
        .into_inner();
    Ok(resp
        .tiers
        .iter()
        .map(|&t| Tier::try_from(t).unwrap_or(Tier::None))
        .collect())
}

/// Agent A (ended its turn: back late) stores 4 blocks; agent B (tool calls:
/// back soon) grows its context block by block to 8, pushing A's blocks
/// down to disk (host: 8 blocks); then B ends, so B's blocks are worth
/// nothing and A's are the most valuable blocks on disk. Returns the server,
/// the session and A's hashes.
async fn scenario(
    dir: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<(ServerProcess, CacheServiceClient<Channel>, String, Vec<u64>)> {
    let mut args = vec!["--host-capacity", "32KiB", "--prefetch-interval-ms", "50"];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(&dir.join("data"), &args)?;
    let mut client = server.client().await?;
    let session = handshake(&mut client, "prefetch", config(16, BLOCK as u64)).await?;
    let (a, b) = (prompt_hashes(1, 4, 16), prompt_hashes(2, 8, 16));
    register_agent(&mut client, &session, "agent-a", "", 0, None).await?;
    register_agent(&mut client, &session, "agent-b", "", 0, None).await?;
    call(&mut client, &session, "agent-a", &a, CallEnding::EndOfTurn).await?;
    for n in 1..=b.len() {
        call(
            &mut client,
            &session,
            "agent-b",
            &b[..n],
            CallEnding::ToolCall,
        )
        .await?;
    }
    end_agent(&mut client, &session, "agent-b").await?;
    Ok((server, client, session, a))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_brings_a_live_agents_disk_blocks_back_to_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, mut client, session, a) = scenario(dir.path(), &["--prefetch"]).await?;
    // Within a few rounds (generous: the machine may be loaded).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = tiers(&mut client, &session, &a).await?;
        if now.iter().all(|t| *t == Tier::Host) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "A's blocks did not come back to host: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No client read them: the prefetcher moved them, displacing B's.
    let metrics = server.metrics_text()?;
    assert!(metric_sum(&metrics, "kvtier_prefetch_blocks_total", &[]) >= 4.0);
    assert!(metric_sum(&metrics, "kvtier_prefetch_displaced_total", &[]) >= 4.0);
    assert!(metric_sum(&metrics, "kvtier_prefetch_bytes_total", &[]) >= (4 * BLOCK) as f64);
    // And they read back intact from host.
    let got = get_all(&mut client, &session, &a).await?;
    for (h, g) in a.iter().zip(&got) {
        assert!(g.found);
        assert_eq!(g.payload, payload_for(*h, BLOCK));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_bandwidth_the_rounds_run_and_nothing_moves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, mut client, session, a) =
        scenario(dir.path(), &["--prefetch", "--prefetch-bytes-per-s", "0"]).await?;
    // Wait for at least 10 rounds to have run.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rounds = metric_sum(&server.metrics_text()?, "kvtier_prefetch_rounds_total", &[]);
        if rounds >= 10.0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {rounds} prefetch rounds ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tiers(&mut client, &session, &a).await?, vec![Tier::Disk; 4]);
    let metrics = server.metrics_text()?;
    assert_eq!(
        metric_sum(&metrics, "kvtier_prefetch_blocks_total", &[]),
        0.0
    );
    Ok(())
}
