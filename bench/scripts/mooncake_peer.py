#!/usr/bin/env python3
"""Mooncake Store over TCP on loopback: put/get of large blocks, the peer of
`kvtier-bench throughput --mooncake`.

Set-up (PyPI `mooncake-transfer-engine-non-cuda`, installed into a venv by
bench/scripts/setup_mooncake.sh):
- `mooncake_master` (the package's binary) with its HTTP metadata server, on
  free loopback ports, eviction at its defaults, a GET lease of 120 s (a
  batch GET must finish within its lease; removal after a round is forced);
- one storage process (this script, `--role holder`) that mounts a global
  segment big enough for one round of blocks plus slack: the memory the
  blocks are written into, as kvtier-server's host tier is;
- `--warmup` untimed rounds first (default 1), so that the segment's pages
  are faulted in before timing, as kvtier-server's arena is at start;
- `--clients` client processes (this script, `--role client`), each
  contributing no segment, each with one buffer of its share of the blocks
  registered with the transfer engine once (`register_buffer`), filled
  before timing. Mooncake at its best from Python: one `batch_put_from` of
  every key of the client's share straight from the registered buffer, then
  one `batch_get_into` into it (zero-copy, no per-block Python call inside
  the timed region). Transfers use the TCP transport (`protocol: tcp`).

Each round: all clients start together (a barrier), each times its batch
with CLOCK_MONOTONIC; the round's time is the last end minus the first
start. After the GET the values are checked and the keys removed (untimed).
Prints `ROUND put_s=... get_s=...` per round and `RESULT ok` last; the
bench takes the medians and the ratios to its own TCP baseline.
"""

import argparse
import ctypes
import mmap
import multiprocessing as mp
import os
import queue
import signal
import socket
import subprocess
import sys
import time


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_config(args, segment_bytes, buffer_bytes):
    return {
        "local_hostname": "127.0.0.1",
        "metadata_server": f"http://127.0.0.1:{args.metadata_port}/metadata",
        "global_segment_size": segment_bytes,
        "local_buffer_size": buffer_bytes,
        "protocol": "tcp",
        "rdma_devices": "",
        "master_server_addr": f"127.0.0.1:{args.master_port}",
    }


def connect(args, segment_bytes, buffer_bytes):
    from mooncake.store import MooncakeDistributedStore

    store = MooncakeDistributedStore()
    ret = store.setup(store_config(args, segment_bytes, buffer_bytes))
    if ret != 0:
        raise RuntimeError(f"MooncakeDistributedStore.setup returned {ret}")
    return store


