"""The tiny byte-level BPE tokenizer of prompt/src/testing.rs (`tiny_tokenizer_json`), written
from Python: the same JSON document (256 byte tokens, the same merges in the same rank order,
the ChatML special tokens), so that tests outside Rust can start kvtier-router and
kvtier-sim-worker without downloading a model. Keep MERGES in step with testing.rs.
"""

from __future__ import annotations

import json
from pathlib import Path

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Merges in rank order ("Ġ" is the byte-level space), as in prompt/src/testing.rs.
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he"), ("e", "r"), ("o", "n"), ("Ġ", "a"),
    ("r", "e"), ("a", "t"), ("e", "n"), ("o", "u"), ("Ġ", "s"), ("Ġ", "w"), ("i", "s"),
    ("s", "t"), ("Ġ", "c"), ("a", "n"), ("Ġ", "f"), ("i", "t"), ("Ġ", "o"), ("e", "s"),
    ("a", "r"), ("in", "g"), ("Ġ", "i"), ("Ġ", "p"), ("o", "r"), ("l", "e"), ("Ġa", "n"),
    ("Ġan", "d"), ("Ċ", "Ċ"),
]
IM_START_ID = 256 + len(MERGES)
IM_END_ID = IM_START_ID + 1
ENDOFTEXT_ID = IM_START_ID + 2


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character map of byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            extra += 1
            out.append(chr(255 + extra))
    return out


def tiny_tokenizer_json() -> dict:
    vocab: dict[str, int] = {c: i for i, c in enumerate(bytes_to_unicode())}
    merges = []
    for i, (a, b) in enumerate(MERGES):
        vocab[a + b] = 256 + i
        merges.append(f"{a} {b}")

    def added(i: int, content: str) -> dict:
        return {"id": i, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}

    specials = [(IM_START_ID, IM_START), (IM_END_ID, IM_END), (ENDOFTEXT_ID, ENDOFTEXT)]
    for i, content in specials:
        vocab[content] = i
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(i, c) for i, c in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }


def write_tiny_tokenizer(directory: Path) -> Path:
    """Writes directory/tokenizer.json and returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    path.write_text(json.dumps(tiny_tokenizer_json(), indent=2, ensure_ascii=False))
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_tokenizer(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
