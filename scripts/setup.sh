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
