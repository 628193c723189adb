"""The native framing (ext/erasure.pyx) and its pure-Python twin agree byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.erasure import ErasureError, K, N, format
from tests.conftest import native_required
from tests.erasure.conftest import flip, payload

NATIVE = _native.native("erasure")
TWIN = _native.pure("erasure")
needs_native = pytest.mark.skipif(NATIVE is None, reason="ext/erasure.pyx not built")

lengths = st.one_of(
    st.integers(0, 64),
    st.integers(0, 2 << 20),
    st.sampled_from([(2 << 20) - 1, 2 << 20, (2 << 20) - 3, 3 * 65_536 + 1]),
)
subsets = st.sets(st.integers(0, N - 1), min_size=0, max_size=N)


def test_native_build_is_in_force():
    if os.environ.get("SHOAL_PURE_PYTHON"):
        pytest.skip("by design: SHOAL_PURE_PYTHON forces the twin in this run")
    if native_required():
        assert NATIVE is not None, "ext/erasure.pyx was not compiled"
    if NATIVE is not None:
        from shoal import erasure

        assert erasure.implementation() == "native"
        assert _native.implementation("erasure") == "native"


def test_pure_python_can_be_forced():
    code = "from shoal import erasure; print(erasure.implementation(), erasure.decode(erasure.encode(b'ab')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "SHOAL_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ["pure-python", "b'ab'"], out.stderr


def test_isa_l_backend_really_encodes_here():
    """The wheel's bundled liberasurecode + ISA-L is the one in use, not the fallback."""
    assert format.backend() == "isa_l_rs_vand"
    assert format.HEADER_SIZE == 80  # liberasurecode's fragment header, which carries shoal's fields
    assert format.LAYOUT_OK  # format 2's assumptions hold for this pyeclib
    meta = format.DRIVER.get_metadata(format.DRIVER.encode(b"x" * 999)[4], formatted=1)
    assert meta["backend_id"] == "isa_l_rs_vand"
    assert meta["orig_data_size"] == 999


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=lengths, seed=st.integers(0, 2**32), lost=subsets)
def test_identical_fragments_and_decodes(length, seed, lost):
    data = payload(length, seed)
    frags = NATIVE.encode(data)
    assert TWIN.encode(data) == frags
    given_ = {i: f for i, f in enumerate(frags) if i not in lost}
    outcomes = []
    for mod in (NATIVE, TWIN):
        try:
            outcomes.append(("ok", mod.decode(given_)))
        except ErasureError as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1]
    if len(given_) >= K:
        assert outcomes[0] == ("ok", data)
    else:
        assert outcomes[0][0] == "NotEnoughFragments"


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
    damage=st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, 10**6)), max_size=4),
    cut=st.one_of(st.none(), st.tuples(st.integers(0, N - 1), st.integers(0, 200))),
)
def test_same_verdicts_on_damaged_fragments(length, seed, damage, cut):
    frags = NATIVE.encode(payload(length, seed))
    for index, pos in damage:
        frags[index] = flip(frags[index], pos % len(frags[index]))
    if cut is not None:
        frags[cut[0]] = frags[cut[0]][: cut[1]]
    verdicts = []
    for mod in (NATIVE, TWIN):
        valid, rejected = mod.check(frags)
        infos = {i: info for i, (info, _) in valid.items()}
        try:
            decoded = mod.decode(frags)
        except ErasureError as exc:
            decoded = (type(exc).__name__, str(exc))
        verdicts.append((infos, rejected, decoded))
    assert verdicts[0] == verdicts[1]
    damaged = {i for i, _ in damage} | ({cut[0]} if cut else set())
    assert set(verdicts[0][0]) >= set(range(N)) - damaged  # intact ones are never dropped


@settings(max_examples=30, deadline=None)
@given(length=lengths, seed=st.integers(0, 2**32))
def test_fast_assembly_equals_pyeclib_decode(length, seed):
    """Copying data fragments 0..2 out gives what pyeclib's own decode gives."""
    data = payload(length, seed)
    frags = TWIN.encode(data)
    assert format.pyeclib_decode(frags[:K], length) == data  # shoal's fragments are pyeclib's
    for mod in (TWIN, NATIVE) if NATIVE else (TWIN,):
        assert mod.assemble(frags[:K], length) == data


@needs_native
def test_native_codes_with_the_isal_that_pyeclib_loaded():
    """No silent fallback: the native module codes with ISA-L itself (the fast path)."""
    assert format.backend() == "isa_l_rs_vand"
    assert NATIVE.engine() == "isa-l"
    assert TWIN.engine() == "pyeclib"


@needs_native
@settings(max_examples=40, deadline=None)
@given(
    length=lengths, seed=st.integers(0, 2**32), lost=st.sets(st.integers(0, N - 1), min_size=2, max_size=2)
)
def test_isal_coding_is_pyeclibs_both_ways(length, seed, lost):
    """ISA-L called directly gives pyeclib's exact fragments, and each decodes the other's."""
    data = payload(length, seed)
    native = NATIVE.encode(data)
    assert native == TWIN.encode(data)
    kept = {i: native[i] for i in range(N) if i not in lost}
    assert format.pyeclib_decode([native[i] for i in sorted(kept)], length) == data
    assert NATIVE.decode(kept) == data == TWIN.decode(kept)


@needs_native
def test_isal_decode_rebuilds_into_the_output_across_column_edges():
    """Lengths around the 64 KiB column and the padded last fragment, every 3 of 5."""
    import itertools

    for length in (1, 2, 3, 4, 3 * 65_536 - 1, 3 * 65_536, 3 * 65_536 + 1, 3 * 65_536 + 2, 6 * 65_536 + 5):
        data = payload(length, seed=length)
        frags = NATIVE.encode(data)
        for keep in itertools.combinations(range(N), K):
            assert NATIVE.decode({i: frags[i] for i in keep}) == data, (length, keep)


@needs_native
def test_native_coding_in_threads_and_after_fork():
    """The GIL-free coding is safe from several threads at once, and in a forked child."""
    from concurrent.futures import ThreadPoolExecutor

    datas = [payload((1 << 20) + i, seed=i) for i in range(8)]
    want = [TWIN.encode(d) for d in datas]

    def roundtrip(i: int) -> bool:
        frags = NATIVE.encode(datas[i])
        return (
            frags == want[i]
            and NATIVE.decode(frags[1:4]) == datas[i]
            and NATIVE.decode(frags[3:] + frags[:1]) == datas[i]
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(roundtrip, list(range(8)) * 3))
    pid = os.fork()
    if pid == 0:
        os._exit(0 if roundtrip(0) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@needs_native
def test_native_encode_lets_other_threads_run():
    """Encode holds no GIL: a Python thread counts on while an 8 MiB encode runs.

    The switch interval is raised to 0.2 s so that an encode holding the GIL (pyeclib: ~20 ms) could
    not be interrupted: then the counter could not move at all between the two reads.
    """
    import threading

    data = payload(8 << 20, seed=1)
    done = threading.Event()
    counted = [0]

    def count() -> None:
        while not done.is_set():
            counted[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    t = threading.Thread(target=count)
    try:
        t.start()
        time.sleep(0.01)
        before = counted[0]
        NATIVE.encode(data)
        during = counted[0] - before
    finally:
        done.set()
        t.join()
        sys.setswitchinterval(interval)
    assert during > 1000
