#!/usr/bin/env bash
# The connector's checks, as scripts/test.sh runs them: generated gRPC code up
# to date, ruff, mypy, then pytest (hashing vectors, vLLM's real scheduler and
# two real CPU engines against the real kvtier binaries).
# Uses $KVTIER_VLLM_VENV (default ~/.cache/kvtier-vllm-venv, made by
# scripts/setup.sh). Without it: a failure in CI (CI=true), a skip elsewhere.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${KVTIER_VLLM_VENV:-$HOME/.cache/kvtier-vllm-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
    echo "connectors/vllm: ERROR: no vLLM venv at $VENV (scripts/setup.sh makes it)" >&2
    exit 1
  fi
  echo "connectors/vllm: SKIPPED: no vLLM venv at $VENV (run scripts/setup.sh)" >&2
  exit 0
fi
PY="$VENV/bin/python"
echo "== connectors/vllm: generated code"
"$PY" scripts/gen_proto.py --check
echo "== connectors/vllm: ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== connectors/vllm: mypy"
"$VENV/bin/mypy" kvtier_vllm
echo "== connectors/vllm: pytest"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m pytest -p no:cacheprovider -p no:warnings "$@"
