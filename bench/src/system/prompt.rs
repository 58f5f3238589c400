//! Turning trace block ids into prompts the real HTTP front can route.
//!
//! Traces give block hash ids, not text. The system replay renders each
//! trace block as `block_tokens` (16) words of a bench-only word-level
//! tokenizer, so that one trace block is exactly one simulated KV block:
//!
//! - the vocabulary is `<unk>` plus [`VOCAB`] words `k0` .. `k4095`, split on
//!   whitespace, one token per word;
//! - block id `b` (the replay's dense id: sessions never share one) is the
//!   words of `b` in base 4096 (three tokens: unique for every id below 2^36)
//!   followed by 13 deterministic filler words derived from `b`;
//! - the chat template ([`CHAT_TEMPLATE`]) renders only the messages'
//!   contents, so the whole context goes in one user message and the prompt
//!   is exactly the concatenated blocks: no template prefix shifts block
//!   boundaries, and two calls share their first `k` full blocks exactly when
//!   their first `k` trace ids agree (the prefix property).
//!
//! A trace block therefore stands for 64 (kv-cache-tester) or 512 (Mooncake)
//! real tokens but is 16 tokens here: hit rates are block-weighted and map
//! one to one; token counts and prefill times are those of the 16-token blocks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// Words in the vocabulary (besides `<unk>`).
pub const VOCAB: u32 = 4096;
/// Tokens per simulated block (one trace block).
pub const BLOCK_TOKENS: usize = 16;
/// A Jinja chat template that emits only the messages' text.
pub const CHAT_TEMPLATE: &str =
    "{% for message in messages %}{{ message['content'] }} {% endfor %}";

/// The word-level `tokenizer.json` document.
pub fn tokenizer_json() -> Value {
    let mut vocab = Map::new();
    vocab.insert("<unk>".into(), json!(0));
    for i in 0..VOCAB {
        vocab.insert(format!("k{i}"), json!(i + 1));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": Value::Object(vocab), "unk_token": "<unk>" }
    })
}

/// Writes `dir/tokenizer.json` and `dir/chat_template.jinja`; returns their paths.
pub fn write_model(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tokenizer = dir.join("tokenizer.json");
    std::fs::write(&tokenizer, serde_json::to_vec(&tokenizer_json())?)?;
    let template = dir.join("chat_template.jinja");
    std::fs::write(&template, CHAT_TEMPLATE)?;
    Ok((tokenizer, template))
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The word indices (0-based, token id − 1) of block `id`.
pub fn block_words(id: u32) -> [u32; BLOCK_TOKENS] {
    let mut w = [0u32; BLOCK_TOKENS];
    let id = u64::from(id);
    let v = u64::from(VOCAB);
    w[0] = (id % v) as u32;
    w[1] = ((id / v) % v) as u32;
    w[2] = ((id / (v * v)) % v) as u32;
    for (j, slot) in w.iter_mut().enumerate().skip(3) {
        *slot = (mix(id.wrapping_mul(31).wrapping_add(j as u64)) % v) as u32;
    }
    w
}

/// The prompt text of a call whose context is `blocks` (trace ids).
pub fn render(blocks: &[u32]) -> String {
    let mut s = String::with_capacity(blocks.len() * BLOCK_TOKENS * 6);
    for &b in blocks {
        for w in block_words(b) {
            let _ = write!(s, "k{w} ");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_prompt::{parse_request, Api, PromptModel};

    fn model(dir: &Path) -> PromptModel {
        let (tok, tpl) = write_model(dir).unwrap();
        PromptModel::load(&tok, Some(&tpl), BLOCK_TOKENS, 1337).unwrap()
    }

    fn hashes(m: &PromptModel, blocks: &[u32]) -> (usize, Vec<u64>) {
        let body = json!({
            "model": "sim-model",
            "messages": [{"role": "user", "content": render(blocks)}],
            "stream": true,
        });
        let call = parse_request(Api::ChatCompletions, body.to_string().as_bytes(), &[]).unwrap();
        let tokens = m.prompt_tokens(&call).unwrap();
        (tokens.len(), m.block_hashes(&tokens))
    }

    #[test]
    fn one_trace_block_is_one_sim_block_with_the_prefix_property() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        // A session: call 2 extends call 1; call 3 shares only the first two
        // blocks (a branch); a big id exercises all three base-4096 digits.
        let c1 = [0u32, 1, 2, 3];
        let c2 = [0u32, 1, 2, 3, 4, 5];
        let c3 = [0u32, 1, 9, 70_000_000];
        let (n1, h1) = hashes(&m, &c1);
        let (n2, h2) = hashes(&m, &c2);
        let (n3, h3) = hashes(&m, &c3);
        assert_eq!(n3, 4 * BLOCK_TOKENS);
        assert_eq!(n1, 4 * BLOCK_TOKENS, "no template tokens, no partial block");
        assert_eq!(n2, 6 * BLOCK_TOKENS);
        assert_eq!((h1.len(), h2.len(), h3.len()), (4, 6, 4));
        assert_eq!(h2[..4], h1[..], "the extension shares every earlier block");
        assert_eq!(h3[..2], h1[..2], "a branch shares its common prefix");
        assert_ne!(h3[2], h1[2]);
        // Same id at the same position, different prefix: a different block.
        let (_, h4) = hashes(&m, &[7u32, 1]);
        assert_ne!(h4[1], h1[1]);
    }

    #[test]
    fn distinct_ids_render_distinct_blocks() {
        let mut seen = std::collections::HashSet::new();
        for id in (0..200_000u32).chain([u32::MAX, u32::MAX - 1, 4096 * 4096, 4096 * 4096 + 1]) {
            assert!(seen.insert(block_words(id)), "id {id} collides");
        }
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        let tokens = m.encode(&render(&[123_456])).unwrap();
        assert_eq!(tokens.len(), BLOCK_TOKENS);
        assert!(tokens.iter().all(|&t| t != 0), "no <unk>");
    }
}
