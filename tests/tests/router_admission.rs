//! The router's admission queue end to end: a real `kvtier-router` in front
//! of one slow `kvtier-sim-worker` (with its `kvtier-agent` and a
//! `kvtier-server`), saturated with `--busy-running-calls 1` so that every
//! call past the first waits at the router.
//!
//! Each test fails with the queue off (`--admission-queue off`, or aging off
//! for the aging test): the calls then pile into the worker's own FIFO.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use kvtier_integration_tests::model_api::*;
use kvtier_integration_tests::*;
use kvtier_prompt::Api;

const NAMESPACE: &str = "admission-test";

/// One worker whose calls each last `decode_ms`-ish (slow decode), and a
/// router that counts it busy while one call runs.
struct Saturated {
    _dir: tempfile::TempDir,
    _shm: tempfile::TempDir,
    _server: ServerProcess,
    _agent: AgentProcess,
    worker: SimWorkerProcess,
    router: RouterProcess,
}

impl Saturated {
    /// `decode_tps`: the worker's decode speed (a call of `n` output tokens
    /// runs about n / decode_tps s); `router_args` are appended.
    async fn start(decode_tps: u32, router_args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let shm = shm_dir()?;
        let tokenizer: PathBuf =
            kvtier_prompt::testing::write_tiny_tokenizer(&dir.path().join("model"))?;
        let server = ServerProcess::start(&dir.path().join("server"), &[])?;
        let agent = AgentProcess::start(
            &dir.path().join("agent.log"),
            server.grpc,
            &["--worker-id", "w0"],
        )?;
        let decode = decode_tps.to_string();
        let worker = SimWorkerProcess::start(
            &dir.path().join("worker.log"),
            &agent.endpoint(),
            &shm.path().join("pool"),
            &tokenizer,
            &[
                "--pool-blocks",
                "512",
                "--block-bytes",
                "8192",
                "--model",
                MODEL,
                "--namespace",
                NAMESPACE,
                "--prefill-tokens-per-s",
                "100000",
                "--decode-tokens-per-s",
                &decode,
            ],
        )?;
        if !worker.attached {
            bail!("the worker did not attach to its agent");
        }
        let server_url = format!("http://{}", server.grpc);
        let tokenizer_arg = tokenizer.display().to_string();
        let spec = format!("w0=http://{}@{}", worker.http, agent.endpoint());
        let mut args: Vec<&str> = vec![
            "--cache-server",
            &server_url,
            "--namespace",
            NAMESPACE,
            "--model",
            MODEL,
            "--block-bytes",
            "8192",
            "--tokenizer",
            &tokenizer_arg,
            "--worker",
            &spec,
            // Busy while one call runs; the token bound out of the way.
            "--busy-running-calls",
            "1",
            "--busy-prefill-tokens",
            "1000000000",
        ];
        args.extend_from_slice(router_args);
        let router = RouterProcess::start(&dir.path().join("router.log"), &args)?;
        let fleet = Self {
            _dir: dir,
            _shm: shm,
            _server: server,
            _agent: agent,
            worker,
            router,
        };
        fleet.wait_available().await?;
        Ok(fleet)
    }

