"""Dynamo's standalone KV indexer, as the peer of `kvtier-bench router-service`.

What was found in `ai-dynamo-runtime==1.6.0` (PyPI; pure CPU, needs only
pydantic + uvloop): `python -m dynamo.indexer` is `dynamo/indexer/main.py`,
a thin shell around `dynamo.llm.run_kv_indexer(argv)`, which runs the Rust
service `dynamo_kv_router::services::indexer` (an Axum HTTP server over a
`KvIndexer` / `ThreadPoolIndexer` radix tree) inside the Python process.

CLI (`--help`):
  --port P            HTTP port (default 8090; binds 0.0.0.0)
  --block-size B      block size of the workers given with --workers
  --threads N         indexer threads (default 4; 1 = single-threaded KvIndexer,
                      >1 = ThreadPoolIndexer)
  --workers "ID[:DP]=tcp://HOST:PORT,..."   initial workers: one ZMQ SUB
                      listener each, on vLLM's ZmqEventPublisher endpoint
  --model-name NAME   model of those workers (default "default")
  --routing-group G   (default "default")
  --peers, --access-log, ...  (P2P recovery, logging; unused here)

HTTP (JSON): POST /register {instance_id (u64), endpoint (tcp://...),
model_name, block_size, dp_rank?, replay_endpoint?, ...} adds a worker at run
time (the same as --workers); POST /unregister; GET /workers; GET /health;
POST /query {token_ids: [u32], model_name, routing_group?, lora_name?,
cache_salt?}: the indexer hashes the full blocks itself
(`compute_block_hash_for_seq`, XXH3-64 seed 1337 of each block's LE u32
tokens, no chaining: Dynamo's `LocalBlockHash`, equal to kvtier's
`local_block_hash`); POST /query_by_hash {block_hashes: [i64], model_name}:
the same per-block local hashes, as signed 64-bit integers.
Answer: {"scores": {"<instance_id>": {"<dp_rank>": matched TOKENS}},
"frequencies": [...], "instances": {"<id>": {"longest_matched", "gpu", "cpu",
"disk", "dp": {...}}}}: per worker, the length (in tokens, i.e. blocks x
block size) of the leading run of the query's blocks in its GPU pool; workers
with no match are absent. No msgpack request codec in this version (JSON only).

Events: the listener decodes vLLM's KVEventBatch (msgpack), recomputes
LocalBlockHash from `token_ids` and uses vLLM's `block_hashes` /
`parent_block_hash` only to chain parent to child, as kvtier's agent does.

Usage: `dynamo_indexer_peer.py --check` prints the versions and exits 0 when
dynamo, zmq and msgspec import; otherwise every argument is passed to
`python -m dynamo.indexer` unchanged (this process becomes the indexer).
"""

import sys


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        import importlib.metadata as md

        import msgspec  # noqa: F401
        import zmq  # noqa: F401
        from dynamo.llm import run_kv_indexer  # noqa: F401

        print(
            "ai-dynamo-runtime="
            + md.version("ai-dynamo-runtime")
            + " pyzmq="
            + md.version("pyzmq")
            + " msgspec="
            + md.version("msgspec")
        )
        return 0
    from dynamo.indexer.main import main as indexer_main

    return indexer_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
