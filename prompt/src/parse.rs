//! The three request shapes -> [`ModelCall`].
//!
//! Normalisation (stable, so that a conversation that is re-sent renders the
//! same text every time):
//! - text parts / blocks of one message are joined with `"\n"` (as vLLM does);
//!   non-text parts (images, documents, thinking, ...) are skipped;
//! - `developer` is `system`; the system prompt (Anthropic `system`, Responses
//!   `instructions`) comes first;
//! - a tool call is appended to its assistant message as
//!   `<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>` (ARGS the
//!   arguments as compact JSON; a string that is not JSON stays a JSON string);
//! - a tool result is a `tool` message with the result's text.

use serde_json::{Map, Value};

use crate::{Api, ApiError, CallHints, ChatMessage, ModelCall};

type Obj = Map<String, Value>;

/// Keep-warm TTL of `cache_control` without `ttl`.
pub(crate) const DEFAULT_CACHE_TTL_MS: u64 = 5 * 60 * 1000;
/// Keep-warm TTL of `cache_control.ttl = "1h"`.
pub(crate) const LONG_CACHE_TTL_MS: u64 = 60 * 60 * 1000;

fn invalid(path: &str, expected: &str) -> ApiError {
    ApiError::invalid(format!("{path}: expected {expected}"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(path: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(format!(
        "{path}: expected {expected}, got {}",
        type_name(got)
    ))
}

/// A field of `obj`, None when absent or null.
fn field<'a>(obj: &'a Obj, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn req_str<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<&'a str, ApiError> {
    match field(obj, key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong(path, "a string", other)),
        None => Err(ApiError::invalid(format!(
            "{path}: required field is missing (expected a string)"
        ))),
    }
}

fn opt_str<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<Option<&'a str>, ApiError> {
    match field(obj, key) {
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong(path, "a string", other)),
        None => Ok(None),
    }
}

fn opt_bool(obj: &Obj, key: &str, path: &str) -> Result<Option<bool>, ApiError> {
    match field(obj, key) {
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong(path, "a boolean", other)),
        None => Ok(None),
    }
}

/// A non-negative integer (an integral float such as `256.0` is accepted).
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

fn opt_u32(obj: &Obj, key: &str, path: &str) -> Result<Option<u32>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => match as_u64(v).and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(ApiError::invalid(format!(
                "{path}: expected a non-negative integer below 2^32, got {v}"
            ))),
        },
    }
}

fn opt_obj<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<Option<&'a Obj>, ApiError> {
    match field(obj, key) {
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(wrong(path, "an object", other)),
        None => Ok(None),
    }
}

fn opt_array<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
    match field(obj, key) {
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(other) => Err(wrong(path, "an array", other)),
        None => Ok(None),
    }
}

fn as_obj<'a>(v: &'a Value, path: &str) -> Result<&'a Obj, ApiError> {
    v.as_object().ok_or_else(|| wrong(path, "an object", v))
}

pub(crate) fn parse_request(
    api: Api,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<ModelCall, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON ({e})")))?;
    let root = match &value {
        Value::Object(o) => o,
        other => {
            return Err(ApiError::invalid(format!(
                "request body: expected a JSON object, got {}",
                type_name(other)
            )))
        }
    };
    let model = req_str(root, "model", "model")?;
    if model.is_empty() {
        return Err(invalid("model", "a non-empty model name"));
    }
    let mut keep_warm = KeepWarm::default();
    keep_warm.visit(root, "")?;
    let (messages, max_tokens) = match api {
        Api::ChatCompletions => {
            let messages = chat_messages(root, &mut keep_warm)?;
            let max = match opt_u32(root, "max_completion_tokens", "max_completion_tokens")? {
                Some(n) => Some(n),
                None => opt_u32(root, "max_tokens", "max_tokens")?,
            };
            (messages, max)
        }
        Api::Responses => {
            let messages = responses_input(root, &mut keep_warm)?;
            (
                messages,
                opt_u32(root, "max_output_tokens", "max_output_tokens")?,
            )
        }
        Api::Messages => {
            let messages = anthropic_messages(root, &mut keep_warm)?;
            let max = opt_u32(root, "max_tokens", "max_tokens")?.ok_or_else(|| {
                ApiError::invalid(
                    "max_tokens: required field is missing (expected a positive integer)",
                )
            })?;
            if max == 0 {
                return Err(ApiError::invalid(
                    "max_tokens: expected a positive integer, got 0",
                ));
            }
            (messages, Some(max))
        }
    };
    let tools = match opt_array(root, "tools", "tools")? {
        None => None,
        Some(tools) => {
            for (i, tool) in tools.iter().enumerate() {
                let path = format!("tools[{i}]");
                keep_warm.visit(as_obj(tool, &path)?, &path)?;
            }
            Some(Value::Array(tools.clone()))
        }
    };
    let stream = opt_bool(root, "stream", "stream")?.unwrap_or(false);
    let hints = call_hints(api, root, headers, keep_warm)?;
    Ok(ModelCall {
        api,
        model: model.to_string(),
        messages,
        tools,
        stream,
        max_tokens,
        hints,
    })
}

