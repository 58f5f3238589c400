//! Sends a plan's calls through the router's HTTP front (OpenAI chat
//! completions, streamed) with the plan's timing, and records each call's
//! client-side view: time to the first content token, usage, and the
//! worker's `x-kvtier-prefill` figures.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::time::Instant;

use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::RouterEndAgentRequest;

use super::fleet::MODEL;
use super::prompt::render;
use super::workload::Plan;

/// What the client saw of one call.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Send to first content token (ms).
    pub ttft_ms: f64,
    /// Send to end of stream (ms).
    pub total_ms: f64,
    /// usage.prompt_tokens.
    pub prompt_tokens: u64,
    /// usage.prompt_tokens_details.cached_tokens.
    pub cached_tokens: u64,
    /// From x-kvtier-prefill: blocks found in the worker's pool.
    pub hbm_blocks: u64,
    /// Blocks onboarded from the tier.
    pub onboarded_blocks: u64,
    /// Tokens computed.
    pub computed_tokens: u64,
    /// Wait for the worker's GPU (ms).
    pub queue_ms: u64,
    /// Wait in the router's admission queue (ms; `x-kvtier-queued-ms`, 0 without one).
    pub router_queued_ms: u64,
    /// Worker that served it.
    pub worker: String,
}

/// Replay settings.
#[derive(Debug, Clone, Copy)]
pub struct RunOpts {
    /// Trace time / wall time.
    pub speed: f64,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// Output tokens per call.
    pub osl: u32,
    /// End each agent (router gRPC EndAgent) after its last call.
    pub end_agents: bool,
}

fn agent_id(session: u32, agent: u32) -> String {
    format!("s{session}-a{agent}")
}

fn body(plan: &Plan, i: usize, osl: u32) -> Vec<u8> {
    let c = &plan.calls[i];
    let mut b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": render(&c.blocks)}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": osl,
    });
    if let Some(a) = c.agent {
        let mut hints = json!({"agent_id": agent_id(c.session, a), "osl": osl});
        if let Some(p) = c.parent {
            hints["parent_agent_id"] = json!(agent_id(c.session, p));
        }
        b["nvext"] = json!({ "agent_hints": hints });
    }
    if c.tool_call {
        // The simulated worker ends its answer with a tool call, as the
        // traced call did (the router reads the ending from the stream).
        b["nvext"]["sim_stop"] = json!("tool_use");
    }
    serde_json::to_vec(&b).unwrap_or_default()
}

fn header_field(h: &str, name: &str) -> u64 {
    h.split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One streamed call.
pub async fn send(addr: std::net::SocketAddr, body: Vec<u8>) -> Result<Outcome> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let prefill = header("x-kvtier-prefill");
    let mut out = Outcome {
        worker: header("x-kvtier-worker"),
        hbm_blocks: header_field(&prefill, "hbm"),
        onboarded_blocks: header_field(&prefill, "onboarded"),
        computed_tokens: header_field(&prefill, "computed_tokens"),
        queue_ms: header_field(&prefill, "queue_ms"),
        router_queued_ms: header("x-kvtier-queued-ms").parse().unwrap_or(0),
        ..Outcome::default()
    };
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut first: Option<f64> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                let content = v
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if first.is_none() && !content.is_empty() {
                    first = Some(started.elapsed().as_secs_f64() * 1e3);
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                    out.cached_tokens = u
                        .pointer("/prompt_tokens_details/cached_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                }
            }
        }
    }
    out.total_ms = started.elapsed().as_secs_f64() * 1e3;
    out.ttft_ms = first.unwrap_or(out.total_ms);
    Ok(out)
}

/// Replays `plan` through the router; returns one result per call.
pub async fn replay(
    plan: Arc<Plan>,
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    opts: RunOpts,
) -> Result<Vec<Result<Outcome, String>>> {
    // Chains: the calls of one agent in order (an agentless call is its own chain).
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut chain_of: std::collections::HashMap<u32, usize> = Default::default();
    for (i, c) in plan.calls.iter().enumerate() {
        match c.agent {
            Some(a) => {
                let k = *chain_of.entry(a).or_insert_with(|| {
                    chains.push(Vec::new());
                    chains.len() - 1
                });
                chains[k].push(i);
            }
            None => chains.push(vec![i]),
        }
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let results: Arc<parking_lot::Mutex<Vec<Result<Outcome, String>>>> =
        Arc::new(parking_lot::Mutex::new(vec![
            Err("not sent".to_string());
            plan.calls.len()
        ]));
    let router = if opts.end_agents {
        Some(RouterServiceClient::connect(format!("http://{grpc}")).await?)
    } else {
        None
    };
    let start = Instant::now() + Duration::from_millis(100);
    let speed = opts.speed.max(1e-9);
    let scaled = move |ms: u64| Duration::from_secs_f64(ms as f64 / 1e3 / speed);
    let mut tasks = Vec::new();
    for chain in chains {
        let plan = plan.clone();
        let sem = sem.clone();
        let results = results.clone();
        let mut router = router.clone();
        tasks.push(tokio::spawn(async move {
            let mut done: Option<Instant> = None;
            for i in chain {
                let c = &plan.calls[i];
                let mut at = start + scaled(c.at_ms);
                if let Some(d) = done {
                    at = at.max(d + scaled(c.think_ms));
                }
                tokio::time::sleep_until(at).await;
                let body = body(&plan, i, opts.osl);
                let result = {
                    let _permit = sem.acquire().await;
                    tokio::time::timeout(Duration::from_secs(300), send(http, body))
                        .await
                        .map_err(|_| anyhow!("timed out after 300 s"))
                        .and_then(|r| r)
                };
                done = Some(Instant::now());
                results.lock()[i] = result.map_err(|e| format!("{e:#}"));
                if let (true, Some(a), Some(r)) = (c.last_of_agent, c.agent, router.as_mut()) {
                    let _ = r
                        .end_agent(RouterEndAgentRequest {
                            model: MODEL.into(),
                            agent_id: agent_id(c.session, a),
                        })
                        .await;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let out = std::mem::take(&mut *results.lock());
    Ok(out)
}
