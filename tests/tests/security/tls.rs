//! TLS and mTLS with certificates generated at test time; the plaintext rule.

use anyhow::{bail, Result};
use kvtier_integration_tests::{config, get_all, handshake, put_chain};

use crate::support::*;

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
