"""The engine's KV layout, read from its real KV tensors.

Each attention layer's KV cache is one tensor whose blocks lie along a block
dimension: ``[num_blocks, ...]`` (vLLM's CPU backend:
``[num_blocks, kv_heads, block_size, 2 * head_size]``) or ``[2, num_blocks, ...]``
(K and V apart, e.g. FlashAttention). A kvtier block is one engine block of
every layer, K and V, laid end to end in layer order: ``block_bytes`` is their
sum. The descriptor names all of it, so that two engines whose blocks are not
byte-compatible never share a namespace (the cache server refuses the second
one's handshake).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class LayoutError(ValueError):
    """The KV tensors cannot be described as kvtier blocks."""


@dataclass(frozen=True)
class BlockView:
    """One run of per-block bytes: layer ``layer``'s blocks (or its K or V half)."""

    layer: str
    tensor: torch.Tensor
    """Block dimension first; each ``tensor[i]`` is contiguous."""
    offset: int
    """Byte offset of this run inside a kvtier block."""
    nbytes: int
    """Bytes of one block of this run."""


@dataclass(frozen=True)
class KvLayout:
    """How the engine's KV cache maps onto kvtier blocks."""

    views: tuple[BlockView, ...]
    num_blocks: int
    block_tokens: int
    block_bytes: int
    dtype: torch.dtype
    descriptor: str
    num_layers: int

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _block_major(name: str, t: torch.Tensor, num_blocks: int) -> list[torch.Tensor]:
    if t.dim() >= 2 and t.shape[0] == num_blocks:
        views = [t]
    elif t.dim() >= 3 and t.shape[0] == 2 and t.shape[1] == num_blocks:
        views = [t[0], t[1]]
    else:
        raise LayoutError(
            f"layer {name}: KV tensor of shape {tuple(t.shape)} has no block dimension "
            f"of {num_blocks} blocks first (or second after a K/V dimension of 2)"
        )
    for v in views:
        if not v[0].is_contiguous() or v.stride(0) < v[0].numel():
            raise LayoutError(
                f"layer {name}: a block of shape {tuple(v.shape[1:])} is not contiguous "
                f"(strides {v.stride()})"
            )
    return views


def describe(
    kv_caches: dict[str, torch.Tensor],
    num_blocks: int,
    block_tokens: int,
    kv_heads: int,
    head_size: int,
) -> KvLayout:
    """Describes ``kv_caches`` (layer name → tensor, in the engine's order)."""
    if not kv_caches:
        raise LayoutError("no KV cache tensors were registered")
    dtypes = {t.dtype for t in kv_caches.values()}
    if len(dtypes) != 1:
        raise LayoutError(f"layers use different dtypes {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    views: list[BlockView] = []
    offset = 0
    shapes: set[tuple[int, ...]] = set()
    halves = set()
    for name, t in kv_caches.items():
        parts = _block_major(name, t, num_blocks)
        halves.add(len(parts))
        for v in parts:
            nbytes = v[0].numel() * v.element_size()
            views.append(BlockView(layer=name, tensor=v, offset=offset, nbytes=nbytes))
            offset += nbytes
            shapes.add(tuple(v.shape[1:]))
    shape_desc = "|".join("x".join(map(str, s)) for s in sorted(shapes))
    descriptor = (
        f"vllm:layers={len(kv_caches)},kv_split={halves.pop() if len(halves) == 1 else 'mixed'},"
        f"block_shape={shape_desc},kv_heads={kv_heads},head_size={head_size},"
        f"block_tokens={block_tokens},dtype={str(dtype).removeprefix('torch.')},order=layer-major"
    )
    return KvLayout(
        views=tuple(views),
        num_blocks=num_blocks,
        block_tokens=block_tokens,
        block_bytes=offset,
        dtype=dtype,
        descriptor=descriptor,
        num_layers=len(kv_caches),
    )
