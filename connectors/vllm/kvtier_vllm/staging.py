"""A shared-memory staging pool the agent maps: the engine copies blocks in
and out of it (one copy per layer), the agent moves them to and from the tier.

Slots are handed out and returned under a lock; :meth:`StagingPool.acquire`
never blocks longer than asked, so a full pool turns into a skipped save or a
reported load error, never a stalled forward pass.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import uuid
import weakref
from collections.abc import Sequence

import torch

from kvtier_vllm.layout import BlockView, KvLayout


class StagingPool:
    """``slots`` kvtier blocks in a file under ``directory`` (``/dev/shm/kvtier`` by default)."""

    def __init__(self, layout: KvLayout, slots: int, directory: str = "/dev/shm/kvtier") -> None:
        if slots < 1:
            raise ValueError(f"staging needs at least one slot, got {slots}")
        self.layout = layout
        self.slots = slots
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"kvtier-vllm-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        size = slots * layout.block_bytes
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        # The file goes when the pool does, or at interpreter exit at the latest
        # (the agent keeps its own mapping; only a re-attach needs the path).
        self._unlink = weakref.finalize(self, _unlink, self.path)
        try:
            os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._bytes = torch.frombuffer(self._mmap, dtype=torch.uint8).view(
            slots, layout.block_bytes
        )
        self._views = [self._typed(v) for v in layout.views]
        self._free = list(range(slots - 1, -1, -1))
        self._cond = threading.Condition()
        self._closed = False

    def _typed(self, view: BlockView) -> torch.Tensor:
        raw = self._bytes[:, view.offset : view.offset + view.nbytes]
        return raw.view(view.tensor.dtype).view(self.slots, *view.tensor.shape[1:])

    @property
    def free(self) -> int:
        with self._cond:
            return len(self._free)

    def acquire(self, n: int, timeout_s: float = 0.0) -> list[int]:
        """Up to ``n`` slots: as many as are free within ``timeout_s`` (maybe none)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._free) < n and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            take = min(n, len(self._free))
            got = [self._free.pop() for _ in range(take)]
        return got

    def release(self, slots: Sequence[int]) -> None:
        with self._cond:
            self._free.extend(slots)
            self._cond.notify_all()

    def gather(self, block_ids: Sequence[int], slots: Sequence[int]) -> None:
        """Copies engine blocks ``block_ids`` into ``slots`` (one copy per layer run)."""
        src = torch.tensor(list(block_ids), dtype=torch.long)
        dst = torch.tensor(list(slots), dtype=torch.long)
        for view, staged in zip(self.layout.views, self._views, strict=True):
            staged[dst] = view.tensor.index_select(0, src.to(view.tensor.device)).to("cpu")

    def scatter(self, slots: Sequence[int], block_ids: Sequence[int]) -> None:
        """Copies ``slots`` into engine blocks ``block_ids``."""
        src = torch.tensor(list(slots), dtype=torch.long)
        dst = torch.tensor(list(block_ids), dtype=torch.long)
        for view, staged in zip(self.layout.views, self._views, strict=True):
            blocks = staged.index_select(0, src).to(view.tensor.device)
            view.tensor.index_copy_(0, dst.to(view.tensor.device), blocks)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._views = []
        del self._bytes
        try:
            self._mmap.close()
        except BufferError:
            pass  # a tensor still references the mapping; the OS frees it at exit
        self._unlink()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
