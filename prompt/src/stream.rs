//! Response bodies and SSE events of each API.
//!
//! Framing, as the official SDKs parse it:
//! - chat completions: `data: {chunk}\n\n` frames (`object: "chat.completion.chunk"`):
//!   a first chunk with `delta.role`, content chunks, a last chunk with
//!   `finish_reason: "stop"`, a usage chunk (`choices: []`), then `data: [DONE]`;
//! - Responses: `event: X\ndata: {"type":"X","sequence_number":n,...}\n\n` frames:
//!   response.created, response.in_progress, response.output_item.added,
//!   response.content_part.added, response.output_text.delta*,
//!   response.output_text.done, response.content_part.done,
//!   response.output_item.done, response.completed (with usage);
//! - Anthropic: `event: X\ndata: {"type":"X",...}\n\n` frames: message_start
//!   (usage), content_block_start, ping, content_block_delta (text_delta)*,
//!   content_block_stop, message_delta (stop_reason end_turn, usage), message_stop.
//!
//! Usage mapping: Anthropic's `input_tokens` excludes cached tokens
//! (`input_tokens = prompt_tokens - cached_tokens`, `cache_read_input_tokens =
//! cached_tokens`, `cache_creation_input_tokens = 0`); OpenAI's
//! `prompt_tokens` / `input_tokens` include them
//! (`prompt_tokens_details.cached_tokens` / `input_tokens_details.cached_tokens`).

use serde_json::{json, Value};

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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn chat_usage(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens, "audio_tokens": 0 },
        "completion_tokens_details": { "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 },
    })
}

fn responses_usage(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": { "cached_tokens": u.cached_tokens },
        "output_tokens": u.completion_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn anthropic_usage(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.completion_tokens,
    })
}

/// The Responses API output message item.
fn responses_message(msg_id: &str, text: &str, done: bool) -> Value {
    let status = if done { "completed" } else { "in_progress" };
    let content = if done {
        json!([{ "type": "output_text", "text": text, "annotations": [], "logprobs": [] }])
    } else {
        json!([])
    };
    json!({ "id": msg_id, "type": "message", "status": status, "role": "assistant", "content": content })
}

/// The Responses API response object.
fn responses_object(
    id: &str,
    model: &str,
    created: u64,
    output: Value,
    usage: Option<Usage>,
) -> Value {
    let done = usage.is_some();
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": if done { "completed" } else { "in_progress" },
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": { "effort": null, "summary": null },
        "store": false,
        "temperature": 1.0,
        "text": { "format": { "type": "text" } },
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage.map(responses_usage),
        "metadata": {},
    })
}

fn message_item_id(id: &str) -> String {
    format!("msg_{}", id.strip_prefix("resp_").unwrap_or(id))
}

/// Builds the SSE events of one streamed response, in the API's format.
///
/// Call [`start`](Self::start), then [`delta`](Self::delta) per piece of
/// text, then [`finish`](Self::finish); `delta` / `finish` start the stream
/// first (with zero usage) if `start` was not called, and `finish` is
/// idempotent (a second call returns no frames).
#[derive(Debug, Clone)]
pub struct StreamWriter {
    api: Api,
    id: String,
    model: String,
    created: u64,
    sequence: u64,
    text: String,
    started: bool,
    finished: bool,
    tool_call: Option<ToolCall>,
}

/// A function call the response ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ToolCall {
    id: String,
    name: String,
    arguments: String,
}

impl StreamWriter {
    /// Starts a response (`id` unique, `model` echoed).
    pub fn new(api: Api, id: &str, model: &str) -> Self {
        Self {
            api,
            id: id.to_string(),
            model: model.to_string(),
            created: now_secs(),
            sequence: 0,
            text: String::new(),
            started: false,
            finished: false,
            tool_call: None,
        }
    }

    /// Makes the response end with a call of tool `name` with `arguments`
    /// (a JSON object's text) after its text, as a model asking for a tool
    /// does: chat completions finish with `tool_calls`, Anthropic with
    /// `tool_use`, Responses with a `function_call` output item.
    pub fn end_with_tool_call(&mut self, name: &str, arguments: &str) {
        self.tool_call = Some(ToolCall {
            id: format!("call_{}", self.id),
            name: name.to_string(),
            arguments: arguments.to_string(),
        });
    }

