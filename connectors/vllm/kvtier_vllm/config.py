"""The connector's settings, from ``kv_connector_extra_config`` with ``KVTIER_*``
environment fallbacks. Pure: no vLLM import."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from kvtier_vllm.hashing import DEFAULT_SEED


class ConfigError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class ConnectorConfig:
    agent: str = "unix:///dev/shm/kvtier/agent.sock"
    """kvtier-agent address: ``unix:///path`` (default: the agent's socket) or ``host:port``."""
    namespace: str = "vllm"
    """Cache-server namespace the blocks belong to."""
    seed: int = DEFAULT_SEED
    """Base XXH3 seed (the agent's ``--seed``)."""
    salt: str = ""
    """Namespace salt (the agent's ``--salt``)."""
    model: str = ""
    """Model name checked by the agent and server; empty: the served model name."""
    staging_bytes: int = 256 << 20
    """Shared-memory staging size; at least 8 blocks."""
    shm_dir: str = "/dev/shm/kvtier"
    """Directory of the staging file: a tmpfs beneath the agent's ``--pool-dir``."""
    lookup_timeout_ms: int = 200
    """Deadline of the scheduler's lookup; past it: 0 external tokens."""
    load_timeout_ms: int = 5000
    """Deadline of one load; past it the blocks are reported and recomputed."""
    save_timeout_ms: int = 30_000
    """Deadline of one background save."""
    attach_timeout_ms: int = 5000
    """Deadline of AttachPool."""
    retry_interval_ms: int = 2000
    """After the agent failed, calls are skipped (0 tokens) for this long."""
    load_failure_policy: str = "recompute"
    """vLLM's ``kv_load_failure_policy`` to run with; ``fail`` is allowed but not advised."""

    @classmethod
    def from_extra(
        cls, extra: dict[str, Any], env: dict[str, str] | None = None
    ) -> ConnectorConfig:
        env = dict(os.environ) if env is None else env
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown kvtier connector setting(s) {unknown}; known: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for name, f in known.items():
            raw: Any = extra.get(name)
            if raw is None:
                raw = env.get(f"KVTIER_{name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", int):
                try:
                    values[name] = int(raw)
                except (TypeError, ValueError):
                    raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
            else:
                values[name] = str(raw)
        cfg = cls(**values)
        if cfg.load_failure_policy not in ("recompute", "fail"):
            raise ConfigError(
                "load_failure_policy must be 'recompute' or 'fail', "
                f"got {cfg.load_failure_policy!r}"
            )
        for name in (
            "lookup_timeout_ms",
            "load_timeout_ms",
            "save_timeout_ms",
            "attach_timeout_ms",
        ):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        return cfg
