"""``KvtierConnector``: vLLM's KV connector (v1 API) over kvtier-agent.

Scheduler side: hashes each prompt with kvtier's scheme, asks the agent how
long a prefix the tier holds (``PoolLookup``, bounded by ``lookup_timeout_ms``),
and plans loads (blocks promised to the request) and saves (blocks that become
full in a step). Worker side: copies blocks between vLLM's KV tensors and a
shared-memory staging pool that the agent maps (one copy per layer run), and
sends the agent control messages only (``Onboard``/``Offload``).

Faults never fail a request: an agent that is down, slow or refusing gives 0
external tokens; a load that fails after it was promised reports its blocks
through ``get_block_ids_with_load_errors`` and vLLM recomputes them; saves run
on a background thread and are skipped when the staging pool is full.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass, field
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

from kvtier_vllm.agent import (
    AgentClient,
    AgentError,
    AgentRefused,
    AgentUnavailable,
    Hashing,
    OffloadBlock,
)
from kvtier_vllm.config import ConnectorConfig
from kvtier_vllm.hashing import BlockHasher, IncrementalHasher, effective_seed
from kvtier_vllm.layout import KvLayout, describe
from kvtier_vllm.staging import StagingPool
from kvtier_vllm.stats import KvtierConnectorStats, KvtierPromMetrics, StatsRecorder

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


@dataclass
class LoadSpec:
    """Blocks promised to a request: ``hashes[i]`` goes into engine block ``block_ids[i]``."""

    req_id: str
    hashes: list[int]
    block_ids: list[int]


@dataclass
class SaveSpec:
    """Blocks that became full this step; ``parent`` is the hash before ``hashes[0]``."""

    req_id: str
    hashes: list[int]
    block_ids: list[int]
    parent: int | None


@dataclass
class KvtierConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)


@dataclass
class _RequestState:
    request: Request
    hasher: IncrementalHasher
    block_ids: list[int] = field(default_factory=list)
    saved_blocks: int = 0
    """Leading blocks already in the tier (loaded, or saved earlier)."""
    planned_load: tuple[int, int] | None = None
    """(first block, block count) from the last lookup."""
    pending_load: LoadSpec | None = None


class _Backoff:
    """Skips calls to an agent that just failed, for ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._until = 0.0

    def down(self) -> bool:
        return time.monotonic() < self._until

    def failed(self) -> None:
        self._until = time.monotonic() + self.interval_s

    def ok(self) -> None:
        self._until = 0.0


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
        self._hasher = BlockHasher(
            self.block_size, effective_seed(self.config.seed, self.config.salt)
        )
        served = vllm_config.model_config.served_model_name
        self._model: str = self.config.model or (
            served[0] if isinstance(served, list) else served or ""
        )
        self._agent = AgentClient(self.config.agent)
        self._backoff = _Backoff(self.config.retry_interval_ms / 1000)
        self._stats = StatsRecorder()
        if role == KVConnectorRole.SCHEDULER:
            policy = self._kv_transfer_config.kv_load_failure_policy
            if policy != self.config.load_failure_policy:
                logger.warning(
                    "kvtier: kv_load_failure_policy %r -> %r: kvtier is a best-effort "
                    "cache, a block that fails to load is recomputed instead of failing "
                    "the request (set load_failure_policy='fail' in "
                    "kv_connector_extra_config to keep 'fail')",
                    policy,
                    self.config.load_failure_policy,
                )
                self._kv_transfer_config.kv_load_failure_policy = (
                    "fail" if self.config.load_failure_policy == "fail" else "recompute"
                )
        self._requests: dict[str, _RequestState] = {}
        # Worker side.
        self._layout: KvLayout | None = None
        self._staging: StagingPool | None = None
        self._pool_id = 0
        self._attach_lock = threading.Lock()
        self._load_errors: set[int] = set()
        self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kvtier-save")
        self._inflight: set[concurrent.futures.Future[None]] = set()
        self._inflight_lock = threading.Lock()
        logger.info(
            "kvtier connector (%s) agent=%s namespace=%s block_tokens=%d",
            role.name.lower(),
            self.config.agent,
            self.config.namespace,
            self.block_size,
        )

    @property
    def requires_kv_delivery(self) -> bool:
        return False

    # ------------------------------------------------------------------
    # Scheduler side
    # ------------------------------------------------------------------

    def _state(self, request: Request) -> _RequestState:
        st = self._requests.get(request.request_id)
        if st is None:
            st = _RequestState(request=request, hasher=IncrementalHasher(self._hasher))
            self._requests[request.request_id] = st
        return st

    @staticmethod
    def _cacheable(request: Request) -> bool:
        # Token ids alone do not name the KV of LoRA, multimodal or salted requests.
        return not (
            getattr(request, "lora_request", None)
            or getattr(request, "mm_features", None)
            or getattr(request, "cache_salt", None)
        )

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        if not self._cacheable(request):
            return 0, False
        prompt = request.prompt_token_ids or []
        # Leave at least one prompt token to compute (vLLM needs logits).
        max_blocks = max(len(prompt) - 1, 0) // self.block_size
        first = num_computed_tokens // self.block_size
        st = self._state(request)
        st.planned_load = None
        if max_blocks <= first or self._backoff.down():
            return 0, False
        hashes = st.hasher.extend(prompt)[:max_blocks]
        start = time.perf_counter()
        try:
            hit = self._agent.lookup(hashes[first:], self.config.lookup_timeout_ms / 1000)
            self._backoff.ok()
        except AgentError as err:
            self._backoff.failed()
            self._stats.add(
                lookups=1, lookup_failures=1, lookup_seconds=time.perf_counter() - start
            )
            logger.warning("kvtier: lookup failed, computing the prompt (%s)", err)
            return 0, False
        self._stats.add(
            lookups=1,
            lookup_hit_tokens=hit * self.block_size,
            lookup_seconds=time.perf_counter() - start,
        )
        if hit == 0:
            return 0, False
        st.planned_load = (first, hit)
        return hit * self.block_size, False

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        st = self._state(request)
        st.block_ids = list(blocks.get_block_ids()[0])
        if num_external_tokens <= 0 or st.planned_load is None:
            st.pending_load = None
            return
        first, planned = st.planned_load
        n = min(planned, num_external_tokens // self.block_size)
        hashes = st.hasher.hashes[first : first + n]
        st.pending_load = LoadSpec(request.request_id, hashes, st.block_ids[first : first + n])
        st.saved_blocks = max(st.saved_blocks, first + n)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = KvtierConnectorMetadata()
        steps: list[tuple[str, int]] = []
        for new in scheduler_output.scheduled_new_reqs:
            st = self._requests.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            # Blocks computed before this step (local prefix hits) are not saved again.
            local = new.num_computed_tokens // self.block_size
            if st.pending_load is not None:
                local -= len(st.pending_load.hashes)
            st.saved_blocks = max(st.saved_blocks, local)
            steps.append((new.req_id, new.num_computed_tokens))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._requests.get(req_id)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                st.block_ids = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                st.block_ids.extend(new_ids[0])
            steps.append((req_id, cached.num_computed_tokens[i]))
        for req_id, computed in steps:
            st = self._requests[req_id]
            if st.pending_load is not None:
                meta.loads.append(st.pending_load)
                st.pending_load = None
            if not self._cacheable(st.request):
                continue
            done = computed + scheduler_output.num_scheduled_tokens.get(req_id, 0)
            tokens = st.request.all_token_ids
            full = min(done, len(tokens), len(st.block_ids) * self.block_size) // self.block_size
            if full <= st.saved_blocks:
                continue
            hashes = st.hasher.extend(tokens[: full * self.block_size])
            lo = st.saved_blocks
            meta.saves.append(
                SaveSpec(
                    req_id,
                    hashes[lo:full],
                    st.block_ids[lo:full],
                    hashes[lo - 1] if lo > 0 else None,
                )
            )
            st.saved_blocks = full
        return meta

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        # Saves copy into staging within their own step: vLLM may free the blocks now.
        self._requests.pop(request.request_id, None)
        return False, None

    # ------------------------------------------------------------------
    # Worker side
    # ------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        layout = describe(
            kv_caches,
            num_blocks=self._kv_cache_config.num_blocks,
            block_tokens=self.block_size,
            kv_heads=self._spec.num_kv_heads,
            head_size=self._spec.head_size,
        )
        slots = max(8, self.config.staging_bytes // layout.block_bytes)
        self._layout = layout
        self._staging = StagingPool(layout, int(slots), self.config.shm_dir)
        logger.info(
            "kvtier: KV layout %s, %d B per block, staging %d blocks in %s",
            layout.descriptor,
            layout.block_bytes,
            slots,
            self._staging.path,
        )
        try:
            self._attach(first=True)
        except Exception:
            self._staging.close()
            self._staging = None
            raise

    def _hashing(self) -> Hashing:
        assert self._layout is not None
        return Hashing(
            block_tokens=self.block_size,
            seed=self.config.seed,
            salt=self.config.salt,
            block_bytes=self._layout.block_bytes,
            kv_layout=self._layout.descriptor,
            model=self._model,
        )

    def _attach(self, first: bool = False) -> bool:
        """Attaches the staging pool; True when attached. Refusals are loud."""
        if self._pool_id:
            return True
        if self._staging is None or self._layout is None or (not first and self._backoff.down()):
            return False
        with self._attach_lock:
            if self._pool_id:
                return True
            try:
                resp = self._agent.attach_shared_memory(
                    namespace=self.config.namespace,
                    hashing=self._hashing(),
                    num_blocks=self._staging.slots,
                    num_layers=self._layout.num_layers,
                    dtype=self._layout.dtype_name,
                    path=self._staging.path,
                    engine_name=f"vllm-{os.getpid()}",
                    timeout_s=self.config.attach_timeout_ms / 1000,
                )
            except AgentRefused as err:
                self._backoff.failed()
                msg = (
                    f"kvtier-agent at {self.config.agent} refused this engine's KV layout "
                    f"or hashing: {err}. Fix the engine's or the agent's settings "
                    "(block size, seed, salt, model, KV layout must agree)."
                )
                if first:
                    raise RuntimeError(msg) from None
                logger.error("%s", msg)
                return False
            except AgentUnavailable as err:
                self._backoff.failed()
                logger.warning("kvtier: agent unavailable, running without the tier (%s)", err)
                return False
            self._backoff.ok()
            self._pool_id = int(resp.pool_id)
            logger.info(
                "kvtier: attached pool %d to agent %s (worker %s)",
                self._pool_id,
                self.config.agent,
                resp.worker_id,
            )
            return True

    def _agent_failed(self, err: AgentError) -> None:
        self._backoff.failed()
        if isinstance(err, AgentRefused) and "attach" in str(err).lower():
            self._pool_id = 0  # the agent restarted or re-attached: attach again
        elif isinstance(err, AgentRefused) and err.code.name == "FAILED_PRECONDITION":
            self._pool_id = 0

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._connector_metadata
        if not isinstance(meta, KvtierConnectorMetadata) or not meta.loads:
            return
        staging = self._staging
        for load in meta.loads:
            start = time.perf_counter()
            loaded = 0
            if staging is not None and self._attach():
                loaded = self._load(staging, load)
            failed = load.block_ids[loaded:]
            self._load_errors.update(failed)
            self._stats.add(
                loads=1,
                loaded_tokens=loaded * self.block_size,
                load_error_blocks=len(failed),
                load_seconds=time.perf_counter() - start,
            )
            if failed:
                logger.warning(
                    "kvtier: request %s: %d of %d promised blocks did not load; "
                    "vLLM recomputes them",
                    load.req_id,
                    len(failed),
                    len(load.block_ids),
                )

    def _load(self, staging: StagingPool, load: LoadSpec) -> int:
        """Loads a prefix of ``load``; returns how many leading blocks landed."""
        deadline = time.monotonic() + self.config.load_timeout_ms / 1000
        done = 0
        total = len(load.hashes)
        while done < total:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            slots = staging.acquire(min(total - done, staging.slots), timeout_s=min(left, 0.5))
            if not slots:
                continue
            try:
                n = len(slots)
                got, reason = self._agent.onboard(
                    self._pool_id, load.hashes[done : done + n], slots, max(left, 0.001)
                )
                if got:
                    staging.scatter(slots[:got], load.block_ids[done : done + got])
                done += got
                if got < n:
                    if reason:
                        logger.warning("kvtier: load degraded: %s", reason)
                    break
            except AgentError as err:
                self._agent_failed(err)
                logger.warning("kvtier: load failed (%s)", err)
                break
            finally:
                staging.release(slots)
        return done

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        # Saved once per step in wait_for_save: one copy per layer, off the layer loop.
        return

    def wait_for_save(self) -> None:
        meta = self._connector_metadata
        if not isinstance(meta, KvtierConnectorMetadata) or not meta.saves:
            return
        staging = self._staging
        wanted = sum(len(s.hashes) for s in meta.saves)
        if staging is None or not self._attach():
            self._stats.add(save_skipped_blocks=wanted)
            return
        start = time.perf_counter()
        blocks: list[OffloadBlock] = []
        slots_all: list[int] = []
        block_ids: list[int] = []
        for save in meta.saves:
            slots = staging.acquire(len(save.hashes))  # never waits: a full pool skips
            parent = save.parent
            for slot, h in zip(slots, save.hashes, strict=False):
                blocks.append(OffloadBlock(slot=slot, hash=h, parent=parent))
                parent = h
            slots_all.extend(slots)
            block_ids.extend(save.block_ids[: len(slots)])
        skipped = wanted - len(blocks)
        if blocks:
            staging.gather(block_ids, slots_all)
        self._stats.add(
            saved_blocks=len(blocks),
            save_skipped_blocks=skipped,
            save_copy_seconds=time.perf_counter() - start,
        )
        if not blocks:
            return
        pool_id = self._pool_id
        fut = self._saver.submit(self._offload, staging, pool_id, blocks, slots_all)
        with self._inflight_lock:
            self._inflight.add(fut)
        fut.add_done_callback(self._save_done)

    def _offload(
        self, staging: StagingPool, pool_id: int, blocks: list[OffloadBlock], slots: list[int]
    ) -> None:
        try:
            stored, _skipped = self._agent.offload(
                pool_id, blocks, self.config.save_timeout_ms / 1000
            )
            self._stats.add(stored_blocks=stored)
        except AgentError as err:
            self._agent_failed(err)
            self._stats.add(save_failures=1)
            logger.warning("kvtier: save of %d blocks failed (%s)", len(blocks), err)
        finally:
            staging.release(slots)

    def _save_done(self, fut: concurrent.futures.Future[None]) -> None:
        with self._inflight_lock:
            self._inflight.discard(fut)

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

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

    # ------------------------------------------------------------------
    # Both sides
    # ------------------------------------------------------------------

    def wait_for_saves(self, timeout_s: float) -> bool:
        """Waits for background saves to finish; True when none is left."""
        with self._inflight_lock:
            pending = list(self._inflight)
        _, not_done = concurrent.futures.wait(pending, timeout=timeout_s)
        return not not_done

    @property
    def totals(self) -> dict[str, float]:
        """Counters since start (for tests and logs)."""
        return dict(self._stats.totals)

    @property
    def staging_free(self) -> int | None:
        return self._staging.free if self._staging is not None else None

    def shutdown(self) -> None:
        self.wait_for_saves(self.config.save_timeout_ms / 1000)
        self._saver.shutdown(wait=False, cancel_futures=True)
        if self._staging is not None:
            self._staging.close()
            self._staging = None
        self._agent.close()
