"""Concurrent requests per client IP, and upload bytes per key per day.

`ConnectionLimiter`: ASGI gives no connection id (uvicorn and granian both put only the peer
address in scope["client"]), so what is counted is requests in flight per client address (IPv6
per /64), from the moment the middleware sees one until the app has sent its last byte. An idle
keep-alive connection holds nothing; a slow reader of a big body holds its slot the whole time,
which is the case the limit is for (a client opening hundreds of streams at once).

`UploadQuota`: bytes of request body per credential (API key id, node id, or the client address
in dev mode) per UTC day, charged as the body arrives, so an upload is cut off with a 429 the
moment it crosses the quota (the caller deletes what it had stored). The count lives in a
shoal.kv store (the uploader's own SQLite file) so a restart keeps it; it is written at most
every `flush_every` bytes and at the end of each upload, so a kill -9 mid-upload forgets at most
that much.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoal.web.errors import CLOSE, ApiError

DAY = 86400.0
QUOTA_PREFIX = "/quota/upload/"


class ConnectionLimiter:
    """At most `limit` requests in flight per client key; 0 = off."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.counts: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def acquire(self, key: str) -> bool:
        """True (and counted) if `key` is under its limit; the caller must `release` it after."""
        n = self.counts.get(key, 0)
        if n >= self.limit:
            return False
        self.counts[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self.counts.get(key, 0) - 1
        if n > 0:
            self.counts[key] = n
        else:
            self.counts.pop(key, None)


def too_many_connections(limit: int) -> ApiError:
    return ApiError(
        429,
        f"more than {limit} requests in flight from this client address; retry in 1 s",
        "TOO_MANY_CONNECTIONS",
        headers={"Retry-After": "1"},
    )


def parse_quota(spec: str | int | None) -> int:
    """'10G', '10G/day', '5000000', '0' or '' (off) -> bytes per day."""
    if spec is None or isinstance(spec, int):
        return int(spec or 0)
    text = spec.strip().lower().removesuffix("/day").removesuffix("/d").strip().upper()
    if not text or text == "0":
        return 0
    text = text.removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    try:
        value = float(text[:-1] if mult > 1 else text) * mult
    except ValueError:
        raise ValueError(f"upload quota {spec!r}: expected BYTES[/day], e.g. 10G/day") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"upload quota {spec!r}: must be >= 0")
    return int(value)


class UploadQuota:
    """Body bytes per credential per UTC day, kept in a shoal.kv store (get_json/set_json)."""

    def __init__(
        self,
        limit: int,
        kv: Any,
        *,
        window: float = DAY,
        flush_every: int = 4 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = int(limit)
        self.kv = kv
        self.window = window
        self.flush_every = flush_every
        self.clock = clock
        self._used: dict[str, list[int]] = {}  # who -> [window index, bytes used, bytes persisted]

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def _key(self, who: str, index: int) -> str:
        return f"{QUOTA_PREFIX}{index}/{who}"

    def retry_after(self) -> int:
        """Whole seconds until the current window ends (when the count starts again at 0)."""
        now = self.clock()
        end = (math.floor(now / self.window) + 1) * self.window
        return max(1, math.ceil(end - now))

    async def _entry(self, who: str) -> list[int]:
        index = math.floor(self.clock() / self.window)
        entry = self._used.get(who)
        if entry is None or entry[0] != index:
            if entry is not None:  # yesterday's count is no longer needed
                await self.kv.delete(self._key(who, entry[0]))
            stored = await self.kv.get_json(self._key(who, index), None)
            used = int(stored.get("bytes", 0)) if isinstance(stored, dict) else 0
            entry = self._used[who] = [index, used, used]
        return entry

    async def used(self, who: str) -> int:
        return (await self._entry(who))[1]

    async def _flush(self, who: str, entry: list[int]) -> None:
        if entry[1] != entry[2]:
            await self.kv.set_json(self._key(who, entry[0]), {"bytes": entry[1]})
            entry[2] = entry[1]

    def _refusal(self, who: str, used: int, extra: str = "") -> ApiError:
        wait = self.retry_after()
        return ApiError(
            429,
            f"upload quota of {self.limit} bytes per day for {who} is used up ({used} bytes today{extra}); "
            f"retry in {wait} s, when the day (UTC) ends",
            "QUOTA_EXCEEDED",
            headers={"Retry-After": str(wait), **CLOSE},
        )

    async def check(self, who: str, declared: int | None = None) -> None:
        """429 before any byte is read when `who` has nothing left, or declares more than is left."""
        if not self.enabled:
            return
        used = (await self._entry(who))[1]
        if used >= self.limit:
            raise self._refusal(who, used)
        if declared is not None and used + declared > self.limit:
            raise self._refusal(who, used, f"; this upload declares {declared} more")

    async def meter(self, who: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`stream`, charged as it arrives; the piece that crosses the quota raises the 429."""
        if not self.enabled:
            async for piece in stream:
                yield piece
            return
        entry = await self._entry(who)
        try:
            async for piece in stream:
                if entry[0] != math.floor(self.clock() / self.window):  # the day turned mid-upload
                    await self._flush(who, entry)
                    entry = await self._entry(who)
                if entry[1] + len(piece) > self.limit:
                    entry[1] = self.limit
                    raise self._refusal(who, entry[1])
                entry[1] += len(piece)
                if entry[1] - entry[2] >= self.flush_every:
                    await self._flush(who, entry)
                yield piece
        finally:
            await self._flush(who, entry)
