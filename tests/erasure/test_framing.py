"""Fragment framing and stripe assembly, run on the native module and on its twin."""

from __future__ import annotations

import itertools
import struct

import pytest
from crc32c import crc32c

from shoal.erasure import (
    HEADER_SIZE,
    INNER_HEADER_SIZE,
    CorruptFragment,
    K,
    MixedStripes,
    N,
    NotEnoughFragments,
)
from tests.conftest import both
from tests.erasure.conftest import ODD_2MIB, flip, payload

impl = both("erasure")

SIZES = [0, 1, 2, 3, 4, 5, 17, 1000, 65_537, (2 << 20) - 1, 2 << 20, (2 << 20) + 1]


@pytest.mark.parametrize("length", SIZES)
def test_roundtrip_sizes(impl, length):
    data = payload(length, seed=length)
    frags = impl.encode(data)
    assert len(frags) == N
    assert len({len(f) for f in frags}) == 1
    assert impl.decode(frags) == data
    assert impl.decode(frags[K:] + frags[:1]) == data  # two data fragments lost


def test_bytes_like_input_encodes_like_bytes(impl):
    data = payload(1001)
    assert impl.encode(bytearray(data)) == impl.encode(memoryview(data)) == impl.encode(data)
    frags = impl.encode(data)
    assert impl.decode([bytearray(f) for f in frags[2:]]) == data
    assert impl.decode({i: memoryview(frags[i]) for i in (0, 1, 2)}) == data


@pytest.mark.parametrize("count", [3, 4, 5])
def test_every_subset_decodes(impl, chunk, frags, count):
    for subset in itertools.combinations(range(N), count):
        assert impl.decode({i: frags[i] for i in subset}) == chunk, subset
        assert impl.decode([frags[i] for i in reversed(subset)]) == chunk, subset


