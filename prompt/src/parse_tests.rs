use serde_json::{json, Value};

use crate::{parse_request, Api, ApiError, ModelCall};

fn parse(api: Api, body: Value) -> Result<ModelCall, ApiError> {
    parse_request(api, body.to_string().as_bytes(), &[])
}

fn parse_h(api: Api, body: Value, headers: &[(&str, &str)]) -> Result<ModelCall, ApiError> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_request(api, body.to_string().as_bytes(), &headers)
}

fn err(api: Api, body: Value) -> String {
    let e = parse(api, body).unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(e.kind, "invalid_request_error");
    e.message
}

fn msgs(call: &ModelCall) -> Vec<(&str, &str)> {
    call.messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect()
}

// ------------------------------------------------------------ chat completions

#[test]
fn chat_full_shape() {
    let c = parse(
        Api::ChatCompletions,
        json!({
            "model": "llama", "stream": true, "max_tokens": 10, "user": "u", "metadata": {"a": 1},
            "temperature": 0.2, "unknown_field": [1, 2],
            "tools": [{"type":"function","function":{"name":"f","parameters":{}}}],
            "messages": [
                {"role": "developer", "content": "dev"},
                {"role": "system", "content": [{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]},
                {"role": "user", "content": "hi", "name": "bob"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id":"1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}},
                    {"id":"2","type":"function","function":{"name":"g","arguments":"not json"}}]},
                {"role": "tool", "tool_call_id": "1", "content": [{"type":"text","text":"r1"}]},
                {"role": "function", "content": "r2"},
                {"role": "assistant", "content": "done"},
            ]
        }),
    )
    .unwrap();
    assert_eq!(c.api, Api::ChatCompletions);
    assert_eq!(c.model, "llama");
    assert!(c.stream);
    assert_eq!(c.max_tokens, Some(10));
    assert_eq!(c.tools.as_ref().unwrap().as_array().unwrap().len(), 1);
    assert_eq!(
        msgs(&c),
        vec![
            ("system", "dev"),
            ("system", "a\nb"),
            ("user", "hi"),
            (
                "assistant",
                "<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>\n<tool_call>\n{\"name\":\"g\",\"arguments\":\"not json\"}\n</tool_call>"
            ),
            ("tool", "r1"),
            ("tool", "r2"),
            ("assistant", "done"),
        ]
    );
    assert_eq!(c.hints, crate::CallHints::default());
}

#[test]
fn chat_max_completion_tokens_wins_and_defaults() {
    let c = parse(
        Api::ChatCompletions,
        json!({"model":"m","max_tokens":5,"max_completion_tokens":7.0,"messages":[{"role":"user","content":"x"}]}),
    )
    .unwrap();
    assert_eq!(c.max_tokens, Some(7));
    let c = parse(
        Api::ChatCompletions,
        json!({"model":"m","stream":null,"messages":[{"role":"user","content":"x"}]}),
    )
    .unwrap();
    assert!(!c.stream);
    assert_eq!(c.max_tokens, None);
    assert_eq!(c.tools, None);
}

