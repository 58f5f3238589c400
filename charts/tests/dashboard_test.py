#!/usr/bin/env python3
"""Every Grafana panel query, evaluated by a real Prometheus scraping a real kvtier fleet.

1. Starts two `kvtier-server`s as one cluster (shards "shard-a" and "shard-b", membership in a
   real etcd on loopback; ports 0, temp data dirs, tiny host and disk tiers so that a short
   workload demotes, promotes and evicts), a worker (`kvtier-agent` + `kvtier-sim-worker`,
   a simulated engine with a small pool, the tiny byte-level tokenizer of tiny_tokenizer.py),
   `kvtier-router` in front of it, and Debian's `prometheus` (free loopback port, temp storage,
   1 s scrape interval) scraping both servers, the agent, the worker and the router. Each
   namespace's blocks live on one shard (agent-a on shard-a, agent-b on shard-b), as if placement
   had put them there, so that every panel is checked over several servers.
2. Drives a deterministic workload over gRPC from Python (stubs generated from
   proto/proto/kvtier/v1/cache.proto: this also proves the wire contract from Python): handshakes
   (one mismatch), Puts, Gets, Lookups, a WatchEvents subscriber, and one request refused for
   overload. A warm-up phase creates every counter series first; the measured phase follows.
3. Evaluates every target `expr` of every dashboard in charts/kvtier/dashboards/ through the HTTP
   API (template variables and $__rate_interval substituted, every option of custom variables)
   and fails when a query errors, returns no series, returns NaN, or names a metric that
   kvtier-server does not export (names are read from cache-server/src/metrics.rs).
4. Checks that the hit-rate panels (overall, by tier, namespace, priority and shard) equal the hit
   rate the workload computed on the client side: each panel's own expression with
   rate(X[$__rate_interval]) turned into the exact counter delta (X - X offset W), evaluated at a
   time t_end by which every server was scraped after the measured phase, where W reaches back to
   a time t_start by which every server was scraped after the warm-up (no counter moves between
   those scrapes and the window's ends, so the delta is exact whatever each target's scrape phase;
   increase() would extrapolate differently per target).
5. Then (the cache server's window closed, so worker onboards do not touch its Get counts) drives
   model calls through the router's HTTP front from urllib: the three APIs, streamed and not, a
   shared prefix (HBM hits), documents that overflow the worker's pool (offloads, onboards from
   the cache's tiers), agent hints, a client that hangs up mid-stream, and, after the measured
   window, a call that waits in the router's admission queue and one refused for a full queue
   (429), then a call to a stopped worker (upstream error). The router's predicted-hit-rate panels
   must equal the ratio of its own counters read from its /metrics before and after the window.

Needs etcd (scripts/setup.sh installs it into ~/.cache/kvtier-etcd; or KVTIER_ETCD_BIN): without it
the test fails under CI=true and reports itself skipped elsewhere.

Usage: dashboard_test.py [--server-bin PATH] [--prometheus-bin PATH] [--keep]
       (or KVTIER_SERVER_BIN; kvtier-agent, kvtier-sim-worker and kvtier-router from
       KVTIER_AGENT_BIN / KVTIER_SIM_WORKER_BIN / KVTIER_ROUTER_BIN or the same places;
       default: $CARGO_TARGET_DIR/release, ~/.cache/kvtier-target/release, target/release)
Exits 0 when every check passed; prints "dashboard: N passed, M failed" last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "charts" / "kvtier" / "dashboards"
PROTO_ROOT = REPO / "proto" / "proto"
# Where each scraped binary declares its metric names (Prometheus job -> metrics.rs).
METRICS_RS = {
    "kvtier-server": REPO / "cache-server" / "src" / "metrics.rs",
    "kvtier-router": REPO / "router" / "src" / "metrics.rs",
    "kvtier-agent": REPO / "worker-agent" / "src" / "metrics.rs",
}

DEADLINE_S = 110  # the whole test, hard bound
BLOCK_BYTES = 4096
HOST_CAPACITY = 16 * BLOCK_BYTES  # 16 blocks
DISK_CAPACITY = 64 * BLOCK_BYTES  # 64 blocks
NAMESPACES = ("agent-a", "agent-b")
# Agents registered by the workload: (namespace, agent id) -> priority class the server reports
# (priority > 0: high, 0: normal, < 0: low); Gets without an agent count as "none".
AGENTS = {("agent-a", "planner"): "high", ("agent-b", "batch-eval"): "low"}
AGENT_PRIORITY = {"high": 4, "normal": 0, "low": -4}
# Counters that legitimately have no series after a short healthy run: their panels must use an
# `or vector(0)` fallback, and only their names are checked against the exporter.
# The cluster: namespace -> the shard (node id) holding its blocks; shard-b's disk tier is smaller
# so that its 60 blocks are evicted from disk too.
SHARD_OF = {"agent-a": "shard-a", "agent-b": "shard-b"}
SHARD_DISK_CAPACITY = {"shard-a": DISK_CAPACITY, "shard-b": 32 * BLOCK_BYTES}
MAY_BE_ABSENT = {"kvtier_checksum_failures_total", "kvtier_events_dropped_total", "kvtier_agent_engine_event_errors_total"}
# The router fleet: the model, the cache-server namespace its worker attaches, bytes per block
# (= the cache workload's, so both fill the server's tiny tiers alike), the worker's pool.
FLEET_MODEL, FLEET_NAMESPACE, FLEET_BLOCK_BYTES, FLEET_POOL_BLOCKS = "sim-model", "fleet", 4096, 48

TOL = 1e-6


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"PASS {what}", flush=True)

    def fail(self, what: str) -> None:
        self.failed.append(what)
        print(f"FAIL {what}", flush=True)

    def check(self, cond: bool, what: str) -> bool:
        (self.ok if cond else self.fail)(what)
        return cond


# ---------------------------------------------------------------------------------------------
# Exported metric names


def exported_metrics(binary: str) -> set[str]:
    """Metric names a binary exports, from the constants in its metrics.rs (histograms also as
    their _bucket/_sum/_count series)."""
    path = METRICS_RS[binary]
    src = path.read_text()
    names = set(re.findall(r'pub const \w+: &str = "(kvtier_[a-z0-9_]+)";', src))
    if not names:
        raise SystemExit(f"no metric names found in {path}")
    histograms = {n for n in names if n.endswith("_seconds") or n.endswith("_bytes_histogram")}
    out = set(names)
    for h in histograms:
        out |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return out


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: every kvtier_* token, and every identifier
    followed by a label matcher `{` (so a non-kvtier selector cannot slip through)."""
    names = set(re.findall(r"\b(kvtier_[a-zA-Z0-9_:]+)", expr))
    names |= set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))
    return names


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Procs:
    """Child processes, stopped (SIGTERM, then SIGKILL) by their own pid on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, **kw)
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"{name} (pid {p.pid}) ignored SIGTERM; killing it", flush=True)
                p.kill()
                p.wait(timeout=5)


def find_etcd() -> str | None:
    """The etcd the Rust cluster tests use (testkit/src/etcd.rs): $KVTIER_ETCD_BIN, the one
    scripts/setup.sh installs (~/.cache/kvtier-etcd/etcd), or etcd on PATH."""
    for c in (os.environ.get("KVTIER_ETCD_BIN"), str(Path.home() / ".cache" / "kvtier-etcd" / "etcd"), shutil.which("etcd")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def start_etcd(procs: Procs, binary: str, tmp: Path) -> str:
    """A single-member etcd on free loopback ports; returns its client HOST:PORT."""
    client, peer = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    log = open(tmp / "etcd.log", "wb")
    p = procs.start("etcd", [binary, "--name", "dash", "--data-dir", str(tmp / "etcd"),
                             "--listen-client-urls", f"http://{client}", "--advertise-client-urls", f"http://{client}",
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"dash={peer}"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            if http_get(f"http://{client}/health", timeout=1)[0] == 200:
                return client
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"etcd not healthy within 20 s; log: {(tmp / 'etcd.log').read_bytes()[-800:].decode(errors='replace')}")
        time.sleep(0.1)


def start_server(procs: Procs, binary: str, tmp: Path, etcd: str, node: str) -> tuple[str, str, subprocess.Popen]:
    """kvtier-server as shard `node` of the cluster whose membership is in etcd."""
    log = open(tmp / f"kvtier-server-{node}.log", "wb")
    p = procs.start(
        f"kvtier-server {node}",
        [
            binary,
            "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--data-dir", str(tmp / f"data-{node}"),
            "--host-capacity", str(HOST_CAPACITY),
            "--disk-capacity", str(SHARD_DISK_CAPACITY[node]),
            "--max-concurrent-requests", "1",
            "--cluster", f"etcd://{etcd}/kvtier-dashboard-test",
            "--node-id", node,
            "--cluster-lease-ttl-s", "5",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    ready: list[str] = []

    def read() -> None:
        for raw in p.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").strip()
            if line.startswith("kvtier-server ready"):
                ready.append(line)
                break
        # keep draining so the server never blocks on a full pipe
        for _ in p.stdout:  # type: ignore[union-attr]
            pass

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    while not ready:
        if p.poll() is not None:
            raise SystemExit(f"kvtier-server {node} exited with {p.returncode}; log: {tmp / f'kvtier-server-{node}.log'}")
        if time.monotonic() > deadline:
            raise SystemExit("kvtier-server printed no ready line within 30 s")
        time.sleep(0.05)
    m = re.match(r"kvtier-server ready grpc=(\S+) metrics=(\S+).* node=(\S+)$", ready[0])
    if not m or m.group(3) != node:
        raise SystemExit(f"unexpected ready line: {ready[0]!r}")
    return m.group(1), m.group(2), p


def start_ready(procs: Procs, name: str, argv: list[str], tmp: Path, timeout: float = 30) -> str:
    """Starts a kvtier binary (stderr to tmp/<name>.log) and returns its `<name> ready ...` line."""
    log = open(tmp / f"{name}.log", "wb")
    p = procs.start(name, argv, stdout=subprocess.PIPE, stderr=log, env={**os.environ, "RUST_LOG": "warn", "KVTIER_LOG": "warn"})
    ready: list[str] = []

    def read() -> None:
        for raw in p.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").strip()
            if not ready and line.startswith(f"{name} ready"):
                ready.append(line)
        # (keeps draining so the child never blocks on a full pipe)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready:
        if p.poll() is not None:
            raise SystemExit(f"{name} exited with {p.returncode}; log: {(tmp / f'{name}.log').read_bytes()[-1500:].decode(errors='replace')}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} printed no ready line within {timeout} s")
        time.sleep(0.05)
    return ready[0]


def field(line: str, key: str) -> str:
    m = re.search(rf"\b{key}=(\S+)", line)
    if not m:
        raise SystemExit(f"no {key}= in ready line {line!r}")
    return m.group(1)


class Fleet:
    """One worker (kvtier-agent + kvtier-sim-worker) and kvtier-router in front of it, all
    attached to the test's kvtier-server, on loopback."""

    def __init__(self, procs: Procs, bins: dict[str, str], tmp: Path, server_grpc: str) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from tiny_tokenizer import write_tiny_tokenizer

        self.procs = procs
        tokenizer = str(write_tiny_tokenizer(tmp / "model"))
        # Pools go beneath the agent's --pool-dir (its default where /dev/shm exists).
        shm = Path("/dev/shm/kvtier") if os.access("/dev/shm", os.W_OK) else tmp
        shm.mkdir(parents=True, exist_ok=True)
        line = start_ready(procs, "kvtier-agent", [
            bins["kvtier-agent"], "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--server", f"http://{server_grpc}", "--worker-id", "w0", "--staging-bytes", "8MiB",
            "--pool-dir", str(shm)], tmp)
        self.agent_grpc, self.agent_metrics = field(line, "grpc"), field(line, "metrics")
        self.pool = shm / f"kvtier-dash-pool-{os.getpid()}"
        line = start_ready(procs, "kvtier-sim-worker", [
            bins["kvtier-sim-worker"], "--listen", "127.0.0.1:0", "--agent", f"http://{self.agent_grpc}",
            "--pool", str(self.pool), "--pool-blocks", str(FLEET_POOL_BLOCKS), "--block-bytes", str(FLEET_BLOCK_BYTES),
            "--namespace", FLEET_NAMESPACE, "--model", FLEET_MODEL, "--tokenizer", tokenizer,
            "--prefill-tokens-per-s", "1000000", "--decode-tokens-per-s", "400"], tmp)
        self.worker_http = field(line, "http")
        if field(line, "agent") != "attached":
            raise SystemExit(f"kvtier-sim-worker did not attach to its agent: {line}")
        self.worker = procs.procs[-1][1]
        line = start_ready(procs, "kvtier-router", [
            bins["kvtier-router"], "--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
            "--cache-server", f"http://{server_grpc}", "--namespace", FLEET_NAMESPACE, "--model", FLEET_MODEL,
            "--block-bytes", str(FLEET_BLOCK_BYTES), "--tokenizer", tokenizer, "--expire-ms", "3000", "--unreachable-ms", "1000",
            # The worker is busy while one call runs, and one call may wait: the workload's calls
            # are sequential (never queued) until queue_and_reject() drives a wait and a 429.
            "--busy-running-calls", "1", "--queue-max-len", "1",
            "--worker", f"w0=http://{self.worker_http}@http://{self.agent_grpc}"], tmp)
        self.router_http = field(line, "http")
        self.router_grpc = field(line, "grpc")

    def list_workers(self) -> list:
        """RouterService.ListWorkers over gRPC (stubs from router.proto), as a custom router asks."""
        import grpc  # type: ignore
        from kvtier.v1 import router_pb2, router_pb2_grpc  # type: ignore

        with grpc.insecure_channel(self.router_grpc) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            return list(stub.ListWorkers(router_pb2.ListWorkersRequest(), timeout=10).workers)

    def find_matches(self, blocks: int = 4) -> int:
        """RouterService.FindMatches for a prefix given as token ids; returns its block count."""
        import grpc  # type: ignore
        from kvtier.v1 import router_pb2, router_pb2_grpc  # type: ignore

        with grpc.insecure_channel(self.router_grpc) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            query = router_pb2.PrefixQuery(model=FLEET_MODEL, token_ids=list(range(16 * blocks)))
            return stub.FindMatches(router_pb2.FindMatchesRequest(prefix=query), timeout=10).query_blocks

    def targets(self) -> dict[str, str]:
        return {"kvtier-agent": self.agent_metrics, "kvtier-sim-worker": self.worker_http, "kvtier-router": self.router_http}

    def cleanup(self) -> None:
        try:
            self.pool.unlink()
        except OSError:
            pass


