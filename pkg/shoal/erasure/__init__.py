"""Reed-Solomon 3+2 erasure coding for cold videos: 5 self-checking fragments, any 3 rebuild.

    frags = encode(chunk)                 # 5 framed fragments, index 0..4 (0..2 data, 3..4 parity)
    data = decode({0: f0, 3: f3, 4: f4})  # or decode([f0, f3, f4]): any 3 valid ones
    info = fragment_info(f3)              # verified header: index, length, stripe_id, checksum

A fragment is pyeclib's own fragment, with shoal's fields in liberasurecode's 80-byte header:
its index, the original length, a stripe id shared by the five, an XXH3 hash of the payload
and a check over the header, so decode drops corrupt or foreign fragments by itself and needs
nothing but the bytes. ISA-L codes: called directly, without the GIL, by ext/erasure.pyx
(byte-identical to pyeclib's fragments, and 0.7x pyeclib's time), through pyeclib by the twin
shoal._pure.erasure. Thread-safe: each call touches only its own buffers. Format and figures:
docs/erasure.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import NamedTuple

from shoal import _native
from shoal.erasure.format import (
    HEADER_SIZE,
    INNER_HEADER_SIZE,
    MALLOC_TUNED,
    CorruptFragment,
    ErasureError,
    FragmentInfo,
    K,
    M,
    MixedStripes,
    N,
    NotEnoughFragments,
    backend,
    payload_size,
)

__all__ = [
    "HEADER_SIZE",
    "INNER_HEADER_SIZE",
    "MALLOC_TUNED",
    "Checked",
    "CorruptFragment",
    "ErasureError",
    "FragmentInfo",
    "K",
    "M",
    "MixedStripes",
    "N",
    "NotEnoughFragments",
    "backend",
    "check",
    "decode",
    "encode",
    "engine",
    "fragment_info",
    "fragment_size",
    "implementation",
    "rebuild",
]

Fragments = Mapping[int, bytes] | Iterable[bytes]

_impl: ModuleType | None = None


def _mod() -> ModuleType:
    # Resolved on first use: the native module imports shoal.erasure.format, which runs this file.
    global _impl
    if _impl is None:
        _impl = _native.load("erasure")
    return _impl


def implementation() -> str:
    """'native' or 'pure-python': which framing is in force."""
    return "native" if _mod().__name__.startswith("shoal._ext.") else "pure-python"


def engine() -> str:
    """What codes: 'isa-l' (the native module calls ISA-L directly) or 'pyeclib'."""
    return _mod().engine()


def encode(data: bytes | bytearray | memoryview) -> list[bytes]:
    """The 5 framed fragments of `data`; index i of the list is fragment i."""
    return _mod().encode(data)


def decode(fragments: Fragments, stripe_id: str | None = None) -> bytes:
    """Exactly the original bytes, from any 3 valid fragments of one stripe.

    `fragments` is {index: fragment} (a fragment under the wrong index is rejected) or any
    iterable of fragments. Every header is checked, but only the payloads of the 3 fragments
    used are hashed (a further one only when one of them fails). Corrupt ones are skipped; fewer than 3 valid raise
    NotEnoughFragments (its `.rejected` says why each was dropped); valid fragments of two
    stripes raise MixedStripes unless `stripe_id` picks one.
    """
    return _mod().decode(fragments, stripe_id)


def fragment_info(fragment: bytes | bytearray | memoryview) -> FragmentInfo:
    """The header of one fragment, after verifying its checksum (CorruptFragment if bad)."""
    return _mod().fragment_info(fragment)


class Checked(NamedTuple):
    """Result of check(): the valid fragments by index and why the others were rejected."""

    valid: dict[int, FragmentInfo]
    rejected: dict[object, str]

    @property
    def missing(self) -> list[int]:
        """Indices with no valid fragment: what a repair must rebuild."""
        return [i for i in range(N) if i not in self.valid]


def check(fragments: Fragments, stripe_id: str | None = None) -> Checked:
    """Verify every fragment (decode may stop caring once it has 3); for scrubbing and repair."""
    valid, rejected = _mod().check(fragments, stripe_id)
    return Checked({i: info for i, (info, _) in valid.items()}, rejected)


def rebuild(
    fragments: Fragments, indices: Iterable[int] | None = None, stripe_id: str | None = None
) -> dict[int, bytes]:
    """Recreate fragments (the missing ones by default) byte-identical to the originals.

    Decodes and re-encodes: encoding is deterministic, and the stripe id is checked to be
    the one of the fragments given, so a rebuilt fragment can replace a lost one anywhere.
    """
    valid, _ = _mod().check(fragments, stripe_id)
    wanted = sorted(set(range(N) - valid.keys() if indices is None else indices))
    for i in wanted:
        if not 0 <= i < N:
            raise ValueError(f"fragment index {i} is out of range 0..{N - 1}")
    data = decode({i: frag for i, (_, frag) in valid.items()})
    fresh = encode(data)
    sid = next(iter(valid.values()))[0].stripe_id
    if fragment_info(fresh[0]).stripe_id != sid:
        raise ErasureError("re-encoding gave another stripe id: pyeclib's output changed")
    return {i: fresh[i] for i in wanted}


def fragment_size(length: int) -> int:
    """Size of each fragment for `length` original bytes (2 MiB -> 699,131): 80 + ceil(length/3)."""
    return HEADER_SIZE + payload_size(length)
