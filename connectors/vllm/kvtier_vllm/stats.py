"""Connector counters, exported the way vLLM exports connector stats: a
``KVConnectorStats`` per interval (logged as "KV Transfer metrics") and
Prometheus counters ``vllm:kvtier_*`` on the engine's ``/metrics``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

COUNTERS: dict[str, str] = {
    "lookups": "Scheduler lookups of a prompt's blocks in kvtier",
    "lookup_failures": "Lookups answered 0 because the agent failed or was slow",
    "lookup_hit_tokens": "Prompt tokens the lookups promised to load",
    "loads": "Loads run by the worker",
    "loaded_tokens": "Tokens loaded from kvtier into the KV cache",
    "load_error_blocks": "Promised blocks that failed to load (recomputed)",
    "saved_blocks": "Blocks handed to the agent to store",
    "stored_blocks": "Blocks the tier stored (new to it)",
    "save_skipped_blocks": "Blocks not saved: staging full or agent unavailable",
    "save_failures": "Background saves that failed",
}
SECONDS: dict[str, str] = {
    "lookup_seconds": "Time spent in scheduler lookups",
    "load_seconds": "Time the forward pass waited for loads",
    "save_copy_seconds": "Time spent copying blocks into staging after a step",
}


@dataclass
class KvtierConnectorStats(KVConnectorStats):
    """Counter increments over one interval (plain numbers: picklable)."""

    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.data:
            self.reset()

    def reset(self) -> None:
        self.data = {k: 0 for k in COUNTERS} | {k: 0.0 for k in SECONDS}

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for k, v in other.data.items():
            self.data[k] = self.data.get(k, 0) + v
        return self

    def reduce(self) -> dict[str, int | float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.data.items()}

    def is_empty(self) -> bool:
        return not any(self.data.values())


class StatsRecorder:
    """Thread-safe accumulation (saves complete on a background thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = KvtierConnectorStats()
        self.totals: dict[str, float] = {k: 0 for k in (*COUNTERS, *SECONDS)}

    def add(self, **inc: float) -> None:
        with self._lock:
            for k, v in inc.items():
                self._stats.data[k] += v
                self.totals[k] += v

    def take(self) -> KvtierConnectorStats | None:
        with self._lock:
            if self._stats.is_empty():
                return None
            out, self._stats = self._stats, KvtierConnectorStats()
            return out


class KvtierPromMetrics(KVConnectorPromMetrics):
    """``vllm:kvtier_<counter>_total`` per engine."""

    def __init__(
        self,
        vllm_config: Any,
        metric_types: dict[type, type],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters: dict[str, dict[int, Any]] = {}
        for name, doc in (COUNTERS | SECONDS).items():
            metric = self._counter_cls(
                name=f"vllm:kvtier_{name}", documentation=doc, labelnames=labelnames
            )
            self._counters[name] = {
                idx: metric.labels(*values) for idx, values in per_engine_labelvalues.items()
            }

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for name, value in transfer_stats_data.items():
            per_engine = self._counters.get(name)
            if per_engine is not None and value and engine_idx in per_engine:
                per_engine[engine_idx].inc(value)
