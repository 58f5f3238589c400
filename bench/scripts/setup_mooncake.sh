#!/usr/bin/env bash
# Mooncake Store for `kvtier-bench throughput --mooncake` (bench/micro.sh runs
# this): PyPI's non-CUDA wheel of the transfer engine (it carries
# mooncake_master and the store's Python bindings) in a venv under ~/.cache,
# and the one Debian library the wheel links but does not bundle, libibverbs1
# (the RDMA verbs library; loaded even when only TCP is used). No stand-in
# libcuda is needed with this wheel. Idempotent; prints the venv's python.
set -euo pipefail
VENV="${KVTIER_MOONCAKE_VENV:-$HOME/.cache/kvtier-mooncake-venv}"
PIN="mooncake-transfer-engine-non-cuda==0.3.13.post1"
py="$VENV/bin/python"
imports() { (cd / && "$py" -c "from mooncake.store import MooncakeDistributedStore") >/dev/null 2>&1; }
if [ -x "$py" ] && imports; then echo "$py"; exit 0; fi
if ! ldconfig -p | grep -q 'libibverbs.so.1 '; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup_mooncake: installing Debian's libibverbs1" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libibverbs1 >/dev/null
fi
[ -x "$py" ] || python3 -m venv "$VENV"
echo "setup_mooncake: installing $PIN into $VENV" >&2
"$py" -m pip install -q "$PIN" >&2
imports || { echo "setup_mooncake: mooncake.store does not import:" >&2; (cd / && "$py" -c "from mooncake.store import MooncakeDistributedStore") >&2; exit 1; }
echo "$py"
