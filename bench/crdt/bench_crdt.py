"""CRDT hot path: native (ext/crdt.pyx) next to its pure-Python twin, in one run.

apply = Dag.ingest: parse signed frames + BLAKE3 ids + causal ordering + register merge + heads
for a batch of 10k operations into a fresh Dag (no signature checks), the same call with the same
inputs and results on both sides (tests/crdt/test_core.py checks they agree); signature
verification is measured on its own.
"""

from __future__ import annotations

import os

import pytest

from shoal import _native
from shoal.crdt.signing import Signer, verify_op

IMPLS = [("twin", _native.pure("crdt"))]
if _native.native("crdt") is not None:
    IMPLS.append(("native", _native.native("crdt")))
PURE = _native.pure("crdt")
N = 10_000
VALUE = b'{"id":"cidr-17953251936322675840","cidr":"10.1.2.0/24","name":"VM Network","owner":"peer-1","created_at":1795325193,"updated_at":1795325193}'


def _frames(n: int = N, authors: int = 3) -> list[bytes]:
    """n ops from `authors` nodes: each op depends on its author's previous op and, often, another's."""
    keys = [os.urandom(32) for _ in range(authors)]
    last: list[bytes | None] = [None] * authors
    frames = []
    for i in range(n):
        a = i % authors
        deps = [d for d in (last[a], last[(a + 1) % authors] if i % 4 == 0 else None) if d]
        blob = PURE.encode(keys[a], 1_000_000 + i, deps, "cidr", f"cidr-{i % 2000}", "user:0xab", VALUE)
        last[a] = PURE.digest(blob)
        frames.append(os.urandom(64) + blob)
    return frames


FRAMES = _frames()


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_apply_10k_ops(benchmark, role, mod):
    benchmark.group = "crdt: apply 10k ops (parse + hash + order + merge)"
    benchmark.extra_info["baseline"] = role == "twin"
    benchmark.extra_info["ops"] = N
    ready, _won, waiting, bad, errors = benchmark(lambda: mod.Dag().ingest(FRAMES))
    assert len(ready) == N and not waiting and not bad and not errors


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_apply_10k_shuffled(benchmark, role, mod):
    import random

    benchmark.group = "crdt: apply 10k ops arriving in random order"
    benchmark.extra_info["baseline"] = role == "twin"
    shuffled = FRAMES[:]
    random.Random(1).shuffle(shuffled)
    ready, *_ = benchmark(lambda: mod.Dag().ingest(shuffled))
    assert len(ready) == N


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_merge_10k(benchmark, role, mod):
    """Dag.apply of decoded ops (the checked path: ops were decoded to verify their signatures)."""
    benchmark.group = "crdt: Dag.apply 10k decoded ops (merge + known + heads)"
    benchmark.extra_info["baseline"] = role == "twin"
    ops, _ = mod.parse_frames(FRAMES)
    won = benchmark(lambda: mod.Dag().apply(ops))
    assert len(won) == N


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_digest_many_10k(benchmark, role, mod):
    benchmark.group = "crdt: BLAKE3 ids of 10k frames"
    benchmark.extra_info["baseline"] = role == "twin"
    assert len(benchmark(lambda: mod.digest_many(FRAMES, 64))) == N


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_bloom_10k(benchmark, role, mod):
    benchmark.group = "crdt: Bloom filter build + query 10k ids"
    benchmark.extra_info["baseline"] = role == "twin"
    ids = [PURE.digest(f[64:]) for f in FRAMES]
    benchmark(lambda: mod.bloom_missing(mod.bloom_build(ids[: N // 2]), ids))


def test_verify_1000_signatures(benchmark):
    benchmark.group = "crdt: Ed25519 verify 1000 op signatures"
    benchmark.extra_info["baseline"] = True
    signer = Signer.generate()
    ids = [os.urandom(32) for _ in range(1000)]
    sigs = [signer.sign_op(i) for i in ids]
    assert benchmark(lambda: all(verify_op(signer.public, i, s) for i, s in zip(ids, sigs, strict=True)))
