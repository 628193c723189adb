"""Fragment framing and stripe assembly, run on the native module and on its twin."""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest
import xxhash

from shoal.erasure import (
    HEADER_SIZE,
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
    assert HEADER_SIZE == 80
    per = -(-len(chunk) // K)
    for i, f in enumerate(frags):
        idx, size, _, length, chksum_type = struct.unpack_from("<IIIQB", f)
        assert (idx, size, length, chksum_type) == (i, per, len(chunk), 1)  # liberasurecode's own
        magic, version, k, m, zero, sid, payload = struct.unpack_from("<4sBBBB8sQ", f, 21)
        assert (magic, version, k, m, zero) == (b"SHEC", 2, 3, 2, 0)
        assert f[45:53] == bytes(8) and f[79] == 0
        assert sid == frags[0][29:37]
        assert payload == xxhash.xxh3_64_intdigest(f[HEADER_SIZE:])
        assert struct.unpack_from("<I", f, 67)[0] == zlib.crc32(f[:59])  # liberasurecode's metadata check
        assert struct.unpack_from("<Q", f, 71)[0] == xxhash.xxh3_64_intdigest(f[:71])
        hashes = [struct.unpack_from("<Q", g, 37)[0] for g in frags]
        assert sid == xxhash.xxh3_64_intdigest(struct.pack("<Q5Q", len(chunk), *hashes)).to_bytes(8, "little")
        info = impl.fragment_info(f)
        assert (info.index, info.length, info.payload_size, info.checksum) == (i, len(chunk), per, payload)
        assert info.stripe_id == sid.hex()
        assert info.is_parity == (i >= K)
        assert info.size == len(f) == HEADER_SIZE + per
        assert info.checksum_str == f"xxh3:{payload:016x}"


def test_fragments_are_pyeclib_fragments(chunk, frags):
    """No second header: pyeclib decodes shoal's fragments as they are stored."""
    from shoal.erasure import format

    assert format.DRIVER.decode(frags[2:]) == chunk
    assert format.DRIVER.get_metadata(frags[3], formatted=1)["orig_data_size"] == len(chunk)


def test_systematic_layout_data_fragments_hold_the_bytes(chunk, frags):
    """The fast path copies data fragments 0..2 straight out; they must hold the original in order."""
    per = -(-len(chunk) // K)
    for i in range(K):
        part = chunk[i * per : (i + 1) * per]
        assert frags[i][HEADER_SIZE : HEADER_SIZE + len(part)] == part


HEADER_BYTES = [0, 3, 4, 8, 12, 19, 20, 21, 24, 25, 26, 27, 28, 29, 36, 37, 44, 45, 52, 53, 58, 59, 66]
HEADER_BYTES += [67, 70, 71, 78, 79]


@pytest.mark.parametrize(
    "pos",
    [*HEADER_BYTES, 80, 81, 300_000, -1],
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
    """A fragment with header fields changed and its checks recomputed (a well-formed lie)."""
    head = bytearray(frag[:HEADER_SIZE])
    offsets = {"index": ("<I", 0), "length": ("<Q", 12), "version": ("<B", 25), "k": ("<B", 26)}
    for name, value in fields.items():
        fmt, off = offsets[name]
        struct.pack_into(fmt, head, off, value)
    struct.pack_into("<I", head, 67, zlib.crc32(head[:59]))
    struct.pack_into("<Q", head, 71, xxhash.xxh3_64_intdigest(bytes(head[:71])))
    return bytes(head) + frag[HEADER_SIZE:]


def test_well_formed_but_unsupported_headers_are_rejected(impl, frags):
    assert impl.fragment_info(_reframe(frags[1])).index == 1  # the helper itself is right
    with pytest.raises(CorruptFragment, match="version 3 \\(this build reads 2\\)"):
        impl.fragment_info(_reframe(frags[1], version=3))
    with pytest.raises(CorruptFragment, match="4\\+2"):
        impl.fragment_info(_reframe(frags[1], k=4))
    with pytest.raises(CorruptFragment, match="out of range"):
        impl.fragment_info(_reframe(frags[1], index=5))
    with pytest.raises(CorruptFragment, match="does not fit"):
        impl.fragment_info(_reframe(frags[1], length=10))


def test_a_format_1_fragment_is_a_clear_error(impl, frags):
    """Format 1 put a 32-byte SHEC header in front of pyeclib's fragment; it is named, not misread."""
    old = struct.pack("<4sBBBBQ8sI", b"SHEC", 1, 3, 2, 0, 11, bytes(8), len(frags[0])) + bytes(4) + frags[0]
    with pytest.raises(CorruptFragment, match="format 1"):
        impl.fragment_info(old)
    with pytest.raises(CorruptFragment, match="bad magic"):
        impl.fragment_info(bytes(80) + frags[0][80:])


def test_decode_hashes_only_the_fragments_it_uses(impl, chunk, frags):
    """A corrupt payload outside the 3 used is not even looked at; check() still finds it."""
    bad_parity = flip(frags[3], -1)
    assert impl.decode({0: frags[0], 1: frags[1], 2: frags[2], 3: bad_parity}) == chunk
    assert "checksum" in impl.check({3: bad_parity})[1][3]


def test_a_corrupt_payload_in_use_falls_back_to_the_next(impl, chunk, frags):
    given = {0: flip(frags[0], 5000), 1: frags[1], 2: frags[2], 3: frags[3]}
    assert impl.decode(given) == chunk  # 0's header is fine, its payload is not: 1, 2, 3 decode
    given = {0: frags[0], 2: flip(frags[2], 9), 3: flip(frags[3], -1), 4: frags[4], 1: frags[1]}
    assert impl.decode(given) == chunk  # 0, 1 + 2 bad -> 0, 1, 3 bad -> 0, 1, 4
    with pytest.raises(NotEnoughFragments) as err:
        impl.decode({0: frags[0], 2: flip(frags[2], 9), 3: flip(frags[3], -1), 4: frags[4]})
    assert err.value.valid == [0, 4]
    assert set(err.value.rejected) == {2, 3}


def test_a_duplicate_replaces_a_corrupt_copy(impl, chunk, frags):
    assert impl.decode([flip(frags[1], 700), frags[0], frags[1], frags[4]]) == chunk


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
    assert all(len(f) == HEADER_SIZE for f in frags)
    assert impl.decode(frags[2:]) == b""
    assert impl.fragment_info(frags[4]).length == 0