#[test]
fn chat_errors_name_the_field() {
    let api = Api::ChatCompletions;
    let e = parse_request(api, b"{not json", &[]).unwrap_err();
    assert_eq!(e.status, 400);
    assert!(
        e.message.starts_with("request body is not valid JSON"),
        "{}",
        e.message
    );
    assert_eq!(
        err(api, json!([1])),
        "request body: expected a JSON object, got an array"
    );
    assert_eq!(
        err(api, json!({"messages":[]})),
        "model: required field is missing (expected a string)"
    );
    assert_eq!(
        err(api, json!({"model":3,"messages":[]})),
        "model: expected a string, got a number"
    );
    assert_eq!(
        err(api, json!({"model":"","messages":[]})),
        "model: expected a non-empty model name"
    );
    assert_eq!(
        err(api, json!({"model":"m"})),
        "messages: required field is missing (expected a non-empty array of messages)"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":[]})),
        "messages: expected a non-empty array of messages"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":{}})),
        "messages: expected a non-empty array of messages, got an object"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":["hi"]})),
        "messages[0]: expected an object, got a string"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":[{"content":"x"}]})),
        "messages[0].role: required field is missing (expected a string)"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":[{"role":"bot","content":"x"}]})),
        "messages[0].role: expected one of \"system\", \"developer\", \"user\", \"assistant\", \"tool\", got \"bot\""
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","messages":[{"role":"user","content":"x"},{"role":"user","content":"x"},{"role":"user","content":7}]})
        ),
        "messages[2].content: expected a string or an array of content parts, got a number"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":[{"role":"user"}]})),
        "messages[0].content: required field is missing (expected a string or an array of content parts)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","messages":[{"role":"user","content":[{"text":"x"}]}]})
        ),
        "messages[0].content[0].type: required field is missing (expected a string)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":1}]}]})
        ),
        "messages[0].content[0].text: expected a string, got a number"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"1"}]}]})),
        "messages[0].tool_calls[0].function: required field is missing (expected an object with name and arguments)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":1}}]}]})
        ),
        "messages[0].tool_calls[0].function.arguments: expected a JSON string, got a number"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","messages":[{"role":"assistant","tool_calls":{}}]})
        ),
        "messages[0].tool_calls: expected an array, got an object"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","messages":[{"role":"tool","tool_call_id":5,"content":"x"}]})
        ),
        "messages[0].tool_call_id: expected a string, got a number"
    );
    let m = json!([{"role":"user","content":"x"}]);
    assert_eq!(
        err(api, json!({"model":"m","messages":m,"stream":"yes"})),
        "stream: expected a boolean, got a string"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":m,"max_tokens":-1})),
        "max_tokens: expected a non-negative integer below 2^32, got -1"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","messages":m,"max_completion_tokens":1.5})
        ),
        "max_completion_tokens: expected a non-negative integer below 2^32, got 1.5"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":m,"tools":{}})),
        "tools: expected an array, got an object"
    );
    assert_eq!(
        err(api, json!({"model":"m","messages":m,"tools":[1]})),
        "tools[0]: expected an object, got a number"
    );
}

// ------------------------------------------------------------ Responses

#[test]
fn responses_string_and_items() {
    let c = parse(
        Api::Responses,
        json!({"model":"m","input":"hello","max_output_tokens":12,"store":false}),
    )
    .unwrap();
    assert_eq!(msgs(&c), vec![("user", "hello")]);
    assert_eq!(c.max_tokens, Some(12));
    let c = parse(
        Api::Responses,
        json!({"model":"m","instructions":"sys","stream":true,"tools":[{"type":"function","name":"f"}],
               "input":[
                 {"role":"developer","content":"dev"},
                 {"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_image","image_url":"x"},{"type":"input_text","text":"b"}]},
                 {"type":"reasoning","summary":[]},
                 {"type":"message","role":"assistant","content":[{"type":"output_text","text":"thinking"}]},
                 {"type":"function_call","name":"f","arguments":"{}","call_id":"c"},
                 {"type":"function_call_output","call_id":"c","output":"out"},
                 {"type":"function_call_output","call_id":"d","output":[{"type":"input_text","text":"o2"}]},
                 {"type":"function_call","name":"g","call_id":"e"},
               ]}),
    )
    .unwrap();
    assert!(c.stream);
    assert_eq!(
        msgs(&c),
        vec![
            ("system", "sys"),
            ("system", "dev"),
            ("user", "a\nb"),
            (
                "assistant",
                "thinking\n<tool_call>\n{\"name\":\"f\",\"arguments\":{}}\n</tool_call>"
            ),
            ("tool", "out"),
            ("tool", "o2"),
            (
                "assistant",
                "<tool_call>\n{\"name\":\"g\",\"arguments\":{}}\n</tool_call>"
            ),
        ]
    );
}

