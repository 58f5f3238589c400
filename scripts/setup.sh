#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test kvtier:
# libclang (RocksDB's bindgen), and the Python packages of the chart and
# dashboard checks. Idempotent and quick when everything is there.
set -euo pipefail

need_apt=()
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v clang >/dev/null 2>&1 || true
for pkg in "${KVTIER_EXTRA_APT[@]:-}"; do [ -n "$pkg" ] && need_apt+=("$pkg"); done
if [ "${#need_apt[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
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
