#!/usr/bin/env python3
"""Time to first token of long prompts on a real vLLM CPU engine: cold, loaded
from kvtier's host tier, loaded from its disk tier, and the connector's cost on
a miss (lookup + save) against the same prompts with no connector.

Each phase runs its engine in its own process, one after the other, on the
same machine; every figure is the median over the prompts, and the headline
numbers are ratios to the no-connector cold median measured in the same run.

    python bench/ttft.py --prompt-tokens 2048 --prompts 5 [--layers 8 --hidden 512 --heads 8]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))

import engine_runner  # noqa: E402
import procs  # noqa: E402
import tiny_model  # noqa: E402

BS = 32


def engine(
    model: pathlib.Path, prompts: pathlib.Path, agent: str = "", extra: list[str] | None = None
) -> dict:  # type: ignore[type-arg]
    args = ["--probe-only", "--block-size", str(BS), "--namespace", "bench", "--warmup", "8"]
    args += extra or []
    if agent:
        args += ["--agent", agent]
    try:
        return engine_runner.run(model, prompts, args, kv_cache_gib=2, timeout_s=1800)
    except engine_runner.EngineFailed as err:
        return {"error": str(err).strip().splitlines()[-1]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--layers", type=int, default=tiny_model.LAYERS)
    p.add_argument("--hidden", type=int, default=tiny_model.HIDDEN)
    p.add_argument("--heads", type=int, default=tiny_model.HEADS)
    args = p.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="kvtier-ttft-"))
    model = tiny_model.make_tiny_opt(
        work / "model", layers=args.layers, hidden=args.hidden, heads=args.heads
    )
    rng = random.Random(11)
    # One more token than whole blocks: every full block can come from the tier.
    prompts = [
        [rng.randrange(3, 2000) for _ in range(args.prompt_tokens + 1)] for _ in range(args.prompts)
    ]
    twice = work / "twice.json"
    twice.write_text(json.dumps(prompts + prompts))
    kv_bytes = 2 * args.layers * args.hidden * 4 * args.prompt_tokens
    print(
        f"model: OPT, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, float32, "
        f"random weights; prompt {args.prompt_tokens + 1} tokens = "
        f"{kv_bytes / 2**20:.0f} MiB of KV; "
        f"{args.prompts} prompts, medians",
        flush=True,
    )

    n = args.prompts
    results: dict[str, list[float]] = {}
    details: list[str] = []
    base = engine(model, twice)
    if "error" in base:
        raise SystemExit(f"baseline engine failed: {base['error']}")
    results["cold, no connector"] = base["ttft_s"][:n]
    results["cold again, no connector"] = base["ttft_s"][n:]

    def kvtier_phase(label: str, server_args: list[str]) -> None:
        with procs.server(server_args) as srv, procs.agent(srv.field("grpc"), BS) as ag:
            out = engine(model, twice, "unix://" + ag.field("uds"))
            if "error" in out:
                raise SystemExit(f"{label}: engine failed: {out['error']}")
            results[f"miss (lookup + save), {label}"] = out["ttft_s"][:n]
            results[f"hit, loaded from {label}"] = out["ttft_s"][n:]
            c = out["connector"]
            assert c["loaded_tokens"] == n * (args.prompt_tokens // BS) * BS, c
            per_hit = c["load_seconds"] / max(c["loads"], 1) * 1000
            per_save = c["save_copy_seconds"] / (n + 8) * 1000
            details.append(
                f"{label}: load wait {per_hit:.1f} ms per hit, "
                f"staging copy {per_save:.1f} ms per saved prompt"
            )

    kvtier_phase("host tier", ["--host-capacity", "4GiB"])
    # A host tier smaller than one block: every block lives on disk (RocksDB).
    kvtier_phase("disk tier", ["--host-capacity", "1KiB", "--no-promote"])
    native = engine(model, twice, extra=["--native-offload-gib", "1"])
    cold = statistics.median(results["cold, no connector"])
    print("\n| phase | TTFT median (ms) | ratio to cold |\n|---|---:|---:|")
    for label, xs in results.items():
        med = statistics.median(xs)
        print(f"| {label} | {med * 1000:.1f} | {med / cold:.2f}x |")
    print("\nconnector timings (in-process):", *details, sep="\n  ")
    if "error" in native:
        print(
            f"\nvLLM built-in CPU offloading (kv_offloading_size): did not run: {native['error']}"
        )
    else:
        nat = statistics.median(native["ttft_s"][n:])
        print(f"\nvLLM built-in CPU offloading hit: {nat * 1000:.1f} ms ({nat / cold:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
