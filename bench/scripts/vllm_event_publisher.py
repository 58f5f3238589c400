"""vLLM-format KV-event publisher for `kvtier-bench router-service`.

Publishes a pre-computed event plan (written by the Rust benchmark) on one ZMQ
socket per simulated vLLM worker, exactly as vLLM's `ZmqEventPublisher` does
(`vllm/distributed/kv_events.py`):

- a PUB-side socket bound on `tcp://127.0.0.1:PORT` (XPUB here, so that the
  publisher can wait for its subscribers; on the wire it is a PUB);
- multipart messages `[topic, seq (8-byte big-endian, from 0), payload]`;
- payload: a msgspec-encoded `KVEventBatch`, `[ts, [events], data_parallel_rank]`
  (vLLM's `array_like=True` layout), each event a tagged array
  `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
  lora_id, medium]` or `["BlockRemoved", block_hashes, medium]`
  (`--layout map` sends the newer map layout with a `"type"` key instead).

One PUB socket serves both subscribers of a worker: the worker's
`kvtier-agent --vllm-events` and Dynamo's standalone indexer
(`python -m dynamo.indexer --workers ID=tcp://...`), so both indexes see the
identical byte stream.

Plan file (JSON): `{"block_size": B, "workers": [{"port": P, "batches":
[[event, ...], ...]}, ...]}` with events `{"t": "s", "h": [engine hashes],
"p": parent engine hash or null, "k": [token ids]}` (stored) or
`{"t": "r", "h": [engine hashes]}` (removed). Batches of all workers are sent
round-robin (batch 0 of every worker, then batch 1, ...).

Protocol with the caller (stdout, one line each):
- `publisher bound ports=P0,P1,...` once the sockets are bound;
- `publisher published batches=N events=E blocks=K secs=S` once every worker's
  socket has `--subscribers` subscriptions and the plan is sent;
then the sockets stay open (late resubscriptions are served nothing new) until
stdin reaches EOF.

Needs `pyzmq` and `msgspec` (the same encoder vLLM uses).
"""

import argparse
import json
import sys
import threading
import time
from typing import Any, Optional, Union

import msgspec
import zmq


# vLLM's classes (`vllm/distributed/kv_events.py`), array layout.
class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: Optional[int] = None


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: Optional[int]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: Optional[str]


# Newer vLLM: map batches, "type"-tagged map events.
ExternalBlockHash = Union[bytes, int]


class MapEventBatch(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: Optional[int] = None


class MapKVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class MapBlockStored(MapKVCacheEvent, tag="BlockStored"):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: Optional[ExternalBlockHash]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]
    lora_name: Optional[str]


class MapBlockRemoved(MapKVCacheEvent, tag="BlockRemoved"):
    block_hashes: list[ExternalBlockHash]
    medium: Optional[str]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--subscribers", type=int, default=2,
                    help="subscriptions to wait for on every socket")
    ap.add_argument("--layout", choices=["array", "map"], default="array")
    ap.add_argument("--wait-s", type=float, default=120.0,
                    help="longest wait for the subscribers")
    args = ap.parse_args()

    with open(args.plan, "rb") as f:
        plan = json.load(f)
    bs = int(plan["block_size"])
    workers = plan["workers"]

    ctx = zmq.Context()
    socks = []
    for w in workers:
        s = ctx.socket(zmq.XPUB)
        s.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only the first
        s.setsockopt(zmq.SNDHWM, 0)  # never drop: both indexes must see every batch
        s.setsockopt(zmq.LINGER, 1000)
        s.bind(f"tcp://127.0.0.1:{int(w['port'])}")
        socks.append(s)
    print("publisher bound ports=" + ",".join(str(w["port"]) for w in workers), flush=True)

    # Wait until every socket has its subscribers (kvtier-agent + Dynamo).
    seen = [0] * len(socks)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    deadline = time.time() + args.wait_s
    while min(seen) < args.subscribers:
        if time.time() > deadline:
            print(f"publisher: subscribers seen {seen}, wanted {args.subscribers} each",
                  file=sys.stderr, flush=True)
            return 1
        for s, _ in poller.poll(200):
            msg = s.recv()
            if msg[:1] == b"\x01":
                seen[socks.index(s)] += 1

    enc = msgspec.msgpack.Encoder()
    started = time.time()
    n_batches = n_events = n_blocks = 0
    depth = max((len(w["batches"]) for w in workers), default=0)
    seqs = [0] * len(workers)
    for i in range(depth):
        for wi, w in enumerate(workers):
            if i >= len(w["batches"]):
                continue
            events = []
            for ev in w["batches"][i]:
                if ev["t"] == "s":
                    if args.layout == "array":
                        events.append(BlockStored(ev["h"], ev["p"], ev["k"], bs, None, "GPU"))
                    else:
                        events.append(MapBlockStored(ev["h"], ev["p"], ev["k"], bs, None, "GPU", None))
                    n_blocks += len(ev["h"])
                else:
                    if args.layout == "array":
                        events.append(BlockRemoved(ev["h"], "GPU"))
                    else:
                        events.append(MapBlockRemoved(ev["h"], "GPU"))
                n_events += 1
            batch = (EventBatch if args.layout == "array" else MapEventBatch)(time.time(), events, 0)
            socks[wi].send_multipart((b"", seqs[wi].to_bytes(8, "big"), enc.encode(batch)))
            seqs[wi] += 1
            n_batches += 1
    print(f"publisher published batches={n_batches} events={n_events} blocks={n_blocks} "
          f"secs={time.time() - started:.3f}", flush=True)

    # Serve (drain subscription messages) until the caller closes stdin.
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        for s, _ in poller.poll(200):
            s.recv()
    for s in socks:
        s.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
