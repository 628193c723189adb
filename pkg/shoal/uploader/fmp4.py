"""Read the layout of a fragmented MP4 file: where each fragment starts and what time it covers.

Only the boxes that carry timing are parsed (moov: tkhd, mdhd, hdlr, trex; moof: tfhd, tfdt,
trun), so a 100 MB file costs a few hundred small reads, never a full load. The uploader cuts
chunks at these byte offsets and records each chunk's time range from them (ISO/IEC 14496-12).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

_HEADER = struct.Struct(">I4s")
_CONTAINERS = {b"moov", b"trak", b"mdia", b"mvex", b"moof", b"traf", b"minf", b"edts"}


class Fmp4Error(ValueError):
    """The file is not a fragmented MP4 this module understands."""


@dataclass(frozen=True)
class Box:
    type: bytes
    offset: int  # of the box header
    size: int  # whole box, header included
    header: int  # header length (8 or 16)

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class Track:
    track_id: int
    timescale: int = 0
    handler: bytes = b""
    default_duration: int = 0  # from trex


@dataclass(frozen=True)
class Fragment:
    """One moof (plus its mdat and anything up to the next moof): bytes [offset, end)."""

    offset: int
    end: int
    start: float  # seconds, reference track's decode time
    duration: float

    @property
    def size(self) -> int:
        return self.end - self.offset


@dataclass
class Layout:
    """The init segment (ftyp + moov) and the fragments of one fMP4 file, in file order."""

    size: int
    init_end: int
    tracks: dict[int, Track]
    reference: int  # track id the times come from (the video track)
    fragments: list[Fragment] = field(default_factory=list)

    @property
    def duration(self) -> float:
        if not self.fragments:
            return 0.0
        last = self.fragments[-1]
        return last.start + last.duration - self.fragments[0].start


def iter_boxes(f: BinaryIO, start: int, end: int) -> Iterator[Box]:
    """The boxes laid end to end in [start, end) of the file."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        raw = f.read(16)
        if len(raw) < 8:
            raise Fmp4Error(f"box header cut short at byte {pos}")
        size, kind = _HEADER.unpack_from(raw)
        header = 8
        if size == 1:
            if len(raw) < 16:
                raise Fmp4Error(f"large box header cut short at byte {pos}")
            size = struct.unpack_from(">Q", raw, 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Fmp4Error(f"box {kind!r} at byte {pos} claims {size} bytes past the end ({end})")
        yield Box(kind, pos, size, header)
        pos += size
    if pos != end:
        raise Fmp4Error(f"{end - pos} stray bytes at the end of the file")


def _children(data: bytes, base: int = 0) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of the boxes inside an in-memory container payload."""
    pos = base
    while pos + 8 <= len(data):
        size, kind = _HEADER.unpack_from(data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = len(data) - pos
        if size < header or pos + size > len(data):
            raise Fmp4Error(f"box {kind!r} overruns its parent")
        yield kind, data[pos + header : pos + size]
        pos += size


def _walk(data: bytes, path: tuple[bytes, ...] = ()) -> Iterator[tuple[tuple[bytes, ...], bytes]]:
    for kind, payload in _children(data):
        where = (*path, kind)
        yield where, payload
        if kind in _CONTAINERS:
            yield from _walk(payload, where)


def parse_moov(payload: bytes) -> dict[int, Track]:
    """Tracks with their timescale, handler ('vide', 'soun') and trex default sample duration."""
    tracks: dict[int, Track] = {}
    for kind, trak in _children(payload):
        if kind == b"trak":
            track: Track | None = None
            timescale, handler = 0, b""
            for where, box in _walk(trak):
                if where[-1] == b"tkhd":
                    off = 20 if box[0] == 1 else 12
                    track = Track(struct.unpack_from(">I", box, off)[0])
                elif where[-1] == b"mdhd":
                    off = 20 if box[0] == 1 else 12
                    timescale = struct.unpack_from(">I", box, off)[0]
                elif where[-1] == b"hdlr":
                    handler = box[8:12]
            if track is None or timescale == 0:
                raise Fmp4Error("a trak without tkhd or mdhd timescale")
            track.timescale, track.handler = timescale, handler
            tracks[track.track_id] = track
    for where, box in _walk(payload):
        if where[-1] == b"trex":
            track_id, _, default_duration = struct.unpack_from(">III", box, 4)
            if track_id in tracks:
                tracks[track_id].default_duration = default_duration
    if not tracks:
        raise Fmp4Error("moov has no tracks")
    return tracks


def parse_moof(payload: bytes, tracks: dict[int, Track]) -> dict[int, tuple[int, int]]:
    """{track_id: (base decode time, total sample duration)} in the track's timescale."""
    out: dict[int, tuple[int, int]] = {}
    for kind, traf in _children(payload):
        if kind != b"traf":
            continue
        track_id, default_duration, base, total = 0, 0, None, 0
        for sub, box in _children(traf):
            if sub == b"tfhd":
                flags = int.from_bytes(box[1:4], "big")
                track_id = struct.unpack_from(">I", box, 4)[0]
                pos = 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                track = tracks.get(track_id)
                default_duration = track.default_duration if track else 0
                if flags & 0x08:
                    default_duration = struct.unpack_from(">I", box, pos)[0]
            elif sub == b"tfdt":
                base = struct.unpack_from(">Q" if box[0] == 1 else ">I", box, 4)[0]
            elif sub == b"trun":
                flags = int.from_bytes(box[1:4], "big")
                count = struct.unpack_from(">I", box, 4)[0]
                pos = 8 + (4 if flags & 0x01 else 0) + (4 if flags & 0x04 else 0)
                if flags & 0x100:
                    stride = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
                    for i in range(count):
                        total += struct.unpack_from(">I", box, pos + i * stride)[0]
                else:
                    total += count * default_duration
        if base is None:
            raise Fmp4Error(f"traf of track {track_id} has no tfdt")
        out[track_id] = (base, total)
    return out


def read_layout(f: BinaryIO, size: int) -> Layout:
    """The layout of the whole fMP4 file `f` of `size` bytes."""
    tracks: dict[int, Track] | None = None
    init_end = 0
    times: list[tuple[int, tuple[int, int] | None]] = []  # (moof offset, (base, dur) of reference)
    reference = 0
    for box in iter_boxes(f, 0, size):
        if box.type == b"moov":
            f.seek(box.offset + box.header)
            tracks = parse_moov(f.read(box.size - box.header))
            video = [t.track_id for t in tracks.values() if t.handler == b"vide"]
            reference = video[0] if video else min(tracks)
            init_end = box.end
        elif box.type == b"moof":
            if tracks is None:
                raise Fmp4Error("moof before moov: not a fragmented MP4 with an init segment")
            f.seek(box.offset + box.header)
            per_track = parse_moof(f.read(box.size - box.header), tracks)
            times.append((box.offset, per_track.get(reference)))
        elif not times and tracks is not None:
            init_end = box.end  # boxes between moov and the first moof belong to the init segment
    if tracks is None:
        raise Fmp4Error("no moov box")
    if not times:
        raise Fmp4Error("no moof box: the file is not fragmented")
    scale = tracks[reference].timescale
    first = next((t[0] for _, t in times if t is not None), 0)
    fragments: list[Fragment] = []
    clock = 0.0
    for i, (offset, timing) in enumerate(times):
        end = times[i + 1][0] if i + 1 < len(times) else size
        if timing is None:  # this fragment has no sample of the reference track
            start, duration = clock, 0.0
        else:
            start, duration = (timing[0] - first) / scale, timing[1] / scale
        clock = start + duration
        fragments.append(Fragment(offset, end, start, duration))
    return Layout(size, init_end, tracks, reference, fragments)
