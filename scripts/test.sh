#!/usr/bin/env bash
# The project's test command: installs missing system packages, builds every
# binary (integration tests start the real ones), then runs all tests.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
