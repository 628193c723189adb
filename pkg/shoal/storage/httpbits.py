"""Small HTTP pieces of the chunk routes: Range parsing and X-Chunk-Checksum parsing."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_SHA = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


class Unsatisfiable(Exception):
    """A syntactically valid Range that selects no byte of the chunk (416)."""


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) for a single `bytes=` range, or None to send the whole chunk.

    Malformed or multi-range headers are ignored, as RFC 9110 allows; a range that starts
    past the end raises Unsatisfiable.
    """
    if not value:
        return None
    m = _RANGE.match(value.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise Unsatisfiable
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, end


def parse_checksum(value: str) -> bytes:
    """The digest in `X-Chunk-Checksum: sha256:<hex>`; ValueError when malformed."""
    m = _SHA.match(value.strip())
    if not m:
        raise ValueError("X-Chunk-Checksum must be 'sha256:' followed by 64 hex digits")
    return bytes.fromhex(m.group(1))