// ---------------------------------------------------------------- content

/// Text of a content value: a string, or an array of parts whose text parts
/// (`type` in `text_types`) are joined with "\n"; other part types are skipped.
/// `cache_control` of each part is collected.
fn content_text(
    v: &Value,
    path: &str,
    text_types: &[&str],
    expected: &str,
    keep_warm: &mut KeepWarm,
) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let ppath = format!("{path}[{j}]");
                let part = as_obj(part, &ppath)?;
                keep_warm.visit(part, &ppath)?;
                let kind = req_str(part, "type", &format!("{ppath}.type"))?;
                if text_types.contains(&kind) {
                    texts.push(req_str(part, "text", &format!("{ppath}.text"))?);
                }
            }
            Ok(texts.join("\n"))
        }
        other => Err(wrong(path, expected, other)),
    }
}

/// The stable text of one tool call.
pub(crate) fn tool_call_text(name: &str, arguments: &Value) -> String {
    let args = match arguments {
        Value::String(s) => {
            serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        other => other.clone(),
    };
    // name first whatever serde_json's map order is.
    let name = Value::String(name.to_string());
    format!("<tool_call>\n{{\"name\":{name},\"arguments\":{args}}}\n</tool_call>")
}

fn join_nonempty(parts: impl IntoIterator<Item = String>) -> String {
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Appends `text` to the last message when it is an assistant message, else
/// pushes a new assistant message.
fn push_assistant(messages: &mut Vec<ChatMessage>, text: String) {
    match messages.last_mut() {
        Some(last) if last.role == "assistant" => {
            if !last.content.is_empty() {
                last.content.push('\n');
            }
            last.content.push_str(&text);
        }
        _ => messages.push(ChatMessage {
            role: "assistant".into(),
            content: text,
        }),
    }
}

// ---------------------------------------------------------------- OpenAI chat

const CHAT_CONTENT: &str = "a string or an array of content parts";

fn chat_messages(root: &Obj, keep_warm: &mut KeepWarm) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match field(root, "messages") {
        Some(Value::Array(a)) => a,
        Some(other) => return Err(wrong("messages", "a non-empty array of messages", other)),
        None => {
            return Err(ApiError::invalid(
                "messages: required field is missing (expected a non-empty array of messages)",
            ))
        }
    };
    if list.is_empty() {
        return Err(invalid("messages", "a non-empty array of messages"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_obj(m, &path)?;
        let role = req_str(m, "role", &format!("{path}.role"))?;
        let cpath = format!("{path}.content");
        let content = field(m, "content");
        let text = |keep_warm: &mut KeepWarm| -> Result<String, ApiError> {
            match content {
                Some(c) => content_text(
                    c,
                    &cpath,
                    &["text", "input_text", "output_text"],
                    CHAT_CONTENT,
                    keep_warm,
                ),
                None => Err(ApiError::invalid(format!(
                    "{cpath}: required field is missing (expected {CHAT_CONTENT})"
                ))),
            }
        };
        match role {
            "system" | "developer" | "user" => {
                let role = if role == "user" { "user" } else { "system" };
                out.push(ChatMessage { role: role.into(), content: text(keep_warm)? });
            }
            "assistant" => {
                let mut parts = vec![match content {
                    Some(_) => text(keep_warm)?,
                    None => String::new(),
                }];
                if let Some(calls) = opt_array(m, "tool_calls", &format!("{path}.tool_calls"))? {
                    for (k, call) in calls.iter().enumerate() {
                        let tpath = format!("{path}.tool_calls[{k}]");
                        let call = as_obj(call, &tpath)?;
                        let f = match field(call, "function") {
                            Some(Value::Object(f)) => f,
                            Some(other) => return Err(wrong(&format!("{tpath}.function"), "an object", other)),
                            None => {
                                return Err(ApiError::invalid(format!(
                                    "{tpath}.function: required field is missing (expected an object with name and arguments)"
                                )))
                            }
                        };
                        let name = req_str(f, "name", &format!("{tpath}.function.name"))?;
                        let args = match field(f, "arguments") {
                            Some(v @ Value::String(_)) | Some(v @ Value::Object(_)) => v.clone(),
                            Some(other) => {
                                return Err(wrong(&format!("{tpath}.function.arguments"), "a JSON string", other))
                            }
                            None => Value::Object(Map::new()),
                        };
                        parts.push(tool_call_text(name, &args));
                    }
                }
                out.push(ChatMessage { role: "assistant".into(), content: join_nonempty(parts) });
            }
            "tool" | "function" => {
                opt_str(m, "tool_call_id", &format!("{path}.tool_call_id"))?;
                out.push(ChatMessage { role: "tool".into(), content: text(keep_warm)? });
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "{path}.role: expected one of \"system\", \"developer\", \"user\", \"assistant\", \"tool\", got {other:?}"
                )))
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- Responses

const RESPONSES_CONTENT: &str = "a string or an array of input_text / output_text parts";

fn responses_input(root: &Obj, keep_warm: &mut KeepWarm) -> Result<Vec<ChatMessage>, ApiError> {
    for key in ["previous_response_id", "conversation"] {
        if field(root, key).is_some() {
            return Err(ApiError::invalid(format!(
                "{key}: not supported: this router is stateless and keeps no earlier responses; \
                 send the whole conversation in `input` (and `store: false`)"
            )));
        }
    }
    let mut out = Vec::new();
    if let Some(instructions) = opt_str(root, "instructions", "instructions")? {
        out.push(ChatMessage {
            role: "system".into(),
            content: instructions.to_string(),
        });
    }
    match field(root, "input") {
        Some(Value::String(s)) => out.push(ChatMessage {
            role: "user".into(),
            content: s.clone(),
        }),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(invalid(
                    "input",
                    "a string or a non-empty array of input items",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                responses_item(item, &format!("input[{i}]"), &mut out, keep_warm)?;
            }
        }
        Some(other) => return Err(wrong("input", "a string or an array of input items", other)),
        None => {
            return Err(ApiError::invalid(
                "input: required field is missing (expected a string or an array of input items)",
            ))
        }
    }
    Ok(out)
}

fn responses_item(
    item: &Value,
    path: &str,
    out: &mut Vec<ChatMessage>,
    keep_warm: &mut KeepWarm,
) -> Result<(), ApiError> {
    let item = as_obj(item, path)?;
    keep_warm.visit(item, path)?;
    let kind = opt_str(item, "type", &format!("{path}.type"))?;
    match kind {
        None | Some("message") => {
            let role = req_str(item, "role", &format!("{path}.role"))?;
            let cpath = format!("{path}.content");
            let content = match field(item, "content") {
                Some(c) => content_text(
                    c,
                    &cpath,
                    &["input_text", "output_text", "text"],
                    RESPONSES_CONTENT,
                    keep_warm,
                )?,
                None => {
                    return Err(ApiError::invalid(format!(
                        "{cpath}: required field is missing (expected {RESPONSES_CONTENT})"
                    )))
                }
            };
            match role {
                "user" => out.push(ChatMessage { role: "user".into(), content }),
                "system" | "developer" => out.push(ChatMessage { role: "system".into(), content }),
                "assistant" => push_assistant(out, content),
                other => {
                    return Err(ApiError::invalid(format!(
                        "{path}.role: expected one of \"user\", \"assistant\", \"system\", \"developer\", got {other:?}"
                    )))
                }
            }
        }
        Some("function_call") => {
            let name = req_str(item, "name", &format!("{path}.name"))?;
            let args = match field(item, "arguments") {
                Some(v @ Value::String(_)) => v.clone(),
                Some(other) => return Err(wrong(&format!("{path}.arguments"), "a JSON string", other)),
                None => Value::Object(Map::new()),
            };
            opt_str(item, "call_id", &format!("{path}.call_id"))?;
            push_assistant(out, tool_call_text(name, &args));
        }
        Some("function_call_output") => {
            req_str(item, "call_id", &format!("{path}.call_id"))?;
            let opath = format!("{path}.output");
            let output = match field(item, "output") {
                Some(v) => content_text(
                    v,
                    &opath,
                    &["input_text", "output_text", "text"],
                    "a string or an array of input_text parts",
                    keep_warm,
                )?,
                None => {
                    return Err(ApiError::invalid(format!(
                        "{opath}: required field is missing (expected a string)"
                    )))
                }
            };
            out.push(ChatMessage { role: "tool".into(), content: output });
        }
        Some("item_reference") => {
            return Err(ApiError::invalid(format!(
                "{path}.type: \"item_reference\" is not supported: this router is stateless; send the item itself"
            )))
        }
        // reasoning, web_search_call, ...: not part of the prompt text.
        Some(_) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------- Anthropic

const ANTHROPIC_CONTENT: &str = "a string or an array of content blocks";

fn anthropic_messages(root: &Obj, keep_warm: &mut KeepWarm) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::new();
    match field(root, "system") {
        None => {}
        Some(Value::String(s)) => out.push(ChatMessage {
            role: "system".into(),
            content: s.clone(),
        }),
        Some(v @ Value::Array(_)) => {
            let text = content_text(
                v,
                "system",
                &["text"],
                "a string or an array of text blocks",
                keep_warm,
            )?;
            out.push(ChatMessage {
                role: "system".into(),
                content: text,
            });
        }
        Some(other) => {
            return Err(wrong(
                "system",
                "a string or an array of text blocks",
                other,
            ))
        }
    }
    let list = match field(root, "messages") {
        Some(Value::Array(a)) => a,
        Some(other) => return Err(wrong("messages", "a non-empty array of messages", other)),
        None => {
            return Err(ApiError::invalid(
                "messages: required field is missing (expected a non-empty array of messages)",
            ))
        }
    };
    if list.is_empty() {
        return Err(invalid("messages", "a non-empty array of messages"));
    }
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_obj(m, &path)?;
        let role = req_str(m, "role", &format!("{path}.role"))?;
        if role != "user" && role != "assistant" {
            return Err(ApiError::invalid(format!(
                "{path}.role: expected \"user\" or \"assistant\", got {role:?} (the system prompt goes in `system`)"
            )));
        }
        let cpath = format!("{path}.content");
        match field(m, "content") {
            Some(Value::String(s)) => {
                if role == "user" {
                    out.push(ChatMessage {
                        role: "user".into(),
                        content: s.clone(),
                    });
                } else {
                    push_assistant(&mut out, s.clone());
                }
            }
            Some(Value::Array(blocks)) => {
                anthropic_blocks(role, blocks, &cpath, &mut out, keep_warm)?
            }
            Some(other) => return Err(wrong(&cpath, ANTHROPIC_CONTENT, other)),
            None => {
                return Err(ApiError::invalid(format!(
                    "{cpath}: required field is missing (expected {ANTHROPIC_CONTENT})"
                )))
            }
        }
    }
    Ok(out)
}

/// One message's blocks: runs of text become one message of `role`, a
/// tool_use is appended to the assistant message, a tool_result is a `tool`
/// message.
fn anthropic_blocks(
    role: &str,
    blocks: &[Value],
    path: &str,
    out: &mut Vec<ChatMessage>,
    keep_warm: &mut KeepWarm,
) -> Result<(), ApiError> {
    let mut texts: Vec<String> = Vec::new();
    let flush = |texts: &mut Vec<String>, out: &mut Vec<ChatMessage>| {
        if texts.is_empty() {
            return;
        }
        let content = std::mem::take(texts).join("\n");
        if role == "assistant" {
            push_assistant(out, content);
        } else {
            out.push(ChatMessage {
                role: role.into(),
                content,
            });
        }
    };
    let mut any = false;
    for (j, block) in blocks.iter().enumerate() {
        let bpath = format!("{path}[{j}]");
        let block = as_obj(block, &bpath)?;
        keep_warm.visit(block, &bpath)?;
        match req_str(block, "type", &format!("{bpath}.type"))? {
            "text" => {
                texts.push(req_str(block, "text", &format!("{bpath}.text"))?.to_string());
                any = true;
            }
            "tool_use" | "server_tool_use" => {
                flush(&mut texts, out);
                req_str(block, "id", &format!("{bpath}.id"))?;
                let name = req_str(block, "name", &format!("{bpath}.name"))?;
                let input = match field(block, "input") {
                    Some(v @ Value::Object(_)) => v.clone(),
                    Some(other) => {
                        return Err(wrong(&format!("{bpath}.input"), "an object", other))
                    }
                    None => Value::Object(Map::new()),
                };
                push_assistant(out, tool_call_text(name, &input));
                any = true;
            }
            "tool_result" => {
                flush(&mut texts, out);
                req_str(block, "tool_use_id", &format!("{bpath}.tool_use_id"))?;
                let rpath = format!("{bpath}.content");
                let content = match field(block, "content") {
                    Some(v) => content_text(
                        v,
                        &rpath,
                        &["text"],
                        "a string or an array of content blocks",
                        keep_warm,
                    )?,
                    None => String::new(),
                };
                out.push(ChatMessage {
                    role: "tool".into(),
                    content,
                });
                any = true;
            }
            // image, document, thinking, redacted_thinking, ...: not prompt text here.
            _ => {}
        }
    }
    flush(&mut texts, out);
    if !any {
        // Keep the turn (e.g. an image-only user message) so that roles still alternate.
        if role == "assistant" {
            push_assistant(out, String::new());
        } else {
            out.push(ChatMessage {
                role: role.into(),
                content: String::new(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- hints

/// The largest `cache_control` TTL seen.
#[derive(Debug, Default)]
pub(crate) struct KeepWarm {
    pub(crate) max_ms: Option<u64>,
}

impl KeepWarm {
    /// Reads `obj.cache_control` if present (`path` is obj's path, "" for the root).
    fn visit(&mut self, obj: &Obj, path: &str) -> Result<(), ApiError> {
        let Some(cc) = field(obj, "cache_control") else {
            return Ok(());
        };
        let cpath = if path.is_empty() {
            "cache_control".to_string()
        } else {
            format!("{path}.cache_control")
        };
        let cc = as_obj(cc, &cpath)?;
        let kind = req_str(cc, "type", &format!("{cpath}.type"))?;
        if kind != "ephemeral" {
            return Err(ApiError::invalid(format!(
                "{cpath}.type: expected \"ephemeral\", got {kind:?}"
            )));
        }
        let ms = match opt_str(cc, "ttl", &format!("{cpath}.ttl"))? {
            None | Some("5m") => DEFAULT_CACHE_TTL_MS,
            Some("1h") => LONG_CACHE_TTL_MS,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "{cpath}.ttl: expected \"5m\" or \"1h\", got {other:?}"
                )))
            }
        };
        self.max_ms = Some(self.max_ms.map_or(ms, |m| m.max(ms)));
        Ok(())
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

fn check_priority(p: i64, path: &str) -> Result<i32, ApiError> {
    if (-8..=8).contains(&p) {
        Ok(p as i32)
    } else {
        Err(ApiError::invalid(format!(
            "{path}: expected an integer in -8..=8, got {p}"
        )))
    }
}

fn check_latency(l: f64, path: &str) -> Result<f32, ApiError> {
    if (0.0..=1.0).contains(&l) {
        Ok(l as f32)
    } else {
        Err(ApiError::invalid(format!(
            "{path}: expected a number in 0..=1, got {l}"
        )))
    }
}

fn call_hints(
    api: Api,
    root: &Obj,
    headers: &[(String, String)],
    keep_warm: KeepWarm,
) -> Result<CallHints, ApiError> {
    use crate::headers as h;
    let nvext = opt_obj(root, "nvext", "nvext")?;
    let empty = Obj::new();
    let nvext = nvext.unwrap_or(&empty);
    let hints = opt_obj(nvext, "agent_hints", "nvext.agent_hints")?.unwrap_or(&empty);

    let priority = match field(hints, "priority") {
        Some(v) => {
            let p = v.as_i64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e9)
                    .map(|f| f as i64)
            });
            match p {
                Some(p) => check_priority(p, "nvext.agent_hints.priority")?,
                None => {
                    return Err(wrong(
                        "nvext.agent_hints.priority",
                        "an integer in -8..=8",
                        v,
                    ))
                }
            }
        }
        None => match header(headers, h::PRIORITY) {
            Some(s) => match s.parse::<i64>() {
                Ok(p) => check_priority(p, h::PRIORITY)?,
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "{}: expected an integer in -8..=8, got {s:?}",
                        h::PRIORITY
                    )))
                }
            },
            None => 0,
        },
    };
    let latency_sensitivity = match field(hints, "latency_sensitivity") {
        Some(Value::Number(n)) => check_latency(
            n.as_f64().unwrap_or(f64::NAN),
            "nvext.agent_hints.latency_sensitivity",
        )?,
        Some(other) => {
            return Err(wrong(
                "nvext.agent_hints.latency_sensitivity",
                "a number in 0..=1",
                other,
            ))
        }
        None => match header(headers, h::LATENCY_SENSITIVITY) {
            Some(s) => match s.parse::<f64>() {
                Ok(l) if l.is_finite() => check_latency(l, h::LATENCY_SENSITIVITY)?,
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{}: expected a number in 0..=1, got {s:?}",
                        h::LATENCY_SENSITIVITY
                    )))
                }
            },
            None => 0.0,
        },
    };
    let osl = match opt_u32(hints, "osl", "nvext.agent_hints.osl")? {
        Some(n) => Some(n),
        None => match header(headers, h::OSL) {
            Some(s) => Some(s.parse::<u32>().map_err(|_| {
                ApiError::invalid(format!(
                    "{}: expected a non-negative integer, got {s:?}",
                    h::OSL
                ))
            })?),
            None => None,
        },
    };
    let explicit_keep_warm = match field(hints, "keep_warm_ms") {
        Some(v) => Some(as_u64(v).ok_or_else(|| {
            wrong(
                "nvext.agent_hints.keep_warm_ms",
                "a non-negative integer",
                v,
            )
        })?),
        None => match header(headers, h::KEEP_WARM_MS) {
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::invalid(format!(
                    "{}: expected a non-negative integer, got {s:?}",
                    h::KEEP_WARM_MS
                ))
            })?),
            None => None,
        },
    };
    let keep_warm_ms = match (explicit_keep_warm, keep_warm.max_ms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };

    let metadata_user = if api == Api::Messages {
        match opt_obj(root, "metadata", "metadata")? {
            Some(md) => opt_str(md, "user_id", "metadata.user_id")?,
            None => None,
        }
    } else {
        None
    };
    let agent_id = [
        opt_str(hints, "agent_id", "nvext.agent_hints.agent_id")?,
        opt_str(nvext, "agent_id", "nvext.agent_id")?,
        opt_str(nvext, "session_id", "nvext.session_id")?,
    ]
    .into_iter()
    .map(nonempty)
    .chain([
        header(headers, h::AGENT_ID),
        header(headers, h::SESSION_ID),
        nonempty(metadata_user),
    ])
    .flatten()
    .next()
    .map(str::to_string);
    let parent_agent_id = nonempty(opt_str(
        hints,
        "parent_agent_id",
        "nvext.agent_hints.parent_agent_id",
    )?)
    .or_else(|| header(headers, h::PARENT_AGENT_ID))
    .map(str::to_string);

    Ok(CallHints {
        agent_id,
        parent_agent_id,
        priority,
        latency_sensitivity,
        osl,
        keep_warm_ms,
    })
}
