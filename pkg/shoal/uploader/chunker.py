"""Cut a fragmented MP4 into chunks of at most 2 MiB, each with the time range it covers.

Chunks are cut at fragment boundaries whenever a whole fragment fits, so most chunks hold whole
fragments a player can append as they come; a fragment larger than what is left of a chunk is
split across chunks by bytes (the concatenation of all chunks is always the exact file).
A chunk's time range runs from the start of the first fragment it holds bytes of to the end of
the last one, so chunks that share a split fragment share that fragment's time.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.uploader.fmp4 import Layout

MAX_CHUNK = 2 * 1024 * 1024


@dataclass(frozen=True)
class ChunkPlan:
    sequence_num: int
    offset: int
    size: int
    start_sec: float
    duration_sec: float


def _pieces(layout: Layout) -> list[tuple[int, int, float, float]]:
    """(offset, end, start, end time) of the init segment and every fragment, in order."""
    first = layout.fragments[0]
    pieces = [(0, first.offset, first.start, first.start)] if first.offset > 0 else []
    pieces += [(f.offset, f.end, f.start, f.start + f.duration) for f in layout.fragments]
    return pieces


def plan_chunks(layout: Layout, max_chunk: int = MAX_CHUNK) -> list[ChunkPlan]:
    """Greedy packing of whole fragments into chunks of at most `max_chunk` bytes."""
    if max_chunk <= 0:
        raise ValueError("max_chunk must be positive")
    bounds: list[tuple[int, int, float, float]] = []  # (offset, end, t0, t1) per chunk
    cur_start, cur_end, t0, t1 = 0, 0, 0.0, 0.0
    open_chunk = False
    for offset, end, start, stop in _pieces(layout):
        size = end - offset
        room = max_chunk - (cur_end - cur_start) if open_chunk else 0
        if open_chunk and size > room and size <= max_chunk:
            bounds.append((cur_start, cur_end, t0, t1))  # close, start this fragment on a fresh chunk
            open_chunk = False
        pos = offset
        while pos < end:
            if not open_chunk:
                cur_start, cur_end, t0, t1 = pos, pos, start, stop
                open_chunk = True
            take = min(end - pos, max_chunk - (cur_end - cur_start))
            cur_end += take
            pos += take
            t0, t1 = min(t0, start), max(t1, stop)
            if cur_end - cur_start == max_chunk:
                bounds.append((cur_start, cur_end, t0, t1))
                open_chunk = False
    if open_chunk and cur_end > cur_start:
        bounds.append((cur_start, cur_end, t0, t1))
    return [
        ChunkPlan(i, a, b - a, round(s, 6), round(max(0.0, e - s), 6))
        for i, (a, b, s, e) in enumerate(bounds)
    ]
