"""A fair share of a node's read bandwidth between clients (storage chunk GETs).

The node is given its egress budget (`--read-bandwidth BYTES/s`, what its link can carry); a
token bucket of that rate, holding up to 100 ms of it, is shared by every body being sent.
While the bucket holds a whole body and nobody waits, the body goes out at once, in one send as
without the share (an idle or lightly used node never waits: the uncontended path costs one
subtraction). Otherwise the body goes out in slices (`--read-slice`, 256 KiB), each taking its
bytes from the bucket, waiting its turn when the bucket is dry. Once slices have to
wait, they are granted in turn *by client* (the credential's id, else the client address; start-
time fair queuing), not by request: a client with 16 readers in flight and one with 1 alternate, so
the greedy one gets half the link, not 16/17 of it, and the polite one's chunk takes about twice
its time alone instead of seventeen times.

Why not per-connection fairness from the kernel or the server: every connection is a queue of
its own there, so a client's share grows with the connections it opens; and on loopback or a
fast LAN the bottleneck is elsewhere. The budget has to be given because a process cannot see
its link's rate; set it a little below the link's so the queue forms here, where it is fair.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

from shoal.web.auth.ratelimit import client_bucket

DEFAULT_SLICE = 256 << 10
PRINCIPAL = "shoal.principal"


class FairShare:
    """A shared bucket of `rate` bytes/s; waiting slices are granted round robin per client."""

    def __init__(
        self, rate: float, slice_bytes: int = DEFAULT_SLICE, window: float = 0.1, per: str = "client"
    ) -> None:
        """`per`: "client" (the fair share), or "request" (every request its own turn, as a FIFO
        link or per-connection scheduling gives: for comparison only)."""
        if rate <= 0:
            raise ValueError("read bandwidth must be > 0 bytes/s")
        self.rate = float(rate)
        self.slice = max(4096, int(slice_bytes))
        if per not in ("client", "request"):
            raise ValueError("per must be 'client' or 'request'")
        self.per_request = per == "request"
        self._requests = 0
        self.burst = max(2.0 * self.slice, self.rate * window)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.heap: list[tuple[float, int, int, asyncio.Future]] = []  # (start tag, seq, bytes, waiter)
        self.finish: dict[str, float] = {}  # client -> finish tag of its last queued slice
        self.vtime = 0.0
        self.waiting = 0
        self._seq = 0
        self._pump: asyncio.Task | None = None
        self.granted_after_wait = 0  # slices that had to queue (a gauge of how busy the node is)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def try_take(self, n: int) -> bool:
        """Take `n` at once if nobody waits and the bucket holds them (the node is not busy)."""
        if self.waiting:
            return False
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    async def take(self, client: str, n: int) -> None:
        """Return when `n` bytes of `client`'s body may be sent."""
        if not self.waiting:
            self._refill()
            if self.tokens >= n:
                self.tokens -= n
                return
        # start-time fair queuing by client: a slice's tag starts where the client's last one
        # ended, or now if the client was idle; the smallest tag goes next. A client whose reader
        # asks again just after its slice went keeps its turn (plain round robin would hand it to
        # the client with the most requests queued).
        start = max(self.vtime, self.finish.get(client, 0.0))
        self.finish[client] = start + n
        if len(self.finish) > 4096:
            self.finish = {c: f for c, f in self.finish.items() if f > self.vtime}
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self.heap, (start, self._seq, n, fut))
        self.waiting += 1
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())
        await fut

    async def _run(self) -> None:
        while self.heap:
            start, _, n, fut = self.heap[0]
            if fut.done():  # its request was cancelled (the client went away)
                heapq.heappop(self.heap)
                self.waiting -= 1
                continue
            need = min(n, self.burst)  # a slice bigger than the bucket waits for a full bucket
            self._refill()
            if self.tokens < need:
                await asyncio.sleep((need - self.tokens) / self.rate)
                continue  # a smaller tag may have arrived meanwhile
            heapq.heappop(self.heap)
            self.waiting -= 1
            self.vtime = start
            self.tokens -= n
            self.granted_after_wait += 1
            fut.set_result(None)
        if not self.heap:
            self.finish.clear()  # idle: every client starts level again
            self.vtime = 0.0


def client_of(scope: dict) -> str:
    """Whose share a request draws on: its credential's id, else its address (IPv6 per /64)."""
    p = scope.get(PRINCIPAL)
    if p is not None:
        return f"{p.kind}:{p.id}"
    client = scope.get("client")
    return client_bucket(client[0] if client else None)


async def respond_shared(
    send: Callable,
    share: FairShare | None,
    scope: dict,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send `body` with Content-Length; through `share` in slices when one is given."""
    hdrs = [(b"content-length", str(len(body)).encode()), *headers]
    if share is None or share.try_take(len(body)):  # not busy: the whole body in one send
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})
        return
    if share.per_request:
        share._requests += 1
        client = f"request:{share._requests}"
    else:
        client = client_of(scope)
    size, step = len(body), share.slice
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    if size <= step:
        await share.take(client, size)
        await send({"type": "http.response.body", "body": body})
        return
    for start in range(0, size, step):
        part = body[start : start + step]
        await share.take(client, len(part))
        await send({"type": "http.response.body", "body": part, "more_body": start + step < size})
