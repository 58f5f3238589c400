//! Test fixtures: a tiny self-made tokenizer, nothing downloaded.
//!
//! [`write_tiny_tokenizer`] writes a byte-level BPE `tokenizer.json` (GPT-2
//! style: the 256 byte tokens, a few English merges, GPT-2 pre-tokenizer
//! regex) with the special tokens [`IM_START`], [`IM_END`] and [`ENDOFTEXT`],
//! so that the built-in ChatML template tokenizes its markers as single
//! tokens. Any UTF-8 text encodes (bytes are the fallback), and decoding gives
//! the text back.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// `<|im_start|>` (special token id [`IM_START_ID`]).
pub const IM_START: &str = "<|im_start|>";
/// `<|im_end|>` (special token id [`IM_END_ID`]).
pub const IM_END: &str = "<|im_end|>";
/// `<|endoftext|>` (special token id [`ENDOFTEXT_ID`]).
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// Merges of the tiny tokenizer, in rank order (`Ġ` is the byte-level space).
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "a"),
    ("r", "e"),
    ("a", "t"),
    ("e", "n"),
    ("o", "u"),
    ("Ġ", "s"),
    ("Ġ", "w"),
    ("i", "s"),
    ("s", "t"),
    ("Ġ", "c"),
    ("a", "n"),
    ("Ġ", "f"),
    ("i", "t"),
    ("Ġ", "o"),
    ("e", "s"),
    ("a", "r"),
    ("in", "g"),
    ("Ġ", "i"),
    ("Ġ", "p"),
    ("o", "r"),
    ("l", "e"),
    ("Ġa", "n"),
    ("Ġan", "d"),
    ("Ċ", "Ċ"),
];

/// Number of byte tokens plus merges: the first special token's id.
pub const IM_START_ID: u32 = 256 + MERGES.len() as u32;
/// Id of `<|im_end|>`.
pub const IM_END_ID: u32 = IM_START_ID + 1;
/// Id of `<|endoftext|>`.
pub const ENDOFTEXT_ID: u32 = IM_START_ID + 2;

/// GPT-2's byte -> printable char map of byte-level BPE.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    map
}

/// The tiny tokenizer's `tokenizer.json` document.
pub fn tiny_tokenizer_json() -> Value {
    let mut vocab = Map::new();
    for (id, c) in bytes_to_unicode().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(id));
    }
    let mut merges = Vec::new();
    for (i, (a, b)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), json!(256 + i));
        merges.push(Value::String(format!("{a} {b}")));
    }
    let added = |id: u32, content: &str| {
        json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        })
    };
    for (id, content) in [
        (IM_START_ID, IM_START),
        (IM_END_ID, IM_END),
        (ENDOFTEXT_ID, ENDOFTEXT),
    ] {
        vocab.insert(content.to_string(), json!(id));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(IM_START_ID, IM_START), added(IM_END_ID, IM_END), added(ENDOFTEXT_ID, ENDOFTEXT)],
        "normalizer": null,
        "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
        "post_processor": null,
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": Value::Object(vocab),
            "merges": merges
        }
    })
}

/// Writes the tiny tokenizer to `dir/tokenizer.json` and returns that path.
pub fn write_tiny_tokenizer(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&tiny_tokenizer_json())?)?;
    Ok(path)
}

/// Writes `dir/tokenizer_config.json` with `chat_template` and the tiny
/// tokenizer's `bos_token` / `eos_token` (`<|endoftext|>` / `<|im_end|>`), and
/// returns that path.
pub fn write_tokenizer_config(dir: &Path, chat_template: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("tokenizer_config.json");
    let config = json!({
        "bos_token": ENDOFTEXT,
        "eos_token": { "content": IM_END, "special": true },
        "chat_template": chat_template,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(path)
}
