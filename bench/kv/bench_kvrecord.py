"""kv record hot path: native (ext/kvrecord.pyx) next to its pure-Python twin, in one run.

1000 calls per round of what every store get / set does: check a key, decode a record into an
Entry, encode a record and a change-log record.
"""

from __future__ import annotations

import pytest

from shoal import _native
from shoal.kv import Entry
from shoal.kv import keys as kv_keys

IMPLS = [("twin", _native.pure("kvrecord"))]
if _native.native("kvrecord") is not None:
    IMPLS.append(("native", _native.native("kvrecord")))
for _, _mod in IMPLS:
    _mod.bind(kv_keys._explain, Entry)

KEYS = [f"/bench/videos/{i:06d}" for i in range(1000)]
RAWS = [k.encode() for k in KEYS]
VALUE = b"v" * 100


def _group(benchmark, name: str, role: str) -> None:
    benchmark.group = f"kvrecord: {name} x1000"
    benchmark.extra_info["baseline"] = role == "twin"


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_check_key(benchmark, role, mod):
    _group(benchmark, "check_key", role)
    check = mod.check_key
    assert benchmark(lambda: [check(k) for k in KEYS]) == RAWS


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_decode_entry(benchmark, role, mod):
    _group(benchmark, "decode_entry", role)
    decode = mod.decode_entry
    rec = mod.encode_record(3, 77, 1.5, 2.5, VALUE)
    out = benchmark(lambda: [decode(k, rec) for k in KEYS])
    assert out[0] == Entry(KEYS[0], VALUE, 3, 1.5, 2.5, 77)


@pytest.mark.parametrize("role, mod", IMPLS, ids=[r for r, _ in IMPLS])
def test_encode_record_and_change(benchmark, role, mod):
    _group(benchmark, "encode_record + encode_change", role)
    enc, chg = mod.encode_record, mod.encode_change

    def run():
        return [(enc(2, 9, 1.0, 2.0, VALUE), chg(2, 2, r, VALUE)) for r in RAWS]

    assert len(benchmark(run)) == 1000
