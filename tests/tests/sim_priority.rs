//! The simulated worker's own prefill queue honours priority, as vLLM's
//! `--scheduling-policy priority` does: a saturated `kvtier-sim-worker`
//! (one prefill slot, slow prefill, no agent) is sent one long low-priority
//! call, then three low-priority calls, then one high-priority call; with
//! `--scheduling-policy priority` the high-priority call's prefill ends
//! first, with `fcfs` last (so the first test fails under fcfs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use kvtier_integration_tests::model_api::*;
use kvtier_integration_tests::*;
use kvtier_prompt::Api;

/// Prefill rate: the long call holds the GPU ~1.5 s, the others ~0.25 s.
const PREFILL_TPS: &str = "2000";

/// A streamed chat call of about `words` distinct words with `priority`.
fn call(tag: &str, words: usize, priority: i32) -> Value {
    let text: Vec<String> = (0..words).map(|i| format!("{tag}{i}")).collect();
    let mut body = request(
        Api::ChatCompletions,
        &[("user", text.join(" ").as_str())],
        2,
        true,
    );
    body["nvext"] = json!({"agent_hints": {"agent_id": tag, "priority": priority}});
    body
}

/// Running requests on the worker (from `/load`).
fn running(worker: &SimWorkerProcess) -> u64 {
    worker
        .load_text()
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["running_requests"].as_u64())
        .unwrap_or(0)
}

/// Sends `body` in a task; it yields when the response head came back (the
/// worker answers it when the prefill ends) and the call's `queue_ms`.
fn spawn_call(
    http: SocketAddr,
    body: Value,
    t0: Instant,
) -> tokio::task::JoinHandle<Result<(Duration, u64)>> {
    tokio::spawn(async move {
        let (resp, task) = send(
            http,
            Api::ChatCompletions.path(),
            body.to_string().into_bytes(),
        )
        .await?;
        let at = t0.elapsed();
        if resp.status() != 200 {
            bail!("HTTP {}", resp.status());
        }
        let queue_ms = resp
            .headers()
            .get("x-kvtier-prefill")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| {
                h.split(',')
                    .find_map(|kv| kv.strip_prefix("queue_ms="))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        task.abort();
        Ok((at, queue_ms))
    })
}

/// Waits until the worker holds `n` requests (each sent call has reached
/// its prefill queue before the next is sent).
async fn wait_running(worker: &SimWorkerProcess, n: u64) -> Result<()> {
    let start = Instant::now();
    while running(worker) < n {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the worker holds {} requests, not {n}", running(worker));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Saturates a worker run with `policy` and returns when each of the three
/// low-priority calls and the high-priority call finished its prefill
/// (`[b1, b2, b3, high]`), with the high call's queue wait.
async fn prefill_ends(policy: &str) -> Result<([Duration; 4], u64)> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let tokenizer = kvtier_prompt::testing::write_tiny_tokenizer(&dir.path().join("model"))?;
    let worker = SimWorkerProcess::start(
        &dir.path().join("worker.log"),
        "off",
        &shm.path().join("pool"),
        &tokenizer,
        &[
            "--pool-blocks",
            "1024",
            "--block-bytes",
            "4096",
            "--model",
            MODEL,
            "--prefill-tokens-per-s",
            PREFILL_TPS,
            "--decode-tokens-per-s",
            "1000",
            "--scheduling-policy",
            policy,
        ],
    )?;
    let http = worker.http;
    let t0 = Instant::now();
    // The long call takes the GPU; the others queue behind it in this order.
    let long = spawn_call(http, call("long", 1000, -4), t0);
    wait_running(&worker, 1).await?;
    let mut queued = Vec::new();
    for (k, (tag, priority)) in [("bulka", -4), ("bulkb", -4), ("bulkc", -4), ("urgent", 4)]
        .into_iter()
        .enumerate()
    {
        queued.push(spawn_call(http, call(tag, 180, priority), t0));
        wait_running(&worker, k as u64 + 2).await?;
    }
    let (long_end, _) = long.await??;
    let mut ends = [Duration::ZERO; 4];
    let mut urgent_queue_ms = 0;
    for (k, t) in queued.into_iter().enumerate() {
        let (at, queue_ms) = t.await??;
        assert!(
            at > long_end,
            "{policy}: call {k} ended its prefill ({at:?}) before the long call ({long_end:?})"
        );
        ends[k] = at;
        urgent_queue_ms = queue_ms;
    }
    Ok((ends, urgent_queue_ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_policy_prefills_the_urgent_call_first() -> Result<()> {
    let (ends, urgent_queue_ms) = prefill_ends("priority").await?;
    let urgent = ends[3];
    for (k, &bulk) in ends[..3].iter().enumerate() {
        assert!(
            urgent < bulk,
            "priority: the urgent call (sent last) ended its prefill at {urgent:?}, \
             after low-priority call {k} at {bulk:?} ({ends:?})"
        );
    }
    // Low-priority calls keep their arrival order among themselves.
    assert!(
        ends[0] < ends[1] && ends[1] < ends[2],
        "FIFO among equals: {ends:?}"
    );
    assert!(
        urgent_queue_ms > 0,
        "the urgent call waited for the long one"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcfs_policy_keeps_the_urgent_call_behind_the_others() -> Result<()> {
    let (ends, _) = prefill_ends("fcfs").await?;
    let urgent = ends[3];
    for (k, &bulk) in ends[..3].iter().enumerate() {
        assert!(
            urgent > bulk,
            "fcfs: the urgent call ended its prefill at {urgent:?}, before call {k} at {bulk:?}"
        );
    }
    Ok(())
}
