//! kvtier-prompt: what a model call is, whichever API it came through.
//!
//! Parses the three request shapes (OpenAI `/v1/chat/completions`, OpenAI
//! `/v1/responses`, Anthropic `/v1/messages`) into one [`ModelCall`] with its
//! agent hints, renders the model's chat template, tokenizes with the model's
//! `tokenizer.json`, and hashes full blocks exactly as the workers do.
//!
//! API:
//! - [`Api`], [`ModelCall`], [`CallHints`], [`parse_request`]: the three request
//!   shapes, normalised (see [`parse_request`] for hints and their precedence).
//! - [`ApiError`]: an error in the shape of the endpoint's own API
//!   ([`ApiError::invalid`], [`ApiError::not_found_model`], [`ApiError::no_worker`],
//!   [`ApiError::internal`], [`ApiError::body`]).
//! - [`PromptModel`]: chat template + tokenizer + block hasher of one model.
//! - [`stream`]: SSE events and final bodies of each API's responses (used by
//!   the simulated worker to answer, and by tests to parse: [`stream::collect_text`]).
//! - [`testing`]: a tiny self-made tokenizer for tests and benchmarks.
//!
//! The prefix property (tested for all three APIs with the built-in template):
//! when a call re-sends the previous call's conversation plus the assistant's
//! reply and a new user turn, its rendered text extends the previous rendered
//! text (the previous generation prompt `<|im_start|>assistant\n` is the start
//! of the replied assistant turn), its tokens extend the previous tokens (the
//! template's markers are special tokens, which split pre-tokenization), and
//! so every block hash of the previous call is a prefix of the new call's.
//! Templates that rewrite earlier turns (e.g. ones that drop past reasoning)
//! or whose generation prompt is not the start of the rendered assistant turn
//! break this at the first changed token; blocks before it are still shared.

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Anthropic `POST /v1/messages`.
    Messages,
}

impl Api {
    /// The URL path of the endpoint, e.g. `/v1/messages`.
    pub fn path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
        }
    }
}

/// One message of the conversation, normalised (text parts concatenated;
/// tool calls and tool results rendered as text in a stable way).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant" or "tool".
    pub role: String,
    /// Text content.
    pub content: String,
}

/// How the caller's agent describes the call (nvext.agent_hints-style).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallHints {
    /// LLM agent / session id (body field or `x-kvtier-agent-id` / session header).
    pub agent_id: Option<String>,
    /// Parent agent (sub-agents).
    pub parent_agent_id: Option<String>,
    /// -8..=8, 0 normal.
    pub priority: i32,
    /// 0.0..=1.0.
    pub latency_sensitivity: f32,
    /// Expected output tokens.
    pub osl: Option<u32>,
    /// Keep-warm TTL (Anthropic `cache_control` ttl "5m"/"1h", or an explicit hint), ms.
    pub keep_warm_ms: Option<u64>,
}

/// A model call, whichever API it came through.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    /// The API of the request.
    pub api: Api,
    /// Requested model name.
    pub model: String,
    /// Conversation (system prompt first when present).
    pub messages: Vec<ChatMessage>,
    /// Tool definitions, verbatim (rendered into the prompt by the template).
    pub tools: Option<serde_json::Value>,
    /// Streamed (SSE) response wanted.
    pub stream: bool,
    /// Output token limit.
    pub max_tokens: Option<u32>,
    /// Agent hints.
    pub hints: CallHints,
}

