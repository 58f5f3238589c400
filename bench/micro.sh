#!/usr/bin/env bash
# Every microbenchmark in one command, each with its baseline measured in the
# same run:
#   throughput      put/get of 2 MiB blocks: kvtier data plane and gRPC vs plain
#                   loopback TCP, Redis 7 (Debian's redis-server, installed
#                   here when missing; a client pipelined like kvtier's, and
#                   redis-benchmark -P beside it) and Mooncake Store over its
#                   TCP transport (bench/scripts/setup_mooncake.sh: PyPI's
#                   non-CUDA wheel in ~/.cache/kvtier-mooncake-venv, Debian's
#                   libibverbs1; skipped if that fails), same connections;
#                   warm restart
#   index           router index query latency (alone, with a paced and a
#                   saturating writer) and whole routing decisions per second,
#                   vs a per-block walk (same hasher as the index) and Dynamo's
#                   RadixTree / ConcurrentRadixTreeCompressed in Rust on the
#                   same tree and queries (bench/dynamo-index, dynamo-kv-router
#                   1.6.1, built here into ~/.cache/kvtier-target-dynamo-peer;
#                   skipped if that build fails)
#   policy-speed    value-policy evictions per second with 1M resident blocks
#   router-service  gRPC FindMatches vs Dynamo's standalone indexer on the same
#                   vLLM ZMQ events (needs python3 + pip; skipped otherwise),
#                   first unpinned (client and services share every CPU: the
#                   figure that counts), then --pin (client and services on
#                   separate CPUs)
# Output: stdout, and bench/results/micro-<UTC timestamp>.txt.
# Usage: bench/micro.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvtier-target}"
scripts/setup.sh
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "micro: installing Debian's redis-server for the Redis baseline" >&2
  $SUDO apt-get update -qq
  # Keep the package's service from starting: the bench runs its own on loopback.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --bins
bench="$CARGO_TARGET_DIR/release/kvtier-bench"
# Peers that live outside the workspace: failures skip their rows, not the run.
dynamo_target="${KVTIER_DYNAMO_PEER_TARGET:-$HOME/.cache/kvtier-target-dynamo-peer}"
index_peer=()
if CARGO_TARGET_DIR="$dynamo_target" cargo build --release --manifest-path bench/dynamo-index/Cargo.toml >&2; then
  index_peer=(--dynamo-peer "$dynamo_target/release/dynamo-index-peer")
else
  echo "micro: bench/dynamo-index did not build; the index runs without Dynamo's rows" >&2
fi
mooncake=()
if mooncake_py="$(bench/scripts/setup_mooncake.sh)"; then
  mooncake=(--mooncake-python "$mooncake_py")
else
  echo "micro: Mooncake's wheel did not install; throughput runs without it" >&2
fi
out="bench/results/micro-$(date -u +%Y%m%dT%H%M%SZ).txt"
mkdir -p bench/results
{
  echo "# kvtier microbenchmarks, $(date -u), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "## throughput"; "$bench" throughput "${mooncake[@]}"
  echo "## index"; "$bench" index "${index_peer[@]}"
  echo "## policy-speed"; "$bench" policy-speed
  echo "## router-service (unpinned: client and services share every CPU)"; "$bench" router-service || echo "(router-service skipped or failed: exit $?)"
  echo "## router-service --pin"; "$bench" router-service --pin || echo "(router-service --pin skipped or failed: exit $?)"
} 2>&1 | tee "$out"
echo "micro: written to $out" >&2
