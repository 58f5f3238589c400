#!/usr/bin/env python3
"""Lints and renders charts/kvtier with Helm's own library and validates what it renders.

No `helm` binary is needed: helm-python-sdk binds Helm v4's Go SDK (libhelm_c, shipped in the
wheel), so `lint` and `render` below are Helm's own code, run offline.

For each values set (defaults, ci/gpu-values.yaml, ci/full-values.yaml, ci/tls-values.yaml,
ci/router-values.yaml, ci/cluster-values.yaml):
  * `helm lint --strict` (kube versions 1.27, the chart's minimum, and the newest schemas): no
    errors, no warnings (values.schema.json included; it must also refuse bad values);
  * render, then validate every manifest against the Kubernetes JSON schemas of
    kubernetes-validate (strict: unknown fields are errors) for Kubernetes 1.27 and the newest
    version it ships; the ServiceMonitor and PodMonitor (Prometheus Operator CRDs, not in those
    schemas) against a subset of their CRD schemas kept here;
  * check what a platform team relies on: StatefulSet + PVC, capacities as flags, gRPC health
    probes, resource requests, GPU limit and flags, router only when enabled, ServiceMonitor and
    dashboards ConfigMap (byte-identical to charts/kvtier/dashboards/*.json) only when enabled;
  * every flag passed to kvtier-server is one `kvtier-server --help` lists, and kvtier-server
    actually starts with the rendered arguments (addresses and data dir moved to loopback/temp);
  * the router: flags from values (one --worker ID=HTTP_BASE@AGENT_URL per worker, hashing,
    cost weights, tokenizer where its volume is mounted), gRPC startup/liveness and HTTP /health
    readiness probes, every flag one `kvtier-router --help` lists, and kvtier-router starts with
    the rendered arguments (listen addresses moved to loopback, --cache-server to a real
    kvtier-server on loopback, the tokenizer and chat template to generated stand-ins), answers
    /health, /metrics and the grpc.health.v1 check its startup probe makes, and stops on SIGTERM;
  * cluster mode: --cluster/--node-id/--advertise from the pod's name, the chart's etcd; a real
    etcd started with the chart's etcd arguments and two replicas' kvtier-server arguments
    (downward-API variables expanded as kubelet does) register in it as their pod names.
The worker-agent sidecar snippet is checked by rendering a throwaway parent chart that includes
kvtier as a subchart and the named templates in its own Deployment; its flags are checked against
`kvtier-agent --help`.

Usage: check_chart.py [--server-bin PATH] [--agent-bin PATH] [--router-bin PATH]
       (or KVTIER_SERVER_BIN / KVTIER_AGENT_BIN / KVTIER_ROUTER_BIN;
       default: $CARGO_TARGET_DIR/release, then ~/.cache/kvtier-target/release, then target/release)
Prints "chart: N passed, M failed" last; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kvtier"
RELEASE, NAMESPACE = "kv", "inference"
KUBE_VERSIONS = ["1.27.0", kv_utils.latest_version()]

# Subset of the Prometheus Operator's ServiceMonitor CRD schema (monitoring.coreos.com/v1):
# the fields this chart sets, with their types; unknown spec fields are refused.
SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "matchExpressions": {"type": "array", "items": {
                        "type": "object", "required": ["key", "operator"], "additionalProperties": False,
                        "properties": {"key": {"type": "string"},
                                       "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                       "values": {"type": "array", "items": {"type": "string"}}}}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "targetPort": {},
                        "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "honorLabels": {"type": "boolean"}}}},
            },
        },
    },
}

_INTERVAL = SERVICEMONITOR_SCHEMA["properties"]["spec"]["properties"]["endpoints"]["items"]["properties"]["interval"]
PODMONITOR_SCHEMA = copy.deepcopy(SERVICEMONITOR_SCHEMA)
PODMONITOR_SCHEMA["properties"]["kind"] = {"const": "PodMonitor"}
_pm_spec = PODMONITOR_SCHEMA["properties"]["spec"]
_pm_spec["required"] = ["selector", "podMetricsEndpoints"]
_pm_spec["properties"]["podMetricsEndpoints"] = _pm_spec["properties"].pop("endpoints")
CRD_SCHEMAS = {"ServiceMonitor": SERVICEMONITOR_SCHEMA, "PodMonitor": PODMONITOR_SCHEMA}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def check(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
            print(f"PASS {what}", flush=True)
        else:
            self.failed.append(what)
            print(f"FAIL {what}", flush=True)
        return cond


def load_values(name: str | None) -> dict:
    return yaml.safe_load((CHART / name).read_text()) if name else {}


def render(chart_dir: Path, values: dict) -> tuple[list[dict], str | None]:
    with helm.Chart.load(str(chart_dir)) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict] = []
    notes = None
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_source", path)
                docs.append(doc)
    return docs, notes


def validate_docs(checks: Checks, label: str, docs: list[dict]) -> None:
    for doc in docs:
        src = doc.pop("_source")
        kn = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            schema = CRD_SCHEMAS.get(doc["kind"])
            if schema is None:
                checks.check(False, f"{label}: {kn} ({src}): no CRD schema subset kept for {doc['kind']}")
                continue
            try:
                jsonschema.validate(doc, schema)
                checks.check(True, f"{label}: {kn} matches the {doc['kind']} CRD schema subset")
            except jsonschema.ValidationError as e:
                checks.check(False, f"{label}: {kn} ({src}): {e.message} at {list(e.path)}")
            continue
        for version in KUBE_VERSIONS:
            try:
                got = kubernetes_validate.validate(doc, version, strict=True)
                checks.check(True, f"{label}: {kn} valid against Kubernetes {got} schemas (strict)")
            except kv_utils.ValidationError as e:
                checks.check(False, f"{label}: {kn} ({src}) invalid for Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
            except kv_utils.SchemaNotFoundError as e:
                checks.check(False, f"{label}: {kn} ({src}): {e.message}")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def flag_values(args: list[str]) -> dict[str, list[str]]:
    """--flag value pairs (a flag followed by another flag or nothing is a switch: value '')."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                out.setdefault(a, []).append(args[i + 1])
                i += 2
                continue
            out.setdefault(a, []).append("")
        i += 1
    return out


def help_flags(binary: str | None) -> set[str] | None:
    if not binary:
        return None
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out))


def find_bin(name: str, arg: str | None) -> str | None:
    env = {"kvtier-server": "KVTIER_SERVER_BIN", "kvtier-agent": "KVTIER_AGENT_BIN", "kvtier-router": "KVTIER_ROUTER_BIN"}[name]
    cands = [arg, os.environ.get(env)]
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        cands.append(str(Path(target) / "release" / name))
    cands += [str(Path.home() / ".cache" / "kvtier-target" / "release" / name), str(REPO / "target" / "release" / name)]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    return None


