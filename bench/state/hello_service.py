"""The baseline for bench/state/load.py: a raw ASGI JSON hello, served by `shoal serve` (granian,
uvloop, one worker) exactly like the State Service, so the ratio isolates the service's own cost."""

from __future__ import annotations

from typing import Any

TITLE = "hello (benchmark baseline)"
BODY = b'{"message":"hello"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def hello(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def create_app(options: dict) -> Any:
    return hello