#[test]
fn responses_errors() {
    let api = Api::Responses;
    assert_eq!(
        err(api, json!({"model":"m"})),
        "input: required field is missing (expected a string or an array of input items)"
    );
    assert_eq!(
        err(api, json!({"model":"m","input":3})),
        "input: expected a string or an array of input items, got a number"
    );
    assert_eq!(
        err(api, json!({"model":"m","input":[]})),
        "input: expected a string or a non-empty array of input items"
    );
    let e = parse(
        api,
        json!({"model":"m","input":"x","previous_response_id":"resp_1"}),
    )
    .unwrap_err();
    assert!(
        e.message.starts_with("previous_response_id: not supported"),
        "{}",
        e.message
    );
    assert!(e.message.contains("stateless"));
    assert_eq!(e.body(api)["error"]["param"], "previous_response_id");
    let e = parse(
        api,
        json!({"model":"m","input":"x","conversation":"conv_1"}),
    )
    .unwrap_err();
    assert!(
        e.message.starts_with("conversation: not supported"),
        "{}",
        e.message
    );
    // null previous_response_id is fine
    assert!(parse(
        api,
        json!({"model":"m","input":"x","previous_response_id":null})
    )
    .is_ok());
    assert_eq!(
        err(api, json!({"model":"m","input":"x","instructions":1})),
        "instructions: expected a string, got a number"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","input":[{"role":"user","content":[{"type":"input_text"}]}]})
        ),
        "input[0].content[0].text: required field is missing (expected a string)"
    );
    assert_eq!(
        err(api, json!({"model":"m","input":[{"role":"user","content":5}]})),
        "input[0].content: expected a string or an array of input_text / output_text parts, got a number"
    );
    assert_eq!(
        err(api, json!({"model":"m","input":[{"role":"user"}]})),
        "input[0].content: required field is missing (expected a string or an array of input_text / output_text parts)"
    );
    assert_eq!(
        err(api, json!({"model":"m","input":[{"role":"tool","content":"x"}]})),
        "input[0].role: expected one of \"user\", \"assistant\", \"system\", \"developer\", got \"tool\""
    );
    assert_eq!(
        err(api, json!({"model":"m","input":[{"content":"x"}]})),
        "input[0].role: required field is missing (expected a string)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","input":[{"type":"function_call","arguments":"{}"}]})
        ),
        "input[0].name: required field is missing (expected a string)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","input":[{"type":"function_call","name":"f","arguments":{}}]})
        ),
        "input[0].arguments: expected a JSON string, got an object"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","input":[{"type":"function_call_output","output":"x"}]})
        ),
        "input[0].call_id: required field is missing (expected a string)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","input":[{"type":"function_call_output","call_id":"c"}]})
        ),
        "input[0].output: required field is missing (expected a string)"
    );
    let e = err(
        api,
        json!({"model":"m","input":[{"type":"item_reference","id":"x"}]}),
    );
    assert!(
        e.starts_with("input[0].type: \"item_reference\" is not supported"),
        "{e}"
    );
    assert_eq!(
        err(api, json!({"model":"m","input":[{"type":3}]})),
        "input[0].type: expected a string, got a number"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","input":"x","max_output_tokens":"9"})
        ),
        "max_output_tokens: expected a non-negative integer below 2^32, got \"9\""
    );
}

// ------------------------------------------------------------ Anthropic

