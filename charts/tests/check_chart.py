#!/usr/bin/env python3
"""Lints and renders charts/kvtier with Helm's own library and validates what it renders.

No `helm` binary is needed: helm-python-sdk binds Helm v4's Go SDK (libhelm_c, shipped in the
wheel), so `lint` and `render` below are Helm's own code, run offline.

For each values set (defaults, ci/gpu-values.yaml, ci/full-values.yaml, ci/tls-values.yaml):
  * `helm lint --strict` (kube versions 1.27, the chart's minimum, and the newest schemas): no
    errors, no warnings (values.schema.json included; it must also refuse bad values);
  * render, then validate every manifest against the Kubernetes JSON schemas of
    kubernetes-validate (strict: unknown fields are errors) for Kubernetes 1.27 and the newest
    version it ships; the ServiceMonitor (a Prometheus Operator CRD, not in those schemas) against
    a subset of its CRD schema kept here;
  * check what a platform team relies on: StatefulSet + PVC, capacities as flags, gRPC health
    probes, resource requests, GPU limit and flags, router only when enabled, ServiceMonitor and
    dashboards ConfigMap (byte-identical to charts/kvtier/dashboards/*.json) only when enabled;
  * every flag passed to kvtier-server is one `kvtier-server --help` lists, and kvtier-server
    actually starts with the rendered arguments (addresses and data dir moved to loopback/temp).
The worker-agent sidecar snippet is checked by rendering a throwaway parent chart that includes
kvtier as a subchart and the named templates in its own Deployment; its flags are checked against
`kvtier-agent --help`.

Usage: check_chart.py [--server-bin PATH] [--agent-bin PATH]   (or KVTIER_SERVER_BIN / KVTIER_AGENT_BIN;
       default: $CARGO_TARGET_DIR/release, then ~/.cache/kvtier-target/release, then target/release)
Prints "chart: N passed, M failed" last; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import copy
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
            try:
                jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
                checks.check(True, f"{label}: {kn} matches the ServiceMonitor CRD schema subset")
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
    env = {"kvtier-server": "KVTIER_SERVER_BIN", "kvtier-agent": "KVTIER_AGENT_BIN"}[name]
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


def check_values_set(checks: Checks, label: str, values_file: str | None, server_bin: str | None, server_flags: set[str] | None) -> None:
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
    sts = by_kind(docs, "StatefulSet")
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
    checks.check(bool(cache_svc) and {p["name"] for p in cache_svc["spec"]["ports"]} == {"grpc", "metrics"},
                 f"{label}: cache Service exposes grpc and metrics")
    headless = svc.get(f"{RELEASE}-kvtier-cache-headless")
    checks.check(bool(headless) and headless["spec"].get("clusterIP") == "None" and sts["spec"]["serviceName"] == headless["metadata"]["name"],
                 f"{label}: headless Service governs the StatefulSet")
    if server_flags is not None:
        unknown = sorted(f for f in flags if f not in server_flags)
        checks.check(not unknown, f"{label}: every flag the chart passes is one kvtier-server --help lists {unknown or ''}")
        if server_bin and not gpu["enabled"]:
            with tempfile.TemporaryDirectory() as tmp:
                ok, detail = start_with_args(server_bin, ctr["command"][1:] + ctr["args"], Path(tmp))
                if "--tls-cert" in flags:
                    detail += " (TLS, client CA and token file from generated stand-ins)"
                checks.check(ok, f"{label}: kvtier-server starts with the chart's arguments and stops cleanly on SIGTERM ({detail.strip()[:200]})")
        elif gpu["enabled"]:
            print(f"SKIP {label}: starting kvtier-server with GPU arguments needs a cuda build and a GPU")

    router = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-kvtier-router"]
    r_enabled = merged["router"]["enabled"]
    if r_enabled:
        dep = [d for d in router if d["kind"] == "Deployment"]
        checks.check(len(dep) == 1 and len([d for d in router if d["kind"] == "Service"]) == 1, f"{label}: router Deployment and Service rendered")
        if dep:
            rc = dep[0]["spec"]["template"]["spec"]["containers"][0]
            rflags = flag_values(rc["args"])
            checks.check(len(rflags.get("--cache-server", [])) == c["replicas"] and rc.get("readinessProbe", {}).get("grpc"),
                         f"{label}: router gets one --cache-server per cache replica ({rflags.get('--cache-server')}) and gRPC probes")
        print(f"SKIP {label}: router flags not checked against a binary: kvtier-router does not exist yet")
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

    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]
    d_enabled = merged["dashboards"]["enabled"]
    checks.check(len(cms) == (1 if d_enabled else 0), f"{label}: dashboards ConfigMap {'rendered' if d_enabled else 'absent'}")
    if cms:
        files = {p.name: p.read_text() for p in sorted((CHART / "dashboards").glob("*.json"))}
        data = cms[0].get("data", {})
        same = set(data) == set(files) and all(json.loads(data[k]) == json.loads(files[k]) for k in files)
        checks.check(same, f"{label}: dashboards ConfigMap carries {sorted(files)} unchanged")
        checks.check(cms[0]["metadata"]["labels"].get("grafana_dashboard") == "1", f"{label}: ConfigMap has the Grafana sidecar label grafana_dashboard=1")


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
        checks.check(flags.get("--salt") == ["llama-8b"] and flags.get("--listen") == ["127.0.0.1:50061"] and flags.get("--worker-id") == ["$(POD_NAME)"],
                     f"sidecar: values -> flags (--salt {flags.get('--salt')}, --listen {flags.get('--listen')}, --worker-id {flags.get('--worker-id')})")
        checks.check(any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod.get("volumes", [])),
                     "sidecar: memory-backed /dev/shm volume shared with the engine")
        sts = [d for d in docs if d["kind"] == "StatefulSet"]
        checks.check(len(sts) == 1 and sts[0]["metadata"]["name"] == f"{RELEASE}-kvtier-cache",
                     "sidecar: the subchart's cache StatefulSet has the name the sidecar points at")
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        checks.check(a["image"].endswith(f":{app_version}"), f"sidecar: image tag defaults to the chart's appVersion ({a['image']})")
        checks.check("readinessProbe" not in a and "livenessProbe" not in a,
                     "sidecar: no probes while the agent listens on loopback (kubelet dials the pod IP)")
        exposed = yaml.safe_load(PARENT_VALUES)
        exposed["kvtier"]["workerAgent"]["listenHost"] = "0.0.0.0"
        docs2, _ = render(parent, exposed)
        dep2 = [d for d in docs2 if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
        a2 = [c for c in dep2[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "kvtier-agent"][0] if dep2 else {}
        probe = a2.get("readinessProbe", {}).get("grpc", {})
        checks.check(probe.get("port") == 50061 and probe.get("service") == "kvtier.v1.WorkerService"
                     and a2.get("livenessProbe", {}).get("grpc", {}).get("port") == 50061,
                     f"sidecar: listening on 0.0.0.0 adds grpc.health.v1 probes on the agent port ({probe})")
        if dep2:
            validate_docs(checks, "sidecar-exposed", [dep2[0]])
        known = help_flags(agent_bin)
        if known is None:
            print("SKIP sidecar: kvtier-agent binary not built; its flags are not checked")
        else:
            unknown = sorted(f for f in flags if f not in known)
            checks.check(not unknown, f"sidecar: every flag is one kvtier-agent --help lists {unknown or ''}")


def check_render_refuses(checks: Checks) -> None:
    """Combinations kvtier-server would refuse at start-up fail at render time instead."""
    bad = {
        "plaintext gRPC on the pod address without cache.allowPlaintext": {"cache": {"allowPlaintext": False}},
        "cache.tls.enabled without a Secret": {"cache": {"tls": {"enabled": True}}},
        "a ServiceMonitor for a loopback-only /metrics": {"cache": {"allowPlaintext": False, "tls": {"enabled": True, "secretName": "s"}}, "serviceMonitor": {"enabled": True}},
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
    }
    for what, values in bad.items():
        report = helm.lint(str(CHART), values, strict=True)
        errors = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) >= 3]
        checks.check(bool(errors), f"schema: helm lint refuses {what}: {errors[0][:160] if errors else 'accepted'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server-bin")
    ap.add_argument("--agent-bin")
    args = ap.parse_args()
    started = time.monotonic()
    checks = Checks()
    print(f"helm-python-sdk {helm.helm_c_version()} (Helm SDK {helm.helm_sdk_version()}), kubernetes-validate schemas {', '.join(KUBE_VERSIONS)}")
    server_bin = find_bin("kvtier-server", args.server_bin)
    agent_bin = find_bin("kvtier-agent", args.agent_bin)
    server_flags = help_flags(server_bin)
    if server_bin is None:
        print("SKIP flags and start-up checks: kvtier-server binary not built")
    for label, vf in (("default", None), ("gpu", "ci/gpu-values.yaml"), ("full", "ci/full-values.yaml"), ("tls", "ci/tls-values.yaml")):
        check_values_set(checks, label, vf, server_bin, server_flags)
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