def start_with_args(binary: str, args: list[str], tmp: Path) -> tuple[bool, str]:
    """Starts kvtier-server with the chart's arguments, listening on loopback and with a temp
    data dir; waits for its ready line, then SIGTERM and a clean exit."""
    args = list(args)
    for flag, value in (("--listen", "127.0.0.1:0"), ("--metrics-listen", "127.0.0.1:0"), ("--data-dir", str(tmp / "data"))):
        args[args.index(flag) + 1] = value
    if "--data-listen" in args and args[args.index("--data-listen") + 1] != "off":
        args[args.index("--data-listen") + 1] = "127.0.0.1:0"
    # Secrets the pod would mount: a self-signed certificate (also the client CA), a token table.
    files = {}
    if any(a.startswith("/etc/kvtier/") for a in args):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kvtier-test",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp / "tls.key"), "-out", str(tmp / "tls.crt")],
                       check=True, capture_output=True, timeout=60)
        import hashlib
        (tmp / "tokens").write_text(f"chart-test sha256:{hashlib.sha256(b'chart-test-token').hexdigest()} kvtier-*=rw\n")
        files = {"tls.crt": tmp / "tls.crt", "tls.key": tmp / "tls.key", "ca.crt": tmp / "tls.crt", "tokens": tmp / "tokens"}
    for i, a in enumerate(args):
        if a.startswith("/etc/kvtier/"):
            args[i] = str(files[Path(a).name])
    p = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "RUST_LOG": "warn"})
    ready: list[str] = []
    t = threading.Thread(target=lambda: ready.append(p.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(30)
    ok = bool(ready and ready[0].startswith("kvtier-server ready"))
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    detail = (ready[0].strip() if ready else "no ready line") + f"; exit {p.returncode}"
    if not ok or p.returncode != 0:
        detail += "; stderr: " + re.sub(r"\x1b\[[0-9;]*m", "", err)[-800:]
    return ok and p.returncode == 0, detail


ROUTER_HEALTH_SERVICE = "kvtier.v1.RouterService"
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def spawn_ready(argv: list[str], prefix: str, log: Path, timeout: float = 30) -> tuple[subprocess.Popen, str | None]:
    """Starts argv (stderr to log) and waits for a stdout line starting with prefix."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True,
                         env={**os.environ, "RUST_LOG": "warn", "KVTIER_LOG": "warn"})
    ready: list[str] = []

    def read() -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            if not ready and line.startswith(prefix):
                ready.append(line.strip())
        # keep draining so the child never blocks on a full pipe

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return p, (ready[0] if ready else None)


def stop(p: subprocess.Popen, timeout: float = 20) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return -9


def grpc_health(addr: str, service: str, ca: Path | None = None) -> str:
    """grpc.health.v1.Health/Check as kubelet's gRPC probe makes it (plaintext; over TLS trusting
    `ca` when given); returns the status name or the error. The messages are encoded by hand: no
    generated stubs needed."""
    import grpc  # type: ignore

    svc = service.encode()
    request = (b"\x0a" + bytes([len(svc)]) + svc) if svc else b""
    if ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        opened = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        opened = grpc.insecure_channel(addr)
    with opened as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            resp = check(request, timeout=5)
        except grpc.RpcError as e:
            return f"error {e.code().name}: {e.details()}"
    status = resp[1] if len(resp) >= 2 and resp[0] == 0x08 else 0
    return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, str(status))


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_pki(tmp: Path) -> tuple[Path, Callable[[str, str], tuple[Path, Path]]]:
    """A throwaway CA under tmp/pki and a function signing leaf certificates with it."""
    pki = tmp / "pki"
    pki.mkdir(exist_ok=True)
    ca_key, ca = pki / "ca.key", pki / "ca.crt"
    if not ca.exists():
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                "-subj", "/CN=chart check CA", "-keyout", str(ca_key), "-out", str(ca))

    def leaf(name: str, ext: str) -> tuple[Path, Path]:
        key, csr, crt, extfile = pki / f"{name}.key", pki / f"{name}.csr", pki / f"{name}.crt", pki / f"{name}.ext"
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(key), "-out", str(csr))
        extfile.write_text(ext)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                "-days", "1", "-extfile", str(extfile), "-out", str(crt))
        return crt, key

    return ca, leaf


SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"


def router_own_stand_in(args: list[str], tmp: Path) -> Path | None:
    """The router's own files the chart mounts from Secrets (--tls-cert/--tls-key of its fronts,
    --tokens-file, --agent-token-file, --agent-ca), written for real in their stead; rewrites
    their paths in `args`. Returns the CA its fronts' certificate chains to (None: plaintext)."""
    ca = None
    if "--tls-cert" in args:
        ca, leaf = test_pki(tmp)
        crt, key = leaf("router", SERVER_EXT)
        args[args.index("--tls-cert") + 1] = str(crt)
        args[args.index("--tls-key") + 1] = str(key)
    if "--tokens-file" in args:
        token = "chart-check-router-client"
        digest = hashlib.sha256(token.encode()).hexdigest()
        namespace = args[args.index("--namespace") + 1]
        path = tmp / "router-tokens"
        path.write_text(f"client sha256:{digest} {namespace}=rw\n")
        args[args.index("--tokens-file") + 1] = str(path)
    if "--agent-token-file" in args:
        path = tmp / "agent.token"
        path.write_text("chart-check-agent-token\n")
        args[args.index("--agent-token-file") + 1] = str(path)
    if "--agent-ca" in args:
        agent_ca, _ = test_pki(tmp)
        args[args.index("--agent-ca") + 1] = str(agent_ca)
    return ca


def secure_stand_in(args: list[str], tmp: Path) -> list[str]:
    """For a chart that gives the router --server-ca / --server-cert / --server-token-file (files
    mounted from Secrets), writes real ones in their stead (a CA, a server certificate for
    127.0.0.1, a client certificate, a token) and returns the stand-in kvtier-server's matching
    --tls-cert/--tls-key/--tls-client-ca/--tokens; rewrites the router's paths in `args`."""
    secure: list[str] = []
    if "--server-ca" in args:
        ca, leaf = test_pki(tmp)
        crt, key = leaf("server", SERVER_EXT)
        secure += ["--tls-cert", str(crt), "--tls-key", str(key)]
        args[args.index("--server-ca") + 1] = str(ca)
        if "--server-cert" in args:
            crt, key = leaf("client", "extendedKeyUsage=clientAuth\n")
            args[args.index("--server-cert") + 1] = str(crt)
            args[args.index("--server-key") + 1] = str(key)
            secure += ["--tls-client-ca", str(ca)]
        if "--server-tls-domain" in args:
            args[args.index("--server-tls-domain") + 1] = "localhost"
    if "--server-token-file" in args:
        token = "chart-check-router-token"
        path = tmp / "router.token"
        path.write_text(token + "\n")
        args[args.index("--server-token-file") + 1] = str(path)
        digest = hashlib.sha256(token.encode()).hexdigest()
        namespace = args[args.index("--namespace") + 1]
        secure += ["--tokens", f"router sha256:{digest} tenant=chart {namespace}=rw"]
    return secure


