"""The compiled superblock module and its pure-Python twin: same bytes, same parses, same scans."""

from __future__ import annotations

import hashlib
import os

import crc32c as crc32c_lib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import _native

NATIVE = _native.native("superblock")
PURE = _native.pure("superblock")
needs_native = pytest.mark.skipif(NATIVE is None, reason="native superblock module not built")

ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=128
)
digests = st.binary(min_size=32, max_size=32)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def test_the_implementation_in_force_is_the_expected_one():
    expected = "pure-python" if _native.pure_forced() or NATIVE is None else "native"
    assert _native.implementation("superblock") == expected
    if os.environ.get("CI") and not _native.pure_forced():
        assert NATIVE is not None, "the CI build must compile ext/superblock.pyx"


@needs_native
@SETTINGS
@given(st.binary(max_size=5000), st.integers(min_value=0, max_value=2**32 - 1))
def test_crc32c_agrees_with_the_library(data, seed):
    expected = crc32c_lib.crc32c(data, seed)
    assert NATIVE.crc32c(data, seed) == expected
    assert PURE.crc32c(data, seed) == expected


@needs_native
@SETTINGS
@given(
    ids,
    st.sampled_from([1, 2]),
    st.sampled_from([1, 2]),
    st.integers(min_value=0, max_value=2**64 - 1),
    digests,
    digests,
    st.integers(min_value=0, max_value=3 << 20),
)
def test_records_pack_and_parse_identically(chunk_id, flags, algo, seq, sha, cks, data_len):
    if flags == 2:
        data_len = 0
    cid = chunk_id.encode()
    a = NATIVE.pack_record(cid, flags, algo, seq, sha, cks, data_len)
    b = PURE.pack_record(cid, flags, algo, seq, sha, cks, data_len)
    assert a == b
    prefix, suffix = a
    assert (len(prefix) + data_len + len(suffix)) % 8 == 0
    assert len(prefix) + data_len + len(suffix) == NATIVE.record_size(len(cid), data_len)
    parsed = NATIVE.parse_header(prefix)
    assert parsed == PURE.parse_header(prefix)
    assert parsed[:7] == (flags, algo, seq, data_len, sha, cks, chunk_id)


@needs_native
@SETTINGS
@given(st.binary(min_size=0, max_size=400), st.integers(min_value=0, max_value=300))
def test_garbage_headers_are_rejected_identically(blob, offset):
    outcomes = []
    for mod in (NATIVE, PURE):
        try:
            outcomes.append(("ok", mod.parse_header(blob, min(offset, len(blob)))))
        except mod.BadRecord as exc:
            outcomes.append(("bad", str(exc)))
    assert outcomes[0] == outcomes[1]


@needs_native
@SETTINGS
@given(ids, st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=87))
def test_a_flipped_header_byte_is_always_caught(chunk_id, seq, pos):
    prefix, _ = PURE.pack_record(chunk_id.encode(), 1, 1, seq, bytes(32), bytes(32), 10)
    bad = bytearray(prefix)
    bad[pos] ^= 0x01
    for mod in (NATIVE, PURE):
        with pytest.raises(mod.BadRecord):
            mod.parse_header(bytes(bad))


def _write_superblock(path, records, damage):
    """A superblock file of `records` (id, flags, data) with byte flips/truncation from `damage`."""
    buf = bytearray(PURE.pack_file_header(7))
    for seq, (chunk_id, flags, data) in enumerate(records, 1):
        if flags == 2:
            data = b""
        sha = hashlib.sha256(data).digest()
        prefix, suffix = PURE.pack_record(chunk_id.encode(), flags, 1, seq, sha, bytes(32), len(data))
        buf += prefix + data + suffix
    for kind, where, value in damage:
        if len(buf) <= 64:
            break
        pos = 64 + where % (len(buf) - 64)
        if kind == "flip":
            buf[pos] ^= value or 1
        else:
            del buf[pos:]
    path.write_bytes(bytes(buf))
    return len(buf)


records_st = st.lists(st.tuples(ids, st.sampled_from([1, 1, 2]), st.binary(max_size=3000)), max_size=12)
damage_st = st.lists(
    st.tuples(st.sampled_from(["flip", "flip", "cut"]), st.integers(min_value=0), st.integers(0, 255)),
    max_size=3,
)


@needs_native
@SETTINGS
@given(records_st, damage_st)
def test_scans_agree_on_intact_and_damaged_files(tmp_path, records, damage):
    path = tmp_path / "sb.dat"
    size = _write_superblock(path, records, damage)
    fd = os.open(path, os.O_RDONLY)
    try:
        native = NATIVE.scan(fd, 64, size)
        pure = PURE.scan(fd, 64, size)
    finally:
        os.close(fd)
    assert native == pure
    if not damage:
        assert [r[7] for r in native[0]] == [r[0] for r in records]
        assert native[1] == [] and native[2] == size


def _index_log(ops):
    out = bytearray(PURE.INDEX_MAGIC)
    for kind, chunk_id, sb_id, off, seq in ops:
        cid = b"" if kind in (3, 4) else chunk_id.encode()
        out += PURE.pack_index_entry(kind, cid, sb_id, off * 8, 100, seq, bytes(32), bytes(32), 1)
    return bytes(out)


ops_st = st.lists(
    st.tuples(
        st.sampled_from([1, 1, 1, 2, 2, 3, 4]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(1, 4),
        st.integers(8, 1000),
        st.integers(1, 30),
    ),
    max_size=40,
)


@needs_native
@SETTINGS
@given(ops_st, st.integers(min_value=0), st.booleans())
def test_index_logs_replay_identically(ops, cut, flip):
    log = _index_log(ops)
    entry_bytes = [
        NATIVE.pack_index_entry(
            k, b"" if k in (3, 4) else c.encode(), s, o * 8, 100, q, bytes(32), bytes(32), 1
        )
        for k, c, s, o, q in ops
    ]
    assert NATIVE.INDEX_MAGIC + b"".join(entry_bytes) == log
    damaged = bytearray(log[: 8 + cut % (len(log) - 7)])
    if flip and len(damaged) > 8:
        damaged[8 + cut % (len(damaged) - 8)] ^= 0x40
    for blob in (log, bytes(damaged)):
        (ns, nlen), (ps, plen) = NATIVE.load_index(blob), PURE.load_index(blob)
        assert nlen == plen
        assert (ns.live, ns.tombs, ns.water, ns.retired, ns.max_seq) == (
            ps.live,
            ps.tombs,
            ps.water,
            ps.retired,
            ps.max_seq,
        )


def test_highest_seq_wins_and_equal_seq_relocates():
    log = _index_log(
        [
            (1, "x", 1, 8, 5),  # put x seq 5
            (1, "x", 2, 8, 5),  # moved by compaction: same seq, new place
            (1, "x", 1, 80, 3),  # an older put seen later: ignored
            (2, "y", 2, 20, 9),  # tombstone for y, seq 9
            (1, "y", 1, 40, 4),  # older live y: stays deleted
        ]
    )
    for mod in filter(None, (NATIVE, PURE)):
        state, n = mod.load_index(log)
        assert n == len(log)
        assert state.live["x"][:2] == (2, 64)
        assert "y" not in state.live and state.tombs["y"] == (2, 160, 9)
        assert state.max_seq == 9