#[test]
fn anthropic_full_shape() {
    let c = parse(
        Api::Messages,
        json!({
            "model":"claude","max_tokens":1024,"stream":true,"metadata":{"user_id":"user_1_session_2"},
            "system":[{"type":"text","text":"s1"},{"type":"text","text":"s2","cache_control":{"type":"ephemeral"}}],
            "tools":[{"name":"ls","input_schema":{"type":"object"},"cache_control":{"type":"ephemeral","ttl":"5m"}}],
            "messages":[
                {"role":"user","content":"hi"},
                {"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"x"},{"type":"text","text":"ok"},
                    {"type":"tool_use","id":"t1","name":"ls","input":{"p":"."}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"a b"},
                    {"type":"tool_result","tool_use_id":"t2","content":[{"type":"text","text":"c"},{"type":"image","source":{}}],"is_error":true},
                    {"type":"text","text":"continue","cache_control":{"type":"ephemeral","ttl":"1h"}}]},
                {"role":"assistant","content":"fine"},
                {"role":"user","content":[{"type":"image","source":{}}]},
            ]
        }),
    )
    .unwrap();
    assert_eq!(c.max_tokens, Some(1024));
    assert!(c.stream);
    assert_eq!(
        msgs(&c),
        vec![
            ("system", "s1\ns2"),
            ("user", "hi"),
            (
                "assistant",
                "ok\n<tool_call>\n{\"name\":\"ls\",\"arguments\":{\"p\":\".\"}}\n</tool_call>"
            ),
            ("tool", "a b"),
            ("tool", "c"),
            ("user", "continue"),
            ("assistant", "fine"),
            ("user", ""),
        ]
    );
    assert_eq!(c.hints.keep_warm_ms, Some(3_600_000));
    assert_eq!(c.hints.agent_id.as_deref(), Some("user_1_session_2"));
    let c = parse(
        Api::Messages,
        json!({"model":"m","max_tokens":1,"system":"s","messages":[{"role":"user","content":"x"}]}),
    )
    .unwrap();
    assert_eq!(msgs(&c), vec![("system", "s"), ("user", "x")]);
    assert_eq!(c.hints.keep_warm_ms, None);
}

#[test]
fn anthropic_cache_control_ttls() {
    let base = |extra: Value| {
        let mut b = json!({"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let ttl = |extra: Value| {
        parse(Api::Messages, base(extra))
            .unwrap()
            .hints
            .keep_warm_ms
    };
    assert_eq!(
        ttl(json!({"cache_control":{"type":"ephemeral"}})),
        Some(300_000)
    );
    assert_eq!(
        ttl(json!({"cache_control":{"type":"ephemeral","ttl":"1h"}})),
        Some(3_600_000)
    );
    assert_eq!(
        ttl(
            json!({"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}]}]}]})
        ),
        Some(3_600_000)
    );
    // an explicit longer hint wins; a shorter one does not lower the TTL
    assert_eq!(
        ttl(
            json!({"cache_control":{"type":"ephemeral"},"nvext":{"agent_hints":{"keep_warm_ms":10_000_000}}})
        ),
        Some(10_000_000)
    );
    assert_eq!(
        ttl(
            json!({"cache_control":{"type":"ephemeral"},"nvext":{"agent_hints":{"keep_warm_ms":1}}})
        ),
        Some(300_000)
    );
    assert_eq!(
        err(
            Api::Messages,
            base(json!({"cache_control":{"type":"ephemeral","ttl":"2h"}}))
        ),
        "cache_control.ttl: expected \"5m\" or \"1h\", got \"2h\""
    );
    assert_eq!(
        err(
            Api::Messages,
            base(
                json!({"system":[{"type":"text","text":"s","cache_control":{"type":"persistent"}}]})
            )
        ),
        "system[0].cache_control.type: expected \"ephemeral\", got \"persistent\""
    );
    assert_eq!(
        err(
            Api::Messages,
            base(json!({"tools":[{"name":"x","cache_control":"yes"}]}))
        ),
        "tools[0].cache_control: expected an object, got a string"
    );
    // OpenAI shapes read cache_control on content parts too
    let c = parse(
        Api::ChatCompletions,
        json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}]}),
    )
    .unwrap();
    assert_eq!(c.hints.keep_warm_ms, Some(300_000));
}

