"""Starts the real kvtier binaries for the tests and reads their ready lines."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

REPO = pathlib.Path(__file__).resolve().parents[3]


def binary(name: str) -> pathlib.Path | None:
    """A built binary: ``$KVTIER_BIN_DIR``, ``$CARGO_TARGET_DIR/release`` or ``target/release``."""
    dirs = []
    if os.environ.get("KVTIER_BIN_DIR"):
        dirs.append(pathlib.Path(os.environ["KVTIER_BIN_DIR"]))
    if os.environ.get("CARGO_TARGET_DIR"):
        dirs.append(pathlib.Path(os.environ["CARGO_TARGET_DIR"]) / "release")
    dirs.append(REPO / "target" / "release")
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


class Process:
    """A child that printed its ready line; killed at exit, its log kept for failures."""

    def __init__(self, args: list[str], ready_prefix: str, timeout_s: float = 30.0) -> None:
        self.args = args
        self.log: deque[str] = deque(maxlen=200)
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "KVTIER_LOG_FORMAT": "text",
                "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            },
        )
        self.ready = ""
        seen = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                if not self.ready and line.startswith(ready_prefix):
                    self.ready = line.strip()
                    seen.set()

        threading.Thread(target=pump, daemon=True).start()
        if not seen.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"{args[0]} printed no ready line in {timeout_s} s:\n" + self.tail())

    def field(self, key: str) -> str:
        m = re.search(rf"\b{key}=(\S+)", self.ready)
        if not m:
            raise KeyError(f"{key} not in ready line {self.ready!r}")
        return m.group(1)

    def tail(self) -> str:
        return "\n".join(self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def server(extra: list[str] | None = None) -> Iterator[Process]:
    exe = binary("kvtier-server")
    assert exe is not None
    data = tempfile.mkdtemp(prefix="kvtier-test-data-")
    p = Process(
        [
            str(exe),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            *(extra or []),
        ],
        "kvtier-server ready",
    )
    try:
        yield p
    finally:
        p.stop()
        shutil.rmtree(data, ignore_errors=True)


def start_agent(server_grpc: str, block_tokens: int, extra: list[str] | None = None) -> Process:
    exe = binary("kvtier-agent")
    assert exe is not None
    sock = tempfile.mktemp(prefix="kvtier-agent-", suffix=".sock")
    return Process(
        [
            str(exe),
            "--listen",
            "127.0.0.1:0",
            "--uds",
            sock,
            "--metrics-listen",
            "127.0.0.1:0",
            "--server",
            f"http://{server_grpc}",
            "--block-tokens",
            str(block_tokens),
            "--onboard-timeout-ms",
            "2000",
            *(extra or []),
        ],
        "kvtier-agent ready",
    )


@contextmanager
def agent(server_grpc: str, block_tokens: int, extra: list[str] | None = None) -> Iterator[Process]:
    p = start_agent(server_grpc, block_tokens, extra)
    try:
        yield p
    finally:
        p.stop()


def wait_until(cond, timeout_s: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
