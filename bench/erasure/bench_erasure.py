"""Erasure coding of one 2 MiB chunk: bare pyeclib (baseline) vs native framing vs twin, one run.

Bare pyeclib is the baseline (target: the framed paths within 10% of it, and >= 1 GB/s; the
native module codes with ISA-L directly, the twin through pyeclib). Throughput = ops/s * 2 MiB. Since format 2 a
shoal fragment is a pyeclib fragment, so the bare decodes are handed the very same bytes.
pytest-benchmark runs each member for a while in turn; bench/erasure/overhead.py interleaves
them call by call, which is the fairer ratio on a shared machine.
"""

from __future__ import annotations

import random

import pytest

from shoal import _native
from shoal.erasure import format

SIZE = 2 << 20
DATA = random.Random(5).randbytes(SIZE)
IMPLS = [("twin", _native.pure("erasure"))]
if _native.native("erasure") is not None:
    IMPLS.append(("native", _native.native("erasure")))
ROLES = [("pyeclib", None), *IMPLS]
IDS = [role for role, _ in ROLES]


def _setup(benchmark, group: str, role: str) -> None:
    benchmark.group = f"erasure: {group}"
    benchmark.extra_info["baseline"] = role == "pyeclib"
    benchmark.extra_info["bytes"] = SIZE


@pytest.mark.parametrize("role, mod", ROLES, ids=IDS)
def test_encode_2mib(benchmark, role, mod):
    _setup(benchmark, "encode 2 MiB", role)
    encode = format.DRIVER.encode if mod is None else mod.encode
    frags = benchmark(encode, DATA)
    assert len(frags) == 5


@pytest.mark.parametrize("role, mod", ROLES, ids=IDS)
def test_decode_2mib_two_data_fragments_lost(benchmark, role, mod):
    _setup(benchmark, "decode 2 MiB, fragments 0+1 lost", role)
    framed = IMPLS[0][1].encode(DATA)
    if mod is None:
        out = benchmark(format.DRIVER.decode, framed[2:])
    else:
        out = benchmark(mod.decode, {2: framed[2], 3: framed[3], 4: framed[4]})
    assert out == DATA


@pytest.mark.parametrize("role, mod", ROLES, ids=IDS)
def test_decode_2mib_parity_lost(benchmark, role, mod):
    _setup(benchmark, "decode 2 MiB, fragments 3+4 lost", role)
    framed = IMPLS[0][1].encode(DATA)
    if mod is None:
        out = benchmark(format.DRIVER.decode, framed[:3])
    else:
        out = benchmark(mod.decode, {0: framed[0], 1: framed[1], 2: framed[2]})
    assert out == DATA


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_verify_one_fragment(benchmark, role, mod):
    benchmark.group = "erasure: fragment_info (verify) of one 2 MiB-stripe fragment"
    benchmark.extra_info["baseline"] = role == "twin"
    frag = IMPLS[0][1].encode(DATA)[3]
    assert benchmark(mod.fragment_info, frag).index == 3