#[test]
fn anthropic_errors() {
    let api = Api::Messages;
    let m = json!([{"role":"user","content":"x"}]);
    let e = parse(api, json!({"model":"m","messages":m})).unwrap_err();
    assert_eq!(
        e.message,
        "max_tokens: required field is missing (expected a positive integer)"
    );
    assert_eq!(
        e.body(api),
        json!({"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: required field is missing (expected a positive integer)"}})
    );
    assert_eq!(
        err(api, json!({"model":"m","max_tokens":0,"messages":m})),
        "max_tokens: expected a positive integer, got 0"
    );
    assert_eq!(
        err(api, json!({"model":"m","max_tokens":1})),
        "messages: required field is missing (expected a non-empty array of messages)"
    );
    assert_eq!(
        err(api, json!({"model":"m","max_tokens":1,"messages":[]})),
        "messages: expected a non-empty array of messages"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":m,"system":5})
        ),
        "system: expected a string or an array of text blocks, got a number"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":m,"system":[{"type":"text"}]})
        ),
        "system[0].text: required field is missing (expected a string)"
    );
    assert_eq!(
        err(api, json!({"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]})),
        "messages[0].role: expected \"user\" or \"assistant\", got \"system\" (the system prompt goes in `system`)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":{}}]})
        ),
        "messages[1].content: expected a string or an array of content blocks, got an object"
    );
    assert_eq!(
        err(api, json!({"model":"m","max_tokens":1,"messages":[{"role":"user"}]})),
        "messages[0].content: required field is missing (expected a string or an array of content blocks)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"x","input":{}}]}]})
        ),
        "messages[0].content[0].name: required field is missing (expected a string)"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"x","name":"f","input":"{}"}]}]})
        ),
        "messages[0].content[0].input: expected an object, got a string"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","content":"x"}]}]})
        ),
        "messages[0].content[0].tool_use_id: required field is missing (expected a string)"
    );
    assert_eq!(
        err(api, json!({"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":7}]}]})),
        "messages[0].content[0].content: expected a string or an array of content blocks, got a number"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":m,"metadata":{"user_id":5}})
        ),
        "metadata.user_id: expected a string, got a number"
    );
    assert_eq!(
        err(
            api,
            json!({"model":"m","max_tokens":1,"messages":m,"metadata":[]})
        ),
        "metadata: expected an object, got an array"
    );
}

// ------------------------------------------------------------ hints

