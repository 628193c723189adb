"""The State Service's error type: an ApiError, so the web layer renders it in STATE_ENVELOPE.

Domain code raises these with a stable code; the HTTP layer never formats an error by hand.
"""

from __future__ import annotations

from shoal.web.errors import ApiError


class StateError(ApiError):
    """A refused request: status, a message for people, a stable machine code."""


def bad_request(message: str, code: str = "INVALID_INPUT") -> StateError:
    return StateError(400, message, code)


def not_found(kind: str, key: str) -> StateError:
    return StateError(404, f"{kind} {key!r} not found", "NOT_FOUND")


def conflict(message: str, code: str = "CONFLICT") -> StateError:
    return StateError(409, message, code)


def unauthorized(message: str, code: str = "UNAUTHORIZED") -> StateError:
    return StateError(401, message, code, headers={"WWW-Authenticate": 'Bearer realm="shoal-state"'})


def forbidden(message: str, code: str = "FORBIDDEN") -> StateError:
    return StateError(403, message, code)


def unavailable(message: str, code: str = "UNAVAILABLE", retry_after: int = 2) -> StateError:
    return StateError(503, message, code, headers={"Retry-After": str(retry_after)})