    async fn wait_available(&self) -> Result<()> {
        self.router.wait_available(1).await
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_sum(&self.router.metrics_text()?, name, labels))
    }

    /// Waits until `depth` calls wait in the router's queue.
    async fn wait_depth(&self, depth: f64) -> Result<()> {
        let start = Instant::now();
        loop {
            let now = self.metric("kvtier_router_queue_depth", &[])?;
            if now == depth {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!(
                    "queue depth {now}, expected {depth}, after 5 s\n--- router\n{}",
                    self.router.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- router\n{}\n--- worker\n{}",
            self.router.log(),
            self.worker.log()
        )
    }
}

/// A call of `api` with the given hints and `max_tokens` output tokens.
fn call(api: Api, tag: &str, priority: i32, sensitivity: f32, max_tokens: u32) -> Value {
    let question = format!("Call {tag}: summarise the failing tests and propose a fix.");
    let mut body = request(api, &[("user", question.as_str())], max_tokens, false);
    body["nvext"] = json!({"agent_hints": {
        "priority": priority, "latency_sensitivity": sensitivity, "osl": max_tokens,
    }});
    body
}

/// One call's outcome, with when it was sent and when its answer ended.
struct Outcome {
    tag: String,
    sent: Instant,
    done: Instant,
    reply: Reply,
}

impl Outcome {
    /// When the router admitted it (sent + x-kvtier-queued-ms).
    fn admitted(&self) -> Option<Instant> {
        let ms: u64 = self.reply.header("x-kvtier-queued-ms").parse().ok()?;
        Some(self.sent + Duration::from_millis(ms))
    }
}

fn spawn_call(
    router: std::net::SocketAddr,
    api: Api,
    tag: String,
    body: Value,
) -> tokio::task::JoinHandle<Result<Outcome>> {
    tokio::spawn(async move {
        let sent = Instant::now();
        let reply = post(router, api, &body).await?;
        Ok(Outcome {
            tag,
            sent,
            done: Instant::now(),
            reply,
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_saturation_an_urgent_call_overtakes_queued_bulk_calls() -> Result<()> {
    // Bulk calls decode 8 tokens at 20 tok/s: about 400 ms on the worker;
    // the blocker 24 (1.2 s, while the others queue up behind it).
    let fleet = Saturated::start(20, &[]).await?;
    let http = fleet.router.http;
    let api = Api::ChatCompletions;
    let blocker = spawn_call(
        http,
        api,
        "blocker".into(),
        call(api, "blocker", 0, 0.0, 24),
    );
    fleet.wait_depth(0.0).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut bulk = Vec::new();
    for i in 0..3 {
        let tag = format!("bulk{i}");
        bulk.push(spawn_call(
            http,
            api,
            tag.clone(),
            call(api, &tag, -4, 0.0, 8),
        ));
        fleet.wait_depth(f64::from(i + 1)).await?;
    }
    let urgent = spawn_call(http, api, "urgent".into(), call(api, "urgent", 8, 1.0, 8));
    let urgent = urgent.await??;
    let blocker = blocker.await??;
    let mut bulk_done = Vec::new();
    for b in bulk {
        bulk_done.push(b.await??);
    }
    for o in std::iter::once(&blocker).chain([&urgent]).chain(&bulk_done) {
        assert_eq!(o.reply.status, 200, "{}: {}", o.tag, o.reply.text());
    }
    let first_bulk = bulk_done.iter().map(|o| o.done).min().expect("three");
    assert!(
        urgent.done < first_bulk,
        "the urgent call (priority 8, latency sensitivity 1) finished {:?} after the first \
         queued bulk call\n{}",
        urgent.done.saturating_duration_since(first_bulk),
        fleet.logs()
    );
    // Bulk calls left in arrival order (FIFO within a priority).
    let admitted: Vec<Instant> = bulk_done
        .iter()
        .map(|o| o.admitted().expect("queued calls carry x-kvtier-queued-ms"))
        .collect();
    assert!(admitted.windows(2).all(|w| w[0] <= w[1]), "FIFO");
    assert!(urgent.admitted().expect("header") < admitted[0]);
    // Every queued call was counted at its priority.
    let text = fleet.router.metrics_text()?;
    assert_eq!(
        metric_sum(
            &text,
            "kvtier_router_queue_wait_seconds_count",
            &[("priority", "-4")]
        ),
        3.0
    );
    assert_eq!(metric_sum(&text, "kvtier_router_queue_depth", &[]), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aging_lets_a_low_priority_call_through_within_the_stated_bound() -> Result<()> {
    // Calls of 4 tokens at 40 tok/s (~100 ms each); an urgent call arrives
    // every 50 ms for 3 s, twice as fast as the worker serves them. Aging
    // 50 ms with boost 4: the bound is (16 + 4) × 50 ms = 1 s, so the
    // priority -8 call must leave before every urgent call that arrived more
    // than 1 s after it; without aging it would wait behind all of them.
    let aging = Duration::from_millis(50);
    let window = aging * 20;
    let fleet = Saturated::start(
        40,
        &[
            "--queue-aging-ms",
            "50",
            "--queue-max-wait-ms",
            "5000",
            "--queue-latency-boost",
            "4",
        ],
    )
    .await?;
    let http = fleet.router.http;
    let api = Api::ChatCompletions;
    let mut urgent = Vec::new();
    for i in 0..4 {
        let tag = format!("early{i}");
        urgent.push(spawn_call(
            http,
            api,
            tag.clone(),
            call(api, &tag, 8, 1.0, 4),
        ));
    }
    fleet.wait_depth(3.0).await?;
    let low = spawn_call(http, api, "low".into(), call(api, "low", -8, 0.0, 4));
    let low_sent = Instant::now();
    for i in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tag = format!("urgent{i}");
        urgent.push(spawn_call(
            http,
            api,
            tag.clone(),
            call(api, &tag, 8, 1.0, 4),
        ));
    }
    let low = low.await??;
    assert_eq!(
        low.reply.status,
        200,
        "the low-priority call starved: {}\n{}",
        low.reply.text(),
        fleet.logs()
    );
    let low_admitted = low.admitted().expect("header");
    let mut overtook = 0;
    for u in urgent {
        let u = u.await??;
        assert_eq!(u.reply.status, 200, "{}: {}", u.tag, u.reply.text());
        let u_admitted = u.admitted().expect("header");
        if u_admitted < low_admitted {
            overtook += 1;
            // 100 ms of slack for the test's own clock (send vs. arrival).
            assert!(
                u.sent <= low_sent + window + Duration::from_millis(100),
                "{} arrived {:?} after the low call and still went first (bound {window:?})",
                u.tag,
                u.sent.saturating_duration_since(low_sent)
            );
        }
    }
    assert!(overtook > 3, "urgent calls did overtake it ({overtook})");
    println!(
        "low-priority call waited {} ms; {overtook} urgent calls went first",
        low.reply.header("x-kvtier-queued-ms")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_and_a_long_wait_503_in_each_apis_shape() -> Result<()> {
    let fleet =
        Saturated::start(20, &["--queue-max-len", "2", "--queue-max-wait-ms", "600"]).await?;
    let http = fleet.router.http;
    // 24 tokens at 20 tok/s: the worker is busy for ~1.2 s.
    let blocker = spawn_call(
        http,
        Api::ChatCompletions,
        "blocker".into(),
        call(Api::ChatCompletions, "blocker", 0, 0.0, 24),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let tag = format!("waiting{i}");
            spawn_call(
                http,
                Api::Messages,
                tag.clone(),
                call(Api::Messages, &tag, 0, 0.0, 4),
            )
        })
        .collect();
    fleet.wait_depth(2.0).await?;
    for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
        let reply = post(http, api, &call(api, "one-too-many", 8, 1.0, 4)).await?;
        assert_eq!(reply.status, 429, "{api:?}: {}", reply.text());
        // The recent wait, within [1 s, the max wait rounded up to 1 s].
        assert_eq!(reply.header("retry-after"), "1");
        let body = reply.json()?;
        let kind = match api {
            Api::Messages => "rate_limit_error",
            _ => "requests",
        };
        assert!(error_shape(api, &body, kind), "{api:?}: {body}");
        if api != Api::Messages {
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        }
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("--queue-max-len"),
            "{body}"
        );
    }
    // The two waiting calls outlive their 600 ms: 503, overloaded.
    for w in waiting {
        let w = w.await??;
        assert_eq!(w.reply.status, 503, "{}: {}", w.tag, w.reply.text());
        assert!(w.done - w.sent >= Duration::from_millis(550));
        assert!(w.reply.header("retry-after").parse::<u64>()? >= 1);
        assert!(
            error_shape(Api::Messages, &w.reply.json()?, "overloaded_error"),
            "{}",
            w.reply.text()
        );
    }
    assert_eq!(blocker.await??.reply.status, 200);
    let text = fleet.router.metrics_text()?;
    let rejected = |reason| {
        metric_sum(
            &text,
            "kvtier_router_queue_rejected_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(rejected("queue_full"), 3.0);
    assert_eq!(rejected("max_wait"), 2.0);
    assert_eq!(
        metric_sum(
            &text,
            "kvtier_router_requests_total",
            &[("api", "messages"), ("code", "503")]
        ),
        2.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_while_queued_leaves_the_queue() -> Result<()> {
    let fleet = Saturated::start(20, &[]).await?;
    let http = fleet.router.http;
    let api = Api::Messages;
    let before = fleet.metric("kvtier_router_queue_depth", &[])?;
    // ~2 s of decode keeps the worker busy throughout.
    let blocker = spawn_call(
        http,
        api,
        "blocker".into(),
        call(api, "blocker", 0, 0.0, 40),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A raw HTTP/1.1 request on a socket the test owns: dropping it hangs up.
    let body = call(api, "impatient", 0, 0.0, 4).to_string();
    let mut impatient = tokio::net::TcpStream::connect(http).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {http}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        api.path(),
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut impatient, head.as_bytes()).await?;
    tokio::io::AsyncWriteExt::write_all(&mut impatient, body.as_bytes()).await?;
    fleet.wait_depth(before + 1.0).await?;
    let queued_at = Instant::now();
    drop(impatient);
    fleet.wait_depth(before).await?;
    let left_after = queued_at.elapsed();
    assert!(
        left_after < Duration::from_millis(1_000),
        "left the queue {left_after:?} after hanging up (the blocker still ran)"
    );
    assert!(!blocker.is_finished(), "the blocker was still running");
    assert_eq!(
        fleet.metric("kvtier_router_queue_abandoned_total", &[])?,
        1.0
    );
    assert_eq!(blocker.await??.reply.status, 200);
    // The worker only ever saw the blocker.
    assert_eq!(
        fleet.metric("kvtier_router_routed_total", &[("worker", "w0")])?,
        1.0,
        "{}",
        fleet.logs()
    );
    Ok(())
}
