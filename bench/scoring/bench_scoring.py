"""Scoring hot path: native (ext/scoring.pyx) next to its pure-Python twin, in one run."""

from __future__ import annotations

import random

import pytest

from shoal import _native

IMPLS = [("twin", _native.pure("scoring"))]
if _native.native("scoring") is not None:
    IMPLS.append(("native", _native.native("scoring")))

NODES = [f"http://127.0.0.1:{8081 + i}" for i in range(200)]


def _filled(mod):
    s = mod.NodeScores()
    rng = random.Random(7)
    for node in NODES:
        s.record_ping(node, rng.uniform(0.001, 0.05))
        s.record_download(node, rng.uniform(0.01, 0.5), 2 << 20)
        s.set_inflight(node, rng.randint(0, 4))
    return s


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_rank_200_nodes(benchmark, role, mod):
    benchmark.group = "scoring: rank 200 nodes"
    benchmark.extra_info["baseline"] = role == "twin"
    s = _filled(mod)
    ranked = benchmark(s.rank)
    assert len(ranked) == len(NODES)


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_record_1000_samples(benchmark, role, mod):
    benchmark.group = "scoring: record 1000 samples"
    benchmark.extra_info["baseline"] = role == "twin"
    s = _filled(mod)
    nodes = NODES[:10]

    def record():
        for i in range(100):
            for node in nodes:
                s.record_download(node, 0.02 + i * 1e-4, 2 << 20)

    benchmark(record)


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_rank_arrays_10k(benchmark, role, mod):
    from array import array

    benchmark.group = "scoring: rank_arrays 10k nodes"
    benchmark.extra_info["baseline"] = role == "twin"
    rng = random.Random(3)
    cols = [array("d", [rng.uniform(0.1, 100) for _ in range(10_000)]) for _ in range(4)]
    order, _ = benchmark(mod.rank_arrays, *cols)
    assert len(order) == 10_000
