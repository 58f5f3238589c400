#!/usr/bin/env bash
# The project's test command: installs missing system packages, builds every
# binary (integration tests start the real ones), runs all Rust tests, the vLLM
# connector's checks (real vLLM CPU engines on the real binaries), then the
# chart and dashboard checks (Helm's library, Kubernetes schemas, a real
# Prometheus scraping the real kvtier-server).
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
# One target directory for cargo and for the checks that start binaries.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# The tests start many kvtier-servers at the default 1 GiB host tier: faulting
# every page in at start would cost each a few seconds and a resident GiB. The
# arena's pre-fault has its own unit test (cache-server tier::arena).
export KVTIER_HOST_PREFAULT="${KVTIER_HOST_PREFAULT:-false}"
scripts/setup.sh
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
connectors/vllm/run_tests.sh
charts/tests/run.sh
