"""vLLM's real scheduler + KvtierConnector against the real kvtier-server and
kvtier-agent binaries: hit, miss, partial prefix, agent down or slow, a load
that fails after it was promised, preemption, aborts, refused layouts."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator

import procs
import pytest

BS = 32


@pytest.fixture()
def engines(kvtier_server: procs.Process, tiny_model, vllm_installed) -> Iterator:  # type: ignore[no-untyped-def]
    """A factory of engines, each with its own agent, on one cache server."""
    from sched_harness import Engine

    made: list[tuple[Engine, procs.Process]] = []

    def make(**kw):  # type: ignore[no-untyped-def]
        agent = procs.start_agent(kvtier_server.field("grpc"), BS)
        eng = Engine(model=tiny_model, agent="unix://" + agent.field("uds"), **kw)
        made.append((eng, agent))
        return eng, agent

    yield make
    for eng, agent in made:
        eng.close()
        agent.stop()


def prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 2000) for _ in range(n)]


def agent_stats(agent: procs.Process):  # type: ignore[no-untyped-def]
    from kvtier_vllm.agent import AgentClient

    client = AgentClient("unix://" + agent.field("uds"))
    try:
        return client.stats()
    finally:
        client.close()


def computed_by_an_engine(engines, tokens: list[int]):  # type: ignore[no-untyped-def]
    """An engine (and its agent) that computed ``tokens``: the tier holds their blocks."""
    a, agent = engines()
    a.add("a", tokens)
    a.run()
    return a, agent


def test_hit_miss_and_partial_prefix(engines) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    shared = prompt(rng, 8 * BS + 5)
    a, _agent_a = computed_by_an_engine(engines, shared)
    assert a.worker.totals["saved_blocks"] >= 8
    assert a.worker.totals["stored_blocks"] >= 8

    b, agent_b = engines()
    # Hit: the whole prompt's full blocks come from kvtier.
    b.add("b-hit", shared)
    out = b.schedule()
    assert out.scheduled_new_reqs[0].num_computed_tokens == 8 * BS
    b.execute(out)
    assert b.prompt_blocks_ok("b-hit", 8), "loaded KV differs from what engine A computed"
    assert agent_stats(agent_b).onboard_loaded == 8
    assert b.worker.totals["loaded_tokens"] == 8 * BS
    b.run()

    # Miss: a prompt nobody computed.
    b.add("b-miss", prompt(rng, 4 * BS + 1))
    out = b.schedule()
    assert out.scheduled_new_reqs[0].num_computed_tokens == 0
    b.execute(out)
    b.run()

    # Partial prefix: 5 shared blocks, then a different token.
    partial = [*shared[: 5 * BS], 1999, *shared[5 * BS + 1 :]]
    b.scheduler.reset_prefix_cache()
    b.add("b-partial", partial)
    out = b.schedule()
    assert out.scheduled_new_reqs[0].num_computed_tokens == 5 * BS
    b.execute(out)
    assert b.prompt_blocks_ok("b-partial", 5)
    b.run()
    assert b.sched_connector.totals["lookups"] >= 3
    assert not b.last_errors


def test_agent_down_gives_zero_tokens_fast(engines, tiny_model) -> None:  # type: ignore[no-untyped-def]
    from sched_harness import Engine

    rng = random.Random(2)
    shared = prompt(rng, 6 * BS + 1)
    computed_by_an_engine(engines, shared)
    # An engine whose agent address refuses connections.
    dead = Engine(model=tiny_model, agent="127.0.0.1:1", extra={"retry_interval_ms": 60_000})
    try:
        dead.add("d", shared)
        start = time.monotonic()
        out = dead.schedule()
        assert time.monotonic() - start < 1.0
        assert out.scheduled_new_reqs[0].num_computed_tokens == 0
        dead.execute(out)
        dead.run()
        assert dead.finished["d"].get_finished_reason() is not None
        assert dead.sched_connector.totals["lookup_failures"] == 1
        # Backoff: the next request does not even try.
        dead.add("d2", shared)
        dead.run()
        assert dead.sched_connector.totals["lookups"] == 1
    finally:
        dead.close()


def test_slow_agent_is_bounded_by_lookup_timeout(tiny_model, vllm_installed) -> None:  # type: ignore[no-untyped-def]
    from sched_harness import Engine

    # Accepts TCP connections and never answers (a hung agent).
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sink.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sink.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    addr = f"127.0.0.1:{sink.getsockname()[1]}"
    eng = Engine(
        model=tiny_model, agent=addr, extra={"lookup_timeout_ms": 300, "attach_timeout_ms": 300}
    )
    try:
        eng.add("s", prompt(random.Random(3), 4 * BS + 1))
        start = time.monotonic()
        out = eng.schedule()
        took = time.monotonic() - start
        assert out.scheduled_new_reqs[0].num_computed_tokens == 0
        assert took < 1.5, f"lookup took {took:.2f} s with a 0.3 s deadline"
        eng.execute(out)
        eng.run()
    finally:
        eng.close()
        stop.set()
        for c in held:
            c.close()
        sink.close()


def test_load_failure_after_promise_is_recomputed(engines) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(4)
    shared = prompt(rng, 6 * BS + 3)
    computed_by_an_engine(engines, shared)
    b, agent_b = engines()
    b.add("b", shared, max_tokens=3)
    out = b.schedule()
    assert out.scheduled_new_reqs[0].num_computed_tokens == 6 * BS  # promised
    agent_b.kill()  # the agent dies between the promise and the load
    b.execute(out)
    assert len(b.last_errors) == 6, "every promised block is reported as failed"
    assert b.worker.totals["load_error_blocks"] == 6
    b.run()
    from vllm.v1.request import RequestStatus

    req = b.finished["b"]
    assert req.status == RequestStatus.FINISHED_LENGTH_CAPPED, req.status
    assert len(req.output_token_ids) == 3


def test_preemption_and_abort_leak_no_staging_slot(engines) -> None:  # type: ignore[no-untyped-def]
    from vllm.v1.request import RequestStatus

    rng = random.Random(5)
    # 16 blocks in all: two requests growing to 8 blocks each must preempt.
    eng, _ = engines(num_blocks=16, max_batched_tokens=512)
    eng.add("p1", prompt(rng, 5 * BS), max_tokens=3 * BS)
    eng.add("p2", prompt(rng, 5 * BS), max_tokens=3 * BS)
    eng.add("gone", prompt(rng, 2 * BS), max_tokens=50)
    eng.step()
    eng.step()
    eng.scheduler.finish_requests("gone", RequestStatus.FINISHED_ABORTED)
    eng.run(max_steps=2000)
    assert eng.preempted, "the test needs a preemption"
    assert {"p1", "p2"} <= set(eng.finished)
    assert eng.worker.staging_free == eng.worker.staging_slots
    assert eng.sched_connector.open_requests == 0, "request state left after finish/abort"
    assert not eng.last_errors


def test_mismatched_layout_is_refused_loudly(engines, tiny_model) -> None:  # type: ignore[no-untyped-def]
    from sched_harness import Engine

    _, agent_a = computed_by_an_engine(engines, prompt(random.Random(6), 2 * BS + 1))
    # Same namespace, other head size: the cache server refuses the handshake.
    agent_addr = "unix://" + agent_a.field("uds")
    before = set(os.listdir("/dev/shm/kvtier"))
    with pytest.raises(RuntimeError, match="refused this engine's KV layout"):
        Engine(model=tiny_model, agent=agent_addr, head_size=32)
    assert set(os.listdir("/dev/shm/kvtier")) <= before, "a refused engine left its staging file"


def test_block_size_mismatch_is_refused(kvtier_server, tiny_model, vllm_installed) -> None:  # type: ignore[no-untyped-def]
    from sched_harness import Engine

    with procs.agent(kvtier_server.field("grpc"), 16) as agent:
        with pytest.raises(RuntimeError, match="block_tokens"):
            Engine(model=tiny_model, agent="unix://" + agent.field("uds"))


def test_cache_server_down_gives_zero_tokens(engines, kvtier_server) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(8)
    shared = prompt(rng, 4 * BS + 1)
    computed_by_an_engine(engines, shared)
    b, _agent_b = engines()
    kvtier_server.kill()  # the tier is gone; the agent is up
    b.add("b", shared)
    start = time.monotonic()
    out = b.schedule()
    assert time.monotonic() - start < 1.0
    assert out.scheduled_new_reqs[0].num_computed_tokens == 0
    b.execute(out)
    b.run()
    assert "b" in b.finished and not b.last_errors
    # Saves to a dead tier fail in the background, counted, never raised.
    assert b.worker.totals["save_failures"] + b.worker.totals["save_skipped_blocks"] >= 1
