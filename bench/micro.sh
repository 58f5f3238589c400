#!/usr/bin/env bash
# Every microbenchmark in one command, each with its baseline measured in the
# same run:
#   throughput      put/get of 2 MiB blocks: kvtier data plane and gRPC vs plain
#                   loopback TCP and Redis 7 (Debian's redis-server, installed
#                   here when missing; a client pipelined like kvtier's, and
#                   redis-benchmark -P beside it), same connections; warm restart
#   index           router index query latency (alone, with a paced and a
#                   saturating writer) and whole routing decisions per second,
#                   vs a per-block walk
#   policy-speed    value-policy evictions per second with 1M resident blocks
#   router-service  gRPC FindMatches vs Dynamo's standalone indexer on the same
#                   vLLM ZMQ events (needs python3 + pip; skipped otherwise),
#                   once sharing every CPU with the client, once --pin (client
#                   and services on separate CPUs)
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
out="bench/results/micro-$(date -u +%Y%m%dT%H%M%SZ).txt"
mkdir -p bench/results
{
  echo "# kvtier microbenchmarks, $(date -u), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "## throughput"; "$bench" throughput
  echo "## index"; "$bench" index
  echo "## policy-speed"; "$bench" policy-speed
  echo "## router-service"; "$bench" router-service || echo "(router-service skipped or failed: exit $?)"
  echo "## router-service --pin"; "$bench" router-service --pin || echo "(router-service --pin skipped or failed: exit $?)"
} 2>&1 | tee "$out"
echo "micro: written to $out" >&2
