//! The router end to end: a real `kvtier-server`, `kvtier-agent`s,
//! `kvtier-sim-worker`s and the `kvtier-router`, separate processes on
//! loopback, driven over HTTP (the three model APIs) and gRPC
//! (`RouterService`) as a harness or a custom router would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tonic::Code;

use kvtier_integration_tests::model_api::*;
use kvtier_integration_tests::*;
use kvtier_prompt::Api;
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::*;

const BLOCK_BYTES: u64 = 8192;
const NAMESPACE: &str = "router-test";

/// A fleet: one cache server, `n` workers (agent + simulated engine each)
/// and a router over them.
struct Fleet {
    dir: tempfile::TempDir,
    _shm: tempfile::TempDir,
    tokenizer: PathBuf,
    server: ServerProcess,
    agents: Vec<Option<AgentProcess>>,
    workers: Vec<Option<SimWorkerProcess>>,
    router: RouterProcess,
}

impl Fleet {
    /// Starts `n` workers ("w0".."wn") and a router with `router_args`
    /// appended; `worker_args` are appended to every worker's flags.
    fn start(n: usize, worker_args: &[&str], router_args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let shm = shm_dir()?;
        let tokenizer = kvtier_prompt::testing::write_tiny_tokenizer(&dir.path().join("model"))?;
        let server = ServerProcess::start(&dir.path().join("server"), &[])?;
        let mut agents = Vec::new();
        let mut workers = Vec::new();
        let mut specs = Vec::new();
        for i in 0..n {
            let id = format!("w{i}");
            let agent = AgentProcess::start(
                &dir.path().join(format!("agent-{id}.log")),
                server.grpc,
                &["--worker-id", &id],
            )?;
            let bytes = BLOCK_BYTES.to_string();
            let mut args = vec![
                "--pool-blocks",
                "512",
                "--block-bytes",
                &bytes,
                "--model",
                MODEL,
                "--namespace",
                NAMESPACE,
                "--prefill-tokens-per-s",
                "100000",
            ];
            if !worker_args.contains(&"--decode-tokens-per-s") {
                args.extend(["--decode-tokens-per-s", "2000"]);
            }
            args.extend_from_slice(worker_args);
            let worker = SimWorkerProcess::start(
                &dir.path().join(format!("worker-{id}.log")),
                &agent.endpoint(),
                &shm.path().join(format!("pool-{id}")),
                &tokenizer,
                &args,
            )?;
            if !worker.attached {
                bail!("worker {id} did not attach to its agent");
            }
            specs.push(format!("{id}=http://{}@{}", worker.http, agent.endpoint()));
            agents.push(Some(agent));
            workers.push(Some(worker));
        }
        let server_url = format!("http://{}", server.grpc);
        let tokenizer_arg = tokenizer.display().to_string();
        let bytes = BLOCK_BYTES.to_string();
        let mut args: Vec<&str> = vec![
            "--cache-server",
            &server_url,
            "--namespace",
            NAMESPACE,
            "--model",
            MODEL,
            "--block-bytes",
            &bytes,
            "--tokenizer",
            &tokenizer_arg,
            "--expire-ms",
            "1500",
        ];
        for spec in &specs {
            args.extend(["--worker", spec.as_str()]);
        }
        args.extend_from_slice(router_args);
        let router = RouterProcess::start(&dir.path().join("router.log"), &args)?;
        Ok(Self {
            dir,
            _shm: shm,
            tokenizer,
            server,
            agents,
            workers,
            router,
        })
    }

    async fn grpc(&self) -> Result<RouterServiceClient<tonic::transport::Channel>> {
        self.router.grpc_client().await
    }

    /// Waits until the router sees every live worker available.
    async fn wait_available(&self, expected: usize) -> Result<()> {
        self.router.wait_available(expected).await
    }

    /// Sends the first call of session `seed` (not streamed); returns the
    /// worker it went to and the prompt's token ids, computed as a custom
    /// router would.
    async fn first_call(&self, seed: u32) -> Result<(String, Vec<u32>)> {
        let question = task(seed);
        let turns = [("user", question.as_str())];
        let body = chat(None, &turns, 4, false);
        let reply = post(self.router.http, Api::ChatCompletions, &body).await?;
        if reply.status != 200 {
            bail!(
                "first call of session {seed}: {}\n{}",
                reply.text(),
                self.logs()
            );
        }
        let call =
            kvtier_prompt::parse_request(Api::ChatCompletions, body.to_string().as_bytes(), &[])?;
        let tokens = prompt_model(&self.tokenizer)?.prompt_tokens(&call)?;
        Ok((reply.header("x-kvtier-routed-worker"), tokens))
    }

