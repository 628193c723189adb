"""The native superblock module against its pure-Python twin (same inputs, same results).

Groups: header parse, record framing, recovery scan of a superblock file, index-log load.
The twin is each group's baseline; bench/run.py prints the native speedup as a ratio.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from shoal import _native

PURE = _native.pure("superblock")
NATIVE = _native.native("superblock")
IMPLS = [("pure", PURE)] + ([("native", NATIVE)] if NATIVE is not None else [])
N_RECORDS = 2000
N_INDEX = 20000


def _mark(benchmark, name: str) -> None:
    benchmark.extra_info["baseline"] = name == "pure"


@pytest.fixture(scope="module")
def superblock_file(tmp_path_factory):
    """A superblock of N_RECORDS 4 KiB records (the scan reads headers and footers only)."""
    path = tmp_path_factory.mktemp("sb") / "sb-000001.dat"
    parts = [PURE.pack_file_header(1)]
    data = os.urandom(4096)
    sha = hashlib.sha256(data).digest()
    for i in range(N_RECORDS):
        prefix, suffix = PURE.pack_record(
            f"video-{i:06d}-chunk".encode(), 1, 1, i + 1, sha, bytes(32), len(data)
        )
        parts += [prefix, data, suffix]
    path.write_bytes(b"".join(parts))
    fd = os.open(path, os.O_RDONLY)
    yield fd, path.stat().st_size
    os.close(fd)


@pytest.fixture(scope="module")
def index_log():
    entries = [PURE.INDEX_MAGIC]
    for i in range(N_INDEX):
        entries.append(
            PURE.pack_index_entry(
                1, f"video-{i:06d}-chunk".encode(), 1 + i // 500, 64 + i * 4096, 4000, i + 1
            )
        )
    return b"".join(entries)


@pytest.mark.parametrize(("name", "mod"), IMPLS, ids=[n for n, _ in IMPLS])
def test_parse_header(benchmark, name, mod):
    benchmark.group = "superblock: parse one record header"
    _mark(benchmark, name)
    prefix, _ = PURE.pack_record(b"550e8400-chunk-000", 1, 1, 42, bytes(32), bytes(32), 2 << 20)
    assert benchmark(mod.parse_header, prefix)[6] == "550e8400-chunk-000"


@pytest.mark.parametrize(("name", "mod"), IMPLS, ids=[n for n, _ in IMPLS])
def test_pack_record(benchmark, name, mod):
    benchmark.group = "superblock: frame one record"
    _mark(benchmark, name)
    prefix, _suffix = benchmark(
        mod.pack_record, b"550e8400-chunk-000", 1, 1, 42, bytes(32), bytes(32), 2 << 20
    )
    assert len(prefix) == 88 + 18


@pytest.mark.parametrize(("name", "mod"), IMPLS, ids=[n for n, _ in IMPLS])
def test_scan(benchmark, name, mod, superblock_file):
    benchmark.group = f"superblock: recovery scan of {N_RECORDS} records"
    _mark(benchmark, name)
    fd, size = superblock_file
    records, damaged, end = benchmark(mod.scan, fd, 64, size)
    assert len(records) == N_RECORDS and not damaged and end == size


@pytest.mark.parametrize(("name", "mod"), IMPLS, ids=[n for n, _ in IMPLS])
def test_load_index(benchmark, name, mod, index_log):
    benchmark.group = f"superblock: load an index log of {N_INDEX} entries"
    _mark(benchmark, name)
    state, valid = benchmark(mod.load_index, index_log)
    assert valid == len(index_log) and len(state.live) == N_INDEX
