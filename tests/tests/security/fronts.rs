//! The agent's and the router's own fronts (issue 17, doors 1 and 2): the
//! agent serves a Unix socket by default and TCP only when asked (a
//! non-loopback address only with tokens), refuses to take over a live
//! agent's socket, and checks tokens on its calls; the router's gRPC and
//! HTTP fronts check bearer tokens, authorize each call against the model's
//! namespace (read for queries, write for load reports, agent lifecycle and
//! model calls), answer `FindMatches` only within the caller's namespaces,
//! and serve TLS with the cache server's flags.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kvtier_integration_tests::binary;
use kvtier_integration_tests::router::RouterProcess;
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::*;
use kvtier_testkit::{Error, Launch, NotReady, Process};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;

use crate::support::*;

/// Starts `kvtier-agent` with `args` (and metrics off); `Err((code, log))`
/// when it exits instead of becoming ready.
fn spawn_agent(log: &Path, args: &[&str]) -> Result<std::result::Result<Process, String>> {
    let launched = Launch::new(binary("kvtier-agent", "KVTIER_AGENT_BIN")?)
        .name("kvtier-agent")
        .args(["--metrics-listen", "off", "--server", "http://127.0.0.1:1"])
        .args(args)
        .env("KVTIER_LOG", "info")
        .log_append(log)
        .timeout(Duration::from_secs(20))
        .spawn();
    match launched {
        Ok(process) => Ok(Ok(process)),
        Err(Error::NotReady {
            reason: NotReady::Exited(code),
            log,
            ..
        }) => Ok(Err(format!("exit {code:?}: {log}"))),
        Err(e) => Err(e.into()),
    }
}

fn started(result: std::result::Result<Process, String>) -> Result<Process> {
    result.map_err(|log| anyhow!("the agent did not start: {log}"))
}

fn refused(result: std::result::Result<Process, String>, expect: &str) -> Result<()> {
    match result {
        Ok(p) => bail!(
            "the agent started ({}), expected a refusal naming {expect:?}",
            p.line().text()
        ),
        Err(log) if log.contains(expect) => Ok(()),
        Err(log) => bail!("the agent exited without naming {expect:?}: {log}"),
    }
}

async fn agent_stats(
    endpoint: &str,
    token: Option<&str>,
) -> std::result::Result<(), tonic::Status> {
    let mut client = kvtier_worker_agent::client::connect(endpoint)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = match token {
        Some(t) => authed(WorkerStatsRequest {}, t),
        None => tonic::Request::new(WorkerStatsRequest {}),
    };
    client.worker_stats(request).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_a_unix_socket_by_default_and_tcp_only_when_asked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = kvtier_testkit::dir::shm_tempdir()?;
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let sock = shm.path().join("agent.sock");
    let sock_arg = sock.display().to_string();

    // A Unix socket only: no TCP port at all, mode 0660, calls work on it.
    let first = started(spawn_agent(&log("first"), &["--uds", &sock_arg])?)?;
    assert_eq!(
        first.line().get("grpc"),
        Some("off"),
        "{}",
        first.line().text()
    );
    let meta = std::fs::symlink_metadata(&sock)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    agent_stats(&format!("unix:{sock_arg}"), None)
        .await
        .context("WorkerStats over the Unix socket")?;

    // A second agent must not take a live agent's socket.
    refused(
        spawn_agent(&log("second"), &["--uds", &sock_arg])?,
        "another process is serving it",
    )?;
    agent_stats(&format!("unix:{sock_arg}"), None)
        .await
        .context("the first agent still serves after the refused second one")?;

    // A regular file in the socket's place is never replaced.
    let file = shm.path().join("not-a-socket");
    std::fs::write(&file, b"keep me")?;
    refused(
        spawn_agent(&log("file"), &["--uds", &file.display().to_string()])?,
        "is not a socket",
    )?;
    assert_eq!(std::fs::read(&file)?, b"keep me");

    // TCP off loopback needs tokens; no listener at all is refused.
    refused(
        spawn_agent(&log("open-tcp"), &["--uds", "off", "--listen", "0.0.0.0:0"])?,
        "needs bearer tokens",
    )?;
    refused(
        spawn_agent(&log("no-listener"), &["--uds", "off"])?,
        "--uds off needs --listen",
    )?;
    drop(first);
    Ok(())
}

