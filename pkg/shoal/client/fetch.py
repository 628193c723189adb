"""One download attempt from one node: bounded in time, verified by SHA-256 before it counts.

A node that refuses connections fails at once; one that accepts but never answers fails after
`connect`/`read` seconds (the read timeout is between bytes, so a slow but moving transfer is
not cut off; hedging in the scheduler handles slow). Hashing runs off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp


class FetchError(Exception):
    """An attempt that produced no usable bytes; `reason` is a short machine-readable tag."""

    def __init__(self, node: str, reason: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.reason = reason  # "connect", "timeout", "status", "checksum", "error"


@dataclass(frozen=True)
class Timeouts:
    connect: float = 1.0
    read: float = 2.0
    ping: float = 1.0


@dataclass
class Fetched:
    node: str
    data: bytes
    started: float
    seconds: float
    headers_at: float = 0.0  # time.monotonic() when the status line and headers arrived


def sha256_tag(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def verify(data: bytes, checksum: str) -> bool:
    """Does `data` match `checksum` ("sha256:<hex>" or bare hex)?"""
    want = checksum.lower().removeprefix("sha256:")
    got = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return got == want


async def fetch(
    session: aiohttp.ClientSession,
    node: str,
    stored_id: str,
    checksum: str,
    timeouts: Timeouts,
    on_headers: Callable[[], None] | None = None,
) -> Fetched:
    """GET /chunk/{stored_id} from `node`, checked against `checksum`; `on_headers` is called
    when the answer's headers arrive (the scheduler's first-byte deadline watches for it)."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(
        total=None, connect=timeouts.connect, sock_connect=timeouts.connect, sock_read=timeouts.read
    )
    try:
        async with session.get(f"{node}/chunk/{stored_id}", timeout=timeout) as r:
            if r.status != 200:
                body = (await r.read())[:200]
                raise FetchError(node, "status", f"HTTP {r.status}: {body.decode(errors='replace')}")
            headers_at = time.monotonic()
            if on_headers is not None:
                on_headers()
            data = await r.read()
    except FetchError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise FetchError(node, "timeout", f"no answer in time ({type(exc).__name__})") from None
    except aiohttp.ClientConnectorError as exc:
        raise FetchError(node, "connect", f"cannot connect: {exc.os_error or exc}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise FetchError(node, "error", f"{type(exc).__name__}: {exc}") from None
    if not await verify(data, checksum):
        raise FetchError(node, "checksum", f"{stored_id}: {len(data)} bytes do not match {checksum[:20]}…")
    return Fetched(node, data, started, time.monotonic() - started, headers_at)
