"""A tiny OPT with random weights, written locally (nothing is downloaded).

Two layers, two heads of 64 (the CPU backend refuses head sizes under 32),
vocabulary 2,048, positions up to 4,096. The weights are random but seeded, so
every engine built from the same directory computes the same greedy tokens.
"""

from __future__ import annotations

import json
import pathlib

HIDDEN = 128
HEADS = 2
LAYERS = 2
VOCAB = 2048
MAX_POSITIONS = 4096


def make_tiny_opt(
    directory: pathlib.Path,
    seed: int = 0,
    layers: int = LAYERS,
    hidden: int = HIDDEN,
    heads: int = HEADS,
) -> pathlib.Path:
    """Writes config + safetensors weights into ``directory`` (once) and returns it."""
    marker = directory / "config.json"
    if marker.exists():
        return directory
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        ffn_dim=4 * hidden,
        num_attention_heads=heads,
        max_position_embeddings=MAX_POSITIONS,
        word_embed_proj_dim=hidden,
        do_layer_norm_before=True,
        # Wide weights: attention then really depends on the context, so a
        # wrong KV block changes the greedy tokens (the negative control).
        init_std=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )
    model = OPTForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    return directory