    /// The output text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn data(value: &Value) -> String {
        format!("data: {value}\n\n")
    }

    /// An `event: kind` frame; Responses frames get the next `sequence_number`.
    fn event(&mut self, kind: &str, mut value: Value) -> String {
        if let Value::Object(map) = &mut value {
            map.insert("type".into(), json!(kind));
            if self.api == Api::Responses {
                map.insert("sequence_number".into(), json!(self.sequence));
                self.sequence += 1;
            }
        }
        format!("event: {kind}\ndata: {value}\n\n")
    }

    fn chat_chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        Self::data(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        }))
    }

    /// The events that open the stream (may be empty), each a complete
    /// `event: ...\ndata: ...\n\n` / `data: ...\n\n` frame.
    pub fn start(&mut self, usage: Usage) -> Vec<String> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        match self.api {
            Api::ChatCompletions => {
                vec![self.chat_chunk(json!({ "role": "assistant", "content": "" }), None)]
            }
            Api::Responses => {
                let msg_id = message_item_id(&self.id);
                let response =
                    responses_object(&self.id, &self.model, self.created, json!([]), None);
                vec![
                    self.event("response.created", json!({ "response": response })),
                    self.event("response.in_progress", json!({ "response": response })),
                    self.event(
                        "response.output_item.added",
                        json!({ "output_index": 0, "item": responses_message(&msg_id, "", false) }),
                    ),
                    self.event(
                        "response.content_part.added",
                        json!({ "item_id": msg_id, "output_index": 0, "content_index": 0,
                                "part": { "type": "output_text", "text": "", "annotations": [] } }),
                    ),
                ]
            }
            Api::Messages => {
                let mut start_usage = anthropic_usage(usage);
                start_usage["output_tokens"] = json!(1);
                let message = json!({
                    "id": self.id, "type": "message", "role": "assistant", "content": [],
                    "model": self.model, "stop_reason": null, "stop_sequence": null, "usage": start_usage,
                });
                vec![
                    self.event("message_start", json!({ "message": message })),
                    self.event(
                        "content_block_start",
                        json!({ "index": 0, "content_block": { "type": "text", "text": "" } }),
                    ),
                    self.event("ping", json!({})),
                ]
            }
        }
    }

    /// The frames carrying one piece of output text (none for empty text).
    pub fn delta(&mut self, text: &str) -> Vec<String> {
        let mut frames = self.start(Usage::default());
        if text.is_empty() || self.finished {
            return frames;
        }
        self.text.push_str(text);
        frames.push(match self.api {
            Api::ChatCompletions => self.chat_chunk(json!({ "content": text }), None),
            Api::Responses => {
                let msg_id = message_item_id(&self.id);
                self.event(
                    "response.output_text.delta",
                    json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": [] }),
                )
            }
            Api::Messages => self.event(
                "content_block_delta",
                json!({ "index": 0, "delta": { "type": "text_delta", "text": text } }),
            ),
        });
        frames
    }

    /// The frames that end the stream (stop reason, usage, `[DONE]` for chat completions).
    pub fn finish(&mut self, usage: Usage) -> Vec<String> {
        let mut frames = self.start(usage);
        if self.finished {
            return frames;
        }
        self.finished = true;
        match self.api {
            Api::ChatCompletions => {
                let reason = match self.tool_call.clone() {
                    Some(call) => {
                        frames.push(self.chat_chunk(
                            json!({ "tool_calls": [{ "index": 0, "id": call.id, "type": "function",
                                    "function": { "name": call.name, "arguments": call.arguments } }] }),
                            None,
                        ));
                        "tool_calls"
                    }
                    None => "stop",
                };
                frames.push(self.chat_chunk(json!({}), Some(reason)));
                frames.push(Self::data(&json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": null,
                    "choices": [],
                    "usage": chat_usage(usage),
                })));
                frames.push("data: [DONE]\n\n".to_string());
            }
            Api::Responses => {
                let msg_id = message_item_id(&self.id);
                let text = self.text.clone();
                let part = json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] });
                let item = responses_message(&msg_id, &text, true);
                let mut output = vec![item.clone()];
                let call_item = self.tool_call.clone().map(|call| {
                    json!({ "id": format!("fc_{}", call.id), "type": "function_call", "status": "completed",
                            "call_id": call.id, "name": call.name, "arguments": call.arguments })
                });
                output.extend(call_item.clone());
                let response = responses_object(
                    &self.id,
                    &self.model,
                    self.created,
                    json!(output),
                    Some(usage),
                );
                frames.push(self.event(
                    "response.output_text.done",
                    json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": [] }),
                ));
                frames.push(self.event(
                    "response.content_part.done",
                    json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "part": part }),
                ));
                frames.push(self.event(
                    "response.output_item.done",
                    json!({ "output_index": 0, "item": item }),
                ));
                if let Some(done) = call_item {
                    let mut added = done.clone();
                    added["status"] = json!("in_progress");
                    added["arguments"] = json!("");
                    let item_id = done["id"].clone();
                    let arguments = done["arguments"].clone();
                    frames.push(self.event(
                        "response.output_item.added",
                        json!({ "output_index": 1, "item": added }),
                    ));
                    frames.push(self.event(
                        "response.function_call_arguments.delta",
                        json!({ "item_id": item_id, "output_index": 1, "delta": arguments }),
                    ));
                    frames.push(self.event(
                        "response.function_call_arguments.done",
                        json!({ "item_id": item_id, "output_index": 1, "arguments": arguments }),
                    ));
                    frames.push(self.event(
                        "response.output_item.done",
                        json!({ "output_index": 1, "item": done }),
                    ));
                }
                frames.push(self.event("response.completed", json!({ "response": response })));
            }
            Api::Messages => {
                frames.push(self.event("content_block_stop", json!({ "index": 0 })));
                let reason = match self.tool_call.clone() {
                    Some(call) => {
                        frames.push(self.event(
                            "content_block_start",
                            json!({ "index": 1, "content_block": { "type": "tool_use", "id": call.id,
                                    "name": call.name, "input": {} } }),
                        ));
                        frames.push(self.event(
                            "content_block_delta",
                            json!({ "index": 1, "delta": { "type": "input_json_delta",
                                    "partial_json": call.arguments } }),
                        ));
                        frames.push(self.event("content_block_stop", json!({ "index": 1 })));
                        "tool_use"
                    }
                    None => "end_turn",
                };
                frames.push(self.event(
                    "message_delta",
                    json!({ "delta": { "stop_reason": reason, "stop_sequence": null },
                            "usage": anthropic_usage(usage) }),
                ));
                frames.push(self.event("message_stop", json!({})));
            }
        }
        frames
    }
}

