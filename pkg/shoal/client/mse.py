"""The Media Source Extensions type of an fMP4 stream, read from its init segment.

A browser's `MediaSource.addSourceBuffer` needs the exact codec string (e.g.
`video/mp4; codecs="avc1.64001f,mp4a.40.2"`); it is in the sample entries of the moov box.
"""

from __future__ import annotations

import struct

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"}


def _boxes(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1 and pos + 16 <= end:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _codec_boxes(data: bytes, start: int, end: int, out: list[str]) -> None:
    for kind, body, stop in _boxes(data, start, end):
        if kind == b"stsd":
            _sample_entries(data, body + 8, stop, out)  # full box + entry count
        elif kind in _CONTAINERS:
            _codec_boxes(data, body, stop, out)


def _sample_entries(data: bytes, start: int, end: int, out: list[str]) -> None:
    for kind, body, stop in _boxes(data, start, end):
        if kind in (b"avc1", b"avc3"):
            # visual sample entry: 78 bytes before its child boxes
            for child, cbody, _ in _boxes(data, body + 78, stop):
                if child == b"avcC":
                    p, c, lvl = data[cbody + 1], data[cbody + 2], data[cbody + 3]
                    out.append(f"{kind.decode()}.{p:02x}{c:02x}{lvl:02x}")
        elif kind == b"vp09":
            for child, cbody, _ in _boxes(data, body + 78, stop):
                if child == b"vpcC":
                    profile, level, depth = data[cbody + 4], data[cbody + 5], data[cbody + 6] >> 4
                    out.append(f"vp09.{profile:02d}.{level:02d}.{depth:02d}")
        elif kind == b"av01":
            out.append("av01.0.04M.08")
        elif kind == b"mp4a":
            out.append("mp4a.40.2")
        elif kind == b"Opus":
            out.append("opus")


def mse_type(init: bytes) -> str | None:
    """The MIME type with codecs for the fMP4 whose first bytes are `init`; None if not found."""
    out: list[str] = []
    for kind, body, stop in _boxes(init, 0, len(init)):
        if kind == b"moov":
            _codec_boxes(init, body, stop, out)
            break
    if not out:
        return None
    return f'video/mp4; codecs="{",".join(out)}"'
