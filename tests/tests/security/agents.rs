//! Agent lifecycle calls (RegisterAgent, Hint, EndAgent) change the
//! eviction order for every client of a namespace: they need write access,
//! an agent belongs to the token that registered it, leases and the number
//! of live agents per namespace are capped.

use anyhow::Result;
use kvtier_integration_tests::{config, handshake};
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::*;

type Client = CacheServiceClient<Channel>;

fn register_request(
    session: &str,
    agent: &str,
    parent: &str,
    lease_ms: Option<u64>,
) -> RegisterAgentRequest {
    RegisterAgentRequest {
        session_id: session.into(),
        agent_id: agent.into(),
        parent_agent_id: parent.into(),
        lease_ms,
        ..Default::default()
    }
}

async fn register(
    c: &mut Client,
    token: &str,
    session: &str,
    agent: &str,
    parent: &str,
) -> Result<RegisterAgentResponse, Status> {
    let r = register_request(session, agent, parent, None);
    Ok(c.register_agent(authed(r, token)).await?.into_inner())
}

/// A hint that pins `blocks` for `agent`.
async fn pin(
    c: &mut Client,
    token: &str,
    session: &str,
    agent: &str,
    blocks: &[u64],
) -> Result<HintResponse, Status> {
    let r = HintRequest {
        session_id: session.into(),
        agent_id: agent.into(),
        blocks: blocks.to_vec(),
        ending: CallEnding::ToolCall as i32,
        pin: true,
        ..Default::default()
    };
    Ok(c.hint(authed(r, token)).await?.into_inner())
}

async fn end(c: &mut Client, token: &str, session: &str, agent: &str) -> Result<u32, Status> {
    let r = EndAgentRequest {
        session_id: session.into(),
        agent_id: agent.into(),
    };
    Ok(c.end_agent(authed(r, token)).await?.into_inner().ended)
}

fn denied<T: std::fmt::Debug>(result: Result<T, Status>, what: &str, says: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(
        status.message().contains(says),
        "{what}: the message should say {says:?}: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_lifecycle_calls_need_write_access_and_belong_to_their_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Proc::start_with_tokens(
        dir.path(),
        &(token_line("harness-a", "tok-a", "tenant=acme team/*=rw")
            + &token_line("harness-b", "tok-b", "tenant=acme team/*=rw")
            + &token_line("reader", "tok-r", "tenant=acme team/*=r")),
        &[],
    )?;
    let mut c = server.client().await?;
    let cfg = config(16, 256);
    let (sa, _) = handshake_as(&mut c, "tok-a", "team/m", cfg.clone()).await?;
    let (sb, _) = handshake_as(&mut c, "tok-b", "team/m", cfg.clone()).await?;
    let (sr, _) = handshake_as(&mut c, "tok-r", "team/m", cfg).await?;

    // A reader may not change the eviction order: every lifecycle call is
    // refused, with a message that says which grant is missing.
    let grant = "team/m=rw";
    denied(
        register(&mut c, "tok-r", &sr, "r1", "").await,
        "reader registers",
        grant,
    );
    denied(
        pin(&mut c, "tok-r", &sr, "r1", &[1, 2]).await,
        "reader pins",
        grant,
    );
    denied(
        end(&mut c, "tok-r", &sr, "r1").await,
        "reader ends",
        "write access",
    );

    // harness-a's agent: harness-b may not hint, pin, end or re-register
    // it, nor hang a sub-agent under it; the reader may not end it either.
    let created = register(&mut c, "tok-a", &sa, "coder", "").await?;
    assert!(created.created);
    let other = "another token";
    denied(
        pin(&mut c, "tok-b", &sb, "coder", &[7]).await,
        "b pins a's agent",
        other,
    );
    denied(
        end(&mut c, "tok-b", &sb, "coder").await,
        "b ends a's agent",
        other,
    );
    denied(
        register(&mut c, "tok-b", &sb, "coder", "").await,
        "b re-registers",
        other,
    );
    denied(
        register(&mut c, "tok-b", &sb, "sub", "coder").await,
        "b's sub-agent",
        other,
    );
    denied(
        end(&mut c, "tok-r", &sr, "coder").await,
        "reader ends a's agent",
        grant,
    );

    // Its owner may do all of it.
    assert!(!register(&mut c, "tok-a", &sa, "coder", "").await?.created);
    assert!(
        register(&mut c, "tok-a", &sa, "coder/sub", "coder")
            .await?
            .created
    );
    pin(&mut c, "tok-a", &sa, "coder", &[7]).await?;
    assert_eq!(
        end(&mut c, "tok-a", &sa, "coder").await?,
        2,
        "the agent and its sub-agent"
    );
    // Once ended, the id is free: harness-b registers it as its own.
    assert!(register(&mut c, "tok-b", &sb, "coder", "").await?.created);
    denied(
        end(&mut c, "tok-a", &sa, "coder").await,
        "a ends b's agent",
        other,
    );
    assert_eq!(end(&mut c, "tok-b", &sb, "coder").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_leases_and_agents_per_namespace_are_capped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // No tokens (the default): lifecycle calls stay open to every client,
    // within the caps.
    let server = Proc::start(
        &dir.path().join("data"),
        &[
            "--max-agent-lease-ms",
            "60000",
            "--max-agents-per-namespace",
            "3",
        ],
    )?;
    let mut c = server.client().await?;
    let session = handshake(&mut c, "ns", config(16, 256)).await?;
    let other = handshake(&mut c, "other", config(16, 256)).await?;

    let over = c
        .register_agent(register_request(&session, "a0", "", Some(60_001)))
        .await
        .expect_err("a lease over the cap");
    assert_eq!(over.code(), Code::InvalidArgument, "{over:?}");
    assert!(
        over.message().contains("60000") && over.message().contains("--max-agent-lease-ms"),
        "{}",
        over.message()
    );
    let at_cap = c
        .register_agent(register_request(&session, "a0", "", Some(60_000)))
        .await?
        .into_inner();
    assert_eq!(at_cap.lease_ms, 60_000);
    // No lease asked: the default (30 min), capped.
    let default = c
        .register_agent(register_request(&session, "a1", "", None))
        .await?
        .into_inner();
    assert_eq!(default.lease_ms, 60_000);
    c.register_agent(register_request(&session, "a2", "", None))
        .await?;

    let full = c
        .register_agent(register_request(&session, "a3", "", None))
        .await
        .expect_err("a fourth agent");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(
        full.message().contains("3 live agents")
            && full.message().contains("--max-agents-per-namespace"),
        "{}",
        full.message()
    );
    // Registering a live agent again is not a new one; other namespaces
    // have their own count.
    let again = c
        .register_agent(register_request(&session, "a2", "", None))
        .await?
        .into_inner();
    assert!(!again.created);
    c.register_agent(register_request(&other, "a3", "", None))
        .await?;
    // Without tokens any client may end any agent (as before); that frees a place.
    let mut c2 = server.client().await?;
    let ended = c2
        .end_agent(EndAgentRequest {
            session_id: session.clone(),
            agent_id: "a0".into(),
        })
        .await?
        .into_inner();
    assert_eq!(ended.ended, 1);
    let created = c
        .register_agent(register_request(&session, "a3", "", None))
        .await?
        .into_inner();
    assert!(created.created);
    Ok(())
}
