use serde_json::json;

use crate::testing::{self, IM_END_ID, IM_START_ID};
use crate::{parse_request, Api, ModelCall, PromptModel};

fn tiny(dir: &std::path::Path, block_tokens: usize) -> PromptModel {
    let tok = testing::write_tiny_tokenizer(dir).unwrap();
    PromptModel::load(
        &tok,
        None,
        block_tokens,
        kvtier_proto::hashing::DEFAULT_SEED,
    )
    .unwrap()
}

fn call(api: Api, body: serde_json::Value) -> ModelCall {
    parse_request(api, body.to_string().as_bytes(), &[]).unwrap()
}

#[test]
fn tiny_tokenizer_round_trips_and_knows_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), 4);
    let text = "<|im_start|>user\nthe cat is eating, and 猫 ✓<|im_end|>\n";
    let ids = model.encode(text).unwrap();
    assert_eq!(ids[0], IM_START_ID);
    assert!(ids.contains(&IM_END_ID));
    // merges apply: "Ġthe" is one token
    let the = model.encode(" the").unwrap();
    assert_eq!(the.len(), 1, "{the:?}");
    assert_eq!(model.decode(&ids).unwrap(), text);
}

#[test]
fn default_template_is_chatml() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), 4);
    let c = call(
        Api::ChatCompletions,
        json!({"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}),
    );
    assert_eq!(
        model.render(&c).unwrap(),
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn default_template_lists_tools_in_the_system_turn_in_one_form_for_all_apis() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), 4);
    let params = json!({"type":"object","properties":{"q":{"type":"string"}}});
    let chat = call(
        Api::ChatCompletions,
        json!({"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"hi"}],
               "tools":[{"type":"function","function":{"name":"search","description":"find","parameters":params}}]}),
    );
    let responses = call(
        Api::Responses,
        json!({"model":"m","instructions":"S","input":"hi",
               "tools":[{"type":"function","name":"search","description":"find","parameters":params}]}),
    );
    let anthropic = call(
        Api::Messages,
        json!({"model":"m","max_tokens":5,"system":"S","messages":[{"role":"user","content":"hi"}],
               "tools":[{"name":"search","description":"find","input_schema":params,"cache_control":{"type":"ephemeral"}}]}),
    );
    let text = model.render(&chat).unwrap();
    // (key order is serde_json's map order: sorted, or insertion order with its `preserve_order`)
    assert!(
        text.starts_with("<|im_start|>system\nS\n\n# Tools\n\n<tools>\n{\""),
        "{text}"
    );
    assert!(
        text.contains("\"type\": \"function\"") && text.contains("\"name\": \"search\""),
        "{text}"
    );
    assert!(text.contains("\"parameters\": {\""), "{text}");
    assert!(
        text.ends_with(
            "</tools><|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        ),
        "{text}"
    );
    assert_eq!(model.render(&responses).unwrap(), text);
    assert_eq!(model.render(&anthropic).unwrap(), text);
}

/// The prefix property: a call that appends the assistant's reply and a new
/// user turn to the previous call's conversation renders to a text that
/// extends the previous text (the generation prompt `<|im_start|>assistant\n`
/// is the start of the assistant turn), so its tokens extend the previous
/// tokens and every full block of the first call is shared, and so is the
/// first call's trailing partial block's content (it becomes a full block of
/// the second call).
#[test]
fn extended_conversation_extends_tokens_and_blocks_on_all_apis() {
    let dir = tempfile::tempdir().unwrap();
    for block_tokens in [1, 4, 16, 64] {
        let model = tiny(dir.path(), block_tokens);
        let reply = "the answer is 42, and it is final";
        let bodies: Vec<(Api, serde_json::Value, serde_json::Value)> = vec![
            (
                Api::ChatCompletions,
                json!({"model":"m","messages":[{"role":"system","content":"you are a coding agent"},
                       {"role":"user","content":"what is the answer? explain it in detail please"}]}),
                json!({"model":"m","messages":[{"role":"system","content":"you are a coding agent"},
                       {"role":"user","content":"what is the answer? explain it in detail please"},
                       {"role":"assistant","content":reply},
                       {"role":"user","content":"and then?"}]}),
            ),
            (
                Api::Responses,
                json!({"model":"m","instructions":"you are a coding agent",
                       "input":[{"role":"user","content":[{"type":"input_text","text":"what is the answer? explain it in detail please"}]}]}),
                json!({"model":"m","instructions":"you are a coding agent",
                       "input":[{"role":"user","content":[{"type":"input_text","text":"what is the answer? explain it in detail please"}]},
                                {"type":"message","role":"assistant","content":[{"type":"output_text","text":reply}]},
                                {"role":"user","content":"and then?"}]}),
            ),
            (
                Api::Messages,
                json!({"model":"m","max_tokens":100,"system":[{"type":"text","text":"you are a coding agent","cache_control":{"type":"ephemeral"}}],
                       "messages":[{"role":"user","content":[{"type":"text","text":"what is the answer? explain it in detail please","cache_control":{"type":"ephemeral"}}]}]}),
                json!({"model":"m","max_tokens":100,"system":[{"type":"text","text":"you are a coding agent"}],
                       "messages":[{"role":"user","content":"what is the answer? explain it in detail please"},
                                   {"role":"assistant","content":[{"type":"text","text":reply}]},
                                   {"role":"user","content":[{"type":"text","text":"and then?","cache_control":{"type":"ephemeral","ttl":"1h"}}]}]}),
            ),
        ];
        for (api, first, second) in bodies {
            let t1 = model.prompt_tokens(&call(api, first)).unwrap();
            let t2 = model.prompt_tokens(&call(api, second)).unwrap();
            assert!(t2.len() > t1.len());
            assert_eq!(
                &t2[..t1.len()],
                &t1[..],
                "{api:?}: tokens of the first call are a prefix"
            );
            let h1 = model.block_hashes(&t1);
            let h2 = model.block_hashes(&t2);
            assert_eq!(h1.len(), t1.len() / block_tokens);
            assert_eq!(
                &h2[..h1.len()],
                &h1[..],
                "{api:?}: every full block of the first call is shared"
            );
        }
    }
}

/// The same conversation through the three APIs renders the same text.
#[test]
fn same_conversation_same_prompt_across_apis_including_tool_calls() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), 16);
    let chat = call(
        Api::ChatCompletions,
        json!({"model":"m","messages":[
            {"role":"system","content":"S"},
            {"role":"user","content":"list files"},
            {"role":"assistant","content":"sure","tool_calls":[{"id":"c1","type":"function","function":{"name":"ls","arguments":"{\"path\": \".\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"a.rs b.rs"},
        ]}),
    );
    let responses = call(
        Api::Responses,
        json!({"model":"m","instructions":"S","input":[
            {"role":"user","content":"list files"},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"sure"}]},
            {"type":"function_call","call_id":"c1","name":"ls","arguments":"{\"path\":\".\"}"},
            {"type":"function_call_output","call_id":"c1","output":"a.rs b.rs"},
        ]}),
    );
    let anthropic = call(
        Api::Messages,
        json!({"model":"m","max_tokens":10,"system":"S","messages":[
            {"role":"user","content":"list files"},
            {"role":"assistant","content":[{"type":"text","text":"sure"},{"type":"tool_use","id":"c1","name":"ls","input":{"path":"."}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"c1","content":[{"type":"text","text":"a.rs b.rs"}]}]},
        ]}),
    );
    let text = model.render(&chat).unwrap();
    assert!(text.contains(
        "<|im_start|>assistant\nsure\n<tool_call>\n{\"name\":\"ls\",\"arguments\":{\"path\":\".\"}}\n</tool_call><|im_end|>\n<|im_start|>tool\na.rs b.rs<|im_end|>\n"
    ), "{text}");
    assert_eq!(model.render(&responses).unwrap(), text);
    assert_eq!(model.render(&anthropic).unwrap(), text);
}

