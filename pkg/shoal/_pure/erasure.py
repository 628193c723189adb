"""Reed-Solomon 3+2 fragment framing and stripe assembly around pyeclib, in pure Python.

Twin of ext/erasure.pyx: same functions, byte-identical fragments, same decode results and
errors. The format and the shared pieces (driver, errors, FragmentInfo) are in
shoal.erasure.format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shoal.erasure.format import (
    DRIVER,
    HEADER,
    HEADER_SIZE,
    INNER_HEADER_SIZE,
    MAGIC,
    VERSION,
    CorruptFragment,
    FragmentInfo,
    K,
    M,
    MixedStripes,
    N,
    NotEnoughFragments,
    crc,
    inner_size,
    pyeclib_decode,
    stripe_id,
)

__all__ = ["check", "decode", "encode", "fragment_info"]


def encode(data) -> list[bytes]:
    """The k+m framed fragments of `data` (any bytes-like object)."""
    data = bytes(data)
    inner = DRIVER.encode(data)
    crcs = [crc(f) for f in inner]
    sid = stripe_id(len(data), crcs)
    out = []
    for index, (frag, c) in enumerate(zip(inner, crcs, strict=True)):
        head = HEADER.pack(MAGIC, VERSION, K, M, index, len(data), sid, len(frag))
        out.append(b"".join((head, crc(head, c).to_bytes(4, "little"), frag)))
    return out


def fragment_info(frag) -> FragmentInfo:
    """The header of `frag` after checking it and the checksum; CorruptFragment otherwise."""
    view = memoryview(frag).cast("B")
    if len(view) < HEADER_SIZE:
        raise CorruptFragment(f"fragment of {len(view)} bytes is shorter than its {HEADER_SIZE}-byte header")
    magic, version, k, m, index, length, sid, ilen = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CorruptFragment("not a shoal erasure fragment (bad magic)")
    if version != VERSION:
        raise CorruptFragment(f"unsupported fragment version {version}")
    if (k, m) != (K, M):
        raise CorruptFragment(f"fragment is {k}+{m}, this build decodes {K}+{M}")
    if index >= N:
        raise CorruptFragment(f"fragment index {index} is out of range 0..{N - 1}")
    if ilen != len(view) - HEADER_SIZE:
        raise CorruptFragment(f"payload is {len(view) - HEADER_SIZE} bytes, header says {ilen}")
    expected = inner_size(length)
    if expected is not None and ilen != expected:
        raise CorruptFragment(f"payload of {ilen} bytes does not fit an original length of {length}")
    stored = int.from_bytes(view[HEADER.size : HEADER_SIZE], "little")
    actual = crc(view[: HEADER.size], crc(view[HEADER_SIZE:]))
    if stored != actual:
        raise CorruptFragment(f"checksum mismatch in fragment {index}")
    return FragmentInfo(index, k, m, length, sid.hex(), ilen, stored)


def _items(fragments) -> tuple[list, bool]:
    if isinstance(fragments, Mapping):
        return list(fragments.items()), True
    if isinstance(fragments, bytes | bytearray | memoryview):
        raise TypeError("decode takes several fragments (a mapping or an iterable), not one")
    return list(enumerate(fragments)), False


def check(
    fragments: Mapping[int, bytes] | Iterable[bytes], stripe_id: str | None = None
) -> tuple[dict[int, tuple[FragmentInfo, object]], dict[object, str]]:
    """Verify every fragment: ({index: (info, fragment)} of the valid ones, {key: reason} of the rest).

    Keys are the mapping's keys (which must equal the fragment's index) or positions in the
    iterable. A stripe_id keeps only that stripe; without one, valid fragments of two
    stripes raise MixedStripes.
    """
    items, keyed = _items(fragments)
    valid: dict[int, tuple[FragmentInfo, object]] = {}
    rejected: dict[object, str] = {}
    for key, frag in items:
        try:
            info = fragment_info(frag)
        except CorruptFragment as exc:
            rejected[key] = str(exc)
            continue
        except TypeError:
            rejected[key] = f"not a bytes-like object: {type(frag).__name__}"
            continue
        if keyed and key != info.index:
            rejected[key] = f"fragment {info.index} was given under index {key!r}"
        elif stripe_id is not None and info.stripe_id != stripe_id:
            rejected[key] = f"fragment of stripe {info.stripe_id}, not {stripe_id}"
        elif info.index not in valid:
            valid[info.index] = (info, frag)
    stripes = {(info.stripe_id, info.length) for info, _ in valid.values()}
    if len(stripes) > 1:
        listed = ", ".join(f"{s} ({n} bytes)" for s, n in sorted(stripes))
        raise MixedStripes(f"fragments of different stripes: {listed}; pass stripe_id to choose")
    return valid, rejected


def decode(fragments: Mapping[int, bytes] | Iterable[bytes], stripe_id: str | None = None) -> bytes:
    """The original bytes from any k valid fragments of one stripe; corrupt ones are skipped."""
    valid, rejected = check(fragments, stripe_id)
    if len(valid) < K:
        reasons = "; ".join(f"{key}: {why}" for key, why in rejected.items()) or "none rejected"
        raise NotEnoughFragments(
            f"{len(valid)} valid fragments, {K} needed ({reasons})", sorted(valid), rejected
        )
    length = next(iter(valid.values()))[0].length
    if INNER_HEADER_SIZE is not None and all(i in valid for i in range(K)):
        return assemble([valid[i][1] for i in range(K)], length)
    inner = [bytes(memoryview(valid[i][1])[HEADER_SIZE:]) for i in sorted(valid)[:K]]
    return pyeclib_decode(inner, length)


def assemble(data_fragments: list, length: int) -> bytes:
    """Concatenate the payloads of data fragments 0..k-1 (checked already) into the original."""
    per = -(-length // K)
    start = HEADER_SIZE + INNER_HEADER_SIZE
    parts = []
    for i, frag in enumerate(data_fragments):
        take = max(0, min(per, length - i * per))
        parts.append(memoryview(frag)[start : start + take])
    return b"".join(parts)
