//! How a proxied answer ended: with a tool call, or the end of the model's
//! turn (the `CallEnding` the router hints to the cache server).
//!
//! Read from the answer's structure as it streams through: every SSE
//! `data:` line is parsed as JSON and checked with
//! [`kvtier_prompt::stream::ends_with_tool_call`] (`finish_reason`,
//! `stop_reason`, output item types); a non-streamed answer (no `data:`
//! line) is parsed whole at the end. Never a substring of the bytes: an
//! answer whose text, or whose empty `tool_calls` list, names a marker
//! still ends its turn.

use kvtier_prompt::stream::ends_with_tool_call;
use kvtier_prompt::Api;
use kvtier_proto::v1::CallEnding;
use serde_json::Value;

/// Longest SSE line, and longest non-streamed body, that is parsed; longer
/// ones are passed through unread (and count as the end of the turn).
const MAX_PARSED: usize = 8 << 20;

/// Follows one answer's bytes, chunk by chunk.
#[derive(Debug)]
pub(crate) struct EndingScan {
    api: Api,
    /// The SSE line being read.
    line: Vec<u8>,
    /// `line` outgrew [`MAX_PARSED`]: skip it up to its newline.
    line_too_long: bool,
    /// The whole body, until a `data:` line shows it is a stream.
    body: Vec<u8>,
    body_too_long: bool,
    sse: bool,
    tool_call: bool,
}

impl EndingScan {
    /// A scan of an answer of `api`.
    pub(crate) fn new(api: Api) -> Self {
        Self {
            api,
            line: Vec::new(),
            line_too_long: false,
            body: Vec::new(),
            body_too_long: false,
            sse: false,
            tool_call: false,
        }
    }

    /// The next chunk of the answer.
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if !self.sse && !self.body_too_long {
            if self.body.len() + chunk.len() <= MAX_PARSED {
                self.body.extend_from_slice(chunk);
            } else {
                self.body_too_long = true;
                self.body = Vec::new();
            }
        }
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            if self.line.len() + piece.len() <= MAX_PARSED && !self.line_too_long {
                self.line.extend_from_slice(piece);
            } else {
                self.line_too_long = true;
                self.line.clear();
            }
            if piece.ends_with(b"\n") {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.line_too_long) {
            return;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if !self.sse {
            self.sse = true;
            self.body = Vec::new();
        }
        if let Ok(event) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.tool_call |= ends_with_tool_call(self.api, &event);
        }
    }

    /// How the answer ended, once all of it has been fed.
    pub(crate) fn ending(&mut self) -> CallEnding {
        if !self.line.is_empty() || self.line_too_long {
            self.end_line();
        }
        if !self.sse && !self.body_too_long && !self.body.is_empty() {
            if let Ok(body) = serde_json::from_slice::<Value>(&self.body) {
                self.tool_call |= ends_with_tool_call(self.api, &body);
            }
            self.body = Vec::new();
        }
        if self.tool_call {
            CallEnding::ToolCall
        } else {
            CallEnding::EndOfTurn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_prompt::stream::{full_response, StreamWriter, Usage};

    /// `parts` fed one byte at a time too (markers split across chunks).
    fn ending(api: Api, parts: &[&[u8]]) -> (CallEnding, CallEnding) {
        let mut whole = EndingScan::new(api);
        let mut bytes = EndingScan::new(api);
        for part in parts {
            whole.feed(part);
            for b in part.iter() {
                bytes.feed(std::slice::from_ref(b));
            }
        }
        (whole.ending(), bytes.ending())
    }

    fn stream(api: Api, text: &str, tool: bool) -> String {
        let mut w = StreamWriter::new(api, "r1", "m");
        if tool {
            w.end_with_tool_call("run_tests", "{\"path\":\"src\"}");
        }
        let usage = Usage::default();
        [w.start(usage), w.delta(text), w.finish(usage)]
            .concat()
            .concat()
    }

    #[test]
    fn a_tool_call_is_read_from_the_stream_structure_across_chunks() {
        for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
            let sse = stream(api, "ok", true);
            let (a, b) = ending(api, &[sse.as_bytes()]);
            assert_eq!(
                (a, b),
                (CallEnding::ToolCall, CallEnding::ToolCall),
                "{api:?}"
            );
            let sse = stream(api, "ok", false);
            let (a, b) = ending(api, &[sse.as_bytes()]);
            assert_eq!(
                (a, b),
                (CallEnding::EndOfTurn, CallEnding::EndOfTurn),
                "{api:?}"
            );
        }
        // CRLF framing, `data:` without a space.
        let crlf = b"data:{\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        assert_eq!(
            ending(Api::ChatCompletions, &[crlf]).0,
            CallEnding::ToolCall
        );
    }

    #[test]
    fn answers_that_only_mention_a_marker_end_their_turn() {
        // The text names every API's marker, quotes included.
        let text = "call \"tool_calls\" or \"tool_use\", then \"function_call\"";
        for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
            let sse = stream(api, text, false);
            assert_eq!(
                ending(api, &[sse.as_bytes()]).0,
                CallEnding::EndOfTurn,
                "{api:?}: {sse}"
            );
            let body = full_response(api, "r1", "m", text, Usage::default()).to_string();
            assert_eq!(
                ending(api, &[body.as_bytes()]).0,
                CallEnding::EndOfTurn,
                "{api:?}: {body}"
            );
        }
        // OpenAI-compatible servers send an empty `tool_calls` list with a
        // plain answer, streamed and not.
        let chunk = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\",\"tool_calls\":[]},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(
            ending(Api::ChatCompletions, &[chunk]).0,
            CallEnding::EndOfTurn
        );
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hi","tool_calls":[]},"finish_reason":"stop"}]}"#;
        assert_eq!(
            ending(Api::ChatCompletions, &[body]).0,
            CallEnding::EndOfTurn
        );
        // A non-streamed tool call, split anywhere.
        let body = br#"{"content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use"}"#;
        let (a, b) = ending(Api::Messages, &[&body[..30], &body[30..]]);
        assert_eq!((a, b), (CallEnding::ToolCall, CallEnding::ToolCall));
    }
}