/// An error in the shape of the endpoint's own API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status (400, 404, 503, ...).
    pub status: u16,
    /// Machine-readable kind ("invalid_request_error", "not_found_error", ...).
    pub kind: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ApiError {
    /// An error with an explicit status, kind and message.
    pub fn new(status: u16, kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// 400 `invalid_request_error`: the request is malformed. Start the message
    /// with the field path (`"messages[2].content: expected ..."`): OpenAI bodies
    /// report that path as `param`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// 404 `not_found_error`: no namespace / worker pool serves `model`.
    pub fn not_found_model(model: &str) -> Self {
        Self::new(
            404,
            "not_found_error",
            format!(
                "model: `{model}` is not served here; list the served models with GET /v1/models"
            ),
        )
    }

    /// 503 `overloaded_error`: the model is known but no worker can take the call now.
    pub fn no_worker(model: &str) -> Self {
        Self::new(
            503,
            "overloaded_error",
            format!("no worker is available for model `{model}` right now; retry later"),
        )
    }

    /// 500 `api_error`: a fault on our side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "api_error", message)
    }

    /// The field path this error is about, when its message starts with one
    /// (`"messages[2].content: expected ..."` -> `messages[2].content`).
    pub fn param(&self) -> Option<&str> {
        let (head, _) = self.message.split_once(": ")?;
        let is_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
        is_path.then_some(head)
    }

    /// The JSON body of this error in `api`'s shape.
    ///
    /// - OpenAI (chat completions, Responses):
    ///   `{"error":{"message","type","param","code"}}`; `type` is `kind`, except
    ///   that a 404 model error is `invalid_request_error` with code
    ///   `model_not_found` (as OpenAI answers), a 429 is type `requests` with
    ///   code `rate_limit_exceeded` (OpenAI's rate-limit shape), and 5xx kinds other than
    ///   `invalid_request_error` are `server_error`. `param` is [`ApiError::param`].
    /// - Anthropic: `{"type":"error","error":{"type","message"}}`; `type` follows
    ///   the status as Anthropic uses it (400 `invalid_request_error`, 401
    ///   `authentication_error`, 403 `permission_error`, 404 `not_found_error`,
    ///   413 `request_too_large`, 429 `rate_limit_error`, 503/529
    ///   `overloaded_error`, other 5xx `api_error`).
    pub fn body(&self, api: Api) -> serde_json::Value {
        match api {
            Api::ChatCompletions | Api::Responses => {
                let (kind, code) = match (self.status, self.kind.as_str()) {
                    (404, "not_found_error") => ("invalid_request_error", Some("model_not_found")),
                    (429, _) => ("requests", Some("rate_limit_exceeded")),
                    (500..=599, "overloaded_error") => {
                        ("server_error", Some("no_worker_available"))
                    }
                    (500..=599, "api_error") => ("server_error", None),
                    (_, kind) => (kind, None),
                };
                serde_json::json!({
                    "error": {
                        "message": self.message,
                        "type": kind,
                        "param": self.param(),
                        "code": code,
                    }
                })
            }
            Api::Messages => {
                let kind = match self.status {
                    400 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    503 | 529 => "overloaded_error",
                    _ if self.status >= 500 => "api_error",
                    _ => self.kind.as_str(),
                };
                serde_json::json!({
                    "type": "error",
                    "error": { "type": kind, "message": self.message },
                })
            }
        }
    }
}

/// Header names a caller may use instead of body fields (lower case).
///
/// Body fields win over headers; see [`parse_request`] for the precedence.
pub mod headers {
    /// Agent / session id.
    pub const AGENT_ID: &str = "x-kvtier-agent-id";
    /// Session id (common in agent harnesses); used when no agent id is given.
    pub const SESSION_ID: &str = "x-session-id";
    /// Parent agent id (sub-agents).
    pub const PARENT_AGENT_ID: &str = "x-kvtier-parent-agent-id";
    /// Priority, an integer in -8..=8.
    pub const PRIORITY: &str = "x-kvtier-priority";
    /// Latency sensitivity, a number in 0..=1.
    pub const LATENCY_SENSITIVITY: &str = "x-kvtier-latency-sensitivity";
    /// Expected output tokens.
    pub const OSL: &str = "x-kvtier-osl";
    /// Explicit keep-warm TTL in milliseconds.
    pub const KEEP_WARM_MS: &str = "x-kvtier-keep-warm-ms";
}

/// Parses a request body of `api`; `headers` are the request's (name lower-case, value).
///
/// Unknown fields are ignored. Errors are 400 `invalid_request_error` naming
/// the field and what was expected.
///
/// Agent hints (all three APIs):
/// - `nvext.agent_hints.{priority (-8..=8), latency_sensitivity (0..=1), osl,
///   agent_id, parent_agent_id, keep_warm_ms}`; out-of-range values are a 400.
/// - agent id, first present (non-empty) of: `nvext.agent_hints.agent_id`,
///   `nvext.agent_id`, `nvext.session_id`, header `x-kvtier-agent-id`, header
///   `x-session-id`, and for Anthropic last `metadata.user_id`.
/// - parent: `nvext.agent_hints.parent_agent_id`, then header `x-kvtier-parent-agent-id`.
/// - priority / latency sensitivity / osl / keep-warm: the body's value, else the
///   header's (`x-kvtier-priority`, `x-kvtier-latency-sensitivity`, `x-kvtier-osl`,
///   `x-kvtier-keep-warm-ms`).
/// - `cache_control: {"type":"ephemeral","ttl":"5m"|"1h"}` on the top level,
///   system blocks, message content blocks (and tool_result contents) and tools:
///   keep-warm = the largest TTL (5 minutes when no ttl), and at least the
///   explicit hint.
///
/// The Responses API's `previous_response_id` / `conversation` are refused
/// (400): the router is stateless and cannot see earlier responses; send the
/// whole conversation in `input` instead.
pub fn parse_request(
    api: Api,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<ModelCall, ApiError> {
    parse::parse_request(api, body, headers)
}

/// Errors loading a model's prompt assets.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The tokenizer or template is invalid.
    #[error("{0}")]
    Invalid(String),
}

mod model;
mod parse;
pub mod testing;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod parse_tests;

pub use model::{PromptModel, DEFAULT_CHAT_TEMPLATE};

/// Response bodies and SSE events of each API.
pub mod stream;
