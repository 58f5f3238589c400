//! A cluster of cache servers that serve TLS only and require bearer tokens
//! (three `kvtier-server --cluster` in a real etcd): the sharded client and
//! two real `kvtier-agent --cluster` reach every member with the CA and the
//! token; a missing token, an unknown token, plaintext or another CA get
//! nothing stored and nothing served, and a refused handshake (credentials
//! or another block size) is an error at attach, never a silent miss.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use kvtier_cluster::{ClusterError, ShardedClient, ShardedOptions};
use kvtier_integration_tests::cluster::{start_etcd, start_node, watch};
use kvtier_integration_tests::{
    config, free_port, payload_for, pool_blocks, prompt_hashes, sim_engine, AgentProcess,
};
use kvtier_proto::v1::BlockData;
use kvtier_security::ServerClientArgs;

use crate::support::*;

const POOL: [&str; 4] = ["--blocks", "96", "--block-bytes", "65536"];

fn sharded(
    membership: kvtier_cluster::MembershipWatch,
    security: &ServerClientArgs,
) -> Result<ShardedClient> {
    Ok(ShardedClient::with_options(
        membership,
        "cl",
        config(16, 4096),
        "security-test",
        ShardedOptions {
            warmup: Duration::ZERO,
            call_timeout: Duration::from_secs(10),
            security: security.resolve_for_cluster()?,
            ..ShardedOptions::default()
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_with_tls_and_tokens_serves_only_clients_with_the_ca_and_a_token() -> Result<()> {
    let Some(etcd) = start_etcd() else {
        return Ok(());
    };
    let url = etcd.url();
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("kvtier test CA")?;
    let other_ca = TestCa::new("someone else's CA")?;
    let (cert, key) = ca.leaf("kvtier-server")?.write(dir.path(), "server")?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem.cert)?;
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, &other_ca.pem.cert)?;
    let token_file = dir.path().join("worker.token");
    std::fs::write(&token_file, "tok-worker\n")?;
    let tokens_file = dir.path().join("tokens");
    std::fs::write(
        &tokens_file,
        token_line("worker", "tok-worker", "tenant=acme sim=rw cl=rw"),
    )?;
    let (cert, key, tokens) = (
        cert.display().to_string(),
        key.display().to_string(),
        tokens_file.display().to_string(),
    );
    let secured = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tokens-file",
        tokens.as_str(),
    ];
    let _servers = (0..3)
        .map(|i| {
            start_node(
                &url,
                &dir.path().join(format!("n{i}")),
                Some(&format!("n{i}")),
                &secured,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let observer = watch(&url).await?;
    let (_, all) = observer
        .wait_for(Duration::from_secs(30), |m| m.members.len() == 3)
        .await;
    if !all {
        bail!("the three TLS servers did not all register");
    }

    // The CA and the token: every member accepts, blocks spread over all
    // three and come back bit for bit.
    let good = ServerClientArgs {
        server_ca: Some(ca_file.clone()),
        server_tls_domain: Some("localhost".into()),
        server_token_file: Some(token_file.clone()),
        ..ServerClientArgs::default()
    };
    let client = sharded(observer.clone(), &good)?;
    assert_eq!(client.check_handshakes().await?, 3, "every member accepts");
    let hashes = prompt_hashes(5, 48, 16);
    let payload = |h: u64| Bytes::from(vec![(h % 251) as u8; 4096]);
    let blocks: Vec<BlockData> = hashes
        .iter()
        .map(|&h| BlockData {
            hash: h,
            parent_hash: None,
            payload: payload(h),
        })
        .collect();
    let put = client.put(blocks.clone()).await;
    assert_eq!((put.acknowledged, put.unstored), (48, 0), "{put:?}");
    let placement = client.membership().placement();
    for id in ["n0", "n1", "n2"] {
        assert!(
            hashes
                .iter()
                .any(|&h| placement.owner(h).is_some_and(|o| o.id == id)),
            "48 blocks over 3 shards: {id} owns none"
        );
    }
    let got = client.get(&hashes).await;
    for (h, block) in hashes.iter().zip(&got) {
        assert_eq!(block.as_ref(), Some(&payload(*h)), "block {h:#x}");
    }

    // No token, an unknown token: every member refuses, as an error.
    for (what, args) in [
        (
            "no token",
            ServerClientArgs {
                server_token_file: None,
                ..good.clone()
            },
        ),
        (
            "an unknown token",
            ServerClientArgs {
                server_token_file: None,
                server_token: Some("tok-nobody".into()),
                ..good.clone()
            },
        ),
    ] {
        let stranger = sharded(observer.clone(), &args)?;
        match stranger.check_handshakes().await {
            Err(ClusterError::HandshakeRefused { code, .. }) => {
                assert_eq!(code, tonic::Code::Unauthenticated, "{what}")
            }
            other => bail!("{what}: the handshake must be refused, got {other:?}"),
        }
        let put = stranger.put(blocks.clone()).await;
        assert_eq!(put.acknowledged, 0, "{what} stored blocks: {put:?}");
        assert!(
            stranger.get(&hashes).await.iter().all(Option::is_none),
            "{what} was served blocks"
        );
    }
    // Plaintext, or a CA that did not sign the servers' certificates: no
    // member is reached (not a refusal: no server answered), nothing served.
    for (what, args) in [
        (
            "plaintext",
            ServerClientArgs {
                server_ca: None,
                server_tls_domain: None,
                ..good.clone()
            },
        ),
        (
            "another CA",
            ServerClientArgs {
                server_ca: Some(other_ca_file.clone()),
                ..good.clone()
            },
        ),
    ] {
        let outsider = sharded(observer.clone(), &args)?;
        assert_eq!(outsider.check_handshakes().await?, 0, "{what}");
        assert!(
            outsider.get(&hashes).await.iter().all(Option::is_none),
            "{what} was served blocks"
        );
    }

    // Two real agents with the CA and the token: what A's engine offloads,
    // B's engine onboards bit for bit. An agent with an unknown token fails
    // the engine's attach, saying why.
    let shm = kvtier_testkit::dir::shm_tempdir()?;
    let nowhere = format!("https://127.0.0.1:{}", free_port()?);
    let (ca_arg, token_arg) = (
        ca_file.display().to_string(),
        token_file.display().to_string(),
    );
    let agent = |name: &str, token: &[&str]| {
        let mut args = vec![
            "--worker-id",
            name,
            "--cluster",
            &url,
            "--server-ca",
            &ca_arg,
            "--server-tls-domain",
            "localhost",
        ];
        args.extend_from_slice(token);
        AgentProcess::start_url(&dir.path().join(format!("{name}.log")), &nowhere, &args)
    };
    let a = agent("A", &["--server-token-file", &token_arg])?;
    let b = agent("B", &["--server-token-file", &token_arg])?;
    let mut args = POOL.to_vec();
    args.extend(["compute", "--prompt-seed", "11", "--prompt-blocks", "24"]);
    let out = sim_engine(&a.endpoint(), &shm.path().join("pool-a"), &args)?;
    assert_eq!(
        out.get("stored").map(String::as_str),
        Some("24"),
        "{out:?}\n{}",
        a.log()
    );
    let mut args = POOL.to_vec();
    args.extend([
        "onboard",
        "--prompt-seed",
        "11",
        "--prompt-blocks",
        "24",
        "--first-block",
        "48",
    ]);
    let pool_b = shm.path().join("pool-b");
    let out = sim_engine(&b.endpoint(), &pool_b, &args)?;
    assert_eq!(
        out.get("verified").map(String::as_str),
        Some("24"),
        "{out:?}\n{}",
        b.log()
    );
    let expected: Vec<u8> = prompt_hashes(11, 24, 16)
        .iter()
        .flat_map(|&h| payload_for(h, 65536).to_vec())
        .collect();
    assert_eq!(pool_blocks(&pool_b, 48, 24, 65536)?, expected);

    let stranger = agent("C", &["--server-token", "tok-nobody"])?;
    let mut args = POOL.to_vec();
    args.extend(["compute", "--prompt-seed", "11", "--prompt-blocks", "4"]);
    let started = Instant::now();
    let err = sim_engine(&stranger.endpoint(), &shm.path().join("pool-c"), &args)
        .err()
        .ok_or_else(|| anyhow!("an agent with an unknown token must not attach in a cluster"))?;
    let err = format!("{err:#}");
    assert!(
        err.contains("refused namespace") && err.contains("unknown or revoked token"),
        "the refusal says who refused and why: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused at once"
    );

    // A good token but another block size than the namespace's (made
    // cluster-wide by A's attach): the members refuse the config, and the
    // attach fails with their reason instead of every block missing.
    let other_size = agent("D", &["--server-token-file", &token_arg])?;
    let args = [
        "--blocks",
        "96",
        "--block-bytes",
        "32768",
        "compute",
        "--prompt-seed",
        "11",
        "--prompt-blocks",
        "4",
    ];
    let err = sim_engine(&other_size.endpoint(), &shm.path().join("pool-d"), &args)
        .err()
        .ok_or_else(|| anyhow!("another block size must not attach in a cluster"))?;
    let err = format!("{err:#}");
    assert!(
        err.contains("refused namespace") && err.contains("differs in block_bytes"),
        "the mismatch says who refused and why: {err}"
    );
    Ok(())
}