    fn logs(&self) -> String {
        let mut out = format!("--- router\n{}\n", self.router.log());
        for w in self.workers.iter().flatten() {
            out.push_str(&format!("--- worker {}\n{}\n", w.worker_id, w.log()));
        }
        out
    }
}

fn chat(agent: Option<&str>, turns: &[(&str, &str)], max_tokens: u32, stream: bool) -> Value {
    let mut body = request(Api::ChatCompletions, turns, max_tokens, stream);
    if let Some(agent) = agent {
        body["nvext"] = json!({"agent_hints": {"agent_id": agent}});
    }
    body
}

/// A conversation long enough to fill many blocks, unique per `seed`.
fn task(seed: u32) -> String {
    let mut s = format!("Task {seed}: ");
    for i in 0..40 {
        s.push_str(&format!(
            "step {seed}-{i} edit module_{} and rerun its tests; ",
            seed * 7 + i
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sessions_calls_go_to_the_worker_that_holds_its_prefix() -> Result<()> {
    let fleet = Fleet::start(3, &[], &[])?;
    fleet.wait_available(3).await?;
    for session in 0..3u32 {
        let question = task(session);
        let first_turns = [("user", question.as_str())];
        let first = post(
            fleet.router.http,
            Api::ChatCompletions,
            &chat(None, &first_turns, 8, false),
        )
        .await?;
        assert_eq!(first.status, 200, "{}\n{}", first.text(), fleet.logs());
        let home = first.header("x-kvtier-routed-worker");
        assert_eq!(
            home,
            first.header("x-kvtier-worker"),
            "the router says where it sent the call"
        );
        let answer = output_text(Api::ChatCompletions, &first.json()?).unwrap_or_default();
        // Let the worker's STORED events reach the router.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second_turns = [
            ("user", question.as_str()),
            ("assistant", answer.as_str()),
            ("user", "Now run the whole suite."),
        ];
        // No agent id: only the index can send it home.
        let second = post(
            fleet.router.http,
            Api::ChatCompletions,
            &chat(None, &second_turns, 4, false),
        )
        .await?;
        assert_eq!(second.status, 200, "{}", second.text());
        assert_eq!(
            second.header("x-kvtier-routed-worker"),
            home,
            "session {session}: the extension goes where the prefix is ({})",
            second.header("x-kvtier-prefill")
        );
        assert!(
            second.prefill("hbm") > 0,
            "{}",
            second.header("x-kvtier-prefill")
        );
        assert_eq!(second.prefill("onboarded"), 0);
    }
    // The router's view agrees: FindMatches by token ids of a known prefix.
    let text = fleet.router.metrics_text()?;
    assert!(
        metric_sum(
            &text,
            "kvtier_router_predicted_blocks_total",
            &[("tier", "hbm")]
        ) > 0.0
    );
    assert_eq!(
        metric_sum(&text, "kvtier_router_requests_total", &[("code", "200")]),
        6.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn find_matches_and_route_answer_over_grpc_with_clear_errors() -> Result<()> {
    let fleet = Fleet::start(2, &[], &[])?;
    fleet.wait_available(2).await?;
    let (home, tokens) = fleet.first_call(42).await?;
    let prompt = prompt_model(&fleet.tokenizer)?;
    let hashes = prompt.block_hashes(&tokens);
    let mut client = fleet.grpc().await?;
    let start = Instant::now();
    let by_tokens = loop {
        let answer = client
            .find_matches(FindMatchesRequest {
                prefix: Some(PrefixQuery {
                    model: MODEL.into(),
                    token_ids: tokens.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        let full = answer
            .workers
            .iter()
            .any(|w| w.worker_id == home && w.hbm_blocks as usize == hashes.len());
        if full && answer.cache_prefix_blocks as usize == hashes.len() {
            break answer;
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!(
                "the index never showed {home} holding all {} blocks: {answer:?}",
                hashes.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_tokens.query_blocks as usize, hashes.len());
    for w in &by_tokens.workers {
        assert!(w.available);
        if w.worker_id != home {
            assert_eq!(w.hbm_blocks, 0, "{w:?}");
            // The other worker could fetch the whole prefix from the tier.
            assert_eq!(w.host_blocks + w.disk_blocks, hashes.len() as u32, "{w:?}");
        }
    }
    let by_hashes = client
        .find_matches(FindMatchesRequest {
            prefix: Some(PrefixQuery {
                model: MODEL.into(),
                hashes: hashes.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    assert_eq!(
        by_hashes, by_tokens,
        "hashes and token ids name the same prefix"
    );

    let routed = client
        .route(RouteRequest {
            prefix: Some(PrefixQuery {
                model: MODEL.into(),
                hashes: hashes.clone(),
                ..Default::default()
            }),
            hints: Some(CallHints::default()),
            prompt_tokens: tokens.len() as u32,
            commit: false,
        })
        .await?
        .into_inner();
    assert_eq!(routed.worker_id, home);
    assert_eq!(routed.costs.len(), 2);
    assert!(routed.costs[0].total <= routed.costs[1].total);
    assert!(routed.endpoint.starts_with("http://"));

    // Errors a person can act on.
    let unknown = client
        .find_matches(FindMatchesRequest {
            prefix: Some(PrefixQuery {
                model: "nope".into(),
                hashes: vec![1],
                ..Default::default()
            }),
        })
        .await
        .expect_err("unknown model");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains(MODEL), "{}", unknown.message());
    let both = client
        .find_matches(FindMatchesRequest {
            prefix: Some(PrefixQuery {
                model: MODEL.into(),
                hashes: vec![1],
                token_ids: vec![1, 2],
            }),
        })
        .await
        .expect_err("both forms");
    assert_eq!(both.code(), Code::InvalidArgument);
    let bad_priority = client
        .route(RouteRequest {
            prefix: Some(PrefixQuery {
                model: MODEL.into(),
                hashes: vec![1],
                ..Default::default()
            }),
            hints: Some(CallHints {
                priority: 99,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("priority out of range");
    assert_eq!(bad_priority.code(), Code::InvalidArgument);
    assert!(bad_priority.message().contains("-8..=8"));
    let unknown_worker = client
        .report_load(ReportLoadRequest {
            model: MODEL.into(),
            worker_id: "w9".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown worker");
    assert_eq!(unknown_worker.code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_latency_sensitive_high_priority_call_avoids_a_long_queue() -> Result<()> {
    // Fetching from the tier costs as much as recomputing here, so only HBM
    // locality and queues decide.
    let fleet = Fleet::start(
        2,
        &[],
        &["--host-fetch-weight", "1", "--disk-fetch-weight", "1"],
    )?;
    fleet.wait_available(2).await?;
    let question = task(7);
    let turns = [("user", question.as_str())];
    let first = post(
        fleet.router.http,
        Api::ChatCompletions,
        &chat(None, &turns, 4, false),
    )
    .await?;
    assert_eq!(first.status, 200, "{}", first.text());
    let home = first.header("x-kvtier-routed-worker");
    let other = if home == "w0" { "w1" } else { "w0" };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let prompt_tokens = first.json()?["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap_or(0);
    assert!(prompt_tokens > 300, "a long prompt: {prompt_tokens}");

    // The home worker reports a queue of a third of the prompt: a neutral
    // call still goes home (waiting costs less than recomputing), an urgent
    // one (priority 4, latency sensitivity 1: 8× the queue weight) does not.
    let mut client = fleet.grpc().await?;
    let queue = prompt_tokens / 3;
    let report = |c: &mut RouterServiceClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        let home = home.clone();
        async move {
            c.report_load(ReportLoadRequest {
                model: MODEL.into(),
                worker_id: home,
                queued_prefill_tokens: queue,
                running_requests: 1,
                ..Default::default()
            })
            .await
        }
    };
    report(&mut client).await?;
    let neutral = post(
        fleet.router.http,
        Api::ChatCompletions,
        &chat(None, &turns, 4, false),
    )
    .await?;
    assert_eq!(
        neutral.header("x-kvtier-routed-worker"),
        home,
        "neutral call waits for its prefix"
    );

    report(&mut client).await?;
    let mut urgent_body = chat(None, &turns, 4, false);
    urgent_body["nvext"] = json!({"agent_hints": {"priority": 4, "latency_sensitivity": 1.0}});
    let urgent = post(fleet.router.http, Api::ChatCompletions, &urgent_body).await?;
    assert_eq!(urgent.status, 200, "{}", urgent.text());
    assert_eq!(
        urgent.header("x-kvtier-routed-worker"),
        other,
        "the urgent call avoids the queue"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_worker_sheds_load() -> Result<()> {
    // Slow decode keeps calls running; every call shares one long prefix.
    let fleet = Fleet::start(3, &["--decode-tokens-per-s", "40"], &[])?;
    fleet.wait_available(3).await?;
    let question = task(3);
    let turns = [("user", question.as_str())];
    let warm = post(
        fleet.router.http,
        Api::ChatCompletions,
        &chat(None, &turns, 1, false),
    )
    .await?;
    assert_eq!(warm.status, 200, "{}", warm.text());
    let hot = warm.header("x-kvtier-routed-worker");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut calls = Vec::new();
    for _ in 0..6 {
        let addr = fleet.router.http;
        let body = chat(None, &turns, 20, false);
        calls.push(tokio::spawn(async move {
            post(addr, Api::ChatCompletions, &body).await
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut on_hot = 0;
    for call in calls {
        let reply = call.await??;
        assert_eq!(reply.status, 200, "{}", reply.text());
        if reply.header("x-kvtier-routed-worker") == hot {
            on_hot += 1;
        }
    }
    // Bounded load: at most ⌈1.25 × 6 / 3⌉ = 3 of 6 concurrent calls on one worker.
    assert!(on_hot >= 1, "the prefix holder still gets its share");
    assert!(
        on_hot <= 3,
        "{on_hot} of 6 concurrent calls went to the hot worker"
    );
    let text = fleet.router.metrics_text()?;
    assert!(
        metric_sum(
            &text,
            "kvtier_router_decisions_total",
            &[("reason", "hot_spot_shed")]
        ) >= 1.0,
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_three_apis_stream_through_the_router_and_hints_reach_the_cache_server() -> Result<()> {
    let fleet = Fleet::start(2, &[], &[])?;
    fleet.wait_available(2).await?;
    // Each API twice: once ending its turn, once asking for a tool (the
    // simulated worker's `nvext.sim_stop` knob), which the router reads from
    // the stream and passes on as the call's ending.
    let calls = [Api::ChatCompletions, Api::Responses, Api::Messages]
        .into_iter()
        .flat_map(|api| [(api, false), (api, true)]);
    for (i, (api, tool)) in calls.enumerate() {
        let agent = if i == 0 {
            "agent-0".to_string()
        } else {
            format!("agent-{i}")
        };
        let turns = [("user", "Summarise the failing test output.")];
        let mut body = request(api, &turns, 6, true);
        body["nvext"] = json!({"agent_hints": {"agent_id": agent, "priority": 2, "latency_sensitivity": 0.5, "osl": 6}});
        if tool {
            body["nvext"]["sim_stop"] = json!("tool_use");
        }
        if api == Api::Messages {
            body["system"] = json!([{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]);
        }
        let reply = post(fleet.router.http, api, &body).await?;
        assert_eq!(reply.status, 200, "{api:?}: {}", reply.text());
        assert!(reply
            .header("content-type")
            .starts_with("text/event-stream"));
        let (text, deltas) = streamed_text(api, &reply.text());
        assert_eq!(deltas, 6, "{api:?}: {}", reply.text());
        assert_eq!(text.split_whitespace().count(), 6);
        let marker = match api {
            Api::ChatCompletions => "\"finish_reason\":\"tool_calls\"",
            Api::Responses => "\"type\":\"function_call\"",
            Api::Messages => "\"stop_reason\":\"tool_use\"",
        };
        assert_eq!(
            reply.text().contains(marker),
            tool,
            "{api:?}: {}",
            reply.text()
        );
    }
    // Each call registered its agent and sent two hints (arrival, ending).
    // The server counts a hint before the router hears its reply, so both
    // sides are awaited.
    let start = Instant::now();
    loop {
        let router_endings = metric_sum(
            &fleet.router.metrics_text()?,
            "kvtier_router_hints_total",
            &[("kind", "ending"), ("result", "ok")],
        );
        let text = fleet.server.metrics_text()?;
        let live = metric_sum(&text, "kvtier_agents_live", &[]);
        let endings = metric_sum(
            &text,
            "kvtier_agent_hints_total",
            &[("ending", "end_of_turn")],
        );
        let tools = metric_sum(
            &text,
            "kvtier_agent_hints_total",
            &[("ending", "tool_call")],
        );
        if live >= 6.0 && endings >= 3.0 && tools >= 3.0 && router_endings >= 6.0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("hints did not reach the server: live {live}, end_of_turn {endings}, tool_call {tools}, router's ending hints ok {router_endings}\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = fleet.router.metrics_text()?;
    assert_eq!(
        metric_sum(&text, "kvtier_router_hints_total", &[("result", "error")]),
        0.0
    );

    // The lifecycle over gRPC: end an agent through the router.
    let mut client = fleet.grpc().await?;
    let ended = client
        .end_agent(RouterEndAgentRequest {
            model: MODEL.into(),
            agent_id: "agent-0".into(),
        })
        .await?
        .into_inner();
    assert_eq!(ended.ended, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_sdks_stream_through_the_router() -> Result<()> {
    let Some(python) = sdk_python()? else {
        kvtier_testkit::prereq::missing(
            "python3 with the openai and anthropic SDKs",
            "scripts/setup.sh makes ~/.cache/kvtier-sdk-venv; or set KVTIER_SDK_PYTHON",
        );
        return Ok(());
    };
    let fleet = Fleet::start(1, &[], &[])?;
    fleet.wait_available(1).await?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../prompt/tests/sdk_check.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}", fleet.router.http))
        .arg(MODEL)
        .output()
        .context("run sdk_check.py")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sdk_check.py failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        fleet.logs()
    );
    let cases: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(cases.len() >= 5, "{stdout}");
    for case in &cases {
        let text = case["text"].as_str().unwrap_or_default();
        assert!(!text.is_empty(), "{case}");
        if case["case"]
            .as_str()
            .unwrap_or_default()
            .ends_with("_error")
        {
            // Errors reach the SDKs as their own exception types.
            assert!(text.contains("invalid_request_error"), "{case}");
        } else {
            assert!(
                case["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0,
                "{case}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_grpc_client_drives_the_router_service() -> Result<()> {
    let Some(python) = sdk_python()? else {
        kvtier_testkit::prereq::missing(
            "python3 with grpcio",
            "scripts/setup.sh makes ~/.cache/kvtier-sdk-venv; or set KVTIER_SDK_PYTHON",
        );
        return Ok(());
    };
    let fleet = Fleet::start(2, &[], &[])?;
    fleet.wait_available(2).await?;
    let (home, tokens) = fleet.first_call(11).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blocks = tokens.len() / 16;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new(&python)
        .arg(root.join("python/router_client.py"))
        .arg(root.join("../proto/proto"))
        .arg(fleet.router.grpc.to_string())
        .arg(MODEL)
        .arg(serde_json::to_string(&tokens)?)
        .output()
        .context("run router_client.py")?;
    assert!(
        output.status.success(),
        "router_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(
        answer["workers"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    assert_eq!(answer["query_blocks"], blocks, "{answer}");
    assert_eq!(answer["matches"][&home][0], blocks, "{answer}");
    assert_eq!(answer["route"]["worker"], home.as_str(), "{answer}");
    assert_eq!(answer["route"]["costs"], 2, "{answer}");
    assert_eq!(answer["error"]["code"], "NOT_FOUND", "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bodies_and_unknown_models_get_the_apis_own_errors() -> Result<()> {
    let fleet = Fleet::start(1, &[], &["--max-body-bytes", "65536"])?;
    fleet.wait_available(1).await?;
    for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
        let bad = post_raw(fleet.router.http, api.path(), b"{\"model\": ".to_vec()).await?;
        assert_eq!(bad.status, 400, "{api:?}");
        assert!(
            error_shape(api, &bad.json()?, "invalid_request_error"),
            "{api:?}: {}",
            bad.text()
        );

        let mut body = request(api, &[("user", "hi")], 4, false);
        body["model"] = json!("no-such-model");
        let unknown = post(fleet.router.http, api, &body).await?;
        assert_eq!(unknown.status, 404, "{api:?}: {}", unknown.text());
        let shape = unknown.json()?;
        match api {
            // OpenAI answers an unknown model with code model_not_found.
            Api::ChatCompletions | Api::Responses => {
                assert_eq!(shape["error"]["code"], "model_not_found", "{shape}")
            }
            Api::Messages => assert!(error_shape(api, &shape, "not_found_error"), "{shape}"),
        }
        assert!(
            unknown.text().contains(MODEL),
            "the message lists the served models"
        );
    }
    // A body over --max-body-bytes: 413 in the API's shape, saying the limit.
    let mut huge = request(Api::Messages, &[("user", &"x".repeat(70_000))], 4, false);
    huge["model"] = json!(MODEL);
    let too_big = post(fleet.router.http, Api::Messages, &huge).await?;
    assert_eq!(too_big.status, 413, "{}", too_big.text());
    assert_eq!(too_big.json()?["type"], "error", "{}", too_big.text());
    assert!(too_big.text().contains("65536"), "{}", too_big.text());
    let text = fleet.router.metrics_text()?;
    assert_eq!(
        metric_sum(&text, "kvtier_router_requests_total", &[("code", "400")]),
        3.0
    );
    assert_eq!(
        metric_sum(&text, "kvtier_router_requests_total", &[("code", "404")]),
        3.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_stops_receiving_traffic_and_clients_cancel_upstream() -> Result<()> {
    let mut fleet = Fleet::start(2, &["--decode-tokens-per-s", "50"], &[])?;
    fleet.wait_available(2).await?;

    // A client that hangs up mid-stream cancels the worker's request.
    let body = chat(None, &[("user", "Write a long report.")], 200, true);
    let (response, connection) = send(
        fleet.router.http,
        Api::ChatCompletions.path(),
        body.to_string().into_bytes(),
    )
    .await?;
    assert_eq!(response.status(), 200);
    let worker_id = response
        .headers()
        .get("x-kvtier-routed-worker")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut body = response.into_body();
    use http_body_util::BodyExt;
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await?;
    assert!(first.is_some(), "a first chunk arrives");
    drop(body);
    connection.abort();
    let worker = fleet
        .workers
        .iter()
        .flatten()
        .find(|w| w.worker_id == worker_id)
        .context("routed worker")?;
    let start = Instant::now();
    while metric_sum(
        &worker.metrics_text()?,
        "kvtier_sim_worker_cancelled_total",
        &[],
    ) < 1.0
    {
        if start.elapsed() > Duration::from_secs(5) {
            bail!("the worker never saw the cancellation\n{}", fleet.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric_sum(
            &fleet.router.metrics_text()?,
            "kvtier_router_cancelled_total",
            &[]
        ),
        1.0
    );

    // Kill w0's engine (its agent lives on): calls keep succeeding, none
    // lands on w0 from the first call after the kill.
    if let Some(mut w0) = fleet.workers[0].take() {
        w0.kill9()?;
    }
    let killed_at = Instant::now();
    for i in 0..6 {
        let reply = post(
            fleet.router.http,
            Api::ChatCompletions,
            &chat(
                None,
                &[("user", &format!("call {i} after the kill"))],
                2,
                false,
            ),
        )
        .await?;
        assert_eq!(reply.status, 200, "call {i}: {}", reply.text());
        assert_eq!(reply.header("x-kvtier-routed-worker"), "w1");
    }
    assert!(killed_at.elapsed() < Duration::from_secs(10));

    // Kill w1's agent: its event stream dies, it is marked unavailable within
    // 2 s, and with no worker left calls get a 503.
    if let Some(mut agent) = fleet.agents[1].take() {
        agent.kill9()?;
    }
    fleet
        .router
        .wait_workers(
            "w1 unavailable 2 s after its agent died",
            Duration::from_secs(2),
            |workers| workers.iter().all(|w| w.worker_id != "w1" || !w.available),
        )
        .await?;
    // w0's agent still streams events, but its endpoint refused: unavailable
    // for the cool-down, so no worker is left.
    let none = post(
        fleet.router.http,
        Api::Messages,
        &request(Api::Messages, &[("user", "anyone?")], 2, false),
    )
    .await?;
    assert_eq!(none.status, 503, "{}", none.text());
    assert!(
        error_shape(Api::Messages, &none.json()?, "overloaded_error"),
        "{}",
        none.text()
    );
    // Its index entries expire (--expire-ms 1500).
    fleet
        .router
        .wait_workers("w1's entries expired", Duration::from_secs(5), |workers| {
            workers
                .iter()
                .any(|w| w.worker_id == "w1" && w.indexed_blocks == 0)
        })
        .await?;
    drop(fleet.dir);
    Ok(())
}

/// `GET path` over HTTP/1.1 on a fresh connection; the whole response as text.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: router\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// One router, two models from `--models-file`, each with its own namespace
/// and workers: both are listed, each model's calls go only to its own
/// workers, gRPC answers per model, and a model nobody serves is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_router_serves_two_models_from_a_models_file() -> Result<()> {
    const OTHER: &str = "other-model";
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let tokenizer = kvtier_prompt::testing::write_tiny_tokenizer(&dir.path().join("model"))?;
    let server = ServerProcess::start(&dir.path().join("server"), &[])?;
    let mut processes = Vec::new();
    let mut models = Vec::new();
    for (model, namespace, ids) in [
        (MODEL, NAMESPACE, vec!["a0", "a1"]),
        (OTHER, "other-namespace", vec!["b0"]),
    ] {
        let mut specs = Vec::new();
        for id in ids {
            let agent = AgentProcess::start(
                &dir.path().join(format!("agent-{id}.log")),
                server.grpc,
                &["--worker-id", id],
            )?;
            let bytes = BLOCK_BYTES.to_string();
            let worker = SimWorkerProcess::start(
                &dir.path().join(format!("worker-{id}.log")),
                &agent.endpoint(),
                &shm.path().join(format!("pool-{id}")),
                &tokenizer,
                &[
                    "--pool-blocks",
                    "512",
                    "--block-bytes",
                    &bytes,
                    "--model",
                    model,
                    "--namespace",
                    namespace,
                    "--prefill-tokens-per-s",
                    "100000",
                    "--decode-tokens-per-s",
                    "2000",
                ],
            )?;
            if !worker.attached {
                bail!("worker {id} did not attach to its agent");
            }
            specs.push(format!("{id}=http://{}@{}", worker.http, agent.endpoint()));
            processes.push((agent, worker));
        }
        models.push(json!({
            "model": model,
            "namespace": namespace,
            "workers": specs,
            "tokenizer": tokenizer,
            "block_bytes": BLOCK_BYTES,
        }));
    }
    let models_file = dir.path().join("models.json");
    std::fs::write(&models_file, json!({ "models": models }).to_string())?;
    let server_url = format!("http://{}", server.grpc);
    let router = RouterProcess::start(
        &dir.path().join("router.log"),
        &[
            "--cache-server",
            &server_url,
            "--models-file",
            &models_file.display().to_string(),
        ],
    )?;

    let by_model = |workers: &[WorkerInfo], m: &str| {
        workers
            .iter()
            .filter(|w| w.model == m && w.available)
            .count()
    };
    router
        .wait_workers(
            "every worker of both models available",
            Duration::from_secs(10),
            |workers| by_model(workers, MODEL) == 2 && by_model(workers, OTHER) == 1,
        )
        .await
        .with_context(|| router.log())?;

    let listed = http_get(router.http, "/v1/models").await?;
    assert!(
        listed.contains(&format!("\"id\":\"{MODEL}\""))
            && listed.contains(&format!("\"id\":\"{OTHER}\"")),
        "{listed}"
    );

    for seed in 0..4 {
        let question = task(900 + seed);
        for (model, allowed) in [(MODEL, ["a0", "a1"]), (OTHER, ["b0", "b0"])] {
            let mut body = chat(None, &[("user", question.as_str())], 4, false);
            body["model"] = json!(model);
            let reply = post(router.http, Api::ChatCompletions, &body).await?;
            assert_eq!(reply.status, 200, "{model}: {}", reply.text());
            let worker = reply.header("x-kvtier-routed-worker");
            assert!(
                allowed.contains(&worker.as_str()),
                "a call for {model} went to {worker}"
            );
            assert_eq!(reply.json()?["model"], json!(model));
        }
    }

    // gRPC, per model: the other model's namespace and workers are separate.
    let mut client = router.grpc_client().await?;
    let answer = client
        .find_matches(FindMatchesRequest {
            prefix: Some(PrefixQuery {
                model: OTHER.into(),
                hashes: vec![1, 2, 3],
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let ids: Vec<&str> = answer
        .workers
        .iter()
        .map(|w| w.worker_id.as_str())
        .collect();
    assert_eq!(ids, ["b0"]);

    let mut body = chat(None, &[("user", "hello")], 4, false);
    body["model"] = json!("nobody-serves-this");
    let reply = post(router.http, Api::ChatCompletions, &body).await?;
    assert_eq!(reply.status, 404, "{}", reply.text());
    drop(processes);
    Ok(())
}
