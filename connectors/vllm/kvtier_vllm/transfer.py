"""The worker side: the staging pool attached to the agent, loads before the
forward pass and background saves after it. Knows torch and the agent, not
vLLM's scheduler."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

from vllm.logger import init_logger

from kvtier_vllm.agent import (
    AgentClient,
    AgentError,
    AgentRefused,
    AgentUnavailable,
    Backoff,
    Hashing,
    OffloadBlock,
)
from kvtier_vllm.config import ConnectorConfig
from kvtier_vllm.layout import KvLayout
from kvtier_vllm.plan import LoadSpec, SaveSpec
from kvtier_vllm.staging import StagingPool
from kvtier_vllm.stats import StatsRecorder

logger = init_logger("kvtier_vllm")


class Transfers:
    """Moves one engine's KV blocks through its agent (the connector's worker side)."""

    def __init__(
        self,
        config: ConnectorConfig,
        hashing: Hashing,
        layout: KvLayout,
        agent: AgentClient,
        backoff: Backoff,
        stats: StatsRecorder,
    ) -> None:
        self.config = config
        self.hashing = hashing
        self.layout = layout
        self._agent = agent
        self._backoff = backoff
        self._stats = stats
        slots = max(8, config.staging_bytes // layout.block_bytes)
        self.staging: StagingPool | None = StagingPool(layout, int(slots), config.shm_dir)
        self._pool_id = 0
        self._attach_lock = threading.Lock()
        self._load_errors: set[int] = set()
        self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kvtier-save")
        self._inflight: set[concurrent.futures.Future[None]] = set()
        self._inflight_lock = threading.Lock()
        logger.info(
            "kvtier: KV layout %s, %d B per block, staging %d blocks in %s",
            layout.descriptor,
            layout.block_bytes,
            slots,
            self.staging.path,
        )
        try:
            self.attach(first=True)
        except Exception:
            self.close()
            raise

    # -- attachment ---------------------------------------------------------

    def attach(self, first: bool = False) -> bool:
        """Attaches the staging pool; True when attached. A refusal at start-up raises."""
        if self._pool_id:
            return True
        if self.staging is None or (not first and self._backoff.down()):
            return False
        with self._attach_lock:
            if self._pool_id:
                return True
            try:
                resp = self._agent.attach_shared_memory(
                    namespace=self.config.namespace,
                    hashing=self.hashing,
                    num_blocks=self.staging.slots,
                    num_layers=self.layout.num_layers,
                    dtype=self.layout.dtype_name,
                    path=self.staging.path,
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

    def _failed(self, err: AgentError) -> None:
        self._backoff.failed()
        if isinstance(err, AgentRefused) and err.code.name == "FAILED_PRECONDITION":
            self._pool_id = 0  # the agent restarted or lost the pool: attach again

    # -- loads ----------------------------------------------------------------

    def load_all(self, loads: list[LoadSpec]) -> None:
        """Runs this step's loads; blocks that did not land become load errors."""
        for load in loads:
            start = time.perf_counter()
            loaded = 0
            if self.staging is not None and self.attach():
                loaded = self._load(self.staging, load)
            failed = load.block_ids[loaded:]
            self._load_errors.update(failed)
            self._stats.add(
                loads=1,
                loaded_tokens=loaded * self.hashing.block_tokens,
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
        """Loads a prefix of ``load`` by ``load_timeout_ms``; returns the leading blocks landed."""
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
                self._failed(err)
                logger.warning("kvtier: load failed (%s)", err)
                break
            finally:
                staging.release(slots)
        return done

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # -- saves ----------------------------------------------------------------

    def save_all(self, saves: list[SaveSpec]) -> None:
        """Copies this step's full blocks into staging, then stores them in the background."""
        wanted = sum(len(s.hashes) for s in saves)
        staging = self.staging
        if staging is None or not self.attach():
            self._stats.add(save_skipped_blocks=wanted)
            return
        start = time.perf_counter()
        blocks: list[OffloadBlock] = []
        slots_all: list[int] = []
        block_ids: list[int] = []
        for save in saves:
            slots = staging.acquire(len(save.hashes))  # never waits: a full pool skips
            parent = save.parent
            for slot, h in zip(slots, save.hashes, strict=False):
                blocks.append(OffloadBlock(slot=slot, hash=h, parent=parent))
                parent = h
            slots_all.extend(slots)
            block_ids.extend(save.block_ids[: len(slots)])
        if blocks:
            staging.gather(block_ids, slots_all)
        self._stats.add(
            saved_blocks=len(blocks),
            save_skipped_blocks=wanted - len(blocks),
            save_copy_seconds=time.perf_counter() - start,
        )
        if not blocks:
            return
        fut = self._saver.submit(self._offload, staging, self._pool_id, blocks, slots_all)
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
            self._failed(err)
            self._stats.add(save_failures=1)
            logger.warning("kvtier: save of %d blocks failed (%s)", len(blocks), err)
        finally:
            staging.release(slots)

    def _save_done(self, fut: concurrent.futures.Future[None]) -> None:
        with self._inflight_lock:
            self._inflight.discard(fut)

    def wait_for_saves(self, timeout_s: float) -> bool:
        """Waits for background saves; True when none is left."""
        with self._inflight_lock:
            pending = list(self._inflight)
        _, not_done = concurrent.futures.wait(pending, timeout=timeout_s)
        return not not_done

    def close(self) -> None:
        self._saver.shutdown(wait=False, cancel_futures=True)
        if self.staging is not None:
            self.staging.close()
            self.staging = None
