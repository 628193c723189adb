"""JSON in and out: orjson for bytes, msgspec for typed validation.

Bodies are parsed with orjson (clear "not JSON" errors) and converted into msgspec Structs
with strict types, so a string never silently becomes a number.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from starlette.responses import Response

from shoal.web.errors import ApiError


def dumps(obj: Any) -> bytes:
    """Encode anything a handler returns: Structs, dicts, lists, scalars."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return orjson.dumps(msgspec.to_builtins(obj))


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise ApiError(400, "request body is empty; a JSON document is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def convert(data: Any, typ: Any, *, where: str = "body", status: int = 400) -> Any:
    """Validate `data` into `typ`; a ValidationError becomes an ApiError that names the field."""
    try:
        return msgspec.convert(data, typ, strict=where == "body")
    except msgspec.ValidationError as exc:
        raise ApiError(status, f"invalid {where}: {exc}", code="VALIDATION_ERROR") from None