#[test]
fn hints_from_body_on_all_apis() {
    let nvext = json!({"agent_hints":{"priority":-3,"latency_sensitivity":0.75,"osl":256,"agent_id":"a1","parent_agent_id":"p1","keep_warm_ms":5000},"session_id":"s1"});
    for (api, body) in [
        (
            Api::ChatCompletions,
            json!({"model":"m","messages":[{"role":"user","content":"x"}],"nvext":nvext}),
        ),
        (
            Api::Responses,
            json!({"model":"m","input":"x","nvext":nvext}),
        ),
        (
            Api::Messages,
            json!({"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"nvext":nvext}),
        ),
    ] {
        let h = parse_h(
            api,
            body,
            &[("x-kvtier-agent-id", "hdr"), ("x-kvtier-priority", "5")],
        )
        .unwrap()
        .hints;
        assert_eq!(h.agent_id.as_deref(), Some("a1"), "{api:?}");
        assert_eq!(h.parent_agent_id.as_deref(), Some("p1"));
        assert_eq!(h.priority, -3, "body wins over header");
        assert_eq!(h.latency_sensitivity, 0.75);
        assert_eq!(h.osl, Some(256));
        assert_eq!(h.keep_warm_ms, Some(5000));
    }
}

#[test]
fn agent_id_precedence() {
    let body = |nvext: Value| json!({"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"nvext":nvext,"metadata":{"user_id":"meta"}});
    let id = |nvext: Value, headers: &[(&str, &str)]| {
        parse_h(Api::Messages, body(nvext), headers)
            .unwrap()
            .hints
            .agent_id
    };
    let all = [
        ("x-kvtier-agent-id", "hdr-agent"),
        ("x-session-id", "hdr-session"),
    ];
    assert_eq!(
        id(
            json!({"agent_hints":{"agent_id":"h"},"agent_id":"n","session_id":"s"}),
            &all
        )
        .as_deref(),
        Some("h")
    );
    assert_eq!(
        id(
            json!({"agent_hints":{"agent_id":" "},"agent_id":"n","session_id":"s"}),
            &all
        )
        .as_deref(),
        Some("n")
    );
    assert_eq!(id(json!({"session_id":"s"}), &all).as_deref(), Some("s"));
    assert_eq!(id(json!({}), &all).as_deref(), Some("hdr-agent"));
    assert_eq!(
        id(json!(null), &[("X-Session-Id", "hdr-session")]).as_deref(),
        Some("hdr-session")
    );
    assert_eq!(id(json!({}), &[]).as_deref(), Some("meta"));
    // metadata.user_id is Anthropic-only
    let c = parse(Api::ChatCompletions, json!({"model":"m","messages":[{"role":"user","content":"x"}],"metadata":{"user_id":"meta"}})).unwrap();
    assert_eq!(c.hints.agent_id, None);
}

#[test]
fn hints_from_headers() {
    let h = parse_h(
        Api::ChatCompletions,
        json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
        &[
            ("x-kvtier-priority", "-8"),
            ("x-kvtier-latency-sensitivity", "1"),
            ("x-kvtier-parent-agent-id", "parent"),
            ("x-kvtier-osl", "99"),
            ("x-kvtier-keep-warm-ms", "60000"),
        ],
    )
    .unwrap()
    .hints;
    assert_eq!(h.priority, -8);
    assert_eq!(h.latency_sensitivity, 1.0);
    assert_eq!(h.parent_agent_id.as_deref(), Some("parent"));
    assert_eq!(h.osl, Some(99));
    assert_eq!(h.keep_warm_ms, Some(60_000));
}

#[test]
fn hint_errors() {
    let api = Api::ChatCompletions;
    let b = |nvext: Value| json!({"model":"m","messages":[{"role":"user","content":"x"}],"nvext":nvext});
    assert_eq!(
        err(api, b(json!(1))),
        "nvext: expected an object, got a number"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":[]}))),
        "nvext.agent_hints: expected an object, got an array"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"priority":9}}))),
        "nvext.agent_hints.priority: expected an integer in -8..=8, got 9"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"priority":-9}}))),
        "nvext.agent_hints.priority: expected an integer in -8..=8, got -9"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"priority":1.5}}))),
        "nvext.agent_hints.priority: expected an integer in -8..=8, got a number"
    );
    assert_eq!(
        parse(api, b(json!({"agent_hints":{"priority":2.0}})))
            .unwrap()
            .hints
            .priority,
        2
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"priority":"high"}}))),
        "nvext.agent_hints.priority: expected an integer in -8..=8, got a string"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"latency_sensitivity":1.5}}))),
        "nvext.agent_hints.latency_sensitivity: expected a number in 0..=1, got 1.5"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"latency_sensitivity":"x"}}))),
        "nvext.agent_hints.latency_sensitivity: expected a number in 0..=1, got a string"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"osl":-1}}))),
        "nvext.agent_hints.osl: expected a non-negative integer below 2^32, got -1"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"keep_warm_ms":"1"}}))),
        "nvext.agent_hints.keep_warm_ms: expected a non-negative integer, got a string"
    );
    assert_eq!(
        err(api, b(json!({"agent_hints":{"agent_id":1}}))),
        "nvext.agent_hints.agent_id: expected a string, got a number"
    );
    assert_eq!(
        err(api, b(json!({"session_id":1}))),
        "nvext.session_id: expected a string, got a number"
    );
    let hdr = |k: &str, v: &str| {
        parse_h(
            api,
            json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
            &[(k, v)],
        )
        .unwrap_err()
        .message
    };
    assert_eq!(
        hdr("x-kvtier-priority", "10"),
        "x-kvtier-priority: expected an integer in -8..=8, got 10"
    );
    assert_eq!(
        hdr("x-kvtier-priority", "high"),
        "x-kvtier-priority: expected an integer in -8..=8, got \"high\""
    );
    assert_eq!(
        hdr("x-kvtier-latency-sensitivity", "2"),
        "x-kvtier-latency-sensitivity: expected a number in 0..=1, got 2"
    );
    assert_eq!(
        hdr("x-kvtier-latency-sensitivity", "NaN"),
        "x-kvtier-latency-sensitivity: expected a number in 0..=1, got \"NaN\""
    );
    assert_eq!(
        hdr("x-kvtier-osl", "-1"),
        "x-kvtier-osl: expected a non-negative integer, got \"-1\""
    );
    assert_eq!(
        hdr("x-kvtier-keep-warm-ms", "soon"),
        "x-kvtier-keep-warm-ms: expected a non-negative integer, got \"soon\""
    );
}

