"""Latency scoring: behaviour, and the native module agreeing with its pure-Python twin."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import _native
from tests.conftest import both, native_required

impl = both("scoring")


def test_native_build_is_in_force():
    if os.environ.get("SHOAL_PURE_PYTHON"):
        pytest.skip("by design: SHOAL_PURE_PYTHON forces the twin in this run")
    if native_required():
        assert _native.native("scoring") is not None, "ext/scoring.pyx was not compiled"
    if _native.native("scoring") is not None:
        assert _native.load("scoring").__name__ == "shoal._ext.scoring"
        assert _native.implementation("scoring") == "native"


def test_pure_python_can_be_forced():
    code = "from shoal import _native; print(_native.load('scoring').__name__, _native.implementation('scoring'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "SHOAL_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ["shoal._pure.scoring", "pure-python"]


def test_faster_node_ranks_first(impl):
    s = impl.NodeScores()
    for _ in range(5):
        s.record_ping("slow", 0.080)
        s.record_ping("fast", 0.002)
        s.record_download("slow", 0.5, 2 << 20)
        s.record_download("fast", 0.02, 2 << 20)
    assert s.rank() == ["fast", "slow"]
    assert s.stats("fast")["latency_ms"] < 3.0
    assert s.stats("fast")["bandwidth_mbps"] > s.stats("slow")["bandwidth_mbps"] * 10


def test_failures_and_inflight_lower_a_score(impl):
    s = impl.NodeScores()
    for node in ("a", "b"):
        s.record_ping(node, 0.005)
        s.record_download(node, 0.05, 1 << 20)
    assert s.score("a") == s.score("b")
    s.record_download("a", 1.0, 0, ok=False)
    assert s.stats("a")["success_rate"] == pytest.approx(0.7)
    assert s.rank() == ["b", "a"]
    s.set_inflight("b", 4)
    assert s.score("b") == pytest.approx(s.score("a") / 0.7 / 3.0)
    assert s.rank(["b", "a"]) == ["a", "b"]


def test_spec_example_score(impl):
    # vstack-api.md: 18.5 ms, 48.2 Mbit/s, success 1.0 -> a score of about 16.8
    assert impl.score(18.5, 48.2, 1.0) == pytest.approx(16.9, abs=0.1)


def test_ties_keep_insertion_order_and_unknown_node_fails(impl):
    s = impl.NodeScores()
    for n in ("n3", "n1", "n2"):
        s.add(n)
    assert s.rank() == ["n3", "n1", "n2"]
    assert len(s) == 3 and "n1" in s and s.nodes == ["n3", "n1", "n2"]
    with pytest.raises(KeyError):
        s.score("missing")
    with pytest.raises(ValueError):
        impl.NodeScores(alpha=0)


def test_rank_arrays_validates_lengths(impl):
    with pytest.raises(ValueError):
        impl.rank_arrays([1.0], [1.0, 2.0], [1.0], [0.0])
    assert impl.rank_arrays([], [], [], []) == ([], [])


positive = st.floats(min_value=0.01, max_value=1e4, allow_nan=False)
op = st.one_of(
    st.tuples(st.just("ping"), st.integers(0, 7), positive, st.booleans()),
    st.tuples(st.just("download"), st.integers(0, 7), positive, st.integers(0, 4 << 20), st.booleans()),
    st.tuples(st.just("inflight"), st.integers(0, 7), st.integers(0, 16)),
)


def _apply(mod, ops):
    s = mod.NodeScores(alpha=0.25)
    for o in ops:
        node = f"http://node-{o[1]}"
        if o[0] == "ping":
            s.record_ping(node, o[2] / 1000, o[3])
        elif o[0] == "download":
            s.record_download(node, o[2] / 1000, o[3], o[4])
        else:
            s.set_inflight(node, o[2])
    return s


needs_native = pytest.mark.skipif(_native.native("scoring") is None, reason="native scoring not built")


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=60))
def test_native_and_twin_agree_on_any_history(ops):
    a = _apply(_native.native("scoring"), ops)
    b = _apply(_native.pure("scoring"), ops)
    assert a.nodes == b.nodes
    for node in a.nodes:
        sa, sb = a.stats(node), b.stats(node)
        for key in sa:
            assert math.isclose(sa[key], sb[key], rel_tol=1e-12, abs_tol=1e-12), (node, key)
    assert a.rank() == b.rank()


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(positive, positive, st.floats(0, 1), st.integers(0, 10)), max_size=50))
def test_rank_arrays_agree(rows):
    cols = [[float(r[i]) for r in rows] for i in range(4)]
    ni, ns = _native.native("scoring").rank_arrays(*cols)
    pi, ps = _native.pure("scoring").rank_arrays(*cols)
    assert ni == pi
    assert all(math.isclose(x, y, rel_tol=1e-12) for x, y in zip(ns, ps, strict=True))
