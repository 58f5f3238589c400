#!/usr/bin/env python3
"""Dynamo's RadixTree (ai-dynamo-runtime 1.6.0, dynamo._core) on the shape of
`kvtier-bench index`: a root chain every worker holds, sticky sessions that
extend it to depth min..max (one in four forks from another session), and
prefix queries of --query-blocks blocks with hits at every depth.

Dynamo keys its tree by *local* block hashes (find_matches takes them) and
chains stored events by sequence hashes (`block_hash`, `parent_hash`), so each
block gets both. Every session's chain is stored on its worker from the root,
in events of 16 blocks, as an engine sends them.

Latency: time.perf_counter_ns() around each find_matches(query) call, minus
the median of the same timing around a trivial call (find_matches([])), which
is the Python -> Rust call overhead. The conversion of the 2,050-int list into
Rust stays in the net figure (Dynamo's Python API cannot avoid it).

Creates its venv in ~/.cache/kvtier-dynamo-venv on first use and re-executes
itself there. Last line: `RESULT p50_ns=... p99_ns=... entries=...`.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

VENV = os.path.expanduser("~/.cache/kvtier-dynamo-venv")
PACKAGE = "ai-dynamo-runtime==1.6.0"


def ensure_venv():
    python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    check = subprocess.run([python, "-c", "import dynamo._core"], capture_output=True)
    if check.returncode != 0:
        subprocess.check_call([python, "-m", "pip", "install", "-q", PACKAGE])
    os.execv(python, [python, os.path.abspath(__file__)] + sys.argv[1:])


def percentile(sorted_values, q):
    return sorted_values[int((len(sorted_values) - 1) * q)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--root-blocks", type=int, default=64)
    parser.add_argument("--min-depth", type=int, default=256)
    parser.add_argument("--max-depth", type=int, default=2600)
    parser.add_argument("--query-blocks", type=int, default=2050)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--event-blocks", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    ensure_venv()
    from dynamo._core import RadixTree

    rng = random.Random(args.seed)

    def block():
        # (sequence hash, local hash), both below 2**63.
        return (rng.getrandbits(63), rng.getrandbits(63))

    root = [block() for _ in range(args.root_blocks)]
    sessions = []
    entries = args.workers * len(root)
    while entries < args.entries:
        depth = rng.randint(args.min_depth, args.max_depth)
        worker = rng.randrange(args.workers)
        if sessions and rng.randrange(4) == 0:
            source = sessions[rng.randrange(len(sessions))][1]
            chain = source[: len(root) + rng.randrange(len(source) - len(root))]
        else:
            chain = list(root)
        shared = len(chain)
        while len(chain) < max(depth, shared + 1):
            chain.append(block())
        entries += len(chain) - len(root)
        sessions.append((worker, chain))

    tree = RadixTree()
    events = []
    event_id = 0
    for worker, chain in sessions:
        parent = None
        for start in range(0, len(chain), args.event_blocks):
            chunk = chain[start : start + args.event_blocks]
            event_id += 1
            event = {
                "event_id": event_id,
                "data": {
                    "stored": {
                        "parent_hash": parent,
                        "blocks": [{"block_hash": s, "tokens_hash": l} for s, l in chunk],
                    }
                },
            }
            events.append((worker, json.dumps(event).encode()))
            parent = chunk[-1][0]
    started = time.perf_counter()
    applied_blocks = 0
    for worker, payload in events:
        tree.apply_event(worker, payload)
    apply_s = time.perf_counter() - started
    applied_blocks = sum(len(chain) for _, chain in sessions)

    queries = []
    for _ in range(min(args.queries, 1024)):
        _, chain = sessions[rng.randrange(len(sessions))]
        hits = min(rng.randint(0, args.query_blocks), len(chain))
        query = [l for _, l in chain[:hits]]
        while len(query) < args.query_blocks:
            query.append(rng.getrandbits(63))
        queries.append(query)

    # Sanity: the session's worker matches its hits.
    worker, chain = sessions[0]
    depth = min(len(chain), args.query_blocks)
    scores = tree.find_matches([l for _, l in chain[:depth]]).scores
    assert scores.get((worker, 0)) == depth, (scores.get((worker, 0)), depth)

    def timed(call, count):
        samples = []
        for i in range(count):
            q = queries[i % len(queries)]
            t0 = time.perf_counter_ns()
            call(q)
            samples.append(time.perf_counter_ns() - t0)
        samples.sort()
        return samples

    empty = []
    timed(lambda q: tree.find_matches(empty), 200)
    overhead = percentile(timed(lambda q: tree.find_matches(empty), 5000), 0.5)
    timed(lambda q: tree.find_matches(q), 100)
    raw = timed(lambda q: tree.find_matches(q), args.queries)
    p50 = percentile(raw, 0.5) - overhead
    p99 = percentile(raw, 0.99) - overhead
    print(
        f"dynamo RadixTree: {args.workers} workers, {len(sessions)} sessions, {entries} (block, worker) entries; "
        f"apply {applied_blocks / apply_s / 1e6:.3f} M blocks/s (JSON events of {args.event_blocks} blocks, one thread)"
    )
    print(
        f"dynamo find_matches ({args.query_blocks} blocks, {args.queries} queries): raw p50 {percentile(raw, 0.5) / 1000:.2f} µs, "
        f"p99 {percentile(raw, 0.99) / 1000:.2f} µs; trivial-call overhead {overhead / 1000:.2f} µs; "
        f"net p50 {p50 / 1000:.2f} µs, p99 {p99 / 1000:.2f} µs"
    )
    print(f"RESULT p50_ns={p50} p99_ns={p99} entries={entries}")


if __name__ == "__main__":
    main()
