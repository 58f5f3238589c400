//! kvtier-prompt: what a model call is, whichever API it came through.
//!
//! Parses the three request shapes (OpenAI `/v1/chat/completions`, OpenAI
//! `/v1/responses`, Anthropic `/v1/messages`) into one [`ModelCall`] with its
//! agent hints, renders the model's chat template, tokenizes with the model's
//! `tokenizer.json`, and hashes full blocks exactly as the workers do.
//!
//! API CONTRACT (implementation in progress; signatures are fixed, more may be added):
//! - [`Api`], [`ModelCall`], [`CallHints`], [`parse_request`]: the three request shapes.
//! - [`ApiError`]: an error in the shape of the endpoint's own API.
//! - [`PromptModel`]: chat template + tokenizer + block hasher of one model.
//! - [`stream`]: SSE events and final bodies of each API's responses (used by
//!   the simulated worker to answer, and by tests to parse).

use std::path::Path;

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
    /// The JSON body of this error in `api`'s shape (OpenAI:
    /// `{"error":{"message","type","param","code"}}`; Anthropic:
    /// `{"type":"error","error":{"type","message"}}`).
    pub fn body(&self, _api: Api) -> serde_json::Value {
        todo!()
    }
}

/// Header names a caller may use instead of body fields (lower case).
pub mod headers {
    /// Agent / session id.
    pub const AGENT_ID: &str = "x-kvtier-agent-id";
}

/// Parses a request body of `api`; `headers` are the request's (name lower-case, value).
pub fn parse_request(_api: Api, _body: &[u8], _headers: &[(String, String)]) -> Result<ModelCall, ApiError> {
    todo!()
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

/// Chat template + tokenizer + block hasher of one model.
pub struct PromptModel {}

impl PromptModel {
    /// Loads `tokenizer.json`, and the chat template from a file (a Jinja
    /// template, or a `tokenizer_config.json` with a `chat_template` field);
    /// None uses the built-in ChatML template. `block_tokens` and
    /// `effective_seed` are the namespace's hashing.
    pub fn load(
        _tokenizer_json: &Path,
        _chat_template: Option<&Path>,
        _block_tokens: usize,
        _effective_seed: u64,
    ) -> Result<Self, PromptError> {
        todo!()
    }
    /// The rendered prompt text of a call.
    pub fn render(&self, _call: &ModelCall) -> Result<String, ApiError> {
        todo!()
    }
    /// Token ids of the rendered prompt.
    pub fn prompt_tokens(&self, _call: &ModelCall) -> Result<Vec<u32>, ApiError> {
        todo!()
    }
    /// Sequence hashes of the full blocks of `tokens`.
    pub fn block_hashes(&self, _tokens: &[u32]) -> Vec<u64> {
        todo!()
    }
    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        todo!()
    }
    /// Token ids of a text (no template), e.g. to count output tokens.
    pub fn encode(&self, _text: &str) -> Result<Vec<u32>, ApiError> {
        todo!()
    }
}

/// Response bodies and SSE events of each API.
pub mod stream {
    use super::Api;

    /// Usage figures of a response.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Usage {
        /// Prompt tokens.
        pub prompt_tokens: u32,
        /// Of which served from cache (OpenAI `prompt_tokens_details.cached_tokens`,
        /// Anthropic `cache_read_input_tokens`).
        pub cached_tokens: u32,
        /// Output tokens.
        pub completion_tokens: u32,
    }

    /// Builds the SSE events of one streamed response, in the API's format.
    pub struct StreamWriter {}

    impl StreamWriter {
        /// Starts a response (`id` unique, `model` echoed).
        pub fn new(_api: Api, _id: &str, _model: &str) -> Self {
            todo!()
        }
        /// The events that open the stream (may be empty), each a complete
        /// `event: ...\ndata: ...\n\n` / `data: ...\n\n` frame.
        pub fn start(&mut self, _usage: Usage) -> Vec<String> {
            todo!()
        }
        /// The frames carrying one piece of output text.
        pub fn delta(&mut self, _text: &str) -> Vec<String> {
            todo!()
        }
        /// The frames that end the stream (stop reason, usage, `[DONE]` for chat completions).
        pub fn finish(&mut self, _usage: Usage) -> Vec<String> {
            todo!()
        }
    }

    /// The non-streamed response body of `api` with `text` as the output.
    pub fn full_response(_api: Api, _id: &str, _model: &str, _text: &str, _usage: Usage) -> serde_json::Value {
        todo!()
    }
}
