"""The streaming multipart receiver: the file goes to disk piece by piece, limits hold mid-stream."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shoal.uploader.receive import receive_upload
from shoal.web import ApiError


def encode(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A real multipart body, as httpx would send it."""
    req = httpx.Request("POST", "http://x/upload", data=fields, files=files)
    return req.read(), req.headers["content-type"]


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.mark.parametrize("piece", [1, 7, 1000, 1 << 20])
async def test_file_and_fields_arrive_intact(tmp_path: Path, piece: int) -> None:
    payload = os.urandom(300_000 if piece > 1 else 3000) + b"\r\n--not-a-boundary\r\n"
    body, ctype = encode({"title": "Süß title"}, {"video": ("clip.mp4", payload)})
    dest = tmp_path / "f"
    seen: list[int] = []

    async def progress(n: int) -> None:
        seen.append(n)

    got = await receive_upload(pieces(body, piece), ctype, dest, 10 << 20, progress)
    assert dest.read_bytes() == payload
    assert got.fields == {"title": "Süß title"}
    assert got.filename == "clip.mp4" and got.has_file and got.file_bytes == len(payload)
    assert seen[-1] == len(body) and seen == sorted(seen)


async def test_limit_is_enforced_while_streaming(tmp_path: Path) -> None:
    body, ctype = encode({"title": "t"}, {"video": ("v.mp4", b"x" * 200_000)})
    consumed = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal consumed
        async for p in pieces(body, 10_000):
            consumed += len(p)
            yield p

    with pytest.raises(ApiError) as err:
        await receive_upload(counting(), ctype, tmp_path / "f", 50_000)
    assert err.value.status == 413
    assert consumed <= 60_000, "stopped reading soon after the limit"


@pytest.mark.parametrize(
    ("ctype", "body", "message"),
    [
        (None, b"", "multipart/form-data"),
        ("application/json", b"{}", "multipart/form-data"),
        ("multipart/form-data", b"", "boundary"),
        ("multipart/form-data; boundary=abc", b"garbage without any boundary", "malformed"),
    ],
)
async def test_bad_bodies_are_400(tmp_path: Path, ctype: str | None, body: bytes, message: str) -> None:
    with pytest.raises(ApiError, match=message) as err:
        await receive_upload(pieces(body, 100), ctype, tmp_path / "f", 1 << 20)
    assert err.value.status == 400


async def test_two_videos_and_huge_title(tmp_path: Path) -> None:
    _, ctype = encode({}, {"video": ("a", b"1")})
    boundary = ctype.split("boundary=")[1]
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="a"\r\n\r\n1\r\n'
    ).encode()
    two = part + part + f"--{boundary}--\r\n".encode()
    with pytest.raises(ApiError, match="exactly one"):
        await receive_upload(pieces(two, 50), ctype, tmp_path / "f", 1 << 20)
    body, ctype = encode({"title": "t" * 5000}, {"video": ("a", b"1")})
    with pytest.raises(ApiError, match="over 4096 bytes"):
        await receive_upload(pieces(body, 1000), ctype, tmp_path / "f", 1 << 20)


async def test_body_cut_before_the_closing_boundary(tmp_path: Path) -> None:
    body, ctype = encode({"title": "t"}, {"video": ("a", b"x" * 5000)})
    with pytest.raises(ApiError, match="ended before") as err:
        await receive_upload(pieces(body[:-30], 1000), ctype, tmp_path / "f", 1 << 20)
    assert err.value.status == 400
