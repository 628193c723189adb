"""Data checksums stored in every record and verified on every read.

crc32c is the default: hardware-accelerated, about 3x faster than blake3 on 2 MiB here,
and it only has to catch accidents (bit rot, torn writes), not adversaries. blake3 is
kept as an option; each record names its algorithm, so both can coexist in one store.
"""

from __future__ import annotations

import blake3 as _blake3
import crc32c as _crc32c

from shoal._native import load

_sb = load("superblock")
ALGO_CRC32C: int = _sb.ALGO_CRC32C
ALGO_BLAKE3: int = _sb.ALGO_BLAKE3
ALGORITHMS = {"crc32c": ALGO_CRC32C, "blake3": ALGO_BLAKE3}
_PAD = bytes(28)


def compute(algo: int, data: bytes | memoryview) -> bytes:
    """The 32-byte checksum field for `data` (crc32c: 4 little-endian bytes, zero padded)."""
    if algo == ALGO_CRC32C:
        return _crc32c.crc32c(data).to_bytes(4, "little") + _PAD
    if algo == ALGO_BLAKE3:
        return _blake3.blake3(data).digest()
    raise ValueError(f"unknown checksum algorithm {algo}")


def verify(algo: int, data: bytes | memoryview, expected: bytes) -> bool:
    try:
        return compute(algo, data) == expected
    except ValueError:
        return False
