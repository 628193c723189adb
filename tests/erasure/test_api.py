"""The public API in shoal.erasure: what the metadata service and ChunkPaxos call."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from shoal import erasure
from tests.erasure.conftest import flip, payload


def test_encode_decode_and_info(chunk, frags):
    assert len(frags) == erasure.N == 5
    assert erasure.decode({1: frags[1], 3: frags[3], 4: frags[4]}) == chunk
    info = erasure.fragment_info(frags[4])
    assert isinstance(info, erasure.FragmentInfo)
    assert (info.index, info.length, info.is_parity) == (4, len(chunk), True)
    assert len(info.stripe_id) == 16
    assert erasure.fragment_size(len(chunk)) == len(frags[0]) == info.size


def test_fragment_size_of_a_full_chunk():
    assert erasure.fragment_size(2 << 20) == len(erasure.encode(bytes(2 << 20))[0]) == 699_131


def test_errors_are_value_errors(frags):
    assert issubclass(erasure.NotEnoughFragments, erasure.ErasureError)
    assert issubclass(erasure.CorruptFragment, ValueError)
    with pytest.raises(ValueError):
        erasure.decode(frags[:2])
    with pytest.raises(ValueError):
        erasure.fragment_info(b"nope")


def test_check_reports_what_a_repair_must_rebuild(frags):
    result = erasure.check({0: frags[0], 1: flip(frags[1], 5000), 3: frags[3]})
    assert sorted(result.valid) == [0, 3]
    assert result.missing == [1, 2, 4]
    assert "checksum" in result.rejected[1]


def test_rebuild_recreates_identical_fragments(frags):
    lost = {0: frags[0], 2: flip(frags[2], -1), 4: frags[4], 3: frags[3]}
    rebuilt = erasure.rebuild(lost)
    assert rebuilt == {1: frags[1], 2: frags[2]}
    assert erasure.rebuild(frags[2:], indices=[0]) == {0: frags[0]}
    with pytest.raises(erasure.NotEnoughFragments):
        erasure.rebuild(frags[3:])
    with pytest.raises(ValueError, match="out of range"):
        erasure.rebuild(frags, indices=[7])


def test_concurrent_use_from_threads():
    datas = [payload(300_000 + i * 4099, seed=i) for i in range(8)]

    def roundtrip(data: bytes) -> bool:
        for _ in range(5):
            frags = erasure.encode(data)
            if erasure.decode([frags[4], frags[1], frags[3]]) != data or erasure.decode(frags) != data:
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(roundtrip, datas * 2))


def _tuned(env: dict) -> str:
    code = "from shoal import erasure; print(erasure.MALLOC_TUNED)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    return out.stdout.strip()


def test_malloc_tuning_is_on_by_default_and_can_be_declined():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert erasure.MALLOC_TUNED is ("MALLOC_MMAP_THRESHOLD_" not in os.environ)
    assert _tuned({**env, "SHOAL_ERASURE_MALLOC_TUNING": "1"}) == "True"
    assert _tuned({"SHOAL_ERASURE_MALLOC_TUNING": "0"}) == "False"
    assert _tuned({"MALLOC_MMAP_THRESHOLD_": str(4 << 20)}) == "False"  # the operator's choice stands