// ------------------------------------------------------------ error bodies

#[test]
fn error_bodies_in_each_api_shape() {
    let e =
        ApiError::invalid("messages[2].content: expected a string or an array of content blocks");
    assert_eq!(e.param(), Some("messages[2].content"));
    let openai = json!({"error":{"message":"messages[2].content: expected a string or an array of content blocks",
        "type":"invalid_request_error","param":"messages[2].content","code":null}});
    assert_eq!(e.body(Api::ChatCompletions), openai);
    assert_eq!(e.body(Api::Responses), openai);
    assert_eq!(
        e.body(Api::Messages),
        json!({"type":"error","error":{"type":"invalid_request_error","message":"messages[2].content: expected a string or an array of content blocks"}})
    );
    let e = ApiError::invalid("request body is not valid JSON (x)");
    assert_eq!(e.param(), None);
    assert_eq!(e.body(Api::ChatCompletions)["error"]["param"], Value::Null);

    let e = ApiError::not_found_model("gpt-x");
    assert_eq!(e.status, 404);
    assert!(e.message.contains("gpt-x"));
    assert_eq!(
        e.body(Api::ChatCompletions)["error"]["type"],
        "invalid_request_error"
    );
    assert_eq!(
        e.body(Api::ChatCompletions)["error"]["code"],
        "model_not_found"
    );
    assert_eq!(e.body(Api::ChatCompletions)["error"]["param"], "model");
    assert_eq!(e.body(Api::Messages)["error"]["type"], "not_found_error");

    let e = ApiError::no_worker("m");
    assert_eq!(e.status, 503);
    assert_eq!(e.body(Api::Messages)["error"]["type"], "overloaded_error");
    assert_eq!(e.body(Api::Responses)["error"]["type"], "server_error");
    assert_eq!(
        e.body(Api::Responses)["error"]["code"],
        "no_worker_available"
    );

    let e = ApiError::internal("boom");
    assert_eq!(e.status, 500);
    assert_eq!(e.body(Api::Messages)["error"]["type"], "api_error");
    assert_eq!(
        e.body(Api::ChatCompletions)["error"]["type"],
        "server_error"
    );
    assert_eq!(e.to_string(), "boom");

    assert_eq!(
        ApiError::new(429, "rate_limit_error", "slow").body(Api::Messages)["error"]["type"],
        "rate_limit_error"
    );
    let limited = ApiError::new(429, "rate_limit_error", "slow").body(Api::ChatCompletions);
    assert_eq!(limited["error"]["type"], "requests");
    assert_eq!(limited["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        ApiError::new(401, "x", "y").body(Api::Messages)["error"]["type"],
        "authentication_error"
    );
    assert_eq!(
        ApiError::new(418, "teapot", "y").body(Api::Messages)["error"]["type"],
        "teapot"
    );
}

#[test]
fn api_paths() {
    assert_eq!(Api::ChatCompletions.path(), "/v1/chat/completions");
    assert_eq!(Api::Responses.path(), "/v1/responses");
    assert_eq!(Api::Messages.path(), "/v1/messages");
}

#[test]
fn never_panics_on_odd_inputs() {
    let inputs: [&[u8]; 8] = [
        b"",
        b"null",
        b"\xff\xfe",
        b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[null]}]}",
        b"{\"model\":\"m\",\"input\":[null],\"max_tokens\":1e400}",
        b"{\"model\":\"m\",\"max_tokens\":18446744073709551616,\"messages\":[]}",
        b"{\"model\":\"m\",\"nvext\":{\"agent_hints\":{\"priority\":-1e300}},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    for input in inputs {
        for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
            let _ = parse_request(api, input, &[]);
        }
    }
}
