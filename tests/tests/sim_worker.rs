//! The simulated inference worker end to end: the real `kvtier-server`,
//! `kvtier-agent`s and `kvtier-sim-worker`s as separate processes on
//! loopback, driven over HTTP as a router (or an API client) would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use kvtier_integration_tests::model_api::*;
use kvtier_integration_tests::*;
use kvtier_prompt::{parse_request, Api, PromptModel};
use kvtier_proto::hashing::{effective_seed, DEFAULT_SEED};

const BLOCK_TOKENS: usize = 16;
const BLOCK_BYTES: u64 = 8192;
const POOL_BLOCKS: u64 = 256;

// ---------------------------------------------------------------------------
// Processes.
// ---------------------------------------------------------------------------

struct Cluster {
    dir: tempfile::TempDir,
    shm: tempfile::TempDir,
    tokenizer: PathBuf,
    server: ServerProcess,
}

impl Cluster {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let tokenizer = kvtier_prompt::testing::write_tiny_tokenizer(&dir.path().join("model"))?;
        let server = ServerProcess::start(&dir.path().join("server"), &[])?;
        Ok(Self {
            dir,
            shm: shm_dir()?,
            tokenizer,
            server,
        })
    }

    fn agent(&self, id: &str) -> Result<AgentProcess> {
        AgentProcess::start(
            &self.dir.path().join(format!("agent-{id}.log")),
            self.server.grpc,
            &["--worker-id", id],
        )
    }

    fn pool(&self, name: &str) -> PathBuf {
        self.shm.path().join(format!("pool-{name}"))
    }

    /// A worker named `name` on `agent` ("off": none), fast enough for tests.
    fn worker(&self, name: &str, agent: &str, extra: &[&str]) -> Result<SimWorkerProcess> {
        let blocks = POOL_BLOCKS.to_string();
        let bytes = BLOCK_BYTES.to_string();
        let mut args = vec![
            "--pool-blocks",
            &blocks,
            "--block-bytes",
            &bytes,
            "--model",
            MODEL,
            "--namespace",
            "sim-test",
        ];
        if !extra.contains(&"--prefill-tokens-per-s") {
            args.extend(["--prefill-tokens-per-s", "200000"]);
        }
        if !extra.contains(&"--decode-tokens-per-s") {
            args.extend(["--decode-tokens-per-s", "2000"]);
        }
        args.extend_from_slice(extra);
        SimWorkerProcess::start(
            &self.dir.path().join(format!("worker-{name}.log")),
            agent,
            &self.pool(name),
            &self.tokenizer,
            &args,
        )
    }
}

fn metric(worker: &SimWorkerProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    worker
        .metrics_text()
        .map(|t| metric_sum(&t, name, labels))
        .unwrap_or(-1.0)
}

/// Polls `cond` every 50 ms for up to `within`.
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what}: not within {within:?}")
}

