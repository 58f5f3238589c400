"""Two real vLLM engines (CPU backend, separate processes), each with its own
kvtier-agent, sharing one kvtier-server. Engine B loads the prefix engine A
computed and produces exactly the greedy tokens of a no-connector baseline; a
negative control (the same hashes stored with other bytes) changes the tokens,
which proves the loaded KV is really used."""

from __future__ import annotations

import json
import pathlib
import random
import urllib.request

import engine_runner
import procs

BS = 32


def run_engine(
    model: pathlib.Path,
    prompts_file: pathlib.Path,
    agent: str = "",
    namespace: str = "e2e",
    max_tokens: int = 8,
) -> dict:  # type: ignore[type-arg]
    args = ["--max-tokens", str(max_tokens), "--block-size", str(BS), "--namespace", namespace]
    if agent:
        args += ["--agent", agent]
    return engine_runner.run(model, prompts_file, args)


def metric(url: str, name: str, *labels: str) -> float:
    """Sum of a Prometheus counter's series that carry every one of ``labels``."""
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if (
            line.startswith(name)
            and line[len(name) : len(name) + 1] in (" ", "{")
            and all(label in line for label in labels)
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def poison(agent: procs.Process, model: pathlib.Path, namespace: str, prompt: list[int]) -> int:
    """Stores the prompt's block hashes with random KV (the layout of the real engine)."""
    import torch
    from tiny_model import HEADS, HIDDEN, LAYERS

    from kvtier_vllm.agent import AgentClient, Hashing, OffloadBlock
    from kvtier_vllm.hashing import BlockHasher, effective_seed
    from kvtier_vllm.layout import describe
    from kvtier_vllm.staging import StagingPool

    head = HIDDEN // HEADS
    hashes = BlockHasher(BS, effective_seed(1337, "")).sequence_hashes(prompt)
    gen = torch.Generator().manual_seed(99)
    kv = {
        f"layer{i}": torch.randn(len(hashes), HEADS, BS, 2 * head, generator=gen)
        for i in range(LAYERS)
    }
    layout = describe(kv, num_blocks=len(hashes), block_tokens=BS, kv_heads=HEADS, head_size=head)
    staging = StagingPool(layout, len(hashes))
    client = AgentClient("unix://" + agent.field("uds"))
    try:
        staging.gather(range(len(hashes)), range(len(hashes)))
        resp = client.attach_shared_memory(
            namespace,
            Hashing(BS, 1337, "", layout.block_bytes, layout.descriptor, str(model)),
            len(hashes),
            LAYERS,
            layout.dtype_name,
            staging.path,
            "poisoner",
            10.0,
        )
        blocks = [OffloadBlock(i, h, hashes[i - 1] if i else None) for i, h in enumerate(hashes)]
        stored, _ = client.offload(resp.pool_id, blocks, 30.0)
        return stored
    finally:
        client.close()
        staging.close()


def test_engine_b_loads_engine_a_prefix_exactly(
    kvtier_server: procs.Process, tiny_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    rng = random.Random(7)
    prompt = [rng.randrange(3, 2000) for _ in range(10 * BS + 7)]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([prompt]))
    grpc = kvtier_server.field("grpc")
    server_metrics = f"http://{kvtier_server.field('metrics')}/metrics"

    baseline = run_engine(tiny_model, prompts)["tokens"]

    with procs.agent(grpc, BS) as agent_a, procs.agent(grpc, BS) as agent_b:
        a = run_engine(tiny_model, prompts, "unix://" + agent_a.field("uds"))
        assert a["tokens"] == baseline, "the connector changed engine A's tokens"
        assert a["connector"]["stored_blocks"] == 10, a["connector"]
        assert a["connector"]["staging_free"] == a["connector"]["staging_slots"]
        gets = ("kvtier_block_hits_total", 'op="get"', 'namespace="e2e"')
        hits_before = metric(server_metrics, *gets)

        b = run_engine(tiny_model, prompts, "unix://" + agent_b.field("uds"))
        assert b["tokens"] == baseline, "engine B's tokens differ from the baseline"
        # Every run of the prompt (first-token probe + generation) loaded 10 blocks.
        assert b["connector"]["loaded_tokens"] == 2 * 10 * BS, b["connector"]
        assert b["connector"]["load_error_blocks"] == 0
        assert b["connector"]["stored_blocks"] == 0, "B recomputed blocks A had stored"
        from kvtier_vllm.agent import AgentClient

        stats_client = AgentClient("unix://" + agent_b.field("uds"))
        try:
            assert stats_client.stats().onboard_loaded == 20
        finally:
            stats_client.close()
        assert metric(server_metrics, *gets) == hits_before + 20

        # Negative control: the same hashes, other bytes, in another namespace.
        with procs.agent(grpc, BS) as agent_p:
            assert poison(agent_p, tiny_model, "e2e-poisoned", prompt) == 10
        with procs.agent(grpc, BS) as agent_c:
            c = run_engine(tiny_model, prompts, "unix://" + agent_c.field("uds"), "e2e-poisoned")
        assert c["connector"]["loaded_tokens"] == 2 * 10 * BS, c["connector"]
        assert c["tokens"] != baseline, (
            "random KV did not change the tokens: is the loaded KV used?"
        )