/// The non-streamed response body of `api` with `text` as the output.
pub fn full_response(api: Api, id: &str, model: &str, text: &str, usage: Usage) -> Value {
    match api {
        Api::ChatCompletions => json!({
            "id": id,
            "object": "chat.completion",
            "created": now_secs(),
            "model": model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": text, "refusal": null },
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": chat_usage(usage),
        }),
        Api::Responses => responses_object(
            id,
            model,
            now_secs(),
            json!([responses_message(&message_item_id(id), text, true)]),
            Some(usage),
        ),
        Api::Messages => json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{ "type": "text", "text": text }],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": anthropic_usage(usage),
        }),
    }
}

fn u32_at(v: &Value, pointer: &str) -> u32 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

fn usage_of(api: Api, u: &Value) -> Usage {
    match api {
        Api::ChatCompletions => Usage {
            prompt_tokens: u32_at(u, "/prompt_tokens"),
            cached_tokens: u32_at(u, "/prompt_tokens_details/cached_tokens"),
            completion_tokens: u32_at(u, "/completion_tokens"),
        },
        Api::Responses => Usage {
            prompt_tokens: u32_at(u, "/input_tokens"),
            cached_tokens: u32_at(u, "/input_tokens_details/cached_tokens"),
            completion_tokens: u32_at(u, "/output_tokens"),
        },
        Api::Messages => {
            let cached = u32_at(u, "/cache_read_input_tokens");
            Usage {
                prompt_tokens: u32_at(u, "/input_tokens")
                    + u32_at(u, "/cache_creation_input_tokens")
                    + cached,
                cached_tokens: cached,
                completion_tokens: u32_at(u, "/output_tokens"),
            }
        }
    }
}