def test_header_layout_matches_the_documented_format(impl, chunk, frags):
    """docs/erasure.md and shoal.erasure.format describe these offsets; check them independently."""
    stripe = {f[16:24] for f in frags}
    assert len(stripe) == 1
    for i, f in enumerate(frags):
        magic, version, k, m, index, length, _sid, ilen, checksum = struct.unpack_from("<4sBBBBQ8sII", f)
        assert (magic, version, k, m, index, length) == (b"SHEC", 1, 3, 2, i, len(chunk))
        assert ilen == len(f) - HEADER_SIZE == INNER_HEADER_SIZE + -(-len(chunk) // K)
        assert checksum == crc32c(f[HEADER_SIZE:] + f[:28])
        info = impl.fragment_info(f)
        assert (info.index, info.length, info.inner_size, info.checksum) == (i, len(chunk), ilen, checksum)
        assert info.stripe_id == stripe.pop().hex() if i == 0 else info.stripe_id == frags[0][16:24].hex()
        assert info.is_parity == (i >= K)
        assert info.size == len(f)
        assert info.checksum_str == f"crc32c:{checksum:08x}"


def test_systematic_layout_data_fragments_hold_the_bytes(chunk, frags):
    """The fast path copies data fragments 0..2 straight out; they must hold the original in order."""
    per = -(-len(chunk) // K)
    start = HEADER_SIZE + INNER_HEADER_SIZE
    for i in range(K):
        part = chunk[i * per : (i + 1) * per]
        assert frags[i][start : start + len(part)] == part


@pytest.mark.parametrize(
    "pos",
    [0, 3, 4, 5, 6, 7, 8, 15, 16, 23, 24, 27, 28, 31, 32, 32 + 79, 32 + 80, 300_000, -1],
    ids=lambda p: f"byte{p}",
)
def test_flipped_byte_is_detected_and_skipped(impl, chunk, frags, pos):
    bad = flip(frags[0], pos)
    with pytest.raises(CorruptFragment):
        impl.fragment_info(bad)
    # with three good fragments left the stripe still decodes, and the bad one is named
    assert impl.decode([bad, *frags[2:]]) == chunk
    valid, rejected = impl.check({0: bad, 2: frags[2], 3: frags[3], 4: frags[4]})
    assert sorted(valid) == [2, 3, 4]
    assert list(rejected) == [0]


def test_every_fragment_index_can_be_the_corrupt_one(impl, chunk, frags):
    for i in range(N):
        given = {j: (flip(f, -1) if j == i else f) for j, f in enumerate(frags)}
        assert impl.decode(given) == chunk
        valid, rejected = impl.check(given)
        assert sorted(valid) == [j for j in range(N) if j != i]
        assert "checksum" in rejected[i]


def test_fewer_than_three_valid_is_a_clear_error(impl, frags):
    with pytest.raises(NotEnoughFragments) as err:
        impl.decode({0: frags[0], 1: frags[1], 4: flip(frags[4], 100), 3: frags[3][:1000]})
    assert "2 valid fragments, 3 needed" in str(err.value)
    assert err.value.valid == [0, 1]
    assert set(err.value.rejected) == {3, 4}
    with pytest.raises(NotEnoughFragments):
        impl.decode([frags[1], frags[2]])
    with pytest.raises(NotEnoughFragments):
        impl.decode([])


def test_duplicates_count_once(impl, frags):
    with pytest.raises(NotEnoughFragments):
        impl.decode([frags[1], frags[1], frags[1], frags[2]])


@pytest.mark.parametrize(
    "junk",
    [b"", b"SHEC", b"x" * 31, b"x" * 4096, bytes(HEADER_SIZE)],
    ids=["empty", "magic-only", "short", "garbage", "zeros"],
)
def test_junk_is_rejected_not_crashed_on(impl, frags, chunk, junk):
    with pytest.raises(CorruptFragment):
        impl.fragment_info(junk)
    assert impl.decode([junk, frags[0], frags[3], frags[4]]) == chunk


def test_non_bytes_items_are_rejected(impl, frags, chunk):
    assert impl.decode([None, 7, "text", frags[1], frags[2], frags[4]]) == chunk
    _, rejected = impl.check([None, frags[1]])
    assert "not a bytes-like object" in rejected[0]
    with pytest.raises(TypeError):
        impl.decode(frags[0])  # one fragment, not a collection of them


def test_truncated_or_extended_fragment_is_rejected(impl, frags):
    with pytest.raises(CorruptFragment, match="header says"):
        impl.fragment_info(frags[2][:-1])
    with pytest.raises(CorruptFragment, match="header says"):
        impl.fragment_info(frags[2] + b"\0")


def _reframe(frag: bytes, **fields) -> bytes:
    """A fragment with header fields changed and the checksum recomputed (a well-formed lie)."""
    names = ["magic", "version", "k", "m", "index", "length", "stripe", "ilen"]
    values = dict(zip(names, struct.unpack_from("<4sBBBBQ8sI", frag), strict=True))
    values.update(fields)
    head = struct.pack("<4sBBBBQ8sI", *values.values())
    inner = frag[HEADER_SIZE:]
    return head + crc32c(head, crc32c(inner)).to_bytes(4, "little") + inner


def test_well_formed_but_unsupported_headers_are_rejected(impl, frags):
    assert impl.fragment_info(_reframe(frags[1])).index == 1  # the helper itself is right
    with pytest.raises(CorruptFragment, match="version 2"):
        impl.fragment_info(_reframe(frags[1], version=2))
    with pytest.raises(CorruptFragment, match="4\\+2"):
        impl.fragment_info(_reframe(frags[1], k=4))
    with pytest.raises(CorruptFragment, match="out of range"):
        impl.fragment_info(_reframe(frags[1], index=5))
    with pytest.raises(CorruptFragment, match="does not fit"):
        impl.fragment_info(_reframe(frags[1], length=10))


def test_fragment_under_the_wrong_index_is_rejected(impl, frags, chunk):
    given = {0: frags[1], 1: frags[0], 2: frags[2], 3: frags[3]}
    valid, rejected = impl.check(given)
    assert sorted(valid) == [2, 3]
    assert "given under index 0" in rejected[0]
    with pytest.raises(NotEnoughFragments):
        impl.decode(given)
    assert impl.decode({**given, 4: frags[4]}) == chunk


def test_fragments_of_different_stripes_are_rejected(impl, frags, chunk):
    other = impl.encode(payload(ODD_2MIB, seed=99))
    longer = impl.encode(chunk + b"!")
    for foreign in (other, longer):
        with pytest.raises(MixedStripes):
            impl.decode([frags[0], frags[1], foreign[2]])
        with pytest.raises(MixedStripes):
            impl.check([frags[0], foreign[3], frags[4]])
    # a stripe id chooses, and the foreign fragments are then reported, not used
    sid = impl.fragment_info(frags[0]).stripe_id
    assert impl.decode([frags[0], other[1], frags[3], longer[2], frags[4]], stripe_id=sid) == chunk
    _, rejected = impl.check([frags[0], other[1]], stripe_id=sid)
    assert "not " + sid in rejected[1]
    with pytest.raises(NotEnoughFragments):
        impl.decode([frags[0], other[1], other[2], frags[3]], stripe_id=sid)


def test_same_data_gives_the_same_stripe(impl):
    a = impl.encode(b"hello world")
    assert impl.encode(b"hello world") == a
    assert impl.decode([a[0], impl.encode(b"hello world")[1], a[2]]) == b"hello world"
    assert impl.fragment_info(impl.encode(b"hello worle")[0]).stripe_id != impl.fragment_info(a[0]).stripe_id


def test_empty_payload_is_a_stripe_too(impl):
    frags = impl.encode(b"")
    assert all(len(f) == HEADER_SIZE + INNER_HEADER_SIZE for f in frags)
    assert impl.decode(frags[2:]) == b""
    assert impl.fragment_info(frags[4]).length == 0
