"""Errors and the three documented error envelopes.

Handlers raise ApiError; the app renders it in the service's envelope, so a service never
formats an error body by hand and never answers bad input with a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    416: "RANGE_NOT_SATISFIABLE",
    422: "VALIDATION_ERROR",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
    504: "TIMEOUT",
    507: "INSUFFICIENT_STORAGE",
}


# An answer sent before the request body was read (413) closes the connection: the unread body
# would otherwise be parsed as the next request, or a pooled client would reuse a socket the
# server is about to drop.
CLOSE = {"Connection": "close"}


class ApiError(Exception):
    """An error answer: HTTP status, a message for humans, a stable code, optional details."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or DEFAULT_CODES.get(status, "ERROR")
        self.details = details
        self.headers = headers


@dataclass(frozen=True)
class Envelope:
    """How one service shapes its error bodies, and the JSON Schema of that shape."""

    name: str
    render: Callable[[ApiError], Any]
    schema: dict


STATE_ENVELOPE = Envelope(
    "state",
    lambda e: {"success": False, "error": e.message, "code": e.code},
    {
        "type": "object",
        "required": ["success", "error", "code"],
        "properties": {
            "success": {"type": "boolean", "const": False},
            "error": {"type": "string"},
            "code": {"type": "string"},
        },
    },
)

DETAIL_ENVELOPE = Envelope(
    "detail",
    lambda e: {"detail": e.message} if e.details is None else {"detail": e.message, "errors": e.details},
    {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "string"}, "errors": {}},
    },
)

COMPUTE_ENVELOPE = Envelope(
    "compute",
    lambda e: {"error": {"code": e.code, "message": e.message, "details": e.details or {}}},
    {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {},
                },
            }
        },
    },
)
