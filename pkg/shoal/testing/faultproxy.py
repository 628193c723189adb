"""A TCP proxy on 127.0.0.1 that makes a healthy server look slow or hung, for client tests.

    with FaultProxy(upstream_port=node.port) as proxy:      # transparent at first
        proxy.throttle(delay=0.03, mbps=16)                 # +30 ms each way, 16 Mbit/s downstream
        proxy.hang()                                        # accept, read, never answer

A storage node registers with `--node-url <proxy.url>`, so the metadata service, the uploader
and the client all reach it through the proxy. The bandwidth limit is one token bucket shared
by every connection (the node's link); the delay applies to each direction. In hang mode new
connections are accepted and their requests read, but nothing is ever sent back, and open
connections stop delivering too: the case where only a timeout tells the client anything.
It runs its own event loop on a daemon thread, so sync tests and async clients can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import Any

from shoal.testing import free_port

PASS, THROTTLE, HANG = "pass", "throttle", "hang"


class FaultProxy:
    def __init__(self, upstream_port: int, port: int | None = None, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.mode = PASS
        self.delay = 0.0  # seconds, each direction
        self.bps: float | None = None  # downstream bits per second, None: unlimited
        self.connections = 0
        self.bytes_down = 0
        self._next_free = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control (from any thread) -----------------------------------------------------------
    def passthrough(self) -> None:
        self.mode, self.delay, self.bps = PASS, 0.0, None

    def throttle(self, delay: float = 0.0, mbps: float | None = None) -> None:
        self.delay, self.bps = delay, (mbps * 1e6 if mbps else None)
        self.mode = THROTTLE

    def hang(self) -> None:
        self.mode = HANG

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=256)
                )
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the proxy ----------------------------------------------------------------------------
    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(client_w)
        try:
            if self.mode == HANG:
                while await client_r.read(65536):  # swallow requests, answer nothing
                    pass
                return
            try:
                up_r, up_w = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # upstream down: close the client's connection
            self._writers.add(up_w)
            try:
                await asyncio.gather(
                    self._pump(client_r, up_w, downstream=False),
                    self._pump(up_r, client_w, downstream=True),
                )
            finally:
                self._writers.discard(up_w)
                up_w.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a reset, or the proxy stopping
        finally:
            self._writers.discard(client_w)
            with contextlib.suppress(Exception):
                client_w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool
    ) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        eof = False

        async def receive() -> None:
            nonlocal eof
            try:
                while data := await reader.read(65536):
                    queue.append((time.monotonic() + self.delay, data))
                    arrived.set()
            except OSError:
                pass
            eof = True
            arrived.set()

        rx = asyncio.create_task(receive())
        try:
            while True:
                while not queue:
                    if eof:
                        with contextlib.suppress(OSError):
                            if writer.can_write_eof():
                                writer.write_eof()
                        return
                    arrived.clear()
                    await arrived.wait()
                due, data = queue.popleft()
                while self.mode == HANG:
                    await asyncio.sleep(0.05)
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if downstream and self.bps:
                    now = time.monotonic()
                    start = max(now, self._next_free)
                    self._next_free = start + len(data) * 8 / self.bps
                    if self._next_free - now > 0:
                        await asyncio.sleep(self._next_free - now)
                writer.write(data)
                await writer.drain()
                if downstream:
                    self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            rx.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rx
