//! Clients of the three model APIs for tests: request bodies in each API's
//! shape, a plain HTTP/1 client that can hang up mid-stream, and readers of
//! answers (whole and streamed) and of errors.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use kvtier_prompt::Api;

/// The model the simulated workers serve in tests.
pub const MODEL: &str = "sim-model";

/// A long shared system prompt: many full blocks.
pub const SYSTEM: &str =
    "You are a careful coding agent. You read the repository, plan the change, \
    edit the files, run the tests and report what you did. Prefer small, reviewable steps; \
    never guess an API when you can read its source; keep the user informed of what you are \
    about to do and why. When a tool call fails, read the error before trying again.";

// ---------------------------------------------------------------------------
// HTTP client.
// ---------------------------------------------------------------------------

pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// A field of `x-kvtier-prefill` (`hbm`, `onboarded`, `computed_tokens`, `queue_ms`).
    pub fn prefill(&self, key: &str) -> u64 {
        let h = self.header("x-kvtier-prefill");
        h.split(',')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in x-kvtier-prefill {h:?}"))
    }
}

/// Sends `POST path` with `body`; returns the response with its body unread
/// and the connection task (abort it to hang up).
pub async fn send(
    addr: std::net::SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> Result<(hyper::Response<Incoming>, tokio::task::JoinHandle<()>)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    Ok((sender.send_request(req).await?, task))
}

pub async fn post_raw(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> Result<Reply> {
    let (resp, _task) = send(addr, path, body).await?;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .map_err(|_| anyhow!("POST {path}: body not complete within 30 s"))??
        .to_bytes()
        .to_vec();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub async fn post(addr: std::net::SocketAddr, api: Api, body: &Value) -> Result<Reply> {
    post_raw(addr, api.path(), body.to_string().into_bytes()).await
}

// ---------------------------------------------------------------------------
// Request and response shapes.
// ---------------------------------------------------------------------------

/// A conversation as (role, text) turns after the system prompt.
pub fn request(api: Api, turns: &[(&str, &str)], max_tokens: u32, stream: bool) -> Value {
    let messages: Vec<Value> = turns
        .iter()
        .map(|(role, text)| json!({"role": role, "content": text}))
        .collect();
    match api {
        Api::ChatCompletions => {
            let mut all = vec![json!({"role": "system", "content": SYSTEM})];
            all.extend(messages);
            json!({"model": MODEL, "messages": all, "max_tokens": max_tokens, "stream": stream})
        }
        Api::Responses => json!({
            "model": MODEL, "instructions": SYSTEM, "input": messages,
            "max_output_tokens": max_tokens, "stream": stream,
        }),
        Api::Messages => json!({
            "model": MODEL, "system": SYSTEM, "messages": messages,
            "max_tokens": max_tokens, "stream": stream,
        }),
    }
}

/// The output text of a non-streamed response.
pub fn output_text(api: Api, body: &Value) -> Option<String> {
    match api {
        Api::ChatCompletions => body["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string),
        Api::Responses => {
            let mut out = String::new();
            for item in body["output"].as_array()? {
                for part in item["content"].as_array().into_iter().flatten() {
                    if part["type"] == "output_text" {
                        out.push_str(part["text"].as_str()?);
                    }
                }
            }
            Some(out)
        }
        Api::Messages => {
            let mut out = String::new();
            for block in body["content"].as_array()? {
                if block["type"] == "text" {
                    out.push_str(block["text"].as_str()?);
                }
            }
            Some(out)
        }
    }
}

/// `data:` payloads of an SSE body (with their `event:` names, if any).
pub fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let mut event = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            (event, data)
        })
        .collect()
}

/// The output text of a streamed response, and the number of text deltas.
pub fn streamed_text(api: Api, body: &str) -> (String, usize) {
    let mut text = String::new();
    let mut deltas = 0;
    for (event, data) in sse_events(body) {
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        let piece = match api {
            Api::ChatCompletions => v["choices"][0]["delta"]["content"].as_str(),
            Api::Responses => (event.as_deref() == Some("response.output_text.delta")
                || v["type"] == "response.output_text.delta")
                .then(|| v["delta"].as_str())
                .flatten(),
            Api::Messages => (v["type"] == "content_block_delta")
                .then(|| v["delta"]["text"].as_str())
                .flatten(),
        };
        if let Some(p) = piece {
            if !p.is_empty() {
                text.push_str(p);
                deltas += 1;
            }
        }
    }
    (text, deltas)
}

/// Whether an error body has `api`'s shape and error type `kind`.
pub fn error_shape(api: Api, body: &Value, kind: &str) -> bool {
    match api {
        Api::ChatCompletions | Api::Responses => {
            body["error"]["type"] == kind && body["error"]["message"].is_string()
        }
        Api::Messages => {
            body["type"] == "error"
                && body["error"]["type"] == kind
                && body["error"]["message"].is_string()
        }
    }
}

/// A temporary directory for pool files, where the agent accepts them
/// (`kvtier_testkit::dir::shm_tempdir`).
pub fn shm_dir() -> Result<tempfile::TempDir> {
    Ok(kvtier_testkit::dir::shm_tempdir()?)
}

/// The prompt model the simulated workers and the router build from
/// `tokenizer` with the default hashing (block 16, seed 1337, no salt).
pub fn prompt_model(tokenizer: &std::path::Path) -> Result<kvtier_prompt::PromptModel> {
    let seed = kvtier_proto::hashing::effective_seed(kvtier_proto::hashing::DEFAULT_SEED, "");
    Ok(kvtier_prompt::PromptModel::load(tokenizer, None, 16, seed)?)
}

/// A Python with the official `openai` and `anthropic` SDKs and `grpcio`:
/// `KVTIER_SDK_PYTHON`, else the venv `scripts/setup.sh` makes
/// (`~/.cache/kvtier-sdk-venv`); None when neither is there.
pub fn sdk_python() -> Result<Option<std::path::PathBuf>> {
    let candidates = std::env::var_os("KVTIER_SDK_PYTHON")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/kvtier-sdk-venv/bin/python")),
        );
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import openai, anthropic, grpc, grpc_tools"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(Some(python));
        }
    }
    Ok(None)
}