def start_router_with_args(router_bin: str, server_bin: str | None, args: list[str], tmp: Path) -> tuple[bool, str]:
    """Starts kvtier-router with the chart's arguments: listen addresses on loopback, the cache
    server a real kvtier-server on loopback (when the chart names one), the tokenizer and chat
    template generated stand-ins at the paths the chart mounts. Waits for its ready line, then
    asks /health, /metrics and grpc.health.v1 (the startup probe's service and ""), then SIGTERM."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_tokenizer import write_tiny_tokenizer  # noqa: E402

    args = list(args)
    for flag in ("--http-listen", "--grpc-listen"):
        args[args.index(flag) + 1] = "127.0.0.1:0"
    server = None
    notes = []
    try:
        front_ca = router_own_stand_in(args, tmp)
        if "--tokenizer" in args:
            i = args.index("--tokenizer")
            args[i + 1] = str(write_tiny_tokenizer(tmp / "model"))
        if "--chat-template" in args:
            i = args.index("--chat-template")
            cfg = tmp / "model" / "tokenizer_config.json"
            cfg.write_text(json.dumps({"bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_end|>", "special": True},
                                       "chat_template": CHATML_TEMPLATE}))
            args[i + 1] = str(cfg)
        i = args.index("--cache-server")
        if args[i + 1]:
            if not server_bin:
                return False, "kvtier-server binary not built (the router's --cache-server stand-in)"
            secure = secure_stand_in(args, tmp)
            server, line = spawn_ready([server_bin, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                                        "--metrics-plaintext", "--data-dir", str(tmp / "server-data"), *secure],
                                       "kvtier-server ready", tmp / "server.log")
            m = re.match(r"kvtier-server ready grpc=(\S+)", line or "")
            if not m:
                return False, f"the stand-in kvtier-server did not start: {line}"
            scheme = "https" if "--tls-cert" in secure else "http"
            args[i + 1] = f"{scheme}://{m.group(1)}"
            notes.append("cache server: a real kvtier-server" + (" with " + ", ".join(
                w for f, w in (("--tls-cert", "TLS"), ("--tls-client-ca", "client certificates"), ("--tokens", "tokens"))
                if f in secure) if secure else ""))
        p, line = spawn_ready([router_bin, *args], "kvtier-router ready", tmp / "router.log")
        m = re.match(r"kvtier-router ready http=(\S+) grpc=(\S+)", line or "")
        ok = bool(m)
        if m:
            http, grpc_addr = m.group(1), m.group(2)
            import ssl
            import urllib.request
            scheme, context = "http", None
            if front_ca is not None:
                scheme, context = "https", ssl.create_default_context(cafile=str(front_ca))
                context.check_hostname = False
                notes.append("fronts over TLS")
            with urllib.request.urlopen(f"{scheme}://{http}/health", timeout=5, context=context) as r:
                health = r.status
            with urllib.request.urlopen(f"{scheme}://{http}/metrics", timeout=5, context=context) as r:
                metrics = r.read().decode()
            probe = grpc_health(grpc_addr, ROUTER_HEALTH_SERVICE, front_ca)
            whole = grpc_health(grpc_addr, "", front_ca)
            has_metrics = "kvtier_router_workers_available" in metrics
            ok = health == 200 and has_metrics and probe == "SERVING" and whole == "SERVING"
            notes.append(f"/health {health}, /metrics {'has' if has_metrics else 'lacks'} kvtier_router_workers_available, "
                         f"grpc.health {ROUTER_HEALTH_SERVICE}: {probe}, '': {whole}")
        code = stop(p)
        notes.append(f"exit {code}")
        ok = ok and code == 0
        if server is not None:
            # Start-up goes on without the cache server (it may come later): its handshake must
            # have worked here, through the chart's TLS files and token.
            reached = "cache server unreachable at start" not in (tmp / "router.log").read_text(errors="replace")
            notes.append("handshake with the cache server " + ("ok" if reached else "FAILED"))
            ok = ok and reached
        if not ok:
            notes.append("log: " + re.sub(r"\x1b\[[0-9;]*m", "", (tmp / "router.log").read_text(errors="replace"))[-800:])
        return ok, (line or "no ready line") + "; " + "; ".join(notes)
    finally:
        if server is not None:
            stop(server)


CLIENT_FILES = {"--server-ca": ("caSecretName", "/etc/kvtier/cache-ca", "ca.crt"),
                "--server-cert": ("clientCertSecretName", "/etc/kvtier/cache-client-cert", "tls.crt"),
                "--server-key": ("clientCertSecretName", "/etc/kvtier/cache-client-cert", "tls.key")}


def check_cache_client(checks: Checks, label: str, container: dict, pod: dict, merged: dict, token: dict) -> None:
    """cacheClient and <component>.cacheToken -> --server-ca/--server-cert/--server-key/
    --server-token-file, each a file of a read-only Secret volume mounted where the flag points."""
    flags = flag_values(container.get("args", []))
    cc = merged.get("cacheClient") or {}
    want: dict[str, tuple[str, str]] = {}  # flag -> (secret, path)
    for flag, (key, mount, file) in CLIENT_FILES.items():
        if cc.get(key):
            want[flag] = (cc[key], f"{mount}/{file}")
    if token.get("secretName"):
        want["--server-token-file"] = (token["secretName"], f"/etc/kvtier/cache-token/{token['secretKey']}")
    got = {f: flags.get(f) for f in [*CLIENT_FILES, "--server-token-file"] if f in flags}
    checks.check(got == {f: [p] for f, (_, p) in want.items()},
                 f"{label}: cacheClient/cacheToken -> {sorted(got) or 'no client TLS or token flags'}" + ("" if got == {f: [p] for f, (_, p) in want.items()} else f" (want {want})"))
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    bad = []
    for flag, (secret, path) in want.items():
        mount = mounts.get(path.rsplit("/", 1)[0])
        vol = vols.get(mount["name"]) if mount else None
        if not (mount and mount.get("readOnly") and vol and vol.get("secret", {}).get("secretName") == secret):
            bad.append(flag)
    checks.check(not bad, f"{label}: each client file is in its read-only Secret volume {bad or ''}")
    if cc.get("tlsDomain"):
        checks.check(flags.get("--server-tls-domain") == [cc["tlsDomain"]], f"{label}: cacheClient.tlsDomain -> --server-tls-domain")


def check_router(checks: Checks, label: str, docs: list[dict], merged: dict, server_bin: str | None,
                 router_bin: str | None, router_flags: set[str] | None) -> None:
    r = merged["router"]
    router = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-kvtier-router"]
    dep = [d for d in router if d["kind"] == "Deployment"]
    svc = [d for d in router if d["kind"] == "Service"]
    if not checks.check(len(dep) == 1 and len(svc) == 1, f"{label}: router Deployment and Service rendered"):
        return
    pod = dep[0]["spec"]["template"]["spec"]
    rc = pod["containers"][0]
    args = rc["args"]
    flags = flag_values(args)
    checks.check(dep[0]["spec"]["replicas"] == r["replicas"], f"{label}: router replicas = {r['replicas']}")
    checks.check(flags.get("--http-listen") == [f"0.0.0.0:{r['httpPort']}"] and flags.get("--grpc-listen") == [f"0.0.0.0:{r['grpcPort']}"],
                 f"{label}: router HTTP front and gRPC listen on all pod interfaces ({flags.get('--http-listen')}, {flags.get('--grpc-listen')})")
    want_workers = [f"{w['id']}={w['httpBase']}@{w['agentUrl']}" for w in r["workers"]]
    checks.check(flags.get("--worker") == want_workers and bool(want_workers),
                 f"{label}: one --worker ID=HTTP_BASE@AGENT_URL per router.workers entry ({flags.get('--worker')})")
    cache = r["cacheEndpoint"]
    scheme = "https" if merged["cache"]["tls"]["enabled"] else "http"
    want_cache = "" if cache == "-" else (cache or f"{scheme}://{RELEASE}-kvtier-cache.{NAMESPACE}.svc:{merged['cache']['grpcPort']}")
    checks.check(flags.get("--cache-server") == [want_cache], f"{label}: router --cache-server {flags.get('--cache-server')} (want {want_cache!r})")
    if want_cache:
        check_cache_client(checks, f"{label}: router", rc, pod, merged, r["cacheToken"])
    h = r["hashing"]
    want = {"--model": r["model"], "--namespace": r["namespace"], "--block-tokens": str(h["blockTokens"]),
            "--block-bytes": str(h["blockBytes"]), "--kv-layout": h["kvLayout"], "--routing": r["routing"]}
    if h["seed"]:
        want["--seed"] = str(h["seed"])
    if h["salt"]:
        want["--salt"] = h["salt"]
    names = {"hostFetchWeight": "--host-fetch-weight", "diskFetchWeight": "--disk-fetch-weight", "queueWeight": "--queue-weight",
             "latencyQueueBoost": "--latency-queue-boost", "priorityDoubling": "--priority-doubling", "decodeWeight": "--decode-weight",
             "affinityFraction": "--affinity-fraction", "loadFactor": "--load-factor"}
    for key, flag in names.items():
        v = (r.get("costWeights") or {}).get(key)
        if v is not None:
            want[flag] = f"{v:g}" if isinstance(v, float) else str(v)
    got = {k: (flags.get(k) or [None])[0] for k in want}
    checks.check(got == want, f"{label}: router values -> flags {got if got != want else ''}".rstrip() + ("" if got == want else f" (want {want})"))
    unset = [flag for key, flag in names.items() if (r.get("costWeights") or {}).get(key) is None and flag in flags]
    checks.check(not unset, f"{label}: cost weights left empty pass no flag {unset or ''}")
    tok = r["tokenizer"]
    mounts = {m["mountPath"]: m for m in rc.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    if tok["configMapName"] or tok["volume"]:
        mount = mounts.get(tok["mountPath"])
        vol = vols.get(mount["name"]) if mount else None
        source_ok = bool(vol) and ((vol.get("configMap", {}).get("name") == tok["configMapName"]) if tok["configMapName"]
                                   else all(vol.get(k) == v for k, v in tok["volume"].items()))
        want_tok = f"{tok['mountPath'].rstrip('/')}/{tok['file']}"
        checks.check(bool(mount) and mount.get("readOnly") and source_ok and flags.get("--tokenizer") == [want_tok]
                     and (mount.get("subPath") or "") == tok["subPath"],
                     f"{label}: router --tokenizer {flags.get('--tokenizer')} inside its read-only volume ({'ConfigMap ' + tok['configMapName'] if tok['configMapName'] else list(tok['volume'])})")
        if tok["chatTemplate"]:
            checks.check(flags.get("--chat-template") == [f"{tok['mountPath'].rstrip('/')}/{tok['chatTemplate']}"],
                         f"{label}: router --chat-template {flags.get('--chat-template')} in the tokenizer volume")
    else:
        checks.check("--tokenizer" not in flags and tok["mountPath"] not in mounts, f"{label}: no tokenizer configured -> no --tokenizer, no volume")
    startup, ready, live = rc.get("startupProbe", {}), rc.get("readinessProbe", {}), rc.get("livenessProbe", {})
    if r["tls"]["secretName"]:
        checks.check(startup.get("tcpSocket", {}).get("port") == r["grpcPort"] and live.get("tcpSocket", {}).get("port") == r["grpcPort"]
                     and ready.get("httpGet", {}).get("path") == "/health" and ready["httpGet"].get("scheme") == "HTTPS",
                     f"{label}: router with TLS: startup/liveness TCP checks of the gRPC port (kubelet's gRPC probes are plaintext), readiness GET /health over HTTPS")
    else:
        checks.check(startup.get("grpc", {}).get("port") == r["grpcPort"] and startup["grpc"].get("service") == ROUTER_HEALTH_SERVICE
                     and live.get("grpc", {}).get("port") == r["grpcPort"]
                     and ready.get("httpGet", {}).get("path") == "/health" and ready["httpGet"].get("port") == "http",
                     f"{label}: router startup/liveness are gRPC health probes ({ROUTER_HEALTH_SERVICE} / \"\"), readiness GET /health on the HTTP port")
    own = {"--tls-cert": (r["tls"]["secretName"], "/etc/kvtier/router-tls/tls.crt"),
           "--tls-key": (r["tls"]["secretName"], "/etc/kvtier/router-tls/tls.key"),
           "--tokens-file": (r["auth"]["tokensSecretName"], f"/etc/kvtier/router-tokens/{r['auth']['tokensSecretKey']}"),
           "--agent-token-file": (r["agentToken"]["secretName"], f"/etc/kvtier/agent-token/{r['agentToken']['secretKey']}"),
           "--agent-ca": (r["agentCASecretName"], "/etc/kvtier/agent-ca/ca.crt")}
    want_own = {f: [p] for f, (secret, p) in own.items() if secret}
    got_own = {f: flags[f] for f in own if f in flags}
    own_mounts = {m["mountPath"]: m for m in rc.get("volumeMounts", [])}
    own_vols = {v["name"]: v for v in pod.get("volumes", [])}
    unmounted = [f for f, (secret, p) in own.items() if secret and not (
        (m := own_mounts.get(p.rsplit("/", 1)[0])) and m.get("readOnly")
        and own_vols.get(m["name"], {}).get("secret", {}).get("secretName") == secret)]
    checks.check(got_own == want_own and not unmounted,
                 f"{label}: router tls/auth/agentToken/agentCASecretName -> {sorted(got_own) or 'no front TLS or token flags'}, each in its read-only Secret volume"
                 + ("" if got_own == want_own and not unmounted else f" (want {want_own}, unmounted {unmounted})"))
    plain = "--allow-plaintext" in flags
    checks.check(plain != bool(r["tls"]["secretName"]),
                 f"{label}: router fronts {'TLS' if r['tls']['secretName'] else 'plaintext on the pod network, explicitly (--allow-plaintext)'}")
    ports = {p["name"]: p for p in svc[0]["spec"]["ports"]}
    cports = {p["name"]: p["containerPort"] for p in rc["ports"]}
    checks.check(set(ports) == {"http", "grpc"} and ports["http"]["port"] == r["httpPort"] and ports["grpc"]["port"] == r["grpcPort"]
                 and cports == {"http": r["httpPort"], "grpc": r["grpcPort"]},
                 f"{label}: router Service exposes http ({r['httpPort']}, model APIs and /metrics) and grpc ({r['grpcPort']})")
    if router_flags is None:
        print(f"SKIP {label}: kvtier-router binary not built; router flags and start-up not checked")
        return
    unknown = sorted(f for f in flags if f not in router_flags)
    checks.check(not unknown, f"{label}: every flag the chart passes is one kvtier-router --help lists {unknown or ''}")
    with tempfile.TemporaryDirectory() as tmp:
        ok, detail = start_router_with_args(router_bin, server_bin, rc["command"][1:] + args, Path(tmp))  # type: ignore[arg-type]
        checks.check(ok, f"{label}: kvtier-router starts with the chart's arguments, serves its probes and stops cleanly on SIGTERM ({detail[:400]})")


def check_values_set(checks: Checks, label: str, values_file: str | None, server_bin: str | None, server_flags: set[str] | None,
                     router_bin: str | None = None, router_flags: set[str] | None = None) -> None:
    values = load_values(values_file)
    merged_path = str(CHART)
    for kube in ("v1.27.0", f"v{kv_utils.latest_version()}"):
        report = helm.lint(merged_path, values, strict=True, kube_version=kube)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + [{"error": e} for e in report.get("errors", []) or []]
        infos = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) < 2]
        checks.check(not problems, f"{label}: helm lint --strict (kube {kube}): {problems or 'no errors, no warnings'}" + (f" (info: {'; '.join(infos)})" if infos else ""))
    try:
        docs, notes = render(CHART, values)
    except helm.HelmError as e:  # type: ignore[attr-defined]
        checks.check(False, f"{label}: render failed: {e}")
        return
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    print(f"{label}: rendered {kinds}")
    checks.check(bool(notes) and "kv-kvtier-cache" in (notes or ""), f"{label}: NOTES.txt renders")
    full = copy.deepcopy(docs)
    validate_docs(checks, label, docs)
    docs = full
    for d in docs:
        d.pop("_source", None)

    with helm.Chart.load(str(CHART)) as chart:
        merged = chart.merge_values(values)  # Helm's own coalescing of values.yaml and overrides
    c = merged["cache"]
    sts = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == f"{RELEASE}-kvtier-cache"]
    if not checks.check(len(sts) == 1, f"{label}: one cache StatefulSet"):
        return
    sts = sts[0]
    pod = sts["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    flags = flag_values(ctr["args"])
    checks.check(sts["spec"]["replicas"] == c["replicas"], f"{label}: StatefulSet replicas = {c['replicas']}")
    checks.check(flags.get("--host-capacity") == [c["hostCapacity"]] and flags.get("--disk-capacity") == [c["diskCapacity"]],
                 f"{label}: capacities passed as flags (--host-capacity {flags.get('--host-capacity')}, --disk-capacity {flags.get('--disk-capacity')})")
    checks.check(flags.get("--listen") == [f"0.0.0.0:{c['grpcPort']}"] and flags.get("--metrics-listen") == [f"0.0.0.0:{c['metricsPort']}"],
                 f"{label}: gRPC and metrics listen on all pod interfaces")
    # The binary data plane is plaintext: on the pod network (port `data`, in both Services)
    # unless cache.dataPort is 0 or TLS is on, then --data-listen off and no port.
    data_on = bool(c["dataPort"]) and not c["tls"]["enabled"]
    ctr_ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
    svc_ports = [{p["name"]: p["port"] for p in svc["spec"]["ports"]} for svc in by_kind(docs, "Service")
                 if svc["metadata"]["name"].startswith(sts["metadata"]["name"])]
    if data_on:
        checks.check(flags.get("--data-listen") == [f"0.0.0.0:{c['dataPort']}"] and ctr_ports.get("data") == c["dataPort"]
                     and len(svc_ports) == 2 and all(p.get("data") == c["dataPort"] for p in svc_ports),
                     f"{label}: data plane on the pod network, container port and both Services ({flags.get('--data-listen')}, {svc_ports})")
    else:
        checks.check(flags.get("--data-listen") == ["off"] and "data" not in ctr_ports and not any("data" in p for p in svc_ports),
                     f"{label}: data plane off (dataPort 0 or TLS) and no data port ({flags.get('--data-listen')})")
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    if c["tls"]["enabled"]:
        tcp = [ctr.get(k, {}).get("tcpSocket", {}).get("port") for k in kinds]
        checks.check(tcp == ["grpc"] * 3 and not any("grpc" in ctr[k] for k in kinds),
                     f"{label}: with TLS the probes are TCP checks of the gRPC port (kubelet's gRPC probes speak plaintext only)")
    else:
        probes = {k: ctr.get(k, {}).get("grpc") for k in kinds}
        checks.check(all(p and p["port"] == c["grpcPort"] for p in probes.values()) and probes["readinessProbe"].get("service") == "kvtier.v1.CacheService",
                     f"{label}: startup/readiness/liveness are gRPC health probes on the gRPC port (readiness: kvtier.v1.CacheService)")
    # kvtier-server's own rule: plaintext gRPC or /metrics on a non-loopback address needs
    # --allow-plaintext, else it refuses to start.
    def loopback(addr: str) -> bool:
        return addr.startswith("127.") or addr.startswith("[::1]")
    grpc_plain = not loopback(flags["--listen"][0]) and "--tls-cert" not in flags
    metrics_plain = not loopback(flags["--metrics-listen"][0])
    checks.check((not (grpc_plain or metrics_plain)) or "--allow-plaintext" in flags,
                 f"{label}: plaintext off loopback (gRPC {grpc_plain}, /metrics {metrics_plain}) comes with --allow-plaintext")
    if c["tls"]["enabled"]:
        mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
        secrets = {vol["name"]: vol.get("secret", {}).get("secretName") for vol in pod.get("volumes", [])}
        want = {"/etc/kvtier/tls": c["tls"]["secretName"]}
        if c["tls"]["clientCASecretName"]:
            want["/etc/kvtier/client-ca"] = c["tls"]["clientCASecretName"]
        if c["auth"]["tokensSecretName"]:
            want["/etc/kvtier/auth"] = c["auth"]["tokensSecretName"]
        got = {path: secrets.get(mounts.get(path)) for path in want}
        paths_ok = all(any(v.startswith(path + "/") for v in sum(flags.values(), [])) for path in want)
        checks.check(got == want and paths_ok, f"{label}: TLS/client-CA/token Secrets mounted where the flags point ({got})")
    checks.check(bool(ctr.get("resources", {}).get("requests", {}).get("cpu")) and bool(ctr["resources"]["requests"].get("memory")),
                 f"{label}: resource requests set ({ctr.get('resources', {}).get('requests')})")
    mount = [m for m in ctr["volumeMounts"] if m["name"] == "data"]
    checks.check(bool(mount) and flags.get("--data-dir") == [mount[0]["mountPath"]], f"{label}: --data-dir is the data volume's mount path")
    if c["persistence"]["enabled"]:
        vct = sts["spec"].get("volumeClaimTemplates", [])
        checks.check(len(vct) == 1 and vct[0]["metadata"]["name"] == "data" and vct[0]["spec"]["resources"]["requests"]["storage"] == c["persistence"]["size"],
                     f"{label}: PersistentVolumeClaim template 'data' of {c['persistence']['size']}")
    else:
        checks.check("volumeClaimTemplates" not in sts["spec"] and any(vol.get("emptyDir") is not None for vol in pod.get("volumes", [])),
                     f"{label}: persistence off -> emptyDir data volume, no PVC")
    gpu = c["gpu"]
    limits = ctr["resources"].get("limits", {})
    if gpu["enabled"]:
        checks.check(str(limits.get(gpu["resourceName"])) == str(gpu["count"]) and flags.get("--gpu-capacity") == [gpu["capacity"]],
                     f"{label}: GPU limit {gpu['resourceName']}={limits.get(gpu['resourceName'])} and --gpu-capacity {flags.get('--gpu-capacity')}")
    else:
        checks.check(gpu["resourceName"] not in limits and "--gpu-capacity" not in flags, f"{label}: no GPU limit or flag without cache.gpu.enabled")
    svc = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    cache_svc = svc.get(f"{RELEASE}-kvtier-cache")
    want_ports = {"grpc", "metrics"} | ({"data"} if c["dataPort"] and not c["tls"]["enabled"] else set())
    checks.check(bool(cache_svc) and {p["name"] for p in cache_svc["spec"]["ports"]} == want_ports,
                 f"{label}: cache Service exposes {sorted(want_ports)}")
    headless = svc.get(f"{RELEASE}-kvtier-cache-headless")
    checks.check(bool(headless) and headless["spec"].get("clusterIP") == "None" and sts["spec"]["serviceName"] == headless["metadata"]["name"],
                 f"{label}: headless Service governs the StatefulSet")
    if server_flags is not None:
        unknown = sorted(f for f in flags if f not in server_flags)
        checks.check(not unknown, f"{label}: every flag the chart passes is one kvtier-server --help lists {unknown or ''}")
        if server_bin and merged["cluster"]["enabled"]:
            pass  # started by check_cluster, against a real etcd
        elif server_bin and not gpu["enabled"]:
            with tempfile.TemporaryDirectory() as tmp:
                ok, detail = start_with_args(server_bin, ctr["command"][1:] + ctr["args"], Path(tmp))
                if "--tls-cert" in flags:
                    detail += " (TLS, client CA and token file from generated stand-ins)"
                checks.check(ok, f"{label}: kvtier-server starts with the chart's arguments and stops cleanly on SIGTERM ({detail.strip()[:200]})")
        elif gpu["enabled"]:
            print(f"SKIP {label}: starting kvtier-server with GPU arguments needs a cuda build and a GPU")

    check_cluster(checks, label, docs, merged, server_bin)

    router = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-kvtier-router"]
    r_enabled = merged["router"]["enabled"]
    if r_enabled:
        check_router(checks, label, docs, merged, server_bin, router_bin, router_flags)
    else:
        checks.check(not router, f"{label}: no router objects while router.enabled is false")

    sm = by_kind(docs, "ServiceMonitor")
    sm_enabled = merged["serviceMonitor"]["enabled"]
    checks.check(len(sm) == (1 if sm_enabled else 0), f"{label}: ServiceMonitor {'rendered' if sm_enabled else 'absent'}")
    if sm:
        sel = sm[0]["spec"]["selector"]
        matched = [s for s in by_kind(docs, "Service")
                   if all(s["metadata"]["labels"].get(k) == v for k, v in sel.get("matchLabels", {}).items())
                   and all((e["key"] in s["metadata"]["labels"]) == (e["operator"] != "DoesNotExist") for e in sel.get("matchExpressions", []))]
        names = sorted(s["metadata"]["name"] for s in matched)
        expect = sorted([f"{RELEASE}-kvtier-cache"] + ([f"{RELEASE}-kvtier-router"] if r_enabled else []))
        checks.check(names == expect, f"{label}: ServiceMonitor selects {names} (each pod once: not the headless Service)")
        # Each selected Service is scraped by exactly one endpoint (an endpoint's port name
        # must be one of the Service's ports), on its /metrics.
        eps = sm[0]["spec"]["endpoints"]
        scraped = {s["metadata"]["name"]: [e["port"] for e in eps if e["port"] in {p["name"] for p in s["spec"]["ports"]}] for s in matched}
        want_ports = {f"{RELEASE}-kvtier-cache": ["metrics"], **({f"{RELEASE}-kvtier-router": ["http"]} if r_enabled else {})}
        checks.check(scraped == want_ports and all(e.get("path") == "/metrics" for e in eps),
                     f"{label}: ServiceMonitor scrapes each Service's /metrics port once ({scraped})")
    pm = by_kind(docs, "PodMonitor")
    pm_enabled = sm_enabled and merged["serviceMonitor"]["workerAgents"]["enabled"]
    checks.check(len(pm) == (1 if pm_enabled else 0), f"{label}: worker-agent PodMonitor {'rendered' if pm_enabled else 'absent'}")
    if pm:
        checks.check(pm[0]["spec"]["selector"] == merged["serviceMonitor"]["workerAgents"]["selector"]
                     and [e["port"] for e in pm[0]["spec"]["podMetricsEndpoints"]] == ["kvtier-metrics"],
                     f"{label}: PodMonitor selects the inference pods given and scrapes the sidecar's kvtier-metrics port")

    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]
    d_enabled = merged["dashboards"]["enabled"]
    checks.check(len(cms) == (1 if d_enabled else 0), f"{label}: dashboards ConfigMap {'rendered' if d_enabled else 'absent'}")
    if cms:
        files = {p.name: p.read_text() for p in sorted((CHART / "dashboards").glob("*.json"))}
        data = cms[0].get("data", {})
        same = set(data) == set(files) and all(json.loads(data[k]) == json.loads(files[k]) for k in files)
        checks.check(same, f"{label}: dashboards ConfigMap carries {sorted(files)} unchanged")
        checks.check(cms[0]["metadata"]["labels"].get("grafana_dashboard") == "1", f"{label}: ConfigMap has the Grafana sidecar label grafana_dashboard=1")


def find_etcd() -> str | None:
    """The etcd binary the Rust cluster tests use (testkit/src/etcd.rs): $KVTIER_ETCD_BIN, the one
    scripts/setup.sh installs (~/.cache/kvtier-etcd/etcd), or etcd on PATH."""
    for c in (os.environ.get("KVTIER_ETCD_BIN"), str(Path.home() / ".cache" / "kvtier-etcd" / "etcd"), shutil.which("etcd")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def etcd_nodes(client: str, prefix: str) -> dict[str, dict]:
    """The membership records under prefix/nodes/, read through etcd's JSON gateway (/v3/kv/range)."""
    import base64
    import urllib.request

    key = f"{prefix}/nodes/".encode()
    end = key[:-1] + bytes([key[-1] + 1])
    body = json.dumps({"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()}).encode()
    req = urllib.request.Request(f"http://{client}/v3/kv/range", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        kvs = json.loads(r.read()).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode().rsplit("/", 1)[-1]: json.loads(base64.b64decode(kv["value"])) for kv in kvs}


def check_cluster(checks: Checks, label: str, docs: list[dict], merged: dict, server_bin: str | None) -> None:
    """cluster.enabled: each replica registers in etcd under its pod name with its per-pod DNS name;
    etcd.enabled: the chart's single-node etcd. With a server binary and an etcd binary, the chart's
    etcd arguments start a real etcd and two replicas' kvtier-server arguments register in it."""
    cl, e = merged["cluster"], merged["etcd"]
    name = f"{RELEASE}-kvtier-cache"
    sts = next(d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == name)
    ctr = sts["spec"]["template"]["spec"]["containers"][0]
    flags = flag_values(ctr["args"])
    headless = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == f"{name}-headless")
    etcd_objs = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-kvtier-etcd"]
    checks.check(sorted(d["kind"] for d in etcd_objs) == (["Service", "StatefulSet"] if e["enabled"] else []),
                 f"{label}: etcd Service and StatefulSet {'rendered' if e['enabled'] else 'absent'} ({sorted(d['kind'] for d in etcd_objs)})")
    if not cl["enabled"]:
        checks.check(not any(f in flags for f in ("--cluster", "--node-id", "--advertise")) and headless["spec"].get("publishNotReadyAddresses") is False,
                     f"{label}: cluster off: no --cluster flags, headless Service publishes ready pods only")
        return
    endpoints = cl["etcdEndpoints"] or [f"{RELEASE}-kvtier-etcd.{NAMESPACE}.svc:{e['clientPort']}"]
    url = f"etcd://{','.join(endpoints)}{cl['prefix']}"
    advertise = f"$(POD_NAME).{name}-headless.$(POD_NAMESPACE).svc:{merged['cache']['grpcPort']}"
    env = {v["name"]: v.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for v in ctr.get("env", [])}
    checks.check(flags.get("--cluster") == [url] and flags.get("--node-id") == ["$(POD_NAME)"] and flags.get("--advertise") == [advertise]
                 and flags.get("--cluster-lease-ttl-s") == [str(cl["leaseTtlSeconds"])]
                 and env.get("POD_NAME") == "metadata.name" and env.get("POD_NAMESPACE") == "metadata.namespace",
                 f"{label}: each replica joins {url} as its pod name, advertising {advertise} (POD_NAME/POD_NAMESPACE from the downward API)")
    data_on = bool(merged["cache"]["dataPort"]) and not merged["cache"]["tls"]["enabled"]
    checks.check(flags.get("--advertise-data") == ([advertise.rsplit(":", 1)[0] + f":{merged['cache']['dataPort']}"] if data_on else None),
                 f"{label}: the data plane is advertised beside gRPC when it is on ({flags.get('--advertise-data')})")
    checks.check(headless["spec"].get("publishNotReadyAddresses") is True,
                 f"{label}: the headless Service publishes replicas before they are ready (they register before their readiness probe passes)")
    if e["enabled"]:
        svc = next(d for d in etcd_objs if d["kind"] == "Service")
        ests = next(d for d in etcd_objs if d["kind"] == "StatefulSet")
        pod_labels = ests["spec"]["template"]["metadata"]["labels"]
        ectr = ests["spec"]["template"]["spec"]["containers"][0]
        checks.check(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
                     and [p["port"] for p in svc["spec"]["ports"]] == [e["clientPort"]] and ests["spec"]["replicas"] == 1,
                     f"{label}: the etcd Service selects the single etcd pod on port {e['clientPort']}")
    # The chart's router follows the membership too (one event stream per replica), not the
    # cache Service (which would give it one replica's events).
    with_router = yaml.safe_load((CHART / "ci" / "router-values.yaml").read_text())
    with_router["router"]["cacheEndpoint"] = ""
    with_router["cluster"], with_router["etcd"] = cl, e
    rdocs, _ = render(CHART, with_router)
    rdep = [d for d in rdocs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{RELEASE}-kvtier-router"]
    rflags = flag_values(rdep[0]["spec"]["template"]["spec"]["containers"][0]["args"]) if rdep else {}
    checks.check(rflags.get("--cluster") == [url], f"{label}: the chart's router follows the cluster ({rflags.get('--cluster')}, want {url})")
    if not server_bin:
        return
    etcd_bin = find_etcd()
    if etcd_bin is None:
        msg = f"{label}: starting the replicas against a real etcd needs etcd (scripts/setup.sh installs it into ~/.cache/kvtier-etcd)"
        if os.environ.get("CI") == "true":
            checks.check(False, msg)
        else:
            print(f"SKIP {msg}")
        return
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        client = f"127.0.0.1:{free_port()}"
        if e["enabled"]:
            # The chart's own etcd arguments, with its addresses moved to loopback; a free peer
            # port (the pod's default, localhost:2380, may be taken on this machine).
            eargs = list(ectr["args"])
            for flag, value in (("--data-dir", str(tmp / "etcd")), ("--listen-client-urls", f"http://{client}"),
                                ("--advertise-client-urls", f"http://{client}"), ("--listen-metrics-urls", f"http://127.0.0.1:{free_port()}")):
                eargs[eargs.index(flag) + 1] = value
        else:
            eargs = ["--name", "test", "--data-dir", str(tmp / "etcd"), "--listen-client-urls", f"http://{client}",
                     "--advertise-client-urls", f"http://{client}"]
        peer = f"http://127.0.0.1:{free_port()}"
        ename = eargs[eargs.index("--name") + 1]
        eargs += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"{ename}={peer}"]
        etcd = subprocess.Popen([etcd_bin, *eargs], stdout=open(tmp / "etcd.log", "wb"), stderr=subprocess.STDOUT)
        servers: list[subprocess.Popen] = []
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    etcd_nodes(client, cl["prefix"])
                    break
                except OSError:
                    if etcd.poll() is not None or time.monotonic() > deadline:
                        checks.check(False, f"{label}: etcd starts with the chart's arguments: {(tmp / 'etcd.log').read_text()[-400:]}")
                        return
                    time.sleep(0.2)
            checks.check(True, f"{label}: etcd {'starts with the chart etcd StatefulSet arguments' if e['enabled'] else 'started'} on {client}")
            pods = [f"{name}-{i}" for i in range(2)]
            lines = []
            for pod in pods:
                # What kubelet does: $(POD_NAME) and $(POD_NAMESPACE) from the downward API.
                args = [a.replace("$(POD_NAME)", pod).replace("$(POD_NAMESPACE)", NAMESPACE) for a in ctr["command"][1:] + ctr["args"]]
                for flag, value in (("--listen", "127.0.0.1:0"), ("--metrics-listen", "127.0.0.1:0"), ("--data-dir", str(tmp / pod)),
                                    ("--cluster", f"etcd://{client}{cl['prefix']}")):
                    args[args.index(flag) + 1] = value
                if "--data-listen" in args and args[args.index("--data-listen") + 1] != "off":
                    args[args.index("--data-listen") + 1] = "127.0.0.1:0"
                p, line = spawn_ready([server_bin, *args], "kvtier-server ready", tmp / f"{pod}.log")
                servers.append(p)
                lines.append(line or f"no ready line; log: {(tmp / f'{pod}.log').read_text()[-300:]}")
            nodes = etcd_nodes(client, cl["prefix"])
            want = {pod: f"{pod}.{name}-headless.{NAMESPACE}.svc:{merged['cache']['grpcPort']}" for pod in pods}
            got = {k: v.get("grpc") for k, v in nodes.items()}
            checks.check(all(line.endswith(f"node={pod}") for line, pod in zip(lines, pods)) and got == want,
                         f"{label}: two replicas started with the chart's arguments register as their pod names with their per-pod DNS names ({got}; {lines})")
            codes = [stop(p) for p in servers]
            left = etcd_nodes(client, cl["prefix"])
            checks.check(codes == [0, 0] and not left, f"{label}: on SIGTERM the replicas leave the membership at once and exit 0 ({codes}, left {sorted(left)})")
        finally:
            for p in servers:
                stop(p)
            stop(etcd)


PARENT_CHART = """apiVersion: v2
name: inference
version: 0.1.0
description: A user's inference chart that runs the kvtier worker agent next to its engine.
dependencies:
  - name: kvtier
    version: 0.1.0
    repository: file://../kvtier
"""
PARENT_VALUES = """kvtier:
  workerAgent:
    salt: llama-8b
    model: meta-llama/Llama-3.1-8B-Instruct
    extraArgs: ["--vllm-events", "tcp://127.0.0.1:5557"]
"""
PARENT_DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: vllm
spec:
  replicas: 1
  selector:
    matchLabels: {app: vllm}
  template:
    metadata:
      labels: {app: vllm}
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai:latest
          volumeMounts:
            - name: kvtier-shm
              mountPath: /dev/shm
        {{- include "kvtier.workerAgent.container" (dict "root" . "values" .Values.kvtier) | nindent 8 }}
      volumes:
        {{- include "kvtier.workerAgent.volumes" (dict "root" . "values" .Values.kvtier) | nindent 8 }}
"""


def check_sidecar(checks: Checks, agent_bin: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "inference"
        (parent / "templates").mkdir(parents=True)
        (parent / "Chart.yaml").write_text(PARENT_CHART)
        (parent / "values.yaml").write_text(PARENT_VALUES)
        (parent / "templates" / "vllm.yaml").write_text(PARENT_DEPLOYMENT)
        shutil.copytree(CHART, parent / "charts" / "kvtier")
        report = helm.lint(str(parent), {}, strict=True)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + list(report.get("errors") or [])
        checks.check(not problems, f"sidecar: helm lint --strict of a parent chart including kvtier: {problems or 'clean'}")
        docs, _ = render(parent, yaml.safe_load(PARENT_VALUES))
        dep = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        if not checks.check(len(dep) == 1, "sidecar: parent chart renders its Deployment"):
            return
        validate_docs(checks, "sidecar", [dep[0]])
        pod = dep[0]["spec"]["template"]["spec"]
        agent = [c for c in pod["containers"] if c["name"] == "kvtier-agent"]
        if not checks.check(len(agent) == 1, "sidecar: kvtier-agent container added next to the engine"):
            return
        a = agent[0]
        flags = flag_values(a["args"])
        expect_server = f"http://{RELEASE}-kvtier-cache.{NAMESPACE}.svc:50051"
        checks.check(flags.get("--server") == [expect_server], f"sidecar: --server defaults to the release's cache Service ({flags.get('--server')})")
        checks.check(flags.get("--salt") == ["llama-8b"] and flags.get("--uds") == ["/dev/shm/kvtier/agent.sock"]
                     and "--listen" not in flags and flags.get("--worker-id") == ["$(POD_NAME)"],
                     f"sidecar: values -> flags, the engine's Unix socket in the shared /dev/shm and no TCP listener by default "
                     f"(--salt {flags.get('--salt')}, --uds {flags.get('--uds')}, --listen {flags.get('--listen')}, --worker-id {flags.get('--worker-id')})")
        checks.check(flags.get("--metrics-listen") == ["0.0.0.0:9465"] and [p.get("name") for p in a.get("ports", [])] == ["kvtier-metrics"],
                     f"sidecar: /metrics on the pod network for Prometheus (--metrics-listen {flags.get('--metrics-listen')}, port {a.get('ports')})")
        checks.check(any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod.get("volumes", [])),
                     "sidecar: memory-backed /dev/shm volume shared with the engine")
        sts = [d for d in docs if d["kind"] == "StatefulSet"]
        checks.check(len(sts) == 1 and sts[0]["metadata"]["name"] == f"{RELEASE}-kvtier-cache",
                     "sidecar: the subchart's cache StatefulSet has the name the sidecar points at")
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        checks.check(a["image"].endswith(f":{app_version}"), f"sidecar: image tag defaults to the chart's appVersion ({a['image']})")
        checks.check("readinessProbe" not in a and "livenessProbe" not in a,
                     "sidecar: no probes while the agent serves only its Unix socket (kubelet dials the pod IP)")
        exposed = yaml.safe_load(PARENT_VALUES)
        exposed["kvtier"]["workerAgent"]["listenHost"] = "0.0.0.0"
        try:
            render(parent, exposed)
            checks.check(False, "sidecar: a pod-network listener without workerAgent.auth is refused: it rendered")
        except helm.HelmError as e:  # type: ignore[attr-defined]
            checks.check("tokensSecretName" in str(e),
                         f"sidecar: a pod-network listener without workerAgent.auth is refused ({str(e).splitlines()[-1][-100:]})")
        exposed["kvtier"]["workerAgent"]["auth"] = {"tokensSecretName": "kvtier-agent-tokens"}
        docs2, _ = render(parent, exposed)
        dep2 = [d for d in docs2 if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        a2 = [c for c in dep2[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "kvtier-agent"][0] if dep2 else {}
        probe = a2.get("readinessProbe", {}).get("grpc", {})
        checks.check(probe.get("port") == 50061 and probe.get("service") == "kvtier.v1.WorkerService"
                     and a2.get("livenessProbe", {}).get("grpc", {}).get("port") == 50061,
                     f"sidecar: listening on 0.0.0.0 adds grpc.health.v1 probes on the agent port ({probe})")
        f2 = flag_values(a2.get("args", []))
        clustered = yaml.safe_load(PARENT_VALUES)
        clustered["kvtier"]["cluster"] = {"enabled": True, "etcdEndpoints": ["etcd-0.etcd:2379", "etcd-1.etcd:2379"]}
        docs3, _ = render(parent, clustered)
        dep3 = [d for d in docs3 if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        a3 = [c for c in dep3[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "kvtier-agent"][0] if dep3 else {}
        f3 = flag_values(a3.get("args", []))
        checks.check(f3.get("--cluster") == ["etcd://etcd-0.etcd:2379,etcd-1.etcd:2379/kvtier"],
                     f"sidecar: with cluster.enabled the agent reaches each block's owner through the membership ({f3.get('--cluster')})")
        checks.check("--cluster-data-plane" not in f3 and "--server-data" not in f3,
                     "sidecar: in cluster mode payloads over gRPC unless workerAgent.dataPlane")
        clustered["kvtier"]["workerAgent"]["dataPlane"] = True
        docs4, _ = render(parent, clustered)
        dep4 = [d for d in docs4 if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        a4 = [c for c in dep4[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "kvtier-agent"][0] if dep4 else {}
        f4 = flag_values(a4.get("args", []))
        checks.check("--cluster-data-plane" in f4 and "--server-data" not in f4 and bool(f4.get("--cluster")),
                     f"sidecar: dataPlane with cluster.enabled -> --cluster-data-plane (each owner's advertised data address), no --server-data ({sorted(f4)})")
        flags.update(f4)
        cache_docs = [d for d in docs4 if d["kind"] == "StatefulSet"]
        cache_flags = flag_values(cache_docs[0]["spec"]["template"]["spec"]["containers"][0].get("args", [])) if cache_docs else {}
        checks.check(bool(cache_flags.get("--advertise-data")),
                     f"sidecar: the cache replicas advertise the data addresses --cluster-data-plane dials ({cache_flags.get('--advertise-data')})")
        pinned = yaml.safe_load(yaml.safe_dump(clustered))
        pinned["kvtier"]["workerAgent"]["cacheDataEndpoint"] = "cache-0:50052"
        try:
            render(parent, pinned)
            checks.check(False, "sidecar: cacheDataEndpoint with cluster.enabled is refused: it rendered")
        except helm.HelmError as e:  # type: ignore[attr-defined]
            checks.check("cacheDataEndpoint" in str(e) and "cluster" in str(e),
                         f"sidecar: cacheDataEndpoint with cluster.enabled is refused ({str(e).splitlines()[-1][-100:]})")
        clustered["kvtier"]["cache"] = {"allowPlaintext": False, "tls": {"enabled": True, "secretName": "s"}}
        clustered["kvtier"]["cacheClient"] = {"caSecretName": "ca"}
        try:
            render(parent, clustered)
            checks.check(False, "sidecar: dataPlane with cluster.enabled against TLS replicas is refused: it rendered")
        except helm.HelmError as e:  # type: ignore[attr-defined]
            checks.check("dataPlane" in str(e),
                         f"sidecar: dataPlane with cluster.enabled against TLS replicas is refused ({str(e).splitlines()[-1][-100:]})")
        mounts2 = {m["mountPath"]: m for m in a2.get("volumeMounts", [])}
        vols2 = {v["name"]: v for v in dep2[0]["spec"]["template"]["spec"].get("volumes", [])} if dep2 else {}
        m2 = mounts2.get("/etc/kvtier/agent-tokens", {})
        checks.check(f2.get("--listen") == ["0.0.0.0:50061"] and f2.get("--tokens-file") == ["/etc/kvtier/agent-tokens/tokens"]
                     and m2.get("readOnly") and vols2.get(m2.get("name", ""), {}).get("secret", {}).get("secretName") == "kvtier-agent-tokens",
                     f"sidecar: listenHost 0.0.0.0 with workerAgent.auth -> --listen, --tokens-file from its read-only Secret ({f2.get('--listen')}, {f2.get('--tokens-file')})")
        flags.update(f2)
        if dep2:
            validate_docs(checks, "sidecar-exposed", [dep2[0]])
        exposed["kvtier"]["workerAgent"]["tls"] = {"secretName": "kvtier-agent-tls"}
        docs5, _ = render(parent, exposed)
        dep5 = [d for d in docs5 if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        a5 = [c for c in dep5[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "kvtier-agent"][0] if dep5 else {}
        f5 = flag_values(a5.get("args", []))
        checks.check(f5.get("--tls-cert") == ["/etc/kvtier/agent-tls/tls.crt"] and f5.get("--tls-key") == ["/etc/kvtier/agent-tls/tls.key"]
                     and a5.get("readinessProbe", {}).get("tcpSocket", {}).get("port") == 50061,
                     f"sidecar: workerAgent.tls -> --tls-cert/--tls-key and TCP probes (kubelet's gRPC probes are plaintext) ({a5.get('readinessProbe')})")
        flags.update(f5)
        checks.check("--server-data" not in flags, "sidecar: payloads over gRPC unless workerAgent.dataPlane")
        with_data = yaml.safe_load(PARENT_VALUES)
        with_data["kvtier"]["workerAgent"]["dataPlane"] = True
        docs3, _ = render(parent, with_data)
        dep3 = [d for d in docs3 if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        a3 = [c for c in dep3[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "kvtier-agent"][0] if dep3 else {}
        data_flags = flag_values(a3.get("args", []))
        expect_data = f"{RELEASE}-kvtier-cache.{NAMESPACE}.svc:50052"
        checks.check(data_flags.get("--server-data") == [expect_data],
                     f"sidecar: dataPlane -> --server-data on the release's cache Service data port ({data_flags.get('--server-data')})")
        flags.update(data_flags)
        with_data["kvtier"]["cache"] = {"allowPlaintext": False, "tls": {"enabled": True, "secretName": "s"}}
        with_data["kvtier"]["cacheClient"] = {"caSecretName": "ca"}
        try:
            render(parent, with_data)
            checks.check(False, "sidecar: dataPlane against a TLS cache server is refused: it rendered")
        except helm.HelmError as e:  # type: ignore[attr-defined]
            checks.check("dataPlane" in str(e), f"sidecar: dataPlane against a TLS cache server is refused ({str(e).splitlines()[-1][-100:]})")
        secured = yaml.safe_load(PARENT_VALUES)
        secured["kvtier"]["cache"] = {"tls": {"enabled": True, "secretName": "kvtier-tls", "clientCASecretName": "kvtier-client-ca"},
                                      "auth": {"tokensSecretName": "kvtier-tokens"}}
        secured["kvtier"]["cacheClient"] = {"caSecretName": "kvtier-ca", "clientCertSecretName": "kvtier-agent-cert"}
        secured["kvtier"]["workerAgent"]["cacheToken"] = {"secretName": "kvtier-agent-token", "secretKey": "token"}
        docs4, _ = render(parent, secured)
        dep4 = [d for d in docs4 if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        if checks.check(len(dep4) == 1, "sidecar: renders against a cache server with TLS, client certificates and tokens"):
            validate_docs(checks, "sidecar-secured", [dep4[0]])
            pod4 = dep4[0]["spec"]["template"]["spec"]
            a4 = [c for c in pod4["containers"] if c["name"] == "kvtier-agent"][0]
            f4 = flag_values(a4["args"])
            checks.check(f4.get("--server") == [f"https://{RELEASE}-kvtier-cache.{NAMESPACE}.svc:50051"],
                         f"sidecar: cache.tls.enabled -> --server https:// ({f4.get('--server')})")
            with helm.Chart.load(str(CHART)) as chart:
                merged4 = chart.merge_values(secured["kvtier"])
            check_cache_client(checks, "sidecar", a4, pod4, merged4, merged4["workerAgent"]["cacheToken"])
            flags.update(f4)
        for what, broken in (("cacheClient.caSecretName", "caSecretName"), ("cacheClient.clientCertSecretName", "clientCertSecretName")):
            missing = copy.deepcopy(secured)
            missing["kvtier"]["cacheClient"].pop(broken)
            try:
                render(parent, missing)
                checks.check(False, f"sidecar: a secured cache server without {what} is refused: it rendered")
            except helm.HelmError as e:  # type: ignore[attr-defined]
                checks.check(broken in str(e), f"sidecar: a secured cache server without {what} is refused ({str(e).splitlines()[-1][-90:]})")
        missing = copy.deepcopy(secured)
        missing["kvtier"]["workerAgent"].pop("cacheToken")
        try:
            render(parent, missing)
            checks.check(False, "sidecar: cache.auth without workerAgent.cacheToken is refused: it rendered")
        except helm.HelmError as e:  # type: ignore[attr-defined]
            checks.check("cacheToken" in str(e), f"sidecar: cache.auth without workerAgent.cacheToken is refused ({str(e).splitlines()[-1][-90:]})")
        known = help_flags(agent_bin)
        if known is None:
            print("SKIP sidecar: kvtier-agent binary not built; its flags are not checked")
        else:
            unknown = sorted(f for f in flags if f not in known)
            checks.check(not unknown, f"sidecar: every flag is one kvtier-agent --help lists {unknown or ''}")


WORKER = {"id": "w0", "httpBase": "http://w0.inference.svc:8000", "agentUrl": "http://w0.inference.svc:50061"}


def check_render_refuses(checks: Checks) -> None:
    """Combinations kvtier-server would refuse at start-up fail at render time instead."""
    bad = {
        "plaintext gRPC on the pod address without cache.allowPlaintext": {"cache": {"allowPlaintext": False}},
        "cache.tls.enabled without a Secret": {"cache": {"tls": {"enabled": True}}},
        "a ServiceMonitor for a loopback-only /metrics": {"cache": {"allowPlaintext": False, "tls": {"enabled": True, "secretName": "s"}}, "serviceMonitor": {"enabled": True}},
        "a router without workers (kvtier-router needs a --worker)": {"router": {"enabled": True}},
        "a router tokenizer from both a ConfigMap and a volume": {"router": {"enabled": True, "workers": [WORKER], "tokenizer": {
            "configMapName": "tok", "volume": {"emptyDir": {}}}}},
        "a router chat template without a tokenizer volume": {"router": {"enabled": True, "workers": [WORKER], "tokenizer": {"chatTemplate": "t.jinja"}}},
        "a router in plaintext beside a cache server with TLS": {"cache": {"tls": {"enabled": True, "secretName": "s"}},
                                                                  "cacheClient": {"caSecretName": "ca"},
                                                                  "router": {"enabled": True, "workers": [WORKER]}},
        "cluster mode without etcd (no cluster.etcdEndpoints, etcd.enabled false)": {"cluster": {"enabled": True}},
        "a worker-agent PodMonitor without a pod selector": {"serviceMonitor": {"enabled": True, "workerAgents": {"enabled": True}}},
        "a worker-agent PodMonitor for a loopback-only agent /metrics": {"serviceMonitor": {"enabled": True, "workerAgents": {
            "enabled": True, "selector": {"matchLabels": {"app": "vllm"}}}}, "workerAgent": {"metricsHost": "127.0.0.1"}},
    }
    for what, values in bad.items():
        try:
            render(CHART, values)
            checks.check(False, f"render refuses {what}: it rendered")
        except helm.HelmError as e:  # type: ignore[attr-defined]
            checks.check(True, f"render refuses {what}: {str(e).splitlines()[-1][-140:]}")
    docs, _ = render(CHART, {"cache": {"allowPlaintext": False, "tls": {"enabled": True, "secretName": "s"}}})
    ctr = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    f = flag_values(ctr["args"])
    checks.check(f.get("--metrics-listen") == ["127.0.0.1:9464"] and "--allow-plaintext" not in f,
                 f"allowPlaintext false: /metrics on loopback only and no --allow-plaintext ({f.get('--metrics-listen')})")


def check_schema_rejects(checks: Checks) -> None:
    """values.schema.json makes `helm lint` (and install) refuse mistyped keys and sizes the
    binaries would refuse at start-up."""
    bad = {
        "a misspelt key (cache.hostCapcity)": {"cache": {"hostCapcity": "8GiB"}},
        "a size kvtier-server cannot parse (cache.diskCapacity: lots)": {"cache": {"diskCapacity": "lots"}},
        "a size kvtier-agent cannot parse (workerAgent.stagingBytes: 1TB)": {"workerAgent": {"stagingBytes": "1TB"}},
        "a GPU count of 0": {"cache": {"gpu": {"enabled": True, "count": 0}}},
        "a router worker without agentUrl": {"router": {"workers": [{"id": "w0", "httpBase": "http://w0:8000"}]}},
        "a router worker whose httpBase is not a URL": {"router": {"workers": [{**WORKER, "httpBase": "w0:8000"}]}},
        "an unknown routing mode (router.routing: fastest)": {"router": {"routing": "fastest"}},
        "a negative cost weight": {"router": {"costWeights": {"queueWeight": -1}}},
        "a load factor below 1 (other than 0)": {"router": {"costWeights": {"loadFactor": 0.5}}},
        "a misspelt cost weight (router.costWeights.queueWieght)": {"router": {"costWeights": {"queueWieght": 1}}},
        "an etcd endpoint without a port (cluster.etcdEndpoints: [etcd])": {"cluster": {"etcdEndpoints": ["etcd"]}},
        "a cluster lease TTL of 0": {"cluster": {"leaseTtlSeconds": 0}},
    }
    for what, values in bad.items():
        report = helm.lint(str(CHART), values, strict=True)
        errors = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) >= 3]
        checks.check(bool(errors), f"schema: helm lint refuses {what}: {' '.join(errors[0].split())[:160] if errors else 'accepted'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server-bin")
    ap.add_argument("--agent-bin")
    ap.add_argument("--router-bin")
    args = ap.parse_args()
    started = time.monotonic()
    checks = Checks()
    print(f"helm-python-sdk {helm.helm_c_version()} (Helm SDK {helm.helm_sdk_version()}), kubernetes-validate schemas {', '.join(KUBE_VERSIONS)}")
    server_bin = find_bin("kvtier-server", args.server_bin)
    agent_bin = find_bin("kvtier-agent", args.agent_bin)
    server_flags = help_flags(server_bin)
    if server_bin is None:
        print("SKIP flags and start-up checks: kvtier-server binary not built")
    router_bin = find_bin("kvtier-router", args.router_bin)
    router_flags = help_flags(router_bin)
    if router_bin is None:
        print("SKIP router flags and start-up checks: kvtier-router binary not built")
    for label, vf in (("default", None), ("gpu", "ci/gpu-values.yaml"), ("full", "ci/full-values.yaml"), ("tls", "ci/tls-values.yaml"),
                      ("router", "ci/router-values.yaml"), ("cluster", "ci/cluster-values.yaml")):
        check_values_set(checks, label, vf, server_bin, server_flags, router_bin, router_flags)
    check_schema_rejects(checks)
    check_render_refuses(checks)
    check_sidecar(checks, agent_bin)
    print(f"elapsed {time.monotonic() - started:.1f} s")
    for f in checks.failed:
        print(f"FAILED: {f}")
    print(f"chart: {checks.passed} passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
