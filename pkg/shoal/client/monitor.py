"""Network monitor: `HEAD /ping` to every node every few seconds, into the native scoring module.

Latency, throughput and success rate are exponentially weighted estimates kept by
`shoal._native.load("scoring").NodeScores` (Cython, with a pure-Python twin); downloads feed
the same estimates from the scheduler. Pings use their own connection pool so they are not
queued behind 2 MiB downloads, and a ping that takes longer than its timeout is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from shoal import _native
from shoal.client.fetch import Timeouts


def new_scores(**kw: Any) -> Any:
    """A NodeScores from the scoring hot path in force (native unless forced pure)."""
    return _native.load("scoring").NodeScores(**kw)


class NetworkMonitor:
    def __init__(
        self,
        scores: Any,
        nodes: list[str],
        interval: float = 3.0,
        timeouts: Timeouts | None = None,
        *,
        headers: dict[str, str] | None = None,
        ssl: Any = True,
    ):
        self.scores = scores
        self.nodes = list(nodes)
        self.interval = interval
        self.timeouts = timeouts or Timeouts()
        self.last: dict[str, dict] = {}  # node -> {"ok", "ms", "at", "error"}
        self.pings = 0
        self.headers = headers or {}  # the player's viewer credential: /ping needs one with auth on
        self.ssl = ssl
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        for n in self.nodes:
            scores.add(n)

    def add(self, node: str) -> None:
        if node not in self.nodes:
            self.nodes.append(node)
            self.scores.add(node)

    def down(self, node: str) -> bool:
        """Did the last ping of `node` fail?"""
        last = self.last.get(node)
        return bool(last and not last["ok"])

    async def start(self, first_round_wait: float = 0.1) -> None:
        """Start pinging; wait up to `first_round_wait` s for a first answer from every node.

        A node still silent after that gets its wait as a (lower-bound) latency sample, so the
        first scheduling decisions already rank it below nodes that answered.
        """
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False, ssl=self.ssl), headers=self.headers
        )
        first = asyncio.ensure_future(self.ping_all())
        done, _ = await asyncio.wait({first}, timeout=first_round_wait)
        if not done:
            for n in self.nodes:
                if n not in self.last:
                    self.scores.record_ping(n, first_round_wait, True)
        self._task = asyncio.create_task(self._loop(first))

    async def _loop(self, first: asyncio.Future) -> None:
        with contextlib.suppress(Exception):
            await first
        while True:
            await asyncio.sleep(self.interval)
            await self.ping_all()

    async def ping_all(self) -> None:
        await asyncio.gather(*(self.ping(n) for n in list(self.nodes)))

    async def ping(self, node: str) -> None:
        assert self._session is not None
        t0 = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.timeouts.ping, connect=self.timeouts.connect)
        ok, error = False, None
        try:
            async with self._session.head(f"{node}/ping", timeout=timeout) as r:
                ok = r.status == 200
                if not ok:
                    error = f"HTTP {r.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        seconds = time.monotonic() - t0
        self.pings += 1
        self.scores.record_ping(node, seconds, ok)
        self.last[node] = {"ok": ok, "ms": round(seconds * 1000, 3), "at": time.time(), "error": error}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()
