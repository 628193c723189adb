"""FFmpeg remux into fragmented MP4 and the 2 MiB chunk plan, on real generated videos."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.uploader import media
from shoal.uploader.chunker import MAX_CHUNK, ChunkPlan, plan_chunks
from shoal.uploader.fmp4 import Fmp4Error, Fragment, Layout, read_layout


async def chunk_file(
    src: Path, tmp: Path, max_chunk: int = MAX_CHUNK
) -> tuple[Path, Layout, list[ChunkPlan]]:
    out = tmp / (src.stem + ".frag.mp4")
    assert await media.remux(src, out) == "copy"
    with open(out, "rb") as f:
        layout = read_layout(f, out.stat().st_size)
    return out, layout, plan_chunks(layout, max_chunk)


def packets(path: Path) -> list[str]:
    """Per-stream codec and packet count, as ffprobe reads them."""
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries", "stream=codec_name,nb_read_packets",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted(r.stdout.split())


def decode_stdin(data: bytes) -> str:
    r = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", "-", "-f", "null", "-"],
        input=data, capture_output=True, timeout=120,
    )  # fmt: skip
    return r.stderr.decode(errors="replace").strip() + ("" if r.returncode == 0 else f" rc={r.returncode}")


@pytest.mark.parametrize("which", ["v720", "v1080"])
async def test_any_bitrate_gives_chunks_under_2mib_that_decode(which: str, request, tmp_path: Path) -> None:
    src: Path = request.getfixturevalue(which)
    out, _layout, plans = await chunk_file(src, tmp_path)
    data = out.read_bytes()
    assert len(src.read_bytes()) > 2 * MAX_CHUNK * 0.6, "the test video should span several chunks"
    assert len(plans) >= 2
    assert all(0 < p.size <= MAX_CHUNK for p in plans)
    # contiguous, in order, and the concatenation is the whole stream
    assert [p.sequence_num for p in plans] == list(range(len(plans)))
    assert plans[0].offset == 0
    assert all(a.offset + a.size == b.offset for a, b in itertools.pairwise(plans))
    pieces = [data[p.offset : p.offset + p.size] for p in plans]
    assert b"".join(pieces) == data
    assert decode_stdin(b"".join(pieces)) == ""
    # copied, not re-encoded: the same codecs and packet counts as the source
    assert packets(out) == packets(src)


async def test_fragments_stay_small_at_8_mbits(v1080: Path, tmp_path: Path) -> None:
    _, layout, _plans = await chunk_file(v1080, tmp_path)
    assert max(f.size for f in layout.fragments) < MAX_CHUNK // 2
    assert len(layout.fragments) >= 8  # ~0.5 s fragments


async def test_time_ranges_cover_the_video_in_order(v720: Path, tmp_path: Path) -> None:
    _, layout, plans = await chunk_file(v720, tmp_path, max_chunk=256 * 1024)
    assert len(plans) > 8
    assert plans[0].start_sec == 0.0
    for a, b in itertools.pairwise(plans):
        assert b.start_sec >= a.start_sec
        assert b.start_sec <= a.start_sec + a.duration_sec + 1e-6, "no gap between chunks"
    end = plans[-1].start_sec + plans[-1].duration_sec
    assert end == pytest.approx(6.0, abs=0.1)
    assert layout.duration == pytest.approx(6.0, abs=0.1)
    # fragments carry their own times: strictly increasing starts
    starts = [f.start for f in layout.fragments]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


async def test_plain_mp4_is_not_fragmented(small: Path) -> None:
    with open(small, "rb") as f, pytest.raises(Fmp4Error, match="not fragmented"):
        read_layout(f, small.stat().st_size)


def test_garbage_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "junk"
    p.write_bytes(b"\x00\x00\x00\x10junkjunk" + b"\xff" * 40)
    with open(p, "rb") as f, pytest.raises(Fmp4Error):
        read_layout(f, p.stat().st_size)


def layout_of(sizes: list[int], init: int) -> Layout:
    frags, pos = [], init
    for i, size in enumerate(sizes):
        frags.append(Fragment(pos, pos + size, i * 0.5, 0.5))
        pos += size
    return Layout(pos, init, {}, 1, frags)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 5000), min_size=1, max_size=40),
    st.integers(0, 300),
    st.integers(64, 4096),
)
def test_plan_invariants(sizes: list[int], init: int, max_chunk: int) -> None:
    layout = layout_of(sizes, init)
    plans = plan_chunks(layout, max_chunk)
    assert plans[0].offset == 0
    assert sum(p.size for p in plans) == layout.size
    assert all(a.offset + a.size == b.offset for a, b in itertools.pairwise(plans))
    assert all(0 < p.size <= max_chunk for p in plans)
    # a fragment that fits in a chunk is never split
    for f in layout.fragments:
        if f.size <= max_chunk:
            holders = [p for p in plans if p.offset < f.end and f.offset < p.offset + p.size]
            assert len(holders) == 1, (f, holders)
    # each chunk's time range covers the fragments it holds bytes of
    for p in plans:
        for f in layout.fragments:
            if p.offset < f.end and f.offset < p.offset + p.size:
                assert p.start_sec <= f.start + 1e-9
                assert f.start + f.duration <= p.start_sec + p.duration_sec + 1e-6


def test_oversized_fragment_is_split_by_bytes() -> None:
    layout = layout_of([100, 1000, 100], init=10)
    plans = plan_chunks(layout, 300)
    # the big fragment fills the rest of the open chunk, then whole chunks, then a tail
    assert [p.size for p in plans] == [300, 300, 300, 210, 100]
    assert [(p.start_sec, p.duration_sec) for p in plans] == [
        (0.0, 1.0),  # init + first fragment + the head of the big one
        (0.5, 0.5),
        (0.5, 0.5),
        (0.5, 0.5),
        (1.0, 0.5),  # the last fragment, whole, on a chunk of its own
    ]
