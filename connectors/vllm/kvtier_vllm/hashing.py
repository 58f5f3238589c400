"""kvtier block identity, the same scheme as the Rust `kvtier-proto` hashing.

A block is ``block_tokens`` consecutive token ids; only full blocks are hashed.

- local hash: ``local_i = XXH3_64(seed, LE-u32 bytes of block i's tokens)``
- sequence hash: ``seq_0 = local_0``, ``seq_i = XXH3_64(seed, LE-u64 [seq_{i-1}, local_i])``
- salt: ``seed = XXH3_64(base_seed, UTF-8 salt)`` when the salt is non-empty.

With the default seed (1337) and no salt this is NVIDIA Dynamo's block hash, so
router, agent and connector name every block the same way. This module needs
only ``xxhash``: an SGLang HiCache backend can reuse it as is.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import xxhash

DEFAULT_SEED = 1337
"""Dynamo's default XXH3 seed."""

_U64 = struct.Struct("<QQ")


def effective_seed(base_seed: int, salt: str) -> int:
    """Folds a namespace salt into the base seed (an empty salt changes nothing)."""
    base = DEFAULT_SEED if base_seed == 0 else base_seed
    if not salt:
        return base
    return xxhash.xxh3_64_intdigest(salt.encode("utf-8"), seed=base)


def local_block_hash(tokens: Sequence[int], seed: int) -> int:
    """Hash of one block's tokens on their own."""
    return xxhash.xxh3_64_intdigest(struct.pack(f"<{len(tokens)}I", *tokens), seed=seed)


def next_sequence_hash(parent: int, local: int, seed: int) -> int:
    """Sequence hash of a block from its parent's sequence hash and its local hash."""
    return xxhash.xxh3_64_intdigest(_U64.pack(parent, local), seed=seed)


class BlockHasher:
    """Chained block hashes for one namespace (block size and salted seed)."""

    def __init__(self, block_tokens: int, seed: int) -> None:
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be > 0, got {block_tokens}")
        self.block_tokens = block_tokens
        self.seed = seed

    def local_hashes(self, tokens: Sequence[int]) -> list[int]:
        """Local hashes of every full block of ``tokens``."""
        n = self.block_tokens
        full = len(tokens) - len(tokens) % n
        return [local_block_hash(tokens[i : i + n], self.seed) for i in range(0, full, n)]

    def sequence_hashes(self, tokens: Sequence[int], max_blocks: int | None = None) -> list[int]:
        """Sequence hashes of the full blocks of ``tokens`` (at most ``max_blocks``)."""
        n = self.block_tokens
        blocks = len(tokens) // n
        if max_blocks is not None:
            blocks = min(blocks, max_blocks)
        return self.chain(None, self.local_hashes(tokens[: blocks * n]))

    def chain(self, parent: int | None, locals_: Sequence[int]) -> list[int]:
        """Chains local hashes into sequence hashes, continuing from ``parent``."""
        out: list[int] = []
        prev = parent
        for local in locals_:
            seq = local if prev is None else next_sequence_hash(prev, local, self.seed)
            out.append(seq)
            prev = seq
        return out


class IncrementalHasher:
    """Sequence hashes of a growing token list, computed once per block.

    A request's prompt and output only grow; the scheduler asks for the hashes
    of its full blocks at every step, so each block is hashed once.
    """

    def __init__(self, hasher: BlockHasher) -> None:
        self._hasher = hasher
        self.hashes: list[int] = []

    def extend(self, tokens: Sequence[int]) -> list[int]:
        """Hashes of every full block of ``tokens`` (a prefix-extension of the last call)."""
        n = self._hasher.block_tokens
        full = len(tokens) // n
        have = len(self.hashes)
        if full > have:
            parent = self.hashes[-1] if self.hashes else None
            locals_ = [
                local_block_hash(tokens[i * n : (i + 1) * n], self._hasher.seed)
                for i in range(have, full)
            ]
            self.hashes.extend(self._hasher.chain(parent, locals_))
        return self.hashes[:full]
