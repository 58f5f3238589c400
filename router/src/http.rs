//! The HTTP front: `POST /v1/chat/completions`, `/v1/responses` and
//! `/v1/messages`, routed and proxied to the chosen worker with the answer
//! streamed back unbuffered; plus `GET /v1/models`, `/health`, `/metrics`.
//!
//! Per call: parse (the endpoint's own error shape on a bad body), render the
//! chat template and tokenize, hash the full blocks as the workers do, route,
//! tell the cache server (register the agent, hint the call's blocks), proxy,
//! and once the answer ends, hint how it ended (tool call or end of turn).
//! A client that goes away cancels the upstream request. A worker whose
//! endpoint refuses the connection is marked unreachable and the call is
//! routed again (at most [`MAX_ATTEMPTS`] workers). While every worker is
//! busy, calls wait in the model's admission queue ([`crate::admission`])
//! before routing; a refused call gets 429 or 503 with Retry-After, and an
//! admitted one the header `x-kvtier-queued-ms`.
//!
//! With tokens on (`--tokens-file`), a model call needs a bearer token with
//! write access to the model's namespace (a call writes KV and drives the
//! agent lifecycle on the cache server): 401 without a valid token, 403
//! without the grant; `/v1/models` lists what the caller may read; the
//! router's own token check consumes the `authorization` header, which is
//! then not forwarded to the workers. `/health` and `/metrics` stay open.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use metrics::{counter, histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use kvtier_prompt::{Api, ApiError, ModelCall};
use kvtier_proto::v1::{CallEnding, HintRequest};
use kvtier_security::front::{permitted, Need};
use kvtier_security::{Authenticator, Client};

use crate::admission::Rejected;
use crate::app::{ModelState, Models};
use crate::ending::EndingScan;
use crate::lifecycle::AgentSpec;
use crate::load::CallTicket;
use crate::metrics as m;
use crate::routing::{RouteError, RouteHints, Routed};

/// Default largest request body accepted (a larger one is a 413).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// Workers tried for one call before giving up.
pub const MAX_ATTEMPTS: usize = 3;

/// The HTTP front's state.
pub struct HttpFront {
    models: Models,
    client: reqwest::Client,
    metrics: Option<PrometheusHandle>,
    max_body_bytes: usize,
    auth: Arc<Authenticator>,
}

impl HttpFront {
    /// A front over `models`; `metrics` renders `/metrics` when given.
    pub fn new(models: Models, metrics: Option<PrometheusHandle>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            models,
            client,
            metrics,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            auth: Authenticator::disabled(),
        })
    }

    /// Accepts request bodies up to `bytes` (larger: 413 in the API's shape).
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Checks bearer tokens on model calls and `/v1/models` (see the module docs).
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    /// The caller of a request: 401 in the API's shape without a valid token
    /// (when tokens are on).
    fn client(&self, headers: &HeaderMap) -> Result<Client, ApiError> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let principal = self.auth.authenticate_header(header).map_err(|status| {
            api_error(401, "authentication_error", status.message().to_string())
        })?;
        Ok(Authenticator::client(principal, None))
    }
}

/// 403 in the API's shape unless `client` may do `need` in the model's namespace.
fn authorize(client: &Client, model: &ModelState, need: Need, what: &str) -> Result<(), ApiError> {
    permitted(client, &model.namespace, need, what)
        .map_err(|message| api_error(403, "permission_error", message))
}

/// The axum application.
pub fn app(front: Arc<HttpFront>) -> axum::Router {
    let max_body_bytes = front.max_body_bytes;
    axum::Router::new()
        .route(
            Api::ChatCompletions.path(),
            post(|s, h, b| serve(s, Api::ChatCompletions, h, b)),
        )
        .route(
            Api::Responses.path(),
            post(|s, h, b| serve(s, Api::Responses, h, b)),
        )
        .route(
            Api::Messages.path(),
            post(|s, h, b| serve(s, Api::Messages, h, b)),
        )
        .route("/v1/models", get(list_models))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
        // Agentic contexts are large (a 200k-token conversation with tool
        // output is several MB of JSON); axum's default limit is 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(front)
}

fn api_label(api: Api) -> &'static str {
    match api {
        Api::ChatCompletions => "chat_completions",
        Api::Responses => "responses",
        Api::Messages => "messages",
    }
}

fn error_response(api: Api, error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(error.body(api))).into_response()
}