const APIS: [Api; 3] = [Api::ChatCompletions, Api::Responses, Api::Messages];

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_apis_answer_streamed_and_not() -> Result<()> {
    let c = Cluster::start()?;
    let agent = c.agent("sim-a")?;
    let mut w = c.worker("a", &agent.endpoint(), &[])?;
    assert!(w.attached, "the worker attaches at start");
    assert_eq!(w.worker_id, "sim-a", "the worker takes its agent's id");
    for api in APIS {
        let turns = [("user", "List the files of the repository, please.")];
        let plain = post(w.http, api, &request(api, &turns, 8, false)).await?;
        assert_eq!(plain.status, 200, "{api:?}: {}", plain.text());
        assert_eq!(plain.header("x-kvtier-worker"), "sim-a");
        assert!(plain.header("content-type").starts_with("application/json"));
        let body = plain.json()?;
        let text = output_text(api, &body).unwrap_or_default();
        assert_eq!(
            text.split_whitespace().count(),
            8,
            "{api:?}: 8 words in {body}"
        );

        let streamed = post(w.http, api, &request(api, &turns, 8, true)).await?;
        assert_eq!(streamed.status, 200, "{api:?}: {}", streamed.text());
        assert!(streamed
            .header("content-type")
            .starts_with("text/event-stream"));
        assert_eq!(streamed.header("x-kvtier-worker"), "sim-a");
        let (stext, deltas) = streamed_text(api, &streamed.text());
        assert_eq!(
            deltas,
            8,
            "{api:?}: one delta per token in {}",
            streamed.text()
        );
        assert_eq!(stext, text, "{api:?}: the same prompt gets the same answer");
        match api {
            Api::ChatCompletions => assert!(streamed.text().contains("data: [DONE]")),
            Api::Responses => assert!(streamed.text().contains("response.completed")),
            Api::Messages => assert!(streamed.text().contains("message_stop")),
        }
        // The streamed call repeats the prompt: its full blocks are resident.
        assert!(
            streamed.prefill("hbm") > 0,
            "{api:?}: {}",
            streamed.header("x-kvtier-prefill")
        );
    }
    let text = w.metrics_text()?;
    for api in ["chat_completions", "responses", "messages"] {
        assert_eq!(
            metric_sum(&text, "kvtier_sim_worker_requests_total", &[("api", api)]),
            2.0
        );
    }
    assert!(metric_sum(&text, "kvtier_sim_worker_prompt_tokens_total", &[]) > 0.0);
    let load: Value = serde_json::from_str(&w.load_text()?)?;
    assert_eq!(load["running_requests"], 0);
    assert_eq!(load["queued_prefill_tokens"], 0);
    assert_eq!(load["active_decode_blocks"], 0);
    assert!(http_get(w.http, "/health")?.contains("ok"));
    assert_eq!(w.terminate()?, 0, "SIGTERM exits cleanly");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_conversation_hits_the_workers_own_pool() -> Result<()> {
    let c = Cluster::start()?;
    let agent = c.agent("sim-a")?;
    let w = c.worker("a", &agent.endpoint(), &[])?;
    for api in APIS {
        let question = format!("{api:?}: which tests cover the cache tier?");
        let first_turns = [("user", question.as_str())];
        let first = post(w.http, api, &request(api, &first_turns, 12, false)).await?;
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(first.prefill("onboarded"), 0);
        let answer = output_text(api, &first.json()?).unwrap_or_default();
        let second_turns = [
            ("user", question.as_str()),
            ("assistant", answer.as_str()),
            ("user", "Run them and tell me which fail."),
        ];
        let second = post(w.http, api, &request(api, &second_turns, 4, false)).await?;
        assert_eq!(second.status, 200, "{}", second.text());
        let hbm = second.prefill("hbm");
        assert!(hbm > 0, "{api:?}: {}", second.header("x-kvtier-prefill"));
        // Every full block of the first prompt is reused.
        let first_prompt = first.prefill("computed_tokens") + first.prefill("hbm") * 16;
        assert!(
            hbm >= first_prompt / 16,
            "{api:?}: first {} then {}",
            first.header("x-kvtier-prefill"),
            second.header("x-kvtier-prefill")
        );
        // The usage reports the cached part too (the API's own field).
        let usage = &second.json()?["usage"];
        let cached = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .or(usage["input_tokens_details"]["cached_tokens"].as_u64())
            .or(usage["cache_read_input_tokens"].as_u64());
        assert_eq!(cached, Some(hbm * BLOCK_TOKENS as u64), "{api:?}: {usage}");
    }
    let text = w.metrics_text()?;
    assert!(
        metric_sum(
            &text,
            "kvtier_sim_worker_cached_tokens_total",
            &[("source", "hbm")]
        ) > 0.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_onboards_the_prefix_from_the_tier() -> Result<()> {
    let c = Cluster::start()?;
    let agent_a = c.agent("sim-a")?;
    let agent_b = c.agent("sim-b")?;
    let a = c.worker("a", &agent_a.endpoint(), &[])?;
    let b = c.worker("b", &agent_b.endpoint(), &[])?;
    let api = Api::ChatCompletions;
    let body = request(api, &[("user", "Summarise the design document.")], 4, false);

    let first = post(a.http, api, &body).await?;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.prefill("hbm"), 0);
    // The blocks A computed, as the worker hashes them.
    let model = PromptModel::load(
        &c.tokenizer,
        None,
        BLOCK_TOKENS,
        effective_seed(DEFAULT_SEED, ""),
    )?;
    let call = parse_request(api, body.to_string().as_bytes(), &[]).map_err(|e| anyhow!("{e}"))?;
    let hashes = model.block_hashes(&model.prompt_tokens(&call).map_err(|e| anyhow!("{e}"))?);
    assert!(hashes.len() >= 4, "the prompt spans several blocks");
    // A offloads in the background after answering.
    wait_for("A's offload", Duration::from_secs(10), || {
        metric(&a, "kvtier_sim_worker_offload_blocks_total", &[]) >= hashes.len() as f64
    })
    .await
    .with_context(|| a.log())?;

    let second = post(b.http, api, &body).await?;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("x-kvtier-worker"), "sim-b");
    assert_eq!(second.prefill("hbm"), 0);
    assert_eq!(
        second.prefill("onboarded"),
        hashes.len() as u64,
        "{} (log: {})",
        second.header("x-kvtier-prefill"),
        b.log()
    );
    assert_eq!(
        metric(&b, "kvtier_sim_worker_onboard_verify_failures_total", &[]),
        0.0
    );
    assert_eq!(
        metric(
            &b,
            "kvtier_sim_worker_cached_tokens_total",
            &[("source", "tier")]
        ),
        (hashes.len() * BLOCK_TOKENS) as f64
    );
    // The bytes in B's pool are A's KV of those blocks.
    let pool = pool_blocks(&c.pool("b"), 0, POOL_BLOCKS, BLOCK_BYTES)?;
    for &h in &hashes {
        let want = payload_for(h, BLOCK_BYTES as usize);
        assert!(
            pool.chunks(BLOCK_BYTES as usize)
                .any(|blk| blk == &want[..]),
            "block {h:#x} is not in B's pool"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_unknown_models_get_api_shaped_errors() -> Result<()> {
    let c = Cluster::start()?;
    let agent = c.agent("sim-a")?;
    let w = c.worker("a", &agent.endpoint(), &[])?;
    for api in APIS {
        let bad = post_raw(w.http, api.path(), b"{\"model\": ".to_vec()).await?;
        assert_eq!(bad.status, 400, "{api:?}: {}", bad.text());
        assert!(
            error_shape(api, &bad.json()?, "invalid_request_error"),
            "{api:?}: {}",
            bad.text()
        );
        let mut body = request(api, &[("user", "hello")], 4, false);
        body["model"] = json!("no-such-model");
        let missing = post(w.http, api, &body).await?;
        assert_eq!(missing.status, 404, "{api:?}: {}", missing.text());
        let kind = match api {
            Api::Messages => "not_found_error",
            _ => "invalid_request_error",
        };
        assert!(
            error_shape(api, &missing.json()?, kind),
            "{api:?}: {}",
            missing.text()
        );
    }
    let text = w.metrics_text()?;
    assert_eq!(
        metric_sum(
            &text,
            "kvtier_sim_worker_errors_total",
            &[("status", "4xx")]
        ),
        6.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_stream_cancels_the_request() -> Result<()> {
    let c = Cluster::start()?;
    let agent = c.agent("sim-a")?;
    // 100 tokens/s: 2,000 tokens would take 20 s.
    let w = c.worker("a", &agent.endpoint(), &["--decode-tokens-per-s", "100"])?;
    let api = Api::Messages;
    let body = request(api, &[("user", "Write a very long essay.")], 2000, true);
    let (resp, conn) = send(w.http, api.path(), body.to_string().into_bytes()).await?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = String::new();
    while !seen.contains("content_block_delta") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await?
            .ok_or_else(|| anyhow!("stream ended early"))??;
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }
    let load: Value = serde_json::from_str(&w.load_text()?)?;
    assert_eq!(load["running_requests"], 1);
    assert!(load["active_decode_blocks"].as_u64() > Some(0));
    // Hang up.
    drop(body);
    conn.abort();
    let started = Instant::now();
    wait_for("cancelled", Duration::from_secs(5), || {
        metric(&w, "kvtier_sim_worker_cancelled_total", &[]) >= 1.0
    })
    .await?;
    assert!(started.elapsed() < Duration::from_secs(5));
    let load: Value = serde_json::from_str(&w.load_text()?)?;
    assert_eq!(load["running_requests"], 0, "{load}");
    assert_eq!(load["active_decode_blocks"], 0, "{load}");
    let text = w.metrics_text()?;
    assert!(
        metric_sum(&text, "kvtier_sim_worker_completion_tokens_total", &[]) < 1000.0,
        "generation stopped"
    );
    // The request's own references go with it; the prompt blocks' offload to
    // the agent (a background task) holds its references until it is done.
    wait_for(
        "the request's blocks are released",
        Duration::from_secs(5),
        || {
            metric(
                &w,
                "kvtier_sim_worker_pool_blocks",
                &[("state", "referenced")],
            ) == 0.0
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_agent_the_worker_still_serves() -> Result<()> {
    let c = Cluster::start()?;
    let port = free_port()?;
    let w = c.worker(
        "a",
        &format!("http://127.0.0.1:{port}"),
        &["--worker-id", "lonely"],
    )?;
    assert!(!w.attached);
    assert_eq!(w.worker_id, "lonely");
    let api = Api::Responses;
    let turns = [("user", "Are you there?")];
    let r = post(w.http, api, &request(api, &turns, 4, false)).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.prefill("onboarded"), 0);
    let again = post(w.http, api, &request(api, &turns, 4, false)).await?;
    assert!(again.prefill("hbm") > 0, "its own pool still works");
    assert!(metric(&w, "kvtier_sim_worker_agent_errors_total", &[]) >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefills_queue_on_the_one_gpu() -> Result<()> {
    let c = Cluster::start()?;
    let agent = c.agent("sim-a")?;
    // ~1,000 tokens/s: each prompt (~100+ tokens) takes ~0.1 s of prefill.
    let w = c.worker("a", &agent.endpoint(), &["--prefill-tokens-per-s", "1000"])?;
    let api = Api::ChatCompletions;
    let calls: Vec<_> = (0..3)
        .map(|i| {
            // Distinct first blocks: nothing is shared between the three.
            let body = json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": format!("{i} {i} {i}: {SYSTEM}")}],
                "max_tokens": 1,
            });
            tokio::spawn(async move { post(w.http, api, &body).await })
        })
        .collect();
    let mut peak = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(150) {
        let load: Value = serde_json::from_str(&w.load_text()?)?;
        peak = peak.max(load["queued_prefill_tokens"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut queued = Vec::new();
    for call in calls {
        let r = call.await??;
        assert_eq!(r.status, 200, "{}", r.text());
        queued.push(r.prefill("queue_ms"));
    }
    queued.sort_unstable();
    assert!(peak > 100, "queued prefill tokens build up (peak {peak})");
    assert!(
        queued[2] >= 150,
        "the last prefill waited for the two before it: {queued:?}"
    );
    let load: Value = serde_json::from_str(&w.load_text()?)?;
    assert_eq!(load["queued_prefill_tokens"], 0);
    Ok(())
}