#[test]
fn block_hashes_match_the_proto_hasher_full_blocks_only() {
    let dir = tempfile::tempdir().unwrap();
    let tok = testing::write_tiny_tokenizer(dir.path()).unwrap();
    let seed = kvtier_proto::hashing::effective_seed(1337, "tenant-a");
    let model = PromptModel::load(&tok, None, 4, seed).unwrap();
    assert_eq!(model.block_tokens(), 4);
    let tokens: Vec<u32> = (0..11).collect();
    let expected = kvtier_proto::hashing::BlockHasher::new(4, seed).sequence_hashes(&tokens);
    assert_eq!(expected.len(), 2);
    assert_eq!(model.block_hashes(&tokens), expected);
    assert!(model.block_hashes(&tokens[..3]).is_empty());
}

#[test]
fn tokenizer_config_template_with_bos_eos_and_hf_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let tok = testing::write_tiny_tokenizer(dir.path()).unwrap();
    // HF-style: trim/lstrip blocks, bos_token, raise_exception, python methods, tojson.
    let template = "{{ bos_token }}{% for message in messages %}\n\
        {% if message.role not in ['system', 'user', 'assistant', 'tool'] %}{{ raise_exception('bad role ' + message.role) }}{% endif %}\n\
        {{ '<|im_start|>' + message.role + '\\n' + message.content.strip() + eos_token + '\\n' }}{% endfor %}\n\
        {% if tools %}{{ tools[0].function.parameters | tojson }}{{ tools[0].function.parameters | tojson(indent=2) }}{% endif %}\n\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let cfg = testing::write_tokenizer_config(dir.path(), template).unwrap();
    let model = PromptModel::load(&tok, Some(&cfg), 16, 1337).unwrap();
    let c = call(
        Api::ChatCompletions,
        json!({"model":"m","messages":[{"role":"user","content":"  hi  "}],
               "tools":[{"type":"function","function":{"name":"f","parameters":{"a":[1,2]}}}]}),
    );
    assert_eq!(
        model.render(&c).unwrap(),
        "<|endoftext|><|im_start|>user\nhi<|im_end|>\n{\"a\": [1, 2]}{\n  \"a\": [\n    1,\n    2\n  ]\n}<|im_start|>assistant\n"
    );
    // The same template as a raw Jinja file: no bos/eos.
    let raw = dir.path().join("chat.jinja");
    std::fs::write(&raw, "{{ raise_exception('only system prompts please') }}").unwrap();
    let model = PromptModel::load(&tok, Some(&raw), 16, 1337).unwrap();
    let err = model.render(&c).unwrap_err();
    assert_eq!(err.status, 400);
    assert!(
        err.message.contains("only system prompts please"),
        "{}",
        err.message
    );
}