def start_prometheus(procs: Procs, binary: str, tmp: Path, targets: dict[str, list[str]]) -> str:
    """Prometheus scraping each job's targets (job name: the binary)."""
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        + "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: {json.dumps(addrs)}\n" for job, addrs in targets.items())
    )
    log = open(tmp / "prometheus.log", "wb")
    procs.start(
        "prometheus",
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            # Debian's build looks for its web assets elsewhere; the API does not need them.
            f"--web.console.templates={tmp}",
            f"--web.console.libraries={tmp}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if http_get(base + "/-/ready", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"prometheus not ready within 30 s; log: {tmp / 'prometheus.log'}")
        time.sleep(0.1)
    return base


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str, at: float | None = None) -> tuple[str | None, list]:
        """Returns (error, result list)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        code, body = http_get(f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}")
        try:
            doc = json.loads(body)
        except json.JSONDecodeError:
            return f"HTTP {code}: {body[:200]!r}", []
        if doc.get("status") != "success":
            return f"{doc.get('errorType')}: {doc.get('error')}", []
        data = doc["data"]
        if data["resultType"] == "scalar":
            return None, [{"metric": {}, "value": data["result"]}]
        return None, data["result"]

    def scalar(self, expr: str) -> float | None:
        err, res = self.query(expr)
        if err or not res:
            return None
        return float(res[0]["value"][1])

    def wait(self, expr: str, pred, what: str, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        while True:
            v = self.scalar(expr)
            if v is not None and pred(v):
                return v
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}: {expr} = {v}")
            time.sleep(0.2)

    def scrape_after(self, wall_ms: int, job: str = "kvtier-server") -> int:
        """Once every target of job was scraped after wall_ms: the newest of their scrape
        timestamps (ms), so that at that time each target's latest sample is from after wall_ms."""
        deadline = time.monotonic() + 20
        while True:
            v = self.scalar(f'min(timestamp(up{{job="{job}"}}))')
            if v is not None and round(v * 1000) > wall_ms:
                newest = self.scalar(f'max(timestamp(up{{job="{job}"}}))')
                return round((newest if newest is not None else v) * 1000)
            if time.monotonic() > deadline:
                raise SystemExit(f"no fresh scrape of {job} within 20 s (last {v}, wanted > {wall_ms / 1000:.3f})")
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# gRPC workload


