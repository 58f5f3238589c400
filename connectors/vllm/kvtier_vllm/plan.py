"""The scheduler side: which blocks a request loads from kvtier and which it
saves, step by step. Talks to the agent only to look prompts up; knows vLLM's
scheduler objects (requests, outputs) but does no I/O on KV."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata
from vllm.logger import init_logger

from kvtier_vllm.agent import AgentClient, AgentError, Backoff
from kvtier_vllm.hashing import BlockHasher, IncrementalHasher
from kvtier_vllm.stats import StatsRecorder

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

logger = init_logger("kvtier_vllm")


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
    """What the worker side does in one step."""

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


def cacheable(request: Request) -> bool:
    """Token ids alone do not name the KV of LoRA, multimodal or salted requests."""
    return not (
        getattr(request, "lora_request", None)
        or getattr(request, "mm_features", None)
        or getattr(request, "cache_salt", None)
    )


class Planner:
    """Per-request load and save plans (the connector's scheduler side)."""

    def __init__(
        self,
        hasher: BlockHasher,
        agent: AgentClient,
        backoff: Backoff,
        stats: StatsRecorder,
        lookup_timeout_s: float,
    ) -> None:
        self.block_size = hasher.block_tokens
        self._hasher = hasher
        self._agent = agent
        self._backoff = backoff
        self._stats = stats
        self._lookup_timeout_s = lookup_timeout_s
        self.requests: dict[str, _RequestState] = {}

    def _state(self, request: Request) -> _RequestState:
        st = self.requests.get(request.request_id)
        if st is None:
            st = _RequestState(request=request, hasher=IncrementalHasher(self._hasher))
            self.requests[request.request_id] = st
        return st

    def matched_tokens(self, request: Request, num_computed_tokens: int) -> int:
        """Prompt tokens after ``num_computed_tokens`` the tier can load (0 on any failure)."""
        if not cacheable(request):
            return 0
        prompt = request.prompt_token_ids or []
        # Leave at least one prompt token to compute (vLLM needs its logits).
        max_blocks = max(len(prompt) - 1, 0) // self.block_size
        first = num_computed_tokens // self.block_size
        st = self._state(request)
        st.planned_load = None
        if max_blocks <= first or self._backoff.down():
            return 0
        hashes = st.hasher.extend(prompt)[:max_blocks]
        start = time.perf_counter()
        try:
            # Only the blocks after the local hits: a sequence hash names its whole prefix.
            hit = self._agent.lookup(hashes[first:], self._lookup_timeout_s)
            self._backoff.ok()
        except AgentError as err:
            self._backoff.failed()
            self._stats.add(
                lookups=1, lookup_failures=1, lookup_seconds=time.perf_counter() - start
            )
            logger.warning("kvtier: lookup failed, computing the prompt (%s)", err)
            return 0
        self._stats.add(
            lookups=1,
            lookup_hit_tokens=hit * self.block_size,
            lookup_seconds=time.perf_counter() - start,
        )
        if hit:
            st.planned_load = (first, hit)
        return hit * self.block_size

    def after_alloc(self, request: Request, block_ids: list[int], num_external_tokens: int) -> None:
        """Records the blocks vLLM allocated and the load it accepted."""
        st = self._state(request)
        st.block_ids = list(block_ids)
        if num_external_tokens <= 0 or st.planned_load is None:
            st.pending_load = None
            return
        first, planned = st.planned_load
        n = min(planned, num_external_tokens // self.block_size)
        hashes = st.hasher.hashes[first : first + n]
        st.pending_load = LoadSpec(request.request_id, hashes, st.block_ids[first : first + n])
        st.saved_blocks = max(st.saved_blocks, first + n)

    def build(self, scheduler_output: SchedulerOutput) -> KvtierConnectorMetadata:
        """This step's loads (promised) and saves (blocks that become full)."""
        meta = KvtierConnectorMetadata()
        steps: list[tuple[str, int]] = []
        for new in scheduler_output.scheduled_new_reqs:
            st = self.requests.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            # Blocks computed before this step (local prefix hits, and the load
            # after_alloc planned) are not saved again.
            st.saved_blocks = max(st.saved_blocks, new.num_computed_tokens // self.block_size)
            steps.append((new.req_id, new.num_computed_tokens))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self.requests.get(req_id)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                st.block_ids = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                st.block_ids.extend(new_ids[0])
            steps.append((req_id, cached.num_computed_tokens[i]))
        for req_id, computed in steps:
            st = self.requests[req_id]
            if st.pending_load is not None:
                meta.loads.append(st.pending_load)
                st.pending_load = None
            if cacheable(st.request):
                save = self._save(
                    st, computed + scheduler_output.num_scheduled_tokens.get(req_id, 0)
                )
                if save is not None:
                    meta.saves.append(save)
        return meta

    def _save(self, st: _RequestState, done: int) -> SaveSpec | None:
        tokens = st.request.all_token_ids
        bs = self.block_size
        full = min(done, len(tokens), len(st.block_ids) * bs) // bs
        if full <= st.saved_blocks:
            return None
        hashes = st.hasher.extend(tokens[: full * bs])
        lo = st.saved_blocks
        st.saved_blocks = full
        return SaveSpec(
            st.request.request_id,
            hashes[lo:full],
            st.block_ids[lo:full],
            hashes[lo - 1] if lo > 0 else None,
        )

    def finished(self, request: Request) -> None:
        self.requests.pop(request.request_id, None)
