"""Runs a real vLLM engine (CPU backend) in its own process and prints one JSON
line: the greedy tokens of each prompt, per-prompt times to first token, and
the connector's counters. Used by the end-to-end tests and the benchmark.

    python engine_runner.py --model DIR --prompts FILE [--agent ADDR] [--namespace NS]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]


class EngineFailed(RuntimeError):
    """The engine process exited without a result; the message ends with its stderr."""


def run(
    model: pathlib.Path,
    prompts: pathlib.Path,
    args: list[str],
    kv_cache_gib: int = 1,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """Runs this script in a new process with ``--model``, ``--prompts`` and
    ``args``; returns its RESULT line, decoded."""
    env = {
        **os.environ,
        "PYTHONPATH": str(PACKAGE_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
    }
    cmd = [sys.executable, __file__, "--model", str(model), "--prompts", str(prompts), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise EngineFailed(f"engine failed (rc {r.returncode}):\n{r.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT ") :])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    parser.add_argument("--agent", default="", help="kvtier-agent address; empty: no connector")
    parser.add_argument("--namespace", default="vllm-test")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--extra", default="{}", help="more kv_connector_extra_config (JSON)")
    parser.add_argument("--repeat", type=int, default=1, help="run each prompt this many times")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="first run this many random prompts of the first prompt's length (not timed)",
    )
    parser.add_argument(
        "--probe-only", action="store_true", help="time the first token only (no generation)"
    )
    parser.add_argument(
        "--native-offload-gib",
        type=float,
        default=0.0,
        help="vLLM's built-in CPU KV offloading (kv_offloading_size) instead of kvtier",
    )
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    kv_transfer_config = None
    if args.agent:
        extra = {"agent": args.agent, "namespace": args.namespace, **json.loads(args.extra)}
        kv_transfer_config = KVTransferConfig(
            kv_connector="KvtierConnector",
            kv_connector_module_path="kvtier_vllm",
            kv_role="kv_both",
            kv_connector_extra_config=extra,
        )
    llm = LLM(
        model=args.model,
        skip_tokenizer_init=True,
        dtype="float32",
        block_size=args.block_size,
        max_model_len=4096,
        max_num_batched_tokens=4096,
        enforce_eager=True,
        enable_prefix_caching=True,
        seed=0,
        kv_transfer_config=kv_transfer_config,
        **({"kv_offloading_size": args.native_offload_gib} if args.native_offload_gib else {}),
    )
    with open(args.prompts) as f:
        prompts: list[list[int]] = json.load(f)
    params = SamplingParams(
        temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, detokenize=False
    )
    outputs = []
    ttft = []
    if args.warmup and prompts:
        import random

        rng = random.Random(12345)
        one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False)
        for _ in range(args.warmup):
            warm = [rng.randrange(3, 2000) for _ in range(len(prompts[0]))]
            llm.reset_prefix_cache()
            llm.generate([TokensPrompt(prompt_token_ids=warm)], one, use_tqdm=False)
    for prompt in prompts:
        for _ in range(args.repeat):
            llm.reset_prefix_cache()  # the engine's own cache must not answer
            one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False)
            start = time.perf_counter()
            llm.generate([TokensPrompt(prompt_token_ids=prompt)], one, use_tqdm=False)
            ttft.append(time.perf_counter() - start)
            settle(llm)
        if args.probe_only:
            continue
        llm.reset_prefix_cache()
        out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
        outputs.append(list(out[0].outputs[0].token_ids))
    totals = {}
    connector = _connector(llm)
    if connector is not None:
        connector.wait_for_saves(30.0)
        totals = connector.totals
        totals["staging_free"] = connector.staging_free
        totals["staging_slots"] = connector.staging_slots
    print(
        "RESULT " + json.dumps({"tokens": outputs, "ttft_s": ttft, "connector": totals}), flush=True
    )
    return 0


def settle(llm) -> None:  # type: ignore[no-untyped-def]
    """Waits (untimed) for the connector's background saves, so runs do not overlap."""
    connector = _connector(llm)
    if connector is not None:
        connector.wait_for_saves(30.0)


def _connector(llm):  # type: ignore[no-untyped-def]
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

    return get_kv_transfer_group() if has_kv_transfer_group() else None


if __name__ == "__main__":
    sys.exit(main())
