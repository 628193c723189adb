"""Receive a multipart/form-data upload straight to disk, never holding the file in memory.

python-multipart's streaming parser (the one Starlette uses) is fed each piece of the body as
it arrives; the `video` part is written to a file as it is parsed, small text fields are kept,
and the size limit is enforced while streaming (413 as soon as it is crossed).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from shoal.web import ApiError

MAX_FIELD = 4096  # bytes of a text field (title)
MAX_PARTS = 16


@dataclass
class Received:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_bytes: int = 0
    has_file: bool = False


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type; 400 for anything else."""
    if not content_type:
        raise ApiError(400, "Content-Type must be multipart/form-data with fields 'video' and 'title'")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise ApiError(
            400, f"Content-Type must be multipart/form-data, not {kind.decode(errors='replace')!r}"
        )
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "multipart/form-data needs a boundary parameter")
    return boundary


async def receive_upload(
    stream: AsyncIterator[bytes],
    content_type: str | None,
    dest: Path,
    limit: int,
    on_progress: Callable[[int], Awaitable[None]] | None = None,
) -> Received:
    """Parse the body into `dest` (the `video` file) and the text fields; ApiError on bad input."""
    boundary = boundary_of(content_type)
    out = Received()
    state: dict = {"name": None, "filename": None, "buf": None, "parts": 0}
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    problems: list[ApiError] = []

    def on_part_begin() -> None:
        headers.clear()
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            problems.append(ApiError(400, f"too many form fields (more than {MAX_PARTS})"))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        disposition = headers.get(b"content-disposition")
        if disposition is None:
            problems.append(ApiError(400, "a form part has no Content-Disposition header"))
            state["name"] = None
            return
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == "video":
            if out.has_file:
                problems.append(ApiError(400, "send exactly one 'video' field"))
            out.has_file = True
            raw = params.get(b"filename")
            out.filename = raw.decode("utf-8", "replace") if raw is not None else None
            state["buf"] = None
        else:
            state["buf"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] == "video":
            view = memoryview(data)[start:end]
            while view:
                written = os.write(fd, view)
                view = view[written:]
            out.file_bytes += end - start
        elif state["buf"] is not None:
            state["buf"].extend(data[start:end])
            if len(state["buf"]) > MAX_FIELD:
                problems.append(ApiError(400, f"form field {state['name']!r} is over {MAX_FIELD} bytes"))
                state["buf"] = None

    def on_part_end() -> None:
        name, buf = state["name"], state["buf"]
        if name and name != "video" and buf is not None:
            try:
                out.fields[name] = bytes(buf).decode("utf-8")
            except UnicodeDecodeError:
                problems.append(ApiError(400, f"form field {name!r} is not UTF-8 text"))
        state["name"], state["buf"] = None, None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    total = 0
    try:
        async for piece in stream:
            total += len(piece)
            if total > limit:
                raise ApiError(413, f"upload exceeds the limit of {limit} bytes")
            try:
                parser.write(piece)
            except MultipartParseError as exc:
                raise ApiError(400, f"malformed multipart body: {exc}") from None
            if problems:
                raise problems[0]
            if on_progress is not None:
                await on_progress(total)
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise ApiError(400, f"malformed multipart body: {exc}") from None
        if parser.state != MultipartState.END:
            raise ApiError(400, "the multipart body ended before its closing boundary")
    finally:
        os.close(fd)
    if problems:
        raise problems[0]
    return out
