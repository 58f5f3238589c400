//! Request bodies of the router's HTTP front (`/v1/chat/completions`,
//! `/v1/responses`, `/v1/messages`): `kvtier_prompt::parse_request` on
//! arbitrary bytes for all three APIs, raw and spliced into a valid request
//! skeleton (so that the fuzzer reaches the message parsers without a corpus),
//! with the first line also used as hint header values. Parsing returns an
//! `ApiError` (whose body renders) or a call that renders and tokenizes with
//! the built-in template and the tiny test tokenizer; it never panics.
#![no_main]

use std::sync::OnceLock;

use kvtier_prompt::{parse_request, Api, PromptModel};
use libfuzzer_sys::fuzz_target;

fn model() -> &'static PromptModel {
    static MODEL: OnceLock<PromptModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kvtier-fuzz-http-bodies-{}", std::process::id()));
        let tokenizer = kvtier_prompt::testing::write_tiny_tokenizer(&dir).expect("write tiny tokenizer");
        PromptModel::load(&tokenizer, None, 16, kvtier_proto::hashing::DEFAULT_SEED).expect("load tiny model")
    })
}

fn check(api: Api, body: &[u8], headers: &[(String, String)]) {
    match parse_request(api, body, headers) {
        Err(e) => {
            assert!(e.status >= 400, "status {}", e.status);
            let _ = e.body(api);
        }
        Ok(call) => {
            assert_eq!(call.api, api);
            assert!((-8..=8).contains(&call.hints.priority));
            assert!((0.0..=1.0).contains(&call.hints.latency_sensitivity));
            if let Ok(tokens) = model().prompt_tokens(&call) {
                let hashes = model().block_hashes(&tokens);
                assert_eq!(hashes.len(), tokens.len() / 16);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let first_line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let value = String::from_utf8_lossy(first_line).into_owned();
    let headers: Vec<(String, String)> = [
        "x-kvtier-agent-id",
        "x-session-id",
        "x-kvtier-parent-agent-id",
        "x-kvtier-priority",
        "x-kvtier-latency-sensitivity",
        "x-kvtier-osl",
        "x-kvtier-keep-warm-ms",
    ]
    .iter()
    .map(|name| (name.to_string(), value.clone()))
    .collect();
    for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
        check(api, data, &[]);
        check(api, data, &headers);
    }
    let splice = |head: &str| [head.as_bytes(), data, b"}"].concat();
    check(Api::ChatCompletions, &splice(r#"{"model":"m","messages":"#), &[]);
    check(Api::Responses, &splice(r#"{"model":"m","input":"#), &[]);
    check(Api::Messages, &splice(r#"{"model":"m","max_tokens":8,"messages":"#), &[]);
    check(Api::Messages, &splice(r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"x"}],"system":"#), &[]);
    check(Api::ChatCompletions, &splice(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"nvext":"#), &[]);
});
