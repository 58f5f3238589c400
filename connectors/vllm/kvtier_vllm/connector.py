"""``KvtierConnector``: vLLM's KV connector (v1 API) over kvtier-agent.

A thin shell over two parts: :class:`~kvtier_vllm.plan.Planner` (scheduler
side: hash the prompt, ask the agent how long a prefix the tier holds, plan
loads and saves per step) and :class:`~kvtier_vllm.transfer.Transfers` (worker
side: copy blocks between vLLM's KV tensors and a shared-memory staging pool
the agent maps, one copy per layer run; ``Onboard``/``Offload`` are control
messages only).

Faults never fail a request: an agent that is down, slow or refusing gives 0
external tokens; a load that fails after it was promised reports its blocks
through ``get_block_ids_with_load_errors`` and vLLM recomputes them; saves run
on a background thread and are skipped when the staging pool is full.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
import vllm
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.logger import init_logger
from vllm.v1.kv_cache_interface import FullAttentionSpec

from kvtier_vllm.agent import AgentClient, Backoff, Hashing
from kvtier_vllm.config import ConnectorConfig
from kvtier_vllm.hashing import BlockHasher, effective_seed
from kvtier_vllm.layout import describe
from kvtier_vllm.plan import KvtierConnectorMetadata, Planner
from kvtier_vllm.stats import KvtierConnectorStats, KvtierPromMetrics, StatsRecorder
from kvtier_vllm.transfer import Transfers

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = init_logger("kvtier_vllm")

SUPPORTED_VLLM = ("0.32.",)
"""vLLM versions the connector is tested with (the KV connector API moves
between minor versions). Others are refused unless KVTIER_VLLM_UNTESTED=1."""


def check_vllm_version(version: str = vllm.__version__) -> None:
    if version.startswith(SUPPORTED_VLLM) or os.environ.get("KVTIER_VLLM_UNTESTED") == "1":
        return
    raise RuntimeError(
        f"kvtier_vllm supports vLLM {', '.join(v + 'x' for v in SUPPORTED_VLLM)} "
        f"(tested with 0.32.0); this is vLLM {version}. The KV connector API changes "
        "between minor versions: install a supported vLLM, or set KVTIER_VLLM_UNTESTED=1 "
        "to try at your own risk."
    )


check_vllm_version()


class KvtierConnector(KVConnectorBase_V1):
    """Stores and loads vLLM's KV blocks through kvtier-agent."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        role: KVConnectorRole,
        kv_cache_config: KVCacheConfig,
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra(
            dict(self._kv_transfer_config.kv_connector_extra_config or {})
        )
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size != 1 or parallel.pipeline_parallel_size != 1:
            raise NotImplementedError(
                "kvtier_vllm supports tensor_parallel_size=1 and pipeline_parallel_size=1 "
                f"today (got TP={parallel.tensor_parallel_size}, "
                f"PP={parallel.pipeline_parallel_size})"
            )
        if kv_cache_config is None or len(kv_cache_config.kv_cache_groups) != 1:
            raise NotImplementedError(
                "kvtier_vllm needs exactly one KV cache group of full attention "
                "(no hybrid or sliding-window models yet)"
            )
        spec = kv_cache_config.kv_cache_groups[0].kv_cache_spec
        if not isinstance(spec, FullAttentionSpec):
            raise NotImplementedError(
                f"kvtier_vllm needs full-attention KV (got {type(spec).__name__})"
            )
        self._spec = spec
        self.block_size = vllm_config.cache_config.block_size
        served = vllm_config.model_config.served_model_name
        self._model: str = self.config.model or (
            served[0] if isinstance(served, list) else served or ""
        )
        self._agent = AgentClient(self.config.agent)
        self._backoff = Backoff(self.config.retry_interval_ms / 1000)
        self._stats = StatsRecorder()
        self._planner = Planner(
            BlockHasher(self.block_size, effective_seed(self.config.seed, self.config.salt)),
            self._agent,
            self._backoff,
            self._stats,
            self.config.lookup_timeout_ms / 1000,
        )
        self._transfers: Transfers | None = None
        if role == KVConnectorRole.SCHEDULER:
            self._set_load_failure_policy()
        logger.info(
            "kvtier connector (%s) agent=%s namespace=%s block_tokens=%d",
            role.name.lower(),
            self.config.agent,
            self.config.namespace,
            self.block_size,
        )

    def _set_load_failure_policy(self) -> None:
        policy = self._kv_transfer_config.kv_load_failure_policy
        if policy == self.config.load_failure_policy:
            return
        logger.warning(
            "kvtier: kv_load_failure_policy %r -> %r: kvtier is a best-effort cache, a block "
            "that fails to load is recomputed instead of failing the request (set "
            "load_failure_policy='fail' in kv_connector_extra_config to keep 'fail')",
            policy,
            self.config.load_failure_policy,
        )
        self._kv_transfer_config.kv_load_failure_policy = (
            "fail" if self.config.load_failure_policy == "fail" else "recompute"
        )

    @property
    def requires_kv_delivery(self) -> bool:
        return False

    # -- scheduler side -----------------------------------------------------

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        return self._planner.matched_tokens(request, num_computed_tokens), False

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        self._planner.after_alloc(request, blocks.get_block_ids()[0], num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        return self._planner.build(scheduler_output)

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        # A save copies into staging within its own step: vLLM may free the blocks now.
        self._planner.finished(request)
        return False, None

    # -- worker side ----------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        layout = describe(
            kv_caches,
            num_blocks=self._kv_cache_config.num_blocks,
            block_tokens=self.block_size,
            kv_heads=self._spec.num_kv_heads,
            head_size=self._spec.head_size,
        )
        hashing = Hashing(
            block_tokens=self.block_size,
            seed=self.config.seed,
            salt=self.config.salt,
            block_bytes=layout.block_bytes,
            kv_layout=layout.descriptor,
            model=self._model,
        )
        self._transfers = Transfers(
            self.config, hashing, layout, self._agent, self._backoff, self._stats
        )

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._connector_metadata
        if isinstance(meta, KvtierConnectorMetadata) and meta.loads:
            if self._transfers is None:
                raise RuntimeError("kvtier: start_load_kv before register_kv_caches")
            self._transfers.load_all(meta.loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete in start_load_kv, before the forward pass

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        return  # saved once per step in wait_for_save: one copy per layer, off the layer loop

    def wait_for_save(self) -> None:
        meta = self._connector_metadata
        if isinstance(meta, KvtierConnectorMetadata) and meta.saves:
            if self._transfers is None:
                self._stats.add(save_skipped_blocks=sum(len(s.hashes) for s in meta.saves))
                return
            self._transfers.save_all(meta.saves)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._transfers.take_load_errors() if self._transfers is not None else set()

    # -- stats ------------------------------------------------------------------

    def get_kv_connector_stats(self) -> KvtierConnectorStats | None:
        return self._stats.take()

    @classmethod
    def build_kv_connector_stats(
        cls, data: dict[str, Any] | None = None
    ) -> KvtierConnectorStats | None:
        return KvtierConnectorStats(data=dict(data)) if data else KvtierConnectorStats()

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: VllmConfig,
        metric_types: dict[type, type],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> KvtierPromMetrics:
        return KvtierPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

    # -- introspection and shutdown ----------------------------------------------

    @property
    def totals(self) -> dict[str, float]:
        """Counters since start (for tests and logs)."""
        return dict(self._stats.totals)

    @property
    def open_requests(self) -> int:
        """Requests the scheduler side still tracks."""
        return len(self._planner.requests)

    @property
    def staging_free(self) -> int | None:
        t = self._transfers
        return t.staging.free if t is not None and t.staging is not None else None

    @property
    def staging_slots(self) -> int | None:
        t = self._transfers
        return t.staging.slots if t is not None and t.staging is not None else None

    def wait_for_saves(self, timeout_s: float) -> bool:
        """Waits for background saves to finish; True when none is left."""
        return self._transfers.wait_for_saves(timeout_s) if self._transfers is not None else True

    def shutdown(self) -> None:
        if self._transfers is not None:
            self._transfers.wait_for_saves(self.config.save_timeout_ms / 1000)
            self._transfers.close()
            self._transfers = None
        self._agent.close()