#[test]
fn tokenizer_config_with_named_templates_and_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let tok = testing::write_tiny_tokenizer(dir.path()).unwrap();
    let cfg = dir.path().join("cfg.json");
    std::fs::write(
        &cfg,
        json!({"chat_template":[{"name":"tool_use","template":"T"},{"name":"default","template":"D{{ messages|length }}"}]})
            .to_string(),
    )
    .unwrap();
    let model = PromptModel::load(&tok, Some(&cfg), 16, 1337).unwrap();
    let c = call(
        Api::ChatCompletions,
        json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
    );
    assert_eq!(model.render(&c).unwrap(), "D1");

    std::fs::write(&cfg, "{\"bos_token\":\"x\"}").unwrap();
    let err = PromptModel::load(&tok, Some(&cfg), 16, 1337)
        .unwrap_err()
        .to_string();
    assert!(err.contains("chat_template"), "{err}");

    let bad = dir.path().join("bad.jinja");
    std::fs::write(&bad, "{% for %}").unwrap();
    let err = PromptModel::load(&tok, Some(&bad), 16, 1337)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid chat template"), "{err}");

    let err = PromptModel::load(&dir.path().join("missing.json"), None, 16, 1337)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.json"), "{err}");
    std::fs::write(dir.path().join("junk.json"), "{}").unwrap();
    let err = PromptModel::load(&dir.path().join("junk.json"), None, 16, 1337)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a tokenizer.json"), "{err}");
    assert!(PromptModel::load(&tok, None, 0, 1337).is_err());
}

#[test]
fn strftime_now_formats_a_date() {
    let dir = tempfile::tempdir().unwrap();
    let tok = testing::write_tiny_tokenizer(dir.path()).unwrap();
    let t = dir.path().join("t.jinja");
    std::fs::write(&t, "{{ strftime_now('%d %b %Y|%Y-%m-%d %H:%M:%S%%') }}").unwrap();
    let model = PromptModel::load(&tok, Some(&t), 16, 1337).unwrap();
    let c = call(
        Api::ChatCompletions,
        json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
    );
    let out = model.render(&c).unwrap();
    let (a, b) = out.split_once('|').unwrap();
    assert_eq!(a.len(), 11, "{out}");
    assert_eq!(b.len(), 20, "{out}");
    assert!(b.starts_with("20"), "{out}");
    assert_eq!(crate::model::civil_from_days_for_tests(0), (1970, 1, 1));
    assert_eq!(
        crate::model::civil_from_days_for_tests(19_723),
        (2024, 1, 1)
    );
    assert_eq!(
        crate::model::civil_from_days_for_tests(19_782),
        (2024, 2, 29)
    );
}
