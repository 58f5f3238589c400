//! The server's own clients on a secured deployment: `kvtier-agent` and
//! `kvtier-router` reach a `kvtier-server` that serves TLS only and requires
//! bearer tokens (--server-ca, --server-token[-file], --server-tls-domain);
//! wrong or missing credentials are refused with a message that names them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use kvtier_integration_tests::router::RouterProcess;
use kvtier_integration_tests::{config, metric_sum, sim_engine, AgentProcess};
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::*;

use crate::support::*;

const POOL: [&str; 4] = ["--blocks", "64", "--block-bytes", "65536"];

fn field(out: &std::collections::HashMap<String, String>, key: &str) -> Result<u64> {
    out.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no numeric {key} in {out:?}"))
}

fn engine(agent: &AgentProcess, pool: &Path, args: &[&str]) -> Result<Vec<u64>> {
    let mut all = POOL.to_vec();
    all.extend(args);
    let out = sim_engine(&agent.endpoint(), pool, &all)?;
    Ok(match args[0] {
        "compute" => vec![field(&out, "stored")?, field(&out, "skipped")?],
        _ => vec![field(&out, "loaded_prefix")?, field(&out, "verified")?],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_and_the_router_reach_a_server_with_tls_and_tokens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("kvtier test CA")?;
    let (cert, key) = ca.leaf("kvtier-server")?.write(dir.path(), "server")?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem.cert)?;
    let ca_file = ca_file.display().to_string();
    let worker_token_file = dir.path().join("worker.token");
    std::fs::write(&worker_token_file, "tok-worker\n")?;
    let worker_token_file = worker_token_file.display().to_string();
    let tokens = [
        token_line("worker", "tok-worker", "tenant=acme sim=rw rt=rw"),
        // rw: the router's agent lifecycle calls (hints) change eviction.
        token_line("router", "tok-router", "tenant=acme rt=rw"),
    ]
    .concat();
    let tokens_file = dir.path().join("tokens");
    std::fs::write(&tokens_file, tokens)?;
    let server = Proc::start_with(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--tokens-file",
            &tokens_file.display().to_string(),
            "--metrics-plaintext",
        ],
    )?;
    // The certificate names localhost and 127.0.0.1; the URL uses the IP and
    // the name checked is given explicitly.
    let url = format!("https://127.0.0.1:{}", server.grpc.port());
    let secure = ["--server-ca", &ca_file, "--server-tls-domain", "localhost"];

    // The agent: an engine offloads 16 blocks through it and onboards them
    // back into other pool blocks, bit for bit.
    let shm = kvtier_testkit::dir::shm_tempdir()?; // beneath the agent's --pool-dir
    let pool = shm.path().join("pool");
    let mut args = secure.to_vec();
    args.extend(["--server-token-file", &worker_token_file]);
    let agent = AgentProcess::start_url(&dir.path().join("agent.log"), &url, &args)?;
    let compute = ["compute", "--prompt-seed", "7", "--prompt-blocks", "16"];
    assert_eq!(engine(&agent, &pool, &compute)?, [16, 0], "{}", agent.log());
    let onboard = [
        "onboard",
        "--prompt-seed",
        "7",
        "--prompt-blocks",
        "16",
        "--first-block",
        "32",
    ];
    assert_eq!(
        engine(&agent, &pool, &onboard)?,
        [16, 16],
        "{}",
        agent.log()
    );
    let metrics = kvtier_integration_tests::http_get(
        server.metrics.ok_or_else(|| anyhow!("no metrics"))?,
        "/metrics",
    )?;
    assert!(
        metric_sum(
            &metrics,
            "kvtier_request_duration_seconds_count",
            &[("method", "put"), ("code", "ok")]
        ) >= 1.0,
        "the server saw no Put:\n{metrics}"
    );

    // A wrong token: the engine's attach is refused, saying why.
    let mut args = secure.to_vec();
    args.extend(["--server-token", "tok-nobody"]);
    let stranger = AgentProcess::start_url(&dir.path().join("stranger.log"), &url, &args)?;
    let err = engine(&stranger, &shm.path().join("pool2"), &compute)
        .expect_err("an unknown token must not store blocks");
    assert!(
        format!("{err:#}")
            .to_lowercase()
            .contains("unauthenticated")
            || format!("{err:#}").contains("token"),
        "{err:#}"
    );
    // https:// without a CA, or the data plane beside TLS: refused at start.
    let err = AgentProcess::start_url(&dir.path().join("noca.log"), &url, &[])
        .err()
        .ok_or_else(|| anyhow!("an https server URL without --server-ca must not start"))?;
    let log = std::fs::read_to_string(dir.path().join("noca.log")).unwrap_or_default();
    assert!(log.contains("--server-ca"), "{err:#}\n{log}");
    let mut args = secure.to_vec();
    args.extend(["--server-data", "127.0.0.1:50052"]);
    assert!(
        AgentProcess::start_url(&dir.path().join("data.log"), &url, &args).is_err(),
        "--server-data with TLS must not start"
    );

    // The router: its WatchEvents stream sees blocks that a writer puts, and
    // its lifecycle calls reach the server.
    let mut writer = server.tls_client(&ca.pem, None).await?;
    let (session, seed) = handshake_as(&mut writer, "tok-worker", "rt", config(16, 4096))
        .await
        .map_err(|s| anyhow!("writer handshake: {s}"))?;
    let router_args = |token: &'static str| {
        vec![
            "--cache-server".to_string(),
            url.clone(),
            "--server-ca".into(),
            ca_file.clone(),
            "--server-tls-domain".into(),
            "localhost".into(),
            "--server-token".into(),
            token.into(),
            "--namespace".into(),
            "rt".into(),
            "--model".into(),
            "test-model".into(),
            "--kv-layout".into(),
            "test:layers=2,kv=2".into(),
            "--block-bytes".into(),
            "4096".into(),
            "--worker".into(),
            "w0=http://127.0.0.1:9@http://127.0.0.1:9".into(),
        ]
    };
    let args = router_args("tok-router");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let router = RouterProcess::start(&dir.path().join("router.log"), &args)?;
    let hashes = prompt_hashes_seeded(3, 6, 16, seed);
    put_as(&mut writer, "tok-worker", &session, &hashes, 4096)
        .await
        .map_err(|s| anyhow!("put: {s}"))?;
    let mut client = RouterServiceClient::connect(format!("http://{}", router.grpc)).await?;
    let start = Instant::now();
    loop {
        let found = client
            .find_matches(FindMatchesRequest {
                prefix: Some(PrefixQuery {
                    model: "test-model".into(),
                    hashes: hashes.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        if found.cache_prefix_blocks == 6 {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "the router never saw the cache's blocks ({} of 6):\n{}",
                found.cache_prefix_blocks,
                router.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .register_agent(RouterRegisterAgentRequest {
            model: "test-model".into(),
            agent_id: "coder-1".into(),
            ..Default::default()
        })
        .await?;
    let ended = client
        .end_agent(RouterEndAgentRequest {
            model: "test-model".into(),
            agent_id: "coder-1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(ended.ended, 1, "{}", router.log());

    // A router with a token the server does not know refuses to start.
    let args = router_args("tok-nobody");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = RouterProcess::start(&dir.path().join("router2.log"), &args);
    let log = std::fs::read_to_string(dir.path().join("router2.log")).unwrap_or_default();
    assert!(refused.is_err(), "a router with an unknown token started");
    assert!(log.contains("token"), "{log}");
    Ok(())
}