def load_stubs(tmp: Path):
    from grpc_tools import protoc  # type: ignore

    out = tmp / "stubs"
    out.mkdir()
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "kvtier/v1/cache.proto",
        "kvtier/v1/router.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on cache.proto / router.proto")
    sys.path.insert(0, str(out))
    from kvtier.v1 import cache_pb2, cache_pb2_grpc  # type: ignore

    return cache_pb2, cache_pb2_grpc


class Tally:
    """Client-side block-weighted accounting of Get responses."""

    def __init__(self) -> None:
        self.lookups: dict[str, int] = {}
        self.hits: dict[tuple[str, str], int] = {}
        self.prio_lookups: dict[str, int] = {}
        self.prio_hits: dict[str, int] = {}

    def add(self, ns: str, priority: str, tier: str | None) -> None:
        self.lookups[ns] = self.lookups.get(ns, 0) + 1
        self.prio_lookups[priority] = self.prio_lookups.get(priority, 0) + 1
        if tier is not None:
            self.hits[(ns, tier)] = self.hits.get((ns, tier), 0) + 1
            self.prio_hits[priority] = self.prio_hits.get(priority, 0) + 1

    def by_priority(self) -> dict[str, float]:
        return {p: self.prio_hits.get(p, 0) / n for p, n in self.prio_lookups.items()}

    def total_lookups(self) -> int:
        return sum(self.lookups.values())

    def total_hits(self) -> int:
        return sum(self.hits.values())

    def rate(self) -> float:
        return self.total_hits() / self.total_lookups()

    def by_tier(self) -> dict[str, float]:
        tiers: dict[str, int] = {}
        for (_, t), n in self.hits.items():
            tiers[t] = tiers.get(t, 0) + n
        return {t: n / self.total_lookups() for t, n in tiers.items()}

    def by_namespace(self) -> dict[str, float]:
        return {
            ns: sum(n for (h_ns, _), n in self.hits.items() if h_ns == ns) / total
            for ns, total in self.lookups.items()
        }

    def by_instance(self, instance_of: dict[str, str]) -> dict[str, float]:
        """Per shard (Prometheus `instance`: its metrics address), given each namespace's shard."""
        lookups: dict[str, int] = {}
        hits: dict[str, int] = {}
        for ns, n in self.lookups.items():
            lookups[instance_of[ns]] = lookups.get(instance_of[ns], 0) + n
        for (ns, _), n in self.hits.items():
            hits[instance_of[ns]] = hits.get(instance_of[ns], 0) + n
        return {i: hits.get(i, 0) / n for i, n in lookups.items()}


