#!/usr/bin/env bash
# Chart and dashboard checks. Installs what they need on a fresh Debian machine (a Python venv
# with the pinned packages of requirements.txt; Debian's prometheus package), builds the
# binaries they start if needed, then runs:
#   check_chart.py      helm lint/render (Helm's library) + Kubernetes schema validation
#   dashboard_test.py   every Grafana panel query against a real Prometheus scraping kvtier-server,
#                       a kvtier-agent, a kvtier-sim-worker and kvtier-router
# Usage: charts/tests/run.sh            (both)
#        charts/tests/run.sh chart      (only the chart checks)
#        charts/tests/run.sh dashboard  (only the dashboard test)
# Env: KVTIER_CHARTS_VENV (default ~/.cache/kvtier-charts-venv), CARGO_TARGET_DIR
#      (default ~/.cache/kvtier-target), PYTHON (default python3, >= 3.10), KVTIER_SERVER_BIN /
#      KVTIER_AGENT_BIN / KVTIER_ROUTER_BIN / KVTIER_SIM_WORKER_BIN (test these binaries instead
#      of the ones in CARGO_TARGET_DIR; with KVTIER_SERVER_BIN set nothing is built).
set -euo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"

VENV="${KVTIER_CHARTS_VENV:-$HOME/.cache/kvtier-charts-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! cmp -s charts/tests/requirements.txt "$VENV/.kvtier-requirements.txt"; then
  echo "charts: installing Python packages into $VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check -r charts/tests/requirements.txt
  cp charts/tests/requirements.txt "$VENV/.kvtier-requirements.txt"
fi

if [ "$what" != chart ] && ! command -v prometheus >/dev/null 2>&1; then
  echo "charts: installing Debian's prometheus" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Keep the package's service from starting: the test runs its own Prometheus on loopback.
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  [ -z "$added_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi

# The checks start the real binaries: build them (a no-op when they are up to date), unless
# KVTIER_SERVER_BIN names the server binary to test.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvtier-target}"
if [ -z "${KVTIER_SERVER_BIN:-}" ]; then
  cargo build --release -q -p kvtier-cache-server -p kvtier-worker-agent -p kvtier-sim -p kvtier-router --bins
fi

py="$VENV/bin/python"
passed=0; failed=0; status=0
run() {
  local name="$1"; shift
  local log; log="$(mktemp)"
  set +e
  "$py" "$@" 2>&1 | tee "$log"
  local rc="${PIPESTATUS[0]}"
  set -e
  local line; line="$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -1 || true)"
  rm -f "$log"
  if [ -n "$line" ]; then
    passed=$((passed + $(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$line")))
    failed=$((failed + $(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$line")))
  fi
  if [ "$rc" -ne 0 ]; then
    status=1
    [ -n "$line" ] || failed=$((failed + 1))
  fi
}
[ "$what" = dashboard ] || { echo "== charts/tests/check_chart.py"; run chart charts/tests/check_chart.py; }
[ "$what" = chart ] || { echo "== charts/tests/dashboard_test.py"; run dashboard charts/tests/dashboard_test.py; }
echo "charts: $passed passed, $failed failed"
exit "$status"