/// The admission queue's refusal in the API's shape: 429 (queue full) or
/// 503 (waited too long), with Retry-After.
fn rejection_response(api: Api, rejected: &Rejected) -> Response {
    let (status, kind) = match rejected {
        Rejected::QueueFull { .. } => (429, "rate_limit_error"),
        Rejected::MaxWait { .. } => (503, "overloaded_error"),
    };
    let mut response = error_response(api, &api_error(status, kind, rejected.to_string()));
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(rejected.retry_after_secs()),
    );
    response
}

fn api_error(status: u16, kind: &str, message: String) -> ApiError {
    ApiError {
        status,
        kind: kind.to_string(),
        message,
    }
}

async fn serve(
    State(front): State<Arc<HttpFront>>,
    api: Api,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let result = match body {
        Ok(body) => call(&front, api, &headers, body).await,
        Err(rejection) => Err(api_error(
            rejection.status().as_u16(),
            "invalid_request_error",
            format!(
                "{} (this router accepts bodies up to {} bytes: --max-body-bytes)",
                rejection.body_text(),
                front.max_body_bytes
            ),
        )),
    };
    let response = match result {
        Ok(response) => response,
        Err(error) => error_response(api, &error),
    };
    counter!(m::REQUESTS, "api" => api_label(api), "code" => response.status().as_u16().to_string())
        .increment(1);
    response
}

/// The hints as the cache server and the cost model want them.
fn route_hints(call: &ModelCall) -> RouteHints {
    RouteHints {
        agent_id: call.hints.agent_id.clone(),
        priority: call.hints.priority,
        latency_sensitivity: call.hints.latency_sensitivity,
        osl: call.hints.osl.or(call.max_tokens),
    }
}

async fn call(
    front: &HttpFront,
    api: Api,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let client = front.client(headers)?;
    let header_pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    let call = kvtier_prompt::parse_request(api, &body, &header_pairs)?;
    let model = front.models.get(&call.model).ok_or_else(|| {
        api_error(
            404,
            "not_found_error",
            format!(
                "model {:?} is not served here; available: {}",
                call.model,
                front.models.names().join(", ")
            ),
        )
    })?;
    authorize(&client, model, Need::Write, "a model call")?;
    let prompt = model.prompt.as_ref().ok_or_else(|| {
        api_error(
            503,
            "api_error",
            format!(
                "model {:?} has no tokenizer configured on this router",
                call.model
            ),
        )
    })?;
    let tokens = prompt.prompt_tokens(&call)?;
    let hashes = prompt.block_hashes(&tokens);
    let hints = route_hints(&call);
    let arrival_hint = send_arrival_hint(model, &call, &hashes);

    // While every worker is busy the call waits here, in priority order; a
    // client that goes away drops this future and so leaves the queue.
    let mut admitted = match model.router.admission() {
        Some(queue) => match queue.admit(hints.priority, hints.latency_sensitivity).await {
            Ok(admitted) => Some(admitted),
            Err(rejected) => return Ok(rejection_response(api, &rejected)),
        },
        None => None,
    };
    let queued_ms = admitted.as_ref().map(|a| a.waited().as_millis() as u64);

    let mut last_error = String::new();
    for _ in 0..MAX_ATTEMPTS {
        let decided = Instant::now();
        let routed = model
            .router
            .route(&hashes, tokens.len() as u64, &hints)
            .map_err(|e| match e {
                RouteError::NoWorker { .. } => api_error(
                    503,
                    "overloaded_error",
                    if last_error.is_empty() {
                        e.to_string()
                    } else {
                        format!("{e}; last failure: {last_error}")
                    },
                ),
                RouteError::TooLong(_) => api_error(400, "invalid_request_error", e.to_string()),
            })?;
        histogram!(m::DECISION_SECONDS).record(decided.elapsed().as_secs_f64());
        let worker = model.router.worker(routed.worker).clone();
        let ticket = model.router.commit(&routed, &hints, tokens.len() as u64);
        // Booked: the next queued call's decision sees this load.
        drop(admitted.take());
        let url = format!("{}{}", worker.http_base.trim_end_matches('/'), api.path());
        let request = front
            .client
            .post(&url)
            .headers(forwarded_request_headers(headers, front.auth.enabled()))
            .body(body.clone());
        histogram!(m::OVERHEAD_SECONDS).record(started.elapsed().as_secs_f64());
        match request.send().await {
            Ok(upstream) => {
                record_decision(&routed, &worker.worker_id, hashes.len());
                let mut response = proxy_response(
                    api,
                    upstream,
                    &worker.worker_id,
                    ticket,
                    CallEnd::new(model, &call, arrival_hint),
                );
                if let Some(ms) = queued_ms {
                    response.headers_mut().insert(
                        HeaderName::from_static("x-kvtier-queued-ms"),
                        HeaderValue::from(ms),
                    );
                }
                return Ok(response);
            }
            Err(error) => {
                counter!(m::UPSTREAM_ERRORS, "worker" => worker.worker_id.clone(), "kind" => "connect")
                    .increment(1);
                last_error = format!("worker {}: {error}", worker.worker_id);
                tracing::warn!(worker = %worker.worker_id, %error, "worker unreachable; routing again");
                model
                    .router
                    .health()
                    .mark_unreachable(&worker.worker_id, &error.to_string());
                if let Some(agent) = &hints.agent_id {
                    model.router.forget_affinity(agent, &worker.worker_id);
                }
            }
        }
    }
    Err(api_error(
        503,
        "overloaded_error",
        format!("no worker of model {:?} answered: {last_error}", call.model),
    ))
}