class Workload:
    def __init__(self, grpc_of: dict[str, str], pb, pb_grpc) -> None:
        """grpc_of: each namespace's shard (its gRPC address)."""
        import grpc  # type: ignore

        self.grpc = grpc
        self.pb = pb
        self.stubs = {}
        for ns, addr in grpc_of.items():
            channel = grpc.insecure_channel(addr)
            grpc.channel_ready_future(channel).result(timeout=10)
            self.stubs[ns] = pb_grpc.CacheServiceStub(channel)
        self.sessions: dict[str, str] = {}
        self.tier_names = {pb.TIER_HOST: "host", pb.TIER_DISK: "disk", pb.TIER_GPU: "gpu"}
        self.get_lookups = 0  # every Get block, warm-up included (to know when a scrape saw them)
        self.watch_events = 0

    def config(self, ns: str, block_bytes: int = BLOCK_BYTES):
        return self.pb.HashingConfig(
            block_tokens=16, seed=1337, salt=f"salt-{ns}", block_bytes=block_bytes,
            kv_layout="layers=2,kv=2,heads=4,head_dim=64,dtype=bf16", model="test/model",
        )

    def handshake(self, ns: str) -> None:
        r = self.stubs[ns].Handshake(self.pb.HandshakeRequest(namespace=ns, config=self.config(ns), client_name="dashboard-test"), timeout=10)
        self.sessions[ns] = r.session_id

    def handshake_mismatch(self, ns: str) -> bool:
        try:
            self.stubs[ns].Handshake(self.pb.HandshakeRequest(namespace=ns, config=self.config(ns, BLOCK_BYTES * 2), client_name="dashboard-test"), timeout=10)
        except self.grpc.RpcError as e:
            return e.code() == self.grpc.StatusCode.FAILED_PRECONDITION
        return False

    @staticmethod
    def hash_of(ns: str, i: int) -> int:
        return (NAMESPACES.index(ns) + 1) << 40 | (i + 1)

    def payload(self, h: int) -> bytes:
        return (h.to_bytes(8, "little") * (BLOCK_BYTES // 8))[:BLOCK_BYTES]

    def put_messages(self, ns: str, idx: range, gate: threading.Event | None = None):
        first = True
        prev = None
        for i in idx:
            h = self.hash_of(ns, i)
            block = self.pb.BlockData(hash=h, payload=self.payload(h))
            if prev is not None:
                block.parent_hash = prev
            yield self.pb.PutRequest(session_id=self.sessions[ns] if first else "", block=block)
            if first and gate is not None:
                gate.wait(10)
            first = False
            prev = h

    def put(self, ns: str, idx: range) -> None:
        r = self.stubs[ns].Put(self.put_messages(ns, idx), timeout=20)
        assert r.stored + r.already_present == len(idx), r

    def get(self, ns: str, hashes: list[int], stop_at_first_miss: bool, tally: Tally | None, agent: str = "") -> None:
        req = self.pb.GetRequest(session_id=self.sessions[ns], hashes=hashes, stop_at_first_miss=stop_at_first_miss, agent_id=agent)
        n = 0
        for resp in self.stubs[ns].Get(req, timeout=20):
            assert resp.hash == hashes[n], (resp.hash, hashes[n])
            if resp.found:
                assert resp.payload == self.payload(resp.hash), "payload differs from what was put"
            tier = self.tier_names[resp.tier] if resp.found else None
            if tally is not None:
                tally.add(ns, AGENTS.get((ns, agent), "none"), tier)
            n += 1
        assert n == len(hashes), (n, len(hashes))
        self.get_lookups += n

    def register(self, ns: str, agent: str, priority: int) -> None:
        r = self.stubs[ns].RegisterAgent(self.pb.RegisterAgentRequest(session_id=self.sessions[ns], agent_id=agent, priority=priority, latency_sensitivity=0.5), timeout=10)
        assert r.created, f"agent {agent} not created"

    def lookup_tiers(self, ns: str, hashes: list[int]) -> list[str | None]:
        r = self.stubs[ns].Lookup(self.pb.LookupRequest(session_id=self.sessions[ns], hashes=hashes), timeout=10)
        return [self.tier_names.get(t) for t in r.tiers]

    def watch(self, stop: threading.Event) -> threading.Thread:
        call = self.stubs[NAMESPACES[0]].WatchEvents(self.pb.WatchEventsRequest(namespace=""))

        def run() -> None:
            try:
                for _ in call:
                    self.watch_events += 1
            except self.grpc.RpcError:
                pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True).start()
        return t

    def overload_once(self, ns: str) -> bool:
        """Holds the only request slot with an open Put stream, so that a Lookup is refused with
        RESOURCE_EXHAUSTED after the server's 2 s admission wait."""
        gate = threading.Event()
        fut = self.stubs[ns].Put.future(self.put_messages(ns, range(200, 202), gate), timeout=20)
        time.sleep(0.3)
        refused = False
        try:
            self.stubs[ns].Lookup(self.pb.LookupRequest(session_id=self.sessions[ns], hashes=[self.hash_of(ns, 0)]), timeout=10)
        except self.grpc.RpcError as e:
            refused = e.code() == self.grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        fut.result(timeout=20)
        return refused

    def warm_up(self, checks: Checks) -> None:
        """Creates every series the measured phase touches: for each namespace a Get hit from the
        host tier, a Get hit from the disk tier and a Get miss; Lookups; demotions, promotions,
        capacity evictions, a handshake mismatch and an overload refusal."""
        for ns in NAMESPACES:
            self.handshake(ns)
        checks.check(self.handshake_mismatch(NAMESPACES[0]), "workload: a handshake with a different block_bytes is refused (FAILED_PRECONDITION)")
        # 40 + 40 + 20 blocks through a 16-block host tier into a 64-block disk tier: demotions
        # host -> disk, then capacity evictions from disk.
        self.put(NAMESPACES[0], range(0, 40))
        self.put(NAMESPACES[1], range(0, 40))
        self.put(NAMESPACES[1], range(40, 60))
        # Agents: one high and one low priority agent that read blocks, one normal agent that is
        # ended at once, and a call-ending hint.
        for (ns, agent), cls in AGENTS.items():
            self.register(ns, agent, AGENT_PRIORITY[cls])
        self.register(NAMESPACES[0], "short-lived", 0)
        self.stubs[NAMESPACES[0]].Hint(self.pb.HintRequest(session_id=self.sessions[NAMESPACES[0]], agent_id="planner",
                                           blocks=[self.hash_of(NAMESPACES[0], i) for i in range(4)],
                                           ending=self.pb.CALL_ENDING_TOOL_CALL), timeout=10)
        self.stubs[NAMESPACES[0]].EndAgent(self.pb.EndAgentRequest(session_id=self.sessions[NAMESPACES[0]], agent_id="short-lived"), timeout=10)
        readers = [(ns, "") for ns in NAMESPACES] + list(AGENTS)
        for ns, agent in readers:
            self.touch_series(ns, agent)
        refused = any(self.overload_once(NAMESPACES[0]) for _ in range(3))
        checks.check(refused, "workload: a request beyond --max-concurrent-requests is refused (RESOURCE_EXHAUSTED)")

    def touch_series(self, ns: str, reader: str) -> None:
        """One Get hit from the disk tier, one from the host tier and one miss for this
        namespace and reader (agent or none), so that their counter series exist before the
        measured phase."""
        hashes = [self.hash_of(ns, i) for i in range(70)]

        def blocks_in(tier: str) -> list[int]:
            return [h for h, t in zip(hashes, self.lookup_tiers(ns, hashes)) if t == tier]

        disk = blocks_in("disk")
        if not disk:
            raise SystemExit(f"warm-up: namespace {ns} has no block on the disk tier")
        self.get(ns, [disk[0]], False, None, reader)  # disk hit (and usually a promotion)
        host = blocks_in("host")
        if not host:
            raise SystemExit(f"warm-up: namespace {ns} has no block on the host tier, even after a read from disk")
        self.get(ns, [host[0]], False, None, reader)
        self.get(ns, [self.hash_of(ns, 999)], False, None, reader)

    def measured(self, tally: Tally) -> None:
        """A fixed mix of prefix reads: recent blocks (host), older ones (disk), evicted and
        never-stored ones (misses), with and without stop_at_first_miss, plus new Puts."""
        a, b = NAMESPACES
        h = self.hash_of
        plan = [
            (a, [h(a, i) for i in range(0, 12)], False, "planner"),
            (b, [h(b, i) for i in range(44, 60)], False, ""),
            (b, [h(b, i) for i in range(0, 10)] + [h(b, 500)], False, "batch-eval"),
            (a, [h(a, i) for i in range(30, 40)] + [h(a, 501)] + [h(a, i) for i in range(0, 4)], True, ""),
            (b, [h(b, i) for i in range(50, 58)], False, "batch-eval"),
            (a, [h(a, 502), h(a, 0), h(a, 1)], False, "planner"),
            (a, [h(a, i) for i in range(0, 6)], False, "planner"),
            (b, [h(b, i) for i in range(56, 60)], False, ""),
        ]
        for ns, hashes, stop, agent in plan:
            self.get(ns, hashes, stop, tally, agent)
        self.put(a, range(60, 70))
        for ns, hashes, stop, agent in plan[:3] + plan[6:] + [(a, [h(a, i) for i in range(60, 70)], True, "planner")]:
            self.get(ns, hashes, stop, tally, agent)
        self.lookup_tiers(a, [h(a, i) for i in range(0, 70)])


# ---------------------------------------------------------------------------------------------
# Model calls through the router


def metric_samples(addr: str, name: str) -> dict[str, float]:
    """Samples of one metric from a /metrics page, keyed by their label text ("" without)."""
    code, body = http_get(f"http://{addr}/metrics")
    if code != 200:
        raise SystemExit(f"GET http://{addr}/metrics: HTTP {code}")
    out = {}
    for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})?\s+(\S+)$", body.decode(), re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def label_value(labels: str, key: str) -> str:
    m = re.search(rf'\b{key}="([^"]*)"', labels)
    return m.group(1) if m else ""


# A shared system prompt (several blocks): calls that repeat it hit the worker's HBM.
SYSTEM = ("You are the planner of a coding agent. Read the repository, find the tests that fail, "
          "fix them one at a time, run the checks after each change and report what you changed. ") * 2


def document(i: int, words: int = 70) -> str:
    """A long distinct prompt: a few of them overflow the worker's pool (offloads, then onboards)."""
    return f"document {i}: " + " ".join(f"w{i}x{j}" for j in range(words))


