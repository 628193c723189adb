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
        self.outstanding: dict[str, float] = {}  # node -> monotonic time its unanswered ping was sent
        self.reported_down: set[str] = set()  # down according to the metadata service
        self._changed: asyncio.Future | None = None  # resolved (and replaced) by every ping result
        for n in self.nodes:
            scores.add(n)

    def add(self, node: str) -> None:
        if node not in self.nodes:
            self.nodes.append(node)
            self.scores.add(node)

    def down(self, node: str) -> bool:
        """Is `node` down: its last ping failed, or the metadata service reports it down?"""
        if node in self.reported_down:
            return True
        last = self.last.get(node)
        return bool(last and not last["ok"])

    def latency_floor_ms(self, node: str) -> float:
        """A lower bound on `node`'s latency: how long its outstanding ping has waited (0 when
        none is outstanding). A node that has not answered for 80 ms is at least 80 ms away,
        whatever its last estimate says; this is what ranks a hung node low within one ping."""
        sent = self.outstanding.get(node)
        return 0.0 if sent is None else (time.monotonic() - sent) * 1000.0

    def answered(self, node: str) -> bool:
        last = self.last.get(node)
        return bool(last and last["ok"])

    async def first_answer(self, nodes: list[str], timeout: float, grace: float = 4.0) -> None:
        """Return once one of `nodes` has answered a ping and the others have had `grace` x
        that long to answer too (or all of them answered or failed), or after `timeout` s:
        the smart client's first requests go to nodes known to be alive, spread over those
        about as fast as the first, without waiting for the slowest node's ping (a hung or
        slow node answers late or never, and its wait would be everyone's startup)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + timeout
        first: float | None = None
        while True:
            settled = [n for n in nodes if n in self.last or n in self.reported_down]
            if len(settled) == len(nodes):
                return  # every one answered or failed: nothing to wait for
            if first is None and any(self.answered(n) for n in nodes):
                first = loop.time()
                end = min(end, first + (first - t0) * (grace - 1.0))
            remaining = end - loop.time()
            if remaining <= 0 or self._changed is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)

    def report_down(self, nodes: set[str]) -> None:
        """The nodes the metadata service reports down (replaces the previous report)."""
        self.reported_down = set(nodes)
        self._wake()

    def _wake(self) -> None:
        if self._changed is None:
            return
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Start pinging every node; returns at once (the first round runs in the background:
        the smart scheduler waits per chunk for one of its nodes to answer, `first_answer`)."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False, ssl=self.ssl), headers=self.headers
        )
        self._changed = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.ping_all()
            await asyncio.sleep(self.interval)

    async def ping_all(self) -> None:
        await asyncio.gather(*(self.ping(n) for n in list(self.nodes)))

    async def ping(self, node: str) -> None:
        assert self._session is not None
        t0 = time.monotonic()
        self.outstanding.setdefault(node, t0)
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
        self.outstanding.pop(node, None)
        self._wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()