fn record_decision(routed: &Routed, worker: &str, blocks: usize) {
    counter!(m::DECISIONS, "source" => "http", "reason" => routed.reason).increment(1);
    counter!(m::ROUTED, "worker" => worker.to_string()).increment(1);
    let o = routed.chosen().overlap;
    let fetched = u64::from(o.hbm_blocks + o.host_blocks + o.disk_blocks).min(blocks as u64);
    counter!(m::PREDICTED_BLOCKS, "tier" => "hbm").increment(u64::from(o.hbm_blocks).min(fetched));
    counter!(m::PREDICTED_BLOCKS, "tier" => "host").increment(u64::from(o.host_blocks));
    counter!(m::PREDICTED_BLOCKS, "tier" => "disk").increment(u64::from(o.disk_blocks));
    counter!(m::PREDICTED_BLOCKS, "tier" => "compute").increment(blocks as u64 - fetched);
}

fn agent_spec(call: &ModelCall) -> Option<AgentSpec> {
    let agent_id = call.hints.agent_id.clone()?;
    Some(AgentSpec {
        agent_id,
        parent_agent_id: call.hints.parent_agent_id.clone().unwrap_or_default(),
        priority: call.hints.priority,
        latency_sensitivity: call.hints.latency_sensitivity,
        lease_ms: None,
    })
}

/// Registers the call's agent and hints its blocks, in the background.
fn send_arrival_hint(
    model: &Arc<ModelState>,
    call: &ModelCall,
    hashes: &[u64],
) -> Option<tokio::task::JoinHandle<()>> {
    let lifecycle = model.lifecycle.clone()?;
    let agent = agent_spec(call)?;
    let request = HintRequest {
        agent_id: agent.agent_id.clone(),
        blocks: hashes.to_vec(),
        keep_warm_ms: call.hints.keep_warm_ms,
        ..HintRequest::default()
    };
    Some(tokio::spawn(async move {
        let result = lifecycle
            .register_and_hint(&agent, request)
            .await
            .map(|_| ());
        record_hint("call", &agent.agent_id, result);
    }))
}

fn record_hint(kind: &'static str, agent: &str, result: Result<(), tonic::Status>) {
    let label = if result.is_ok() { "ok" } else { "error" };
    if let Err(status) = result {
        tracing::debug!(agent, kind, error = %status.message(), "hint not delivered");
    }
    counter!(m::HINTS, "kind" => kind, "result" => label).increment(1);
}

/// What to tell the cache server once the answer has ended.
struct CallEnd {
    model: Arc<ModelState>,
    agent: Option<AgentSpec>,
    keep_warm_ms: Option<u64>,
    arrival: Option<tokio::task::JoinHandle<()>>,
}

impl CallEnd {
    fn new(
        model: &Arc<ModelState>,
        call: &ModelCall,
        arrival: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Self {
            model: model.clone(),
            agent: agent_spec(call),
            keep_warm_ms: call.hints.keep_warm_ms,
            arrival,
        }
    }

    /// Sends the ending hint after the arrival hint.
    fn send(self, ending: CallEnding) {
        let (Some(lifecycle), Some(agent)) = (self.model.lifecycle.clone(), self.agent) else {
            return;
        };
        let arrival = self.arrival;
        let request = HintRequest {
            agent_id: agent.agent_id.clone(),
            ending: ending as i32,
            keep_warm_ms: self.keep_warm_ms,
            ..HintRequest::default()
        };
        tokio::spawn(async move {
            if let Some(arrival) = arrival {
                let _ = arrival.await;
            }
            let result = lifecycle.hint(request, Some(&agent)).await.map(|_| ());
            record_hint("ending", &agent.agent_id, result);
        });
    }
}

