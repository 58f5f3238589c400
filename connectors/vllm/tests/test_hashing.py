"""The connector hashes exactly like the Rust code: same committed vectors."""

from __future__ import annotations

import pathlib

import pytest

from kvtier_vllm.hashing import BlockHasher, IncrementalHasher, effective_seed

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "proto" / "testdata" / "hash_vectors.txt"


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")] if s else []


def _cases() -> list[tuple[int, int, str, list[int], int, list[int], list[int]]]:
    out = []
    for line in VECTORS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split("|")
        assert len(f) == 7, line
        out.append((int(f[0]), int(f[1]), f[2], _ints(f[3]), int(f[4]), _ints(f[5]), _ints(f[6])))
    return out


def test_vector_file_is_there() -> None:
    assert len(_cases()) >= 6


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"bt{c[0]}-seed{c[1]}-salt{bool(c[2])}")
def test_matches_rust_vectors(
    case: tuple[int, int, str, list[int], int, list[int], list[int]],
) -> None:
    block_tokens, base_seed, salt, tokens, seed, locals_, sequence = case
    assert effective_seed(base_seed, salt) == seed
    hasher = BlockHasher(block_tokens, seed)
    assert hasher.local_hashes(tokens) == locals_
    assert hasher.sequence_hashes(tokens) == sequence


def test_incremental_equals_whole() -> None:
    hasher = BlockHasher(4, effective_seed(1337, ""))
    tokens = list(range(1, 40))
    inc = IncrementalHasher(hasher)
    for end in (3, 4, 9, 17, 17, 39):
        assert inc.extend(tokens[:end]) == hasher.sequence_hashes(tokens[:end])


def test_seed_zero_means_default() -> None:
    assert effective_seed(0, "") == 1337
    assert effective_seed(0, "x") == effective_seed(1337, "x")


def test_rejects_empty_block() -> None:
    with pytest.raises(ValueError):
        BlockHasher(0, 1)
