"""shoal.web: the one ASGI layer every shoal service is built on.

Declare typed routes on an `Api`, build the service with `create_app`, raise `ApiError` for
any answer that is not a success. See docs/DEVELOPING.md and tests/web/ for examples.
"""

from shoal.web.api import Api, Endpoint, read_body
from shoal.web.app import ShoalApp, create_app
from shoal.web.errors import COMPUTE_ENVELOPE, DETAIL_ENVELOPE, STATE_ENVELOPE, ApiError, Envelope
from shoal.web.fastpath import header, read_raw_body, respond, respond_error, respond_json
from shoal.web.jsonio import JSONResponse, dumps

__all__ = [
    "COMPUTE_ENVELOPE",
    "DETAIL_ENVELOPE",
    "STATE_ENVELOPE",
    "Api",
    "ApiError",
    "Endpoint",
    "Envelope",
    "JSONResponse",
    "ShoalApp",
    "create_app",
    "dumps",
    "header",
    "read_body",
    "read_raw_body",
    "respond",
    "respond_error",
    "respond_json",
]