def holder(args):
    # A quarter more than one round: the master evicts above 95% of a segment.
    segment = args.blocks * args.block_size * 5 // 4 + args.segment_slack
    store = connect(args, segment, 16 << 20)
    print("HOLDER ready", flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    store.close()


def client(args, index, start, done, results):
    per = -(-args.blocks // args.clients)
    first = index * per
    count = max(0, min(per, args.blocks - first))
    size = args.block_size
    buf = mmap.mmap(-1, max(count, 1) * size)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(size))
    for i in range(count):
        buf[i * size : (i + 1) * size] = pattern
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    store = connect(args, 0, 16 << 20)
    ret = store.register_buffer(address, max(count, 1) * size)
    if ret != 0:
        raise RuntimeError(f"register_buffer returned {ret}")
    ptrs = [address + i * size for i in range(count)]
    sizes = [size] * count
    for round_ in range(args.warmup + args.rounds):
        keys = [f"r{round_}:b{first + i}" for i in range(count)]
        start.wait()
        t0 = now()
        codes = store.batch_put_from(keys, ptrs, sizes) if count else []
        t1 = now()
        bad = [c for c in codes if c != 0]
        if bad:
            raise RuntimeError(f"batch_put_from: {len(bad)} failures, first {bad[0]}")
        buf[: count * size] = b"\0" * (count * size)
        start.wait()
        t2 = now()
        codes = store.batch_get_into(keys, ptrs, sizes) if count else []
        t3 = now()
        bad = [c for c in codes if c != size]
        if bad:
            raise RuntimeError(
                f"batch_get_into: {len(bad)} short reads, first {bad[0]}"
            )
        for i in range(count):
            if buf[i * size : (i + 1) * size] != pattern:
                raise RuntimeError(f"block {keys[i]} read back wrong")
        if round_ >= args.warmup:
            results.put((round_, index, t0, t1, t2, t3))
        # Untimed; force: the GETs' leases still run.
        codes = store.batch_remove(keys, True) if count else []
        bad = [c for c in codes if c != 0]
        if bad:
            raise RuntimeError(f"batch_remove: {len(bad)} failures, first {bad[0]}")
        done.wait()
    store.unregister_buffer(address)
    store.close()


def master_binary():
    import mooncake

    path = os.path.join(os.path.dirname(mooncake.__file__), "mooncake_master")
    if not os.access(path, os.X_OK):
        os.chmod(path, 0o755)
    return path


def wait_port(port, deadline_s, proc):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"mooncake_master exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=2 << 20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed rounds first: the storage segment's pages are faulted in, as kvtier's arena is at start",
    )
    parser.add_argument("--segment-slack", type=int, default=64 << 20)
    parser.add_argument("--role", choices=["bench", "holder"], default="bench")
    parser.add_argument("--master-port", type=int, default=0)
    parser.add_argument("--metadata-port", type=int, default=0)
    args = parser.parse_args()
    # glog: warnings and errors only (the store logs every set-up step).
    os.environ.setdefault("GLOG_minloglevel", "1")
    if args.role == "holder":
        holder(args)
        return

    args.master_port = free_port()
    args.metadata_port = free_port()
    log = subprocess.DEVNULL
    master = subprocess.Popen(
        [
            master_binary(),
            f"--rpc_port={args.master_port}",
            "--rpc_address=127.0.0.1",
            "--enable_http_metadata_server=true",
            "--http_metadata_server_host=127.0.0.1",
            f"--http_metadata_server_port={args.metadata_port}",
            f"--metrics_port={free_port()}",
            # A GET leases its object for this long (default 10 s), and a
            # batch GET whose lease runs out before its transfers end fails
            # (LEASE_EXPIRED): a loaded 2-core VM needs longer than 10 s.
            "--default_kv_lease_ttl=120000",
        ],
        stdout=log,
        stderr=log,
    )
    holder_proc = None
    procs = []
    try:
        wait_port(args.master_port, 30, master)
        wait_port(args.metadata_port, 30, master)
        holder_proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--role", "holder"]
            + [f"--blocks={args.blocks}", f"--block-size={args.block_size}"]
            + [f"--segment-slack={args.segment_slack}"]
            + [
                f"--master-port={args.master_port}",
                f"--metadata-port={args.metadata_port}",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        line = holder_proc.stdout.readline()
        if "HOLDER ready" not in line:
            raise RuntimeError("the storage process did not start (see its stderr)")
        ctx = mp.get_context("spawn")
        start = ctx.Barrier(args.clients)
        done = ctx.Barrier(args.clients)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=client, args=(args, i, start, done, results))
            for i in range(args.clients)
        ]
        for p in procs:
            p.start()
        rows = {}
        got = 0
        deadline = time.time() + 600
        while got < args.rounds * args.clients:
            try:
                round_, _index, t0, t1, t2, t3 = results.get(timeout=1)
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or time.time() > deadline:
                    raise RuntimeError(
                        f"a client failed (exit codes {failed}) or timed out"
                    )
                continue
            rows.setdefault(round_, []).append((t0, t1, t2, t3))
            got += 1
        for p in procs:
            p.join(timeout=60)
            if p.exitcode != 0:
                raise RuntimeError(f"a client exited with {p.exitcode}")
        procs = []
        for round_ in sorted(rows):
            r = rows[round_]
            put_s = max(x[1] for x in r) - min(x[0] for x in r)
            get_s = max(x[3] for x in r) - min(x[2] for x in r)
            print(f"ROUND put_s={put_s:.6f} get_s={get_s:.6f}", flush=True)
        print("RESULT ok", flush=True)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for proc in (holder_proc, master):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