/// Whether one event of an `api` answer (an SSE frame's `data` parsed as
/// JSON, or a whole non-streamed body) ends the call with a tool call, read
/// from the answer's structure, never from its text: chat completions, a
/// choice's `finish_reason` `tool_calls` (or the legacy `function_call`);
/// Anthropic, `stop_reason` `tool_use` (top level, or in a `message_delta`'s
/// `delta`); Responses, an output item of type `function_call` (in `output`,
/// `response.output`, or an `output_item` event's `item`).
pub fn ends_with_tool_call(api: Api, event: &Value) -> bool {
    let str_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    match api {
        Api::ChatCompletions => {
            event
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|choices| {
                    choices.iter().any(|c| {
                        matches!(
                            str_at(c, "finish_reason").as_deref(),
                            Some("tool_calls" | "function_call")
                        )
                    })
                })
        }
        Api::Messages => [Some(event), event.get("delta")]
            .into_iter()
            .flatten()
            .any(|v| str_at(v, "stop_reason").as_deref() == Some("tool_use")),
        Api::Responses => {
            let is_call = |item: &Value| str_at(item, "type").as_deref() == Some("function_call");
            let outputs = [event.get("output"), event.pointer("/response/output")]
                .into_iter()
                .flatten()
                .filter_map(Value::as_array)
                .flatten();
            let item = event.get("item").filter(|_| {
                str_at(event, "type").is_some_and(|t| t.starts_with("response.output_item."))
            });
            outputs.chain(item).any(is_call)
        }
    }
}

/// Text and usage of a non-streamed response body of `api` (the inverse of
/// [`full_response`], for tests and clients).
pub fn full_text(api: Api, body: &Value) -> Result<(String, Option<Usage>), String> {
    let text = match api {
        Api::ChatCompletions => body
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or("no choices[0].message.content")?
            .to_string(),
        Api::Responses | Api::Messages => {
            let parts: Vec<&Value> = if api == Api::Responses {
                body.get("output")
                    .and_then(Value::as_array)
                    .ok_or("no output array")?
                    .iter()
                    .filter_map(|item| item.get("content").and_then(Value::as_array))
                    .flatten()
                    .collect()
            } else {
                body.get("content")
                    .and_then(Value::as_array)
                    .ok_or("no content array")?
                    .iter()
                    .collect()
            };
            parts
                .into_iter()
                .filter(|p| {
                    matches!(
                        p.get("type").and_then(Value::as_str),
                        Some("output_text" | "text")
                    )
                })
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        }
    };
    Ok((
        text,
        body.get("usage")
            .filter(|u| u.is_object())
            .map(|u| usage_of(api, u)),
    ))
}

