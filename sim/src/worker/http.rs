//! The HTTP shell of the simulated worker: the three model-call endpoints,
//! `/load`, `/metrics`, `/health`. Parsing, errors and bodies come from
//! `kvtier-prompt`; the work is [`SimWorker::prefill`] and [`Prefilled`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use kvtier_prompt::{parse_request, Api, ApiError};

use super::request::SimWorker;

/// Response header naming the worker that served the request.
pub const WORKER_HEADER: &str = "x-kvtier-worker";
/// Response header with the prefill breakdown:
/// `hbm=<blocks>,onboarded=<blocks>,computed_tokens=<n>,queue_ms=<ms>`.
pub const PREFILL_HEADER: &str = "x-kvtier-prefill";

/// Largest request body accepted (long agentic contexts).
const MAX_BODY: usize = 64 << 20;

/// The worker's HTTP routes.
pub fn router(worker: Arc<SimWorker>) -> Router {
    Router::new()
        .route(Api::ChatCompletions.path(), post(chat_completions))
        .route(Api::Responses.path(), post(responses))
        .route(Api::Messages.path(), post(messages))
        .route("/load", get(load))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(worker)
}

async fn chat_completions(s: State<Arc<SimWorker>>, h: HeaderMap, b: Bytes) -> Response {
    serve(Api::ChatCompletions, s.0, h, b).await
}

async fn responses(s: State<Arc<SimWorker>>, h: HeaderMap, b: Bytes) -> Response {
    serve(Api::Responses, s.0, h, b).await
}

async fn messages(s: State<Arc<SimWorker>>, h: HeaderMap, b: Bytes) -> Response {
    serve(Api::Messages, s.0, h, b).await
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn error_response(worker: &SimWorker, api: Api, e: &ApiError) -> Response {
    worker.stats.error(e.status);
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json(status, &e.body(api));
    if let Ok(v) = HeaderValue::from_str(worker.worker_id()) {
        r.headers_mut().insert(WORKER_HEADER, v);
    }
    r
}

/// The simulation knob `nvext.sim_stop: "tool_use"`: the (streamed) answer
/// ends with a tool call, as the traced call did, so that the router's hints
/// carry the trace's real call endings.
fn asks_for_tool_call(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v["nvext"]["sim_stop"] == "tool_use")
        .unwrap_or(false)
}

async fn serve(api: Api, worker: Arc<SimWorker>, headers: HeaderMap, body: Bytes) -> Response {
    worker.stats.request(api);
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    let call = match parse_request(api, &body, &headers) {
        Ok(call) => call,
        Err(e) => return error_response(&worker, api, &e),
    };
    let stream = call.stream;
    let mut prefilled = match worker.prefill(call).await {
        Ok(p) => p,
        Err(e) => return error_response(&worker, api, &e),
    };
    prefilled.tool_call = asks_for_tool_call(&body);
    let prefill = HeaderValue::from_str(&prefilled.prefill_header()).ok();
    let mut response = if stream {
        let mut r = Response::new(Body::from_stream(prefilled.into_stream()));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        json(StatusCode::OK, &prefilled.complete().await)
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(worker.worker_id()) {
        h.insert(WORKER_HEADER, v);
    }
    if let Some(v) = prefill {
        h.insert(PREFILL_HEADER, v);
    }
    response
}

async fn load(State(worker): State<Arc<SimWorker>>) -> Response {
    json(StatusCode::OK, &worker.stats.load_json())
}

async fn metrics(State(worker): State<Arc<SimWorker>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        worker.metrics_text(),
    )
        .into_response()
}

async fn health(State(worker): State<Arc<SimWorker>>) -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "worker_id": worker.worker_id(),
            "model": worker.model(),
            "agent_attached": worker.attached(),
        }),
    )
}