/// An agent on a Unix socket under `shm` and loopback TCP, accepting only the
/// token `token` of `principal`; `extra` flags are appended. Returns it and
/// its socket's path.
fn agent_with_token(
    dir: &Path,
    shm: &Path,
    principal: &str,
    token: &str,
    extra: &[&str],
) -> Result<(Process, String)> {
    let tokens = dir.join(format!("{principal}-tokens"));
    std::fs::write(&tokens, token_line(principal, token, "acme/*=rw"))?;
    let sock = shm.join("agent.sock").display().to_string();
    let tokens = tokens.display().to_string();
    let mut args = vec![
        "--uds",
        &sock,
        "--listen",
        "127.0.0.1:0",
        "--tokens-file",
        &tokens,
    ];
    args.extend_from_slice(extra);
    let agent = started(spawn_agent(&dir.join("agent.log"), &args)?)?;
    Ok((agent, sock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_checks_tokens_on_both_listeners() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = kvtier_testkit::dir::shm_tempdir()?;
    let (agent, sock) = agent_with_token(dir.path(), shm.path(), "engine", "tok-engine", &[])?;
    let tcp = format!("http://{}", agent.line().get("grpc").unwrap_or("?"));
    for endpoint in [tcp.as_str(), &format!("unix:{sock}")] {
        let err = agent_stats(endpoint, None)
            .await
            .expect_err("no token must be refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{endpoint}: {err}");
        let err = agent_stats(endpoint, Some("tok-wrong"))
            .await
            .expect_err("a wrong token must be refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{endpoint}: {err}");
        agent_stats(endpoint, Some("tok-engine"))
            .await
            .with_context(|| format!("{endpoint} with the engine's token"))?;
    }
    Ok(())
}

/// A worker whose engine and agent are unreachable.
const NO_WORKER: &str = "w0=http://127.0.0.1:1@http://127.0.0.1:1";

/// The router flags of the front tests: one model `m` in namespace
/// `acme/m`, `worker`, no cache server.
fn model_args(worker: &str) -> Vec<&str> {
    vec![
        "--cache-server",
        "",
        "--model",
        "m",
        "--namespace",
        "acme/m",
        "--worker",
        worker,
    ]
}

/// The router for the front tests ([`model_args`] with [`NO_WORKER`]); `args`
/// are appended.
fn router(dir: &Path, args: &[&str]) -> Result<RouterProcess> {
    let mut all = model_args(NO_WORKER);
    all.extend_from_slice(args);
    RouterProcess::start(&dir.join("router.log"), &all)
}

const ROUTER_TOKENS: [(&str, &str, &str); 3] = [
    ("reader", "tok-reader", "tenant=acme acme/*=r"),
    ("writer", "tok-writer", "tenant=acme acme/*=rw"),
    ("other", "tok-other", "tenant=other other/*=rw"),
];

fn write_router_tokens(dir: &Path) -> Result<String> {
    let text: String = ROUTER_TOKENS
        .iter()
        .map(|(p, t, rest)| token_line(p, t, rest))
        .collect();
    let path = dir.join("router-tokens");
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

fn find_request() -> FindMatchesRequest {
    FindMatchesRequest {
        prefix: Some(PrefixQuery {
            model: "m".into(),
            hashes: vec![1, 2, 3],
            ..Default::default()
        }),
    }
}

async fn find(
    client: &mut RouterServiceClient<Channel>,
    token: Option<&str>,
) -> std::result::Result<FindMatchesResponse, tonic::Status> {
    let request = match token {
        Some(t) => authed(find_request(), t),
        None => tonic::Request::new(find_request()),
    };
    Ok(client.find_matches(request).await?.into_inner())
}

async fn list(
    client: &mut RouterServiceClient<Channel>,
    token: &str,
) -> std::result::Result<Vec<WorkerInfo>, tonic::Status> {
    Ok(client
        .list_workers(authed(ListWorkersRequest::default(), token))
        .await?
        .into_inner()
        .workers)
}

/// An HTTP/1 request to the router: (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_authorizes_every_call_against_the_model_namespace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = write_router_tokens(dir.path())?;
    let router = router(dir.path(), &["--tokens-file", &tokens])?;
    let mut client = router.grpc_client().await?;

    // gRPC: a token is required; reading needs r on acme/m, and another
    // tenant learns nothing of what is cached there.
    let err = find(&mut client, None).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = find(&mut client, Some("tok-nope"))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let answer = find(&mut client, Some("tok-reader")).await?;
    assert_eq!(answer.query_blocks, 3);
    let err = find(&mut client, Some("tok-other"))
        .await
        .expect_err("another tenant");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("acme/m"), "{err}");
    assert_eq!(list(&mut client, "tok-reader").await?.len(), 1);
    assert!(
        list(&mut client, "tok-other").await?.is_empty(),
        "ListWorkers must not show another tenant's workers"
    );

    // Writes: load reports and agent lifecycle need w.
    let load = || ReportLoadRequest {
        model: "m".into(),
        worker_id: "w0".into(),
        queued_prefill_tokens: 1_000_000,
        ..Default::default()
    };
    let err = client
        .report_load(authed(load(), "tok-reader"))
        .await
        .expect_err("read-only ReportLoad");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    client.report_load(authed(load(), "tok-writer")).await?;
    let hint = || RouterHintRequest {
        model: "m".into(),
        agent_id: "a1".into(),
        pin: true,
        ..Default::default()
    };
    for (token, denied) in [
        ("tok-reader", true),
        ("tok-other", true),
        ("tok-writer", false),
    ] {
        let result = client.hint(authed(hint(), token)).await;
        let denied_now = matches!(&result, Err(s) if s.code() == Code::PermissionDenied);
        assert_eq!(denied_now, denied, "Hint as {token}: {result:?}");
    }
    let end = || RouterEndAgentRequest {
        model: "m".into(),
        agent_id: "a1".into(),
    };
    let err = client
        .end_agent(authed(end(), "tok-reader"))
        .await
        .expect_err("read-only EndAgent");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let register = || RouterRegisterAgentRequest {
        model: "m".into(),
        agent_id: "a2".into(),
        ..Default::default()
    };
    let err = client
        .register_agent(authed(register(), "tok-other"))
        .await
        .expect_err("another tenant's RegisterAgent");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // HTTP: 401 without a valid token, 403 without w on the namespace; the
    // writer gets past authorization (this router has no tokenizer: 503).
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let path = "/v1/chat/completions";
    let (status, text) = http(router.http, "POST", path, None, body).await?;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("authentication_error"), "{text}");
    let (status, text) = http(router.http, "POST", path, Some("tok-reader"), body).await?;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("permission_error") && text.contains("acme/m"),
        "{text}"
    );
    let (status, text) = http(router.http, "POST", path, Some("tok-other"), body).await?;
    assert_eq!(status, 403, "{text}");
    let (status, text) = http(router.http, "POST", path, Some("tok-writer"), body).await?;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no tokenizer"), "{text}");
    let (status, _) = http(router.http, "GET", "/v1/models", None, "").await?;
    assert_eq!(status, 401);
    let (status, text) = http(router.http, "GET", "/v1/models", Some("tok-reader"), "").await?;
    assert_eq!(status, 200);
    assert!(text.contains("\"id\":\"m\""), "{text}");
    let (_, text) = http(router.http, "GET", "/v1/models", Some("tok-other"), "").await?;
    assert!(
        !text.contains("\"id\":\"m\""),
        "another tenant sees the model: {text}"
    );
    let (status, _) = http(router.http, "GET", "/health", None, "").await?;
    assert_eq!(status, 200, "health probes need no token");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_fronts_serve_tls_and_refuse_plaintext_off_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = write_router_tokens(dir.path())?;

    // Plaintext on a non-loopback address is refused at start, naming the fix.
    let mut args = vec!["--http-listen", "0.0.0.0:0", "--grpc-listen", "127.0.0.1:0"];
    args.extend(model_args(NO_WORKER));
    let launched = Launch::new(binary("kvtier-router", "KVTIER_ROUTER_BIN")?)
        .name("kvtier-router")
        .args(&args)
        .log_append(dir.path().join("refused.log"))
        .timeout(Duration::from_secs(20))
        .spawn();
    match launched {
        Err(Error::NotReady {
            reason: NotReady::Exited(_),
            log,
            ..
        }) => assert!(log.contains("--allow-plaintext"), "{log}"),
        Ok(p) => bail!(
            "the router served plaintext off loopback: {}",
            p.line().text()
        ),
        Err(e) => return Err(e.into()),
    }

    // With TLS: a TLS client with a token is served; plaintext is not.
    let ca = TestCa::new("kvtier router test CA")?;
    let (cert, key) = ca.leaf("kvtier-router")?.write(dir.path(), "router")?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    args.truncate(0);
    args.extend([
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tokens-file",
        &tokens,
    ]);
    let router = router(dir.path(), &args)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem.cert))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", router.grpc))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = RouterServiceClient::new(channel);
    let answer = find(&mut client, Some("tok-reader")).await?;
    assert_eq!(answer.query_blocks, 3);
    let mut plain = router.grpc_client().await?;
    assert!(
        find(&mut plain, Some("tok-reader")).await.is_err(),
        "a plaintext client must not be served by a TLS front"
    );
    // The HTTP front speaks TLS too: a plaintext request gets no answer.
    assert!(
        http(router.http, "GET", "/health", None, "").await.is_err(),
        "the HTTP front answered plaintext while configured with TLS"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_reaches_an_agent_that_requires_a_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let shm = kvtier_testkit::dir::shm_tempdir()?;
    let (agent, _) = agent_with_token(
        dir.path(),
        shm.path(),
        "router",
        "tok-router",
        &["--worker-id", "w0"],
    )?;
    let worker = format!(
        "w0=http://127.0.0.1:1@http://{}",
        agent.line().get("grpc").unwrap_or("?")
    );
    let start = |name: &str, extra: &[&str]| {
        let mut args = model_args(&worker);
        args.extend_from_slice(extra);
        RouterProcess::start(&dir.path().join(format!("{name}.log")), &args)
    };
    let with_token = start("with-token", &["--agent-token", "tok-router"])?;
    with_token
        .wait_available(1)
        .await
        .context("the router with the agent's token must subscribe to its events")?;
    let without = start("without-token", &[])?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let workers = without
        .wait_workers("the worker listed", Duration::from_secs(5), |w| {
            !w.is_empty()
        })
        .await?;
    assert!(
        !workers[0].available,
        "a router without the agent's token was let in: {workers:?}"
    );
    assert!(
        without.log().contains("Unauthenticated") || without.log().contains("bearer token"),
        "the refused router should say why: {}",
        without.log()
    );
    Ok(())
}