/// The upstream answer, passed through chunk by chunk.
struct UpstreamBody {
    inner: BoxStream<'static, Result<Bytes, reqwest::Error>>,
    worker: String,
    ticket: Option<CallTicket>,
    scan: EndingScan,
    end: Option<CallEnd>,
    finished: bool,
}

impl Stream for UpstreamBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(ticket) = this.ticket.as_mut() {
                    ticket.prefill_done();
                }
                this.scan.feed(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finished = true;
                this.ticket = None;
                counter!(m::UPSTREAM_ERRORS, "worker" => this.worker.clone(), "kind" => "stream")
                    .increment(1);
                Poll::Ready(Some(Err(std::io::Error::other(error))))
            }
            Poll::Ready(None) => {
                this.finished = true;
                this.ticket = None;
                if let Some(end) = this.end.take() {
                    end.send(this.scan.ending());
                }
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.finished {
            // The client went away: dropping `inner` closes the upstream
            // connection, which cancels the worker's request.
            counter!(m::CANCELLED).increment(1);
            tracing::debug!(worker = %self.worker, "client disconnected; upstream request cancelled");
        }
    }
}

fn proxy_response(
    api: Api,
    upstream: reqwest::Response,
    worker: &str,
    ticket: CallTicket,
    end: CallEnd,
) -> Response {
    let status = upstream.status();
    let mut headers = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if is_forwarded_response_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(worker) {
        headers.insert(HeaderName::from_static("x-kvtier-routed-worker"), value);
    }
    let body = UpstreamBody {
        inner: upstream.bytes_stream().boxed(),
        worker: worker.to_string(),
        ticket: Some(ticket),
        scan: EndingScan::new(api),
        end: Some(end),
        finished: false,
    };
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Hop-by-hop and length headers are the transport's business.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-connection"
            | "accept-encoding"
    )
}

/// The headers a worker receives: not hop-by-hop ones, and not the caller's
/// `authorization` when the router consumed it (`router_auth`): a kvtier
/// token is for the router, not for every worker behind it.
fn forwarded_request_headers(headers: &HeaderMap, router_auth: bool) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_header(name))
        .filter(|(name, _)| !(router_auth && *name == axum::http::header::AUTHORIZATION))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

fn is_forwarded_response_header(name: &HeaderName) -> bool {
    !is_hop_header(name)
}

async fn list_models(State(front): State<Arc<HttpFront>>, headers: HeaderMap) -> Response {
    let client = match front.client(&headers) {
        Ok(client) => client,
        Err(error) => return error_response(Api::ChatCompletions, &error),
    };
    let data: Vec<serde_json::Value> = front
        .models
        .iter()
        .filter(|model| authorize(&client, model, Need::Read, "listing the model").is_ok())
        .map(|model| {
            serde_json::json!({"id": model.router.model(), "object": "model", "owned_by": "kvtier"})
        })
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn render_metrics(State(front): State<Arc<HttpFront>>) -> Response {
    let Some(handle) = &front.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off").into_response();
    };
    for model in front.models.iter() {
        let router = &model.router;
        let mut available = 0u32;
        for worker in router.workers() {
            if router.health().is_available(&worker.worker_id) {
                available += 1;
            }
            let index = router.index().read();
            if let Some(slot) = index.worker_slot(&worker.worker_id) {
                metrics::gauge!(m::INDEXED_BLOCKS, "worker" => worker.worker_id.clone())
                    .set(index.worker_blocks(slot) as f64);
            }
        }
        metrics::gauge!(m::WORKERS_AVAILABLE, "model" => router.model().to_string())
            .set(f64::from(available));
    }
    handle.render().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("12"));
        headers.insert("host", HeaderValue::from_static("router"));
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        headers.insert("x-kvtier-agent-id", HeaderValue::from_static("a1"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        let forwarded = forwarded_request_headers(&headers, false);
        assert_eq!(forwarded.len(), 3);
        assert!(forwarded.contains_key("anthropic-version"));
        assert!(forwarded.contains_key("x-kvtier-agent-id"));
        assert!(forwarded.contains_key("authorization"));
        // The router's own token stays with the router.
        let forwarded = forwarded_request_headers(&headers, true);
        assert_eq!(forwarded.len(), 2);
        assert!(!forwarded.contains_key("authorization"));
    }
}