/// Reassembles the text and usage of an SSE stream of `api` (for tests).
///
/// Checks the framing: every frame has a `data:` line; for Responses and
/// Anthropic every frame's `event:` equals its data's `type`, and Responses
/// sequence numbers count up from 0; the stream must end properly (`[DONE]`,
/// `response.completed`, `message_stop`). An `error` event is an error.
pub fn collect_text(api: Api, sse: &str) -> Result<(String, Option<Usage>), String> {
    let mut text = String::new();
    let mut usage: Option<Usage> = None;
    let mut ended = false;
    let mut next_sequence = 0u64;
    let normalized = sse.replace("\r\n", "\n");
    for (n, frame) in normalized.split("\n\n").enumerate() {
        if frame.trim().is_empty() {
            continue;
        }
        if ended {
            return Err(format!("frame {n} after the end of the stream: {frame:?}"));
        }
        let mut event = None;
        let mut data: Vec<&str> = Vec::new();
        for line in frame.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            } else if line.starts_with(':') || line.is_empty() {
            } else {
                return Err(format!("frame {n}: unexpected line {line:?}"));
            }
        }
        if data.is_empty() {
            return Err(format!("frame {n} has no data line: {frame:?}"));
        }
        let data = data.join("\n");
        if api == Api::ChatCompletions && data == "[DONE]" {
            ended = true;
            continue;
        }
        let value: Value = serde_json::from_str(&data)
            .map_err(|e| format!("frame {n}: data is not JSON ({e})"))?;
        let kind = value.get("type").and_then(Value::as_str);
        if kind == Some("error") || (api == Api::ChatCompletions && value.get("error").is_some()) {
            return Err(format!("error event: {data}"));
        }
        match api {
            Api::ChatCompletions => {
                if event.is_some() {
                    return Err(format!(
                        "frame {n}: chat completions frames have no event line"
                    ));
                }
                if value.get("object").and_then(Value::as_str) != Some("chat.completion.chunk") {
                    return Err(format!("frame {n}: not a chat.completion.chunk"));
                }
                if let Some(t) = value
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                {
                    text.push_str(t);
                }
                if let Some(u) = value.get("usage").filter(|u| u.is_object()) {
                    usage = Some(usage_of(api, u));
                }
            }
            Api::Responses | Api::Messages => {
                let kind = kind.ok_or_else(|| format!("frame {n}: data has no type"))?;
                if event != Some(kind) {
                    return Err(format!("frame {n}: event {event:?} but data type {kind:?}"));
                }
                if api == Api::Responses {
                    let seq = value.get("sequence_number").and_then(Value::as_u64);
                    if seq != Some(next_sequence) {
                        return Err(format!(
                            "frame {n}: sequence_number {seq:?}, expected {next_sequence}"
                        ));
                    }
                    next_sequence += 1;
                }
                match kind {
                    "response.output_text.delta" => text.push_str(
                        value
                            .get("delta")
                            .and_then(Value::as_str)
                            .ok_or("delta without text")?,
                    ),
                    "response.output_text.done" => {
                        let done = value
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if done != text {
                            return Err(format!(
                                "response.output_text.done text {done:?} != deltas {text:?}"
                            ));
                        }
                    }
                    "response.completed" => {
                        usage = value
                            .pointer("/response/usage")
                            .filter(|u| u.is_object())
                            .map(|u| usage_of(api, u));
                        ended = true;
                    }
                    "message_start" => {
                        usage = value.pointer("/message/usage").map(|u| usage_of(api, u));
                    }
                    "content_block_delta" => {
                        if let Some(t) = value.pointer("/delta/text").and_then(Value::as_str) {
                            text.push_str(t);
                        }
                    }
                    "message_delta" => {
                        if let Some(u) = value.get("usage") {
                            // message_delta's usage is cumulative; fields it lacks keep message_start's.
                            let mut merged = usage.unwrap_or_default();
                            let new = usage_of(api, u);
                            if u.get("input_tokens").is_some() {
                                merged.prompt_tokens = new.prompt_tokens;
                                merged.cached_tokens = new.cached_tokens;
                            }
                            merged.completion_tokens = new.completion_tokens;
                            usage = Some(merged);
                        }
                    }
                    "message_stop" => ended = true,
                    _ => {}
                }
            }
        }
    }
    if !ended {
        return Err("the stream ended without its final event".into());
    }
    Ok((text, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: Usage = Usage {
        prompt_tokens: 100,
        cached_tokens: 64,
        completion_tokens: 3,
    };

    fn run(api: Api) -> Vec<String> {
        let mut w = StreamWriter::new(api, "id1", "m");
        let mut frames = w.start(USAGE);
        frames.extend(w.delta("Hel"));
        frames.extend(w.delta(""));
        frames.extend(w.delta("lo\n\"x\""));
        frames.extend(w.finish(USAGE));
        assert!(w.finish(USAGE).is_empty(), "finish is idempotent");
        assert_eq!(w.text(), "Hello\n\"x\"");
        frames
    }

    fn data(frame: &str) -> Value {
        let line = frame
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn every_frame_is_one_sse_event() {
        for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
            for frame in run(api) {
                assert!(frame.ends_with("\n\n"), "{frame:?}");
                assert_eq!(frame.matches("\n\n").count(), 1, "{frame:?}");
            }
        }
    }

    #[test]
    fn chat_completions_frames() {
        let frames = run(Api::ChatCompletions);
        assert_eq!(frames.len(), 6);
        let first = data(&frames[0]);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "id1");
        assert_eq!(first["model"], "m");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(data(&frames[1])["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(data(&frames[3])["choices"][0]["finish_reason"], "stop");
        let usage = data(&frames[4]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 100);
        assert_eq!(usage["usage"]["total_tokens"], 103);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
        assert_eq!(frames[5], "data: [DONE]\n\n");
        assert_eq!(
            collect_text(Api::ChatCompletions, &frames.concat()).unwrap(),
            ("Hello\n\"x\"".into(), Some(USAGE))
        );
    }

    #[test]
    fn responses_frames() {
        let frames = run(Api::Responses);
        let kinds: Vec<String> = frames
            .iter()
            .map(|f| {
                f.lines()
                    .next()
                    .unwrap()
                    .strip_prefix("event: ")
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, f) in frames.iter().enumerate() {
            let d = data(f);
            assert_eq!(d["type"], kinds[n]);
            assert_eq!(d["sequence_number"], n);
        }
        let done = data(&frames[9]);
        assert_eq!(done["response"]["status"], "completed");
        assert_eq!(done["response"]["usage"]["input_tokens"], 100);
        assert_eq!(
            done["response"]["usage"]["input_tokens_details"]["cached_tokens"],
            64
        );
        assert_eq!(
            done["response"]["output"][0]["content"][0]["text"],
            "Hello\n\"x\""
        );
        assert_eq!(data(&frames[6])["text"], "Hello\n\"x\"");
        assert_eq!(
            collect_text(Api::Responses, &frames.concat()).unwrap(),
            ("Hello\n\"x\"".into(), Some(USAGE))
        );
    }

    #[test]
    fn anthropic_frames() {
        let frames = run(Api::Messages);
        let kinds: Vec<&str> = frames
            .iter()
            .map(|f| f.lines().next().unwrap().strip_prefix("event: ").unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = data(&frames[0]);
        assert_eq!(start["message"]["usage"]["input_tokens"], 36);
        assert_eq!(start["message"]["usage"]["cache_read_input_tokens"], 64);
        assert_eq!(
            data(&frames[3])["delta"],
            json!({"type":"text_delta","text":"Hel"})
        );
        let delta = data(&frames[6]);
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 3);
        assert_eq!(
            collect_text(Api::Messages, &frames.concat()).unwrap(),
            ("Hello\n\"x\"".into(), Some(USAGE))
        );
    }

    #[test]
    fn full_responses_round_trip() {
        for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
            let body = full_response(api, "resp_1", "m", "hi there", USAGE);
            assert_eq!(
                full_text(api, &body).unwrap(),
                ("hi there".into(), Some(USAGE)),
                "{api:?}"
            );
        }
        let chat = full_response(Api::ChatCompletions, "c", "m", "x", USAGE);
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
        let msg = full_response(Api::Messages, "msg_1", "m", "x", USAGE);
        assert_eq!(msg["usage"]["cache_read_input_tokens"], 64);
        assert_eq!(msg["stop_reason"], "end_turn");
        let resp = full_response(Api::Responses, "resp_1", "m", "x", USAGE);
        assert_eq!(resp["output"][0]["id"], "msg_1");
        assert!(full_text(Api::Messages, &json!({})).is_err());
    }

    #[test]
    fn writer_starts_itself_and_handles_empty_output() {
        for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
            let mut w = StreamWriter::new(api, "i", "m");
            let frames = w.finish(USAGE);
            assert_eq!(
                collect_text(api, &frames.concat()).unwrap(),
                (String::new(), Some(USAGE)),
                "{api:?}"
            );
            let mut w = StreamWriter::new(api, "i", "m");
            let mut frames = w.delta("a");
            frames.extend(w.finish(USAGE));
            assert_eq!(collect_text(api, &frames.concat()).unwrap().0, "a");
        }
    }

    #[test]
    fn collect_text_rejects_broken_streams() {
        let chat = run(Api::ChatCompletions);
        assert!(collect_text(Api::ChatCompletions, &chat[..5].concat())
            .unwrap_err()
            .contains("without its final"));
        assert!(collect_text(Api::ChatCompletions, "data: {nope\n\n")
            .unwrap_err()
            .contains("not JSON"));
        assert!(collect_text(Api::ChatCompletions, "hello\n\n")
            .unwrap_err()
            .contains("unexpected line"));
        assert!(collect_text(
            Api::ChatCompletions,
            "data: {\"error\":{\"message\":\"x\"}}\n\n"
        )
        .is_err());
        let mut responses = run(Api::Responses);
        responses.swap(4, 5);
        assert!(collect_text(Api::Responses, &responses.concat())
            .unwrap_err()
            .contains("sequence_number"));
        let anthropic = run(Api::Messages);
        let renamed = anthropic[3].replacen("event: content_block_delta", "event: ping", 1);
        let stream = [&anthropic[..3], &[renamed], &anthropic[4..]]
            .concat()
            .concat();
        assert!(collect_text(Api::Messages, &stream)
            .unwrap_err()
            .contains("but data type"));
        let err = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n";
        assert!(collect_text(Api::Messages, err)
            .unwrap_err()
            .contains("error event"));
        // CRLF framing is accepted
        let crlf = anthropic.concat().replace('\n', "\r\n");
        assert_eq!(collect_text(Api::Messages, &crlf).unwrap().1, Some(USAGE));
        let after = [anthropic.concat(), anthropic[2].clone()].concat();
        assert!(collect_text(Api::Messages, &after)
            .unwrap_err()
            .contains("after the end"));
    }

    #[test]
    fn a_tool_call_ending_keeps_the_framing_and_names_the_stop_reason() {
        for (api, marker) in [
            (Api::ChatCompletions, "\"finish_reason\":\"tool_calls\""),
            (Api::Responses, "\"type\":\"function_call\""),
            (Api::Messages, "\"stop_reason\":\"tool_use\""),
        ] {
            let mut w = StreamWriter::new(api, "resp_t1", "m");
            w.end_with_tool_call("run_tests", "{\"path\":\"src\"}");
            let usage = Usage {
                prompt_tokens: 10,
                cached_tokens: 4,
                completion_tokens: 2,
            };
            let mut sse = w.start(usage).concat();
            sse.push_str(&w.delta("ok ").concat());
            sse.push_str(&w.delta("go").concat());
            sse.push_str(&w.finish(usage).concat());
            assert!(sse.contains(marker), "{api:?}: {sse}");
            assert!(sse.contains("run_tests"), "{api:?}: {sse}");
            let (text, got) = collect_text(api, &sse).expect("well-formed stream");
            assert_eq!(text, "ok go", "{api:?}");
            assert_eq!(got, Some(usage), "{api:?}");
        }
    }

    /// Every `data:` event of a stream, parsed.
    fn events(sse: &str) -> Vec<Value> {
        sse.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    #[test]
    fn a_tool_call_ending_is_read_from_the_structure_not_the_text() {
        let usage = Usage::default();
        for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
            // The text names every marker; the answer ends its turn.
            let mut w = StreamWriter::new(api, "t2", "m");
            let mut sse = w.start(usage).concat();
            sse.push_str(
                &w.delta("\"tool_calls\" \"tool_use\" \"function_call\"")
                    .concat(),
            );
            sse.push_str(&w.finish(usage).concat());
            assert!(
                !events(&sse).iter().any(|e| ends_with_tool_call(api, e)),
                "{api:?}: {sse}"
            );
            let body = full_response(api, "t2", "m", "\"tool_use\" \"tool_calls\"", usage);
            assert!(!ends_with_tool_call(api, &body), "{api:?}");
            // The same with a tool call at the end.
            let mut w = StreamWriter::new(api, "t3", "m");
            w.end_with_tool_call("ls", "{}");
            let mut sse = w.start(usage).concat();
            sse.push_str(&w.delta("ok").concat());
            sse.push_str(&w.finish(usage).concat());
            assert!(
                events(&sse).iter().any(|e| ends_with_tool_call(api, e)),
                "{api:?}: {sse}"
            );
        }
        // Structure that names tools without ending with a call: an empty
        // `tool_calls` list (as OpenAI-compatible servers send), a stop.
        let chat = json!({"choices":[{"message":{"content":"hi","tool_calls":[]},"finish_reason":"stop"}]});
        assert!(!ends_with_tool_call(Api::ChatCompletions, &chat));
        let chat = json!({"choices":[{"message":{"tool_calls":[{"id":"1"}]},"finish_reason":"tool_calls"}]});
        assert!(ends_with_tool_call(Api::ChatCompletions, &chat));
        let msg = json!({"content":[{"type":"text","text":"x"}],"stop_reason":"tool_use"});
        assert!(ends_with_tool_call(Api::Messages, &msg));
        let resp = json!({"output":[{"type":"message"},{"type":"function_call","name":"f"}]});
        assert!(ends_with_tool_call(Api::Responses, &resp));
    }
}
