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
pub fn full_response(
    _api: Api,
    _id: &str,
    _model: &str,
    _text: &str,
    _usage: Usage,
) -> serde_json::Value {
    todo!()
}