class RouterWorkload:
    """Model calls over the router's HTTP front (urllib / http.client, as any client would)."""

    def __init__(self, http_addr: str) -> None:
        self.addr = http_addr
        self.codes: dict[int, int] = {}

    def post(self, path: str, body: dict, headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://{self.addr}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                code, data = r.status, r.read()  # a streamed answer is read to its end
        except urllib.error.HTTPError as e:
            code, data = e.code, e.read()
        self.codes[code] = self.codes.get(code, 0) + 1
        return code, data

    def chat(self, user: str, stream: bool = False, agent: str | None = None, system: str = SYSTEM) -> tuple[int, bytes]:
        body = {"model": FLEET_MODEL, "max_tokens": 4, "stream": stream,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        return self.post("/v1/chat/completions", body, {"x-kvtier-agent-id": agent} if agent else None)

    def responses(self, text: str, stream: bool = False) -> tuple[int, bytes]:
        return self.post("/v1/responses", {"model": FLEET_MODEL, "input": text, "instructions": SYSTEM,
                                           "max_output_tokens": 4, "stream": stream})

    def messages(self, text: str, stream: bool = False, agent: str | None = None) -> tuple[int, bytes]:
        body = {"model": FLEET_MODEL, "max_tokens": 4, "stream": stream, "system": SYSTEM,
                "messages": [{"role": "user", "content": text}]}
        return self.post("/v1/messages", body, {"x-kvtier-agent-id": agent} if agent else None)

    def hang_up_mid_stream(self) -> bool:
        """Starts a long streamed answer, reads its first bytes and closes the connection."""
        import http.client

        host, port = self.addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = {"model": FLEET_MODEL, "max_tokens": 2000, "stream": True,
                "messages": [{"role": "user", "content": "tell me a long story"}]}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        first = resp.readline()
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except OSError:
            pass
        conn.close()
        return resp.status == 200 and bool(first)

    def queue_and_reject(self, checks: Checks) -> None:
        """The admission queue's panels: a long streamed answer keeps the worker busy, one call
        waits in the router's queue (priority -2), one more is refused (429, queue full, in the
        Anthropic shape); then the long answer's client hangs up and the waiting call goes through."""
        import http.client

        host, port = self.addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = {"model": FLEET_MODEL, "max_tokens": 2000, "stream": True,
                "messages": [{"role": "user", "content": "tell me a long story while others wait"}]}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        started = resp.status == 200 and bool(resp.readline())
        queued: dict[str, tuple[int, bytes]] = {}
        waiter = threading.Thread(target=lambda: queued.update(call=self.post(
            "/v1/chat/completions",
            {"model": FLEET_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "queued call"}]},
            {"x-kvtier-priority": "-2"})))
        waiter.start()
        deadline = time.monotonic() + 10
        while sum(metric_samples(self.addr, "kvtier_router_queue_depth").values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        depth = sum(metric_samples(self.addr, "kvtier_router_queue_depth").values())
        code, data = self.messages("one call too many")
        try:
            error = json.loads(data)
        except ValueError:
            error = {}
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except OSError:
            pass
        conn.close()
        waiter.join(timeout=30)
        checks.check(started and depth == 1, f"router: a long answer holds the worker and one call waits in the admission queue (depth {depth:g})")
        checks.check(code == 429 and error.get("type") == "error" and error.get("error", {}).get("type") == "rate_limit_error",
                     f"router: a call past --queue-max-len is refused with 429 in the Anthropic shape ({code} {data[:160]!r})")
        checks.check(queued.get("call", (0, b""))[0] == 200, f"router: the queued call went through once the worker was free ({queued.get('call', (0, b''))[0]})")

    def warm_up(self, checks: Checks) -> None:
        """Every API, streamed and not; documents that overflow the pool (offloads to the cache,
        then an onboard of the first one); hints (agent ids); a client hanging up mid-stream."""
        results = [
            self.chat("question 0", agent="planner"),
            self.chat("question 1", stream=True, agent="planner"),
            self.responses("question 2"),
            self.responses("question 3", stream=True),
            self.messages("question 4", agent="reviewer"),
            self.messages("question 5", stream=True),
        ]
        for i in range(4):
            results.append(self.chat(document(i), system="Summarise the document."))
        results.append(self.chat(document(0), system="Summarise the document."))
        bad = [(c, d[:160]) for c, d in results if c != 200]
        checks.check(not bad, f"router: {len(results)} warm-up calls over the three APIs (streamed and not) answered 200 {bad or ''}")
        self.hang_up(checks, 1)

    def hang_up(self, checks: Checks, n: int) -> None:
        """A client hangs up mid-stream; waits until the router counted n cancellations."""
        checks.check(self.hang_up_mid_stream(), f"router: a streamed answer started, then the client hung up (#{n})")
        deadline = time.monotonic() + 10
        while sum(metric_samples(self.addr, "kvtier_router_cancelled_total").values()) < n:
            if time.monotonic() > deadline:
                checks.fail(f"router: kvtier_router_cancelled_total did not reach {n} within 10 s")
                break
            time.sleep(0.1)

    def measured(self, checks: Checks) -> None:
        """Repeated prefixes (HBM), evicted documents (cache tiers) and new ones (compute)."""
        results = [
            self.chat("question 6", agent="planner"),
            self.chat("question 7", stream=True, agent="planner"),
            self.messages("question 8", agent="reviewer"),
            self.responses("question 9"),
            self.chat(document(1), system="Summarise the document."),
            self.chat(document(3), system="Summarise the document."),
            self.chat(document(5), system="Summarise the document."),
            self.chat(document(2), system="Summarise the document.", stream=True),
        ]
        bad = [(c, d[:160]) for c, d in results if c != 200]
        checks.check(not bad, f"router: {len(results)} measured calls answered 200 {bad or ''}")
        # The cancellation counter is born at its first increment, which rate() cannot see:
        # a second hang-up makes the panel show one.
        self.hang_up(checks, 2)


def check_router_hit_rate(checks: Checks, prom: Prom, dashboards, before: dict[str, float], after: dict[str, float],
                          t_start_ms: int, t_end_ms: int) -> None:
    """The predicted-hit-rate panels against the router's own counters (kvtier_router_predicted_blocks_total
    read from its /metrics before and after the window)."""
    window = f"{t_end_ms - t_start_ms}ms"
    at = t_end_ms / 1000
    delta: dict[str, float] = {}
    for labels, v in after.items():
        tier = label_value(labels, "tier")
        delta[tier] = delta.get(tier, 0.0) + v - before.get(labels, 0.0)
    total = sum(delta.values())
    if not checks.check(total > 0 and sum(v for t, v in delta.items() if t != "compute") > 0,
                        f"router hit rate: the measured calls routed {total:g} blocks, {json.dumps(delta)}"):
        return
    expected = {None: {"": sum(v for t, v in delta.items() if t != "compute") / total},
                "tier": {t: v / total for t, v in delta.items() if t != "compute"}}
    print(f"router counters (measured window): predicted blocks by tier {json.dumps(delta)}; predicted hit rate "
          f"{expected[None]['']:.6f}; by tier {json.dumps({k: round(v, 6) for k, v in expected['tier'].items()})}", flush=True)
    err, res = prom.query(f"kvtier_router_predicted_blocks_total @ {t_start_ms / 1000:.3f}", at)
    checks.check(not err and len(res) == len(after), f"router hit rate: every predicted-blocks series existed at the window start ({len(res)} of {len(after)})")
    found = 0
    for fname, dash in dashboards:
        for p in panels_of(dash):
            for t in p.get("targets", []) if p.get("type") != "row" else []:
                e = t["expr"]
                if "kvtier_router_predicted_blocks_total" not in e or "/" not in e:
                    continue
                found += 1
                m = re.match(r"\s*sum by \((\w+)\)", e)
                by = m.group(1) if m else None
                what = f"router hit rate: {fname} '{p['title']}' {t['refId']} equals the router's own counters"
                expr = substitute(e.replace("rate(", "increase("), variable_bindings(dash)[0], window)
                err, res = prom.query(expr, at)
                if err or not res:
                    checks.fail(f"{what}: query {'error ' + err if err else 'returned no series'}: {expr}")
                    continue
                want = expected.get(by)
                if want is None:
                    checks.fail(f"{what}: panel groups by '{by}', which the test does not know how to check")
                    continue
                got = {(r["metric"].get(by, "") if by else ""): float(r["value"][1]) for r in res}
                diffs = {k: (got.get(k, 0.0), want.get(k, 0.0)) for k in set(got) | set(want)}
                bad = {k: v for k, v in diffs.items() if not abs(v[0] - v[1]) <= TOL}
                detail = ", ".join(f"{k or 'all'}: panel {v[0]:.6f} router {v[1]:.6f}" for k, v in sorted(diffs.items()))
                checks.check(not bad, f"{what} ({detail})")
    checks.check(found >= 2, f"router hit rate: {found} predicted-hit-rate targets found (overall, by tier)")


# ---------------------------------------------------------------------------------------------
# Dashboards


def load_dashboards() -> list[tuple[str, dict]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    if not files:
        raise SystemExit(f"no dashboards in {DASHBOARDS}")
    return [(f.name, json.loads(f.read_text())) for f in files]


def panels_of(dash: dict):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:  # panels inside collapsed rows
            yield q


def variable_bindings(dash: dict) -> list[dict[str, str]]:
    """Every combination of custom-variable options; query variables bound to their "All"
    value (allValue, or a regex matching anything)."""
    fixed: dict[str, str] = {}
    choices: dict[str, list[str]] = {}
    for v in dash.get("templating", {}).get("list", []):
        name, kind = v["name"], v.get("type")
        if kind == "datasource":
            continue
        if kind == "custom":
            opts = [o["value"] for o in v.get("options", [])] or [s.strip() for s in v["query"].split(",")]
            choices[name] = opts
        elif kind in ("query", "interval", "textbox", "constant"):
            if v.get("includeAll"):
                fixed[name] = v.get("allValue") or ".*"
            else:
                cur = v.get("current", {}).get("value")
                fixed[name] = cur if isinstance(cur, str) else (cur or [".*"])[0]
        else:
            raise SystemExit(f"dashboard {dash.get('uid')}: variable {name} of unsupported type {kind}")
    names = list(choices)
    out = []
    for combo in itertools.product(*(choices[n] for n in names)):
        out.append({**fixed, **dict(zip(names, combo))})
    return out or [fixed]


def substitute(expr: str, bindings: dict[str, str], rate_interval: str) -> str:
    expr = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    expr = expr.replace("$__interval", "1s").replace("${__interval}", "1s")
    expr = expr.replace("$__range", rate_interval).replace("${__range}", rate_interval)
    for name in sorted(bindings, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", bindings[name]).replace("$" + name, bindings[name])
    if "$" in expr:
        raise ValueError(f"unsubstituted variable left in {expr!r}")
    return expr


def check_dashboard_json(checks: Checks, fname: str, dash: dict) -> None:
    ids = [p.get("id") for p in panels_of(dash)]
    checks.check(len(ids) == len(set(ids)) and None not in ids, f"{fname}: panel ids are unique")
    checks.check(bool(dash.get("uid")) and bool(dash.get("title")), f"{fname}: has uid and title")
    bad = []
    for p in panels_of(dash):
        if p.get("type") == "row":
            continue
        if not p.get("targets") or not p.get("datasource") or "gridPos" not in p:
            bad.append(p.get("title"))
        for t in p.get("targets", []):
            if not t.get("expr") or not t.get("refId"):
                bad.append(f"{p.get('title')}/{t.get('refId')}")
    checks.check(not bad, f"{fname}: every panel has a datasource, gridPos and targets with refId and expr {bad or ''}")


def short(v: float) -> str:
    return "NaN" if math.isnan(v) else f"{v:.6g}"


def evaluate_panels(checks: Checks, prom: Prom, dashboards, exported: set[str], live: set[str], rate_interval: str) -> None:
    for fname, dash in dashboards:
        for bindings in variable_bindings(dash):
            label = ",".join(f"{k}={v}" for k, v in sorted(bindings.items()) if v != ".*") or "all"
            for p in panels_of(dash):
                for t in p.get("targets", []) if p.get("type") != "row" else []:
                    what = f"{fname} [{label}] '{p['title']}' {t['refId']}"
                    expr = substitute(t["expr"], bindings, rate_interval)
                    names = metric_names_in(t["expr"])
                    unknown = sorted(n for n in names if n not in exported)
                    if unknown:
                        checks.fail(f"{what}: names metrics no scraped binary declares: {unknown}")
                        continue
                    missing = sorted(n for n in names if n not in live and n not in MAY_BE_ABSENT)
                    if missing:
                        checks.fail(f"{what}: metrics with no series in Prometheus after the workload: {missing}")
                        continue
                    err, res = prom.query(expr)
                    if err:
                        checks.fail(f"{what}: query error {err}: {expr}")
                        continue
                    if not res:
                        checks.fail(f"{what}: no series: {expr}")
                        continue
                    values = [float(r["value"][1]) for r in res]
                    # NaN in some series is legitimate (a latency quantile or a ratio for a label
                    # that had no traffic in the window); NaN everywhere means the panel shows nothing.
                    if all(math.isnan(v) for v in values):
                        checks.fail(f"{what}: every series is NaN {[(r['metric'], r['value'][1]) for r in res]}: {expr}")
                        continue
                    shown = ", ".join(
                        f"{'/'.join(v for k, v in sorted(r['metric'].items())) or '-'}={short(float(r['value'][1]))}"
                        for r in res[:6]
                    )
                    checks.ok(f"{what}: {len(res)} series ({shown})")


def hit_rate_panels(dashboards):
    """(panel title, target, group-by label or None) of every panel whose query is a ratio of
    kvtier_block_hits_total over kvtier_block_lookups_total."""
    for fname, dash in dashboards:
        for p in panels_of(dash):
            for t in p.get("targets", []) if p.get("type") != "row" else []:
                e = t["expr"]
                if "kvtier_block_hits_total" in e and "kvtier_block_lookups_total" in e and "/" in e:
                    m = re.match(r"\s*sum by \((\w+)\)", e)
                    yield fname, dash, p["title"], t, (m.group(1) if m else None)


def exact_delta(expr: str, window: str) -> str:
    """rate(X{...}[$__rate_interval]) -> (X{...} - X{...} offset window): the counter's exact
    change over the window, when every target was scraped between each window end and the
    nearest counter change (see the module doc)."""
    return re.sub(r"rate\((\w+)(\{[^}]*\})?\[\$__rate_interval\]\)",
                  lambda m: f"({m.group(1)}{m.group(2) or ''} - {m.group(1)}{m.group(2) or ''} offset {window})", expr)


def check_hit_rate(checks: Checks, prom: Prom, dashboards, tally: Tally, t_start_ms: int, t_end_ms: int,
                   instance_of: dict[str, str]) -> None:
    window = f"{t_end_ms - t_start_ms}ms"
    at = t_end_ms / 1000
    # Both ends of the window are scrapes: every counter must have a sample at both, or its
    # increase() would miss its first increment.
    for metric in ("kvtier_block_lookups_total", "kvtier_block_hits_total"):
        err, res = prom.query(f'count_over_time({metric}{{op="get"}}[{window}])', at)
        counts = {json.dumps(r["metric"], sort_keys=True): int(float(r["value"][1])) for r in res}
        err2, res2 = prom.query(f'{metric}{{op="get"}} @ {t_start_ms / 1000:.3f}', at)
        checks.check(
            not err and not err2 and len(res2) == len(counts) and len(counts) > 0,
            f"hit rate: every {metric}{{op=\"get\"}} series existed at the window start "
            f"({len(res2)} of {len(counts)} series)",
        )
    client = {
        None: {"": tally.rate()},
        "tier": tally.by_tier(),
        "namespace": tally.by_namespace(),
        "priority": tally.by_priority(),
        "instance": tally.by_instance(instance_of),
    }
    print(
        f"client-side (measured phase): {tally.total_hits()} of {tally.total_lookups()} blocks found, "
        f"hit rate {tally.rate():.6f}; by tier {json.dumps({k: round(v, 6) for k, v in tally.by_tier().items()})}; "
        f"by namespace {json.dumps({k: round(v, 6) for k, v in tally.by_namespace().items()})}; "
        f"by priority {json.dumps({k: round(v, 6) for k, v in tally.by_priority().items()})}; "
        f"by shard {json.dumps({k: round(v, 6) for k, v in tally.by_instance(instance_of).items()})}",
        flush=True,
    )
    found = 0
    for fname, dash, title, t, by in hit_rate_panels(dashboards):
        found += 1
        bindings = {k: v for k, v in variable_bindings(dash)[0].items()}
        bindings["op"] = "get"
        expr = substitute(exact_delta(t["expr"], window), bindings, window)
        err, res = prom.query(expr, at)
        what = f"hit rate: {fname} '{title}' {t['refId']} equals the client's"
        if err or not res:
            checks.fail(f"{what}: query {'error ' + err if err else 'returned no series'}: {expr}")
            continue
        expected = client.get(by)
        if expected is None:
            checks.fail(f"{what}: panel groups by '{by}', which the test does not know how to check")
            continue
        got = {(r["metric"].get(by, "") if by else ""): float(r["value"][1]) for r in res}
        # tiers the client never saw must be absent or 0 on the panel
        diffs = {k: (got.get(k, 0.0), expected.get(k, 0.0)) for k in set(got) | set(expected)}
        bad = {k: v for k, v in diffs.items() if not abs(v[0] - v[1]) <= TOL}
        detail = ", ".join(f"{k or 'all'}: panel {v[0]:.6f} client {v[1]:.6f}" for k, v in sorted(diffs.items()))
        checks.check(not bad, f"{what} ({detail})")
    checks.check(found >= 5, f"hit rate: {found} hit-rate targets found (overall, by tier, by namespace, by priority, by shard)")


# ---------------------------------------------------------------------------------------------


BIN_ENV = {"kvtier-server": "KVTIER_SERVER_BIN", "kvtier-agent": "KVTIER_AGENT_BIN",
           "kvtier-sim-worker": "KVTIER_SIM_WORKER_BIN", "kvtier-router": "KVTIER_ROUTER_BIN"}


def find_bin(name: str, arg: str | None = None) -> str:
    cands = [arg, os.environ.get(BIN_ENV[name])]
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        cands.append(str(Path(target) / "release" / name))
    cands += [str(Path.home() / ".cache" / "kvtier-target" / "release" / name), str(REPO / "target" / "release" / name)]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit(f"{name} binary not found; build it (cargo build --release --workspace --bins) or set {BIN_ENV[name]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server-bin")
    ap.add_argument("--prometheus-bin", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, TSDB)")
    args = ap.parse_args()

    started = time.monotonic()
    def overrun(*_) -> None:
        raise TimeoutError(f"dashboard test ran over {DEADLINE_S} s")

    signal.signal(signal.SIGALRM, overrun)
    signal.alarm(DEADLINE_S)

    checks = Checks()
    declared = {b: exported_metrics(b) for b in METRICS_RS}
    exported = set().union(*declared.values())
    dashboards = load_dashboards()
    print(f"dashboards: {', '.join(f for f, _ in dashboards)}; declared series names: "
          f"{', '.join(f'{b} {len(n)}' for b, n in declared.items())}", flush=True)

    bins = {"kvtier-server": find_bin("kvtier-server", args.server_bin)}
    for name in ("kvtier-agent", "kvtier-sim-worker", "kvtier-router"):
        bins[name] = find_bin(name)
    etcd_bin = find_etcd()
    if etcd_bin is None:
        msg = "dashboard test needs etcd for its two-shard cluster: run scripts/setup.sh (installs it into ~/.cache/kvtier-etcd) or set KVTIER_ETCD_BIN"
        if os.environ.get("CI") == "true":
            print(f"FAILED: {msg}\ndashboard: 0 passed, 1 failed")
            return 1
        print(f"SKIP {msg}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="kvtier-dash-"))
    procs = Procs()
    stop_watch = threading.Event()
    fleet: Fleet | None = None
    try:
        pb, pb_grpc = load_stubs(tmp)
        etcd = start_etcd(procs, etcd_bin, tmp)
        shards = {node: start_server(procs, bins["kvtier-server"], tmp, etcd, node) for node in sorted(set(SHARD_OF.values()))}
        checks.check(all(g.startswith("127.0.0.1:") and m.startswith("127.0.0.1:") for g, m, _ in shards.values()),
                     f"two kvtier-servers on loopback registered as one cluster in etcd {etcd}: "
                     + ", ".join(f"{n} grpc={g} metrics={m}" for n, (g, m, _) in shards.items()))
        grpc_addr = shards[SHARD_OF[NAMESPACES[0]]][0]
        fleet = Fleet(procs, bins, tmp, grpc_addr)
        targets = {"kvtier-server": [m for _, m, _ in shards.values()], **{job: [addr] for job, addr in fleet.targets().items()}}
        checks.ok(f"fleet on loopback: agent metrics={fleet.agent_metrics}, sim worker http={fleet.worker_http}, router http={fleet.router_http}")
        prom = Prom(start_prometheus(procs, args.prometheus_bin, tmp, targets))
        for job in targets:
            prom.wait(f'up{{job="{job}"}}', lambda v: v == 1, f"Prometheus to scrape {job}")
        checks.ok(f"Prometheus scrapes {', '.join(targets)} (up == 1)")

        for fname, dash in dashboards:
            check_dashboard_json(checks, fname, dash)

        # Phase 1: the cache server, driven over gRPC (the fleet idles: no Gets of its own).
        wl = Workload({ns: shards[SHARD_OF[ns]][0] for ns in NAMESPACES}, pb, pb_grpc)
        wl.watch(stop_watch)
        wl.warm_up(checks)
        warm_end = time.time_ns() // 1_000_000
        prom.wait('sum(kvtier_block_lookups_total{op="get"})', lambda v: v == wl.get_lookups, "the warm-up's Gets in a scrape")
        t_start = prom.scrape_after(warm_end)
        tally = Tally()
        wl.measured(tally)
        end = time.time_ns() // 1_000_000
        prom.wait('sum(kvtier_block_lookups_total{op="get"})', lambda v: v == wl.get_lookups, "the measured phase's Gets in a scrape")
        t_end = prom.scrape_after(end)
        checks.check(wl.watch_events > 0, f"workload: the WatchEvents subscriber received {wl.watch_events} events")

        # Phase 2: model calls through the router (its worker onboards from the cache server now).
        rw = RouterWorkload(fleet.router_http)
        rw.warm_up(checks)
        workers = fleet.list_workers()
        checks.check([w.worker_id for w in workers] == ["w0"] and workers[0].available,
                     f"router: RouterService.ListWorkers over gRPC lists w0 available ({[(w.worker_id, w.available) for w in workers]})")
        checks.check(fleet.find_matches(4) == 4, "router: RouterService.FindMatches over gRPC hashes 64 token ids into 4 blocks")
        pred = "kvtier_router_predicted_blocks_total"
        before = metric_samples(fleet.router_http, pred)
        r_warm_end = time.time_ns() // 1_000_000
        prom.wait(f"sum({pred})", lambda v: v == sum(before.values()), "the router's warm-up decisions in a scrape")
        r_start = prom.scrape_after(r_warm_end, "kvtier-router")
        rw.measured(checks)
        after = metric_samples(fleet.router_http, pred)
        r_end_wall = time.time_ns() // 1_000_000
        prom.wait(f"sum({pred})", lambda v: v == sum(after.values()), "the router's measured decisions in a scrape")
        r_end = prom.scrape_after(r_end_wall, "kvtier-router")
        fleet.find_matches(2)  # a second call: the gRPC histogram is born at the first
        rw.queue_and_reject(checks)
        # After the window: the worker stops; a call to it is an upstream (connect) error.
        fleet.worker.send_signal(signal.SIGTERM)
        fleet.worker.wait(timeout=15)
        code, body = rw.chat("question 10")
        errors = metric_samples(fleet.router_http, "kvtier_router_upstream_errors_total")
        checks.check(code == 503 and sum(errors.values()) >= 1,
                     f"router: a call to a stopped worker is an upstream connect error, answered {code} ({errors})")
        time.sleep(1.2)  # past --unreachable-ms and a scrape with the error counter born, so that a second error shows in rate()
        code2, _ = rw.chat("question 11")
        errors2 = metric_samples(fleet.router_http, "kvtier_router_upstream_errors_total")
        print(f"router: a second call to the stopped worker answered {code2}; upstream errors {errors2}", flush=True)
        onboard = metric_samples(fleet.agent_metrics, "kvtier_agent_onboard_blocks_total")
        offload = metric_samples(fleet.agent_metrics, "kvtier_agent_offload_blocks_total")
        checks.check(sum(v for k, v in onboard.items() if 'result="loaded"' in k) > 0 and sum(offload.values()) > 0,
                     f"agent: the worker offloaded blocks and onboarded some back from the cache tier (offload {sum(offload.values()):g}, onboard {onboard})")
        print(f"router answers by HTTP status: {rw.codes}", flush=True)
        time.sleep(1.5)  # one more scrape of the router and the agent after the error

        # A shard frozen past its lease TTL (5 s) loses its membership record and re-registers
        # with a new epoch when it resumes: the re-registration panel must show it, for it alone.
        frozen = shards["shard-b"][2]
        epoch = prom.scalar('max(kvtier_cluster_epoch{node_id="shard-b"})')
        frozen.send_signal(signal.SIGSTOP)
        time.sleep(7)
        frozen.send_signal(signal.SIGCONT)
        prom.wait('max(kvtier_cluster_registrations_total{node_id="shard-b"})', lambda v: v >= 2, "shard-b's re-registration in a scrape", timeout=30)
        new_epoch = prom.scalar('max(kvtier_cluster_epoch{node_id="shard-b"})')
        checks.check(epoch is not None and new_epoch is not None and new_epoch > epoch,
                     f"cluster: shard-b frozen past its lease TTL re-registered with a new epoch ({epoch} -> {new_epoch})")

        _, res = prom.query('count by (__name__) ({__name__=~"kvtier_.*"})')
        live = {r["metric"]["__name__"] for r in res}
        scraped = [("kvtier-server", m) for _, m, _ in shards.values()] + [("kvtier-router", fleet.router_http), ("kvtier-agent", fleet.agent_metrics)]
        for binary, addr in scraped:
            code, body = http_get(f"http://{addr}/metrics")
            text_names = set(re.findall(r"^(kvtier_[a-z0-9_]+)", body.decode(), re.M))
            unexported = sorted(text_names - declared[binary])
            checks.check(code == 200 and not unexported, f"every metric on {binary} {addr}'s /metrics is declared in {METRICS_RS[binary].relative_to(REPO)} {unexported or ''}")
        unused = sorted(n for n in exported if not n.endswith(("_bucket", "_sum")) and not any(n in t["expr"] for _, d in dashboards for p in panels_of(d) for t in p.get("targets", [])))
        if unused:
            print(f"NOTE exported but on no panel: {unused}", flush=True)

        check_hit_rate(checks, prom, dashboards, tally, t_start, t_end, {ns: shards[SHARD_OF[ns]][1] for ns in NAMESPACES})
        check_router_hit_rate(checks, prom, dashboards, before, after, r_start, r_end)

        # Every panel, at "now", over a window that covers the whole run.
        rate_interval = f"{int(time.monotonic() - started) + 10}s"
        evaluate_panels(checks, prom, dashboards, exported, live, rate_interval)
        for fname, dash in dashboards:
            for p in panels_of(dash):
                if p.get("title") == "Re-registrations (lost leases)":
                    expr = substitute(p["targets"][0]["expr"], variable_bindings(dash)[0], rate_interval)
                    _, res = prom.query(expr)
                    got = {r["metric"].get("node_id"): float(r["value"][1]) for r in res}
                    checks.check(got.get("shard-b", 0) > 0 and got.get("shard-a") == 0,
                                 f"{fname} '{p['title']}' shows shard-b's lost lease and none for shard-a ({got})")
        # The error panels must show the errors the workload caused (not just their 0 fallback).
        for fname, dash in dashboards:
            for p in panels_of(dash):
                if p.get("title") in ("Cancelled calls", "Upstream errors", "Queue rejections by reason"):
                    expr = substitute(p["targets"][0]["expr"], variable_bindings(dash)[0], rate_interval)
                    _, res = prom.query(expr)
                    top = max((float(r["value"][1]) for r in res), default=0.0)
                    # The router creates its counters at zero (so rate() sees
                    # the first error): only the series that moved count.
                    moved = sum(1 for r in res if float(r["value"][1]) > 0)
                    checks.check(top > 0 and moved == 1, f"{fname} '{p['title']}' shows the workload's errors ({moved} of {len(res)} series moved, max {top:.4g}/s)")
        checks.check(all(p.poll() is None for _, _, p in shards.values()), "both kvtier-servers still running after the workload")
        registered = prom.scalar('sum(kvtier_cluster_registered{job="kvtier-server"})')
        checks.check(registered == len(shards), f"cluster: Prometheus sees {registered} of {len(shards)} shards registered in etcd (kvtier_cluster_registered)")
        alive = {name: p.poll() is None for name, p in procs.procs if name in ("kvtier-agent", "kvtier-router")}
        checks.check(all(alive.values()), f"kvtier-agent and kvtier-router still running after the workload {alive}")
    except (SystemExit, TimeoutError, AssertionError) as e:
        checks.fail(f"test aborted: {type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        stop_watch.set()
        procs.stop_all()
        if fleet is not None:
            fleet.cleanup()
        for name in ("etcd.log", *(f"kvtier-server-{n}.log" for n in sorted(set(SHARD_OF.values()))), "kvtier-agent.log", "kvtier-sim-worker.log", "kvtier-router.log", "prometheus.log"):
            log = tmp / name
            if checks.failed and log.exists():
                print(f"--- {name} (last 2000 bytes)\n{log.read_bytes()[-2000:].decode(errors='replace')}")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"elapsed {time.monotonic() - started:.1f} s")
    for f in checks.failed:
        print(f"FAILED: {f}")
    print(f"dashboard: {checks.passed} passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
