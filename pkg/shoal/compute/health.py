"""Is a backend's daemon answering? One probe in flight per backend, results cached briefly.

A daemon that is down refuses the connection and every call fails at once. A daemon that is
hung (SIGSTOPped, deadlocked, swapping) accepts the connection and never answers: each call
would wait for its own timeout (30 s for Docker), and every view that asks both backends
would wait with it. So each backend has a cheap probe (`backend.ping()`) with a short timeout
(`--backend-timeout`, 2 s):

- `status()` answers /health and never takes longer than the timeout: a probe in flight
  longer than the timeout is "no answer within 2 s" at once; a result younger than `ttl` is
  reused; a failure stays until a probe (started in the background) answers, so a hung daemon
  makes at most one /health wait.
- `guard(awaitable)` runs a daemon call next to a probe: the call may take as long as it needs
  while the daemon answers probes (a stop with a 30 s grace period), and is abandoned with
  503 BACKEND_UNAVAILABLE once a probe gets no answer within the timeout; while a probe is
  overdue, calls fail at once.

A probe that got no answer in time is left running (up to `cap` s): a daemon that wakes up
answers it, which is how the backend turns healthy again without waiting for a new probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shoal.compute.errors import BackendUnavailable

T = TypeVar("T")
DEFAULT_TIMEOUT = 2.0
TTL = 1.0  # how long an answer is reused


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str | None = None  # why not, in words ("no answer within 2 s")
    at: float = 0.0  # time.monotonic() of the answer


class BackendHealth:
    """The answering state of one backend's daemon (see the module docstring)."""

    def __init__(
        self,
        name: str,
        ping: Callable[[], Awaitable[Any]],
        timeout: float = DEFAULT_TIMEOUT,
        ttl: float = TTL,
        cap: float | None = None,
    ) -> None:
        self.name = name
        self.ping = ping
        self.timeout = timeout
        self.ttl = ttl
        self.cap = cap if cap is not None else max(30.0, 10 * timeout)
        self.last: Health | None = None
        self._task: asyncio.Task | None = None
        self._started = 0.0

    @property
    def silence(self) -> str:
        return f"no answer within {self.timeout:g} s"

    # ---- probes ------------------------------------------------------------------------------

    def _kick(self) -> asyncio.Task:
        """The probe in flight, or a new one."""
        if self._task is None:
            self._started = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._probe(), name=f"probe-{self.name}")
        return self._task

    async def _probe(self) -> Health:
        try:
            async with asyncio.timeout(self.cap):
                await self.ping()
            result = Health(True, at=time.monotonic())
        except BackendUnavailable as exc:
            result = Health(False, str(exc.details.get("reason") or exc.message), time.monotonic())
        except TimeoutError:
            result = Health(False, f"no answer within {self.cap:g} s", time.monotonic())
        except Exception as exc:  # a probe reports, it never raises
            result = Health(False, f"{type(exc).__name__}: {exc}", time.monotonic())
        self.last = result
        self._task = None
        return result

    def _overdue(self, now: float) -> bool:
        return self._task is not None and now - self._started >= self.timeout

    def _silent(self, now: float) -> Health:
        """The state while a probe gets no answer: silence, unless it failed since it started."""
        last = self.last
        if last is None or last.ok or last.at < self._started:
            self.last = last = Health(False, self.silence, now)
        return last

    def silent_now(self) -> Health | None:
        """The silence known now, without waiting: a probe in flight longer than the timeout.
        (A daemon that refuses is not short-cut: trying costs nothing and sees it come back.)"""
        now = time.monotonic()
        return self._silent(now) if self._overdue(now) else None

    async def status(self) -> Health:
        """The daemon's state, in at most `timeout` s (see the module docstring)."""
        now = time.monotonic()
        if self._overdue(now):
            return self._silent(now)
        last = self.last
        if last is not None and now - last.at < self.ttl:
            return last
        task = self._kick()
        if last is not None and not last.ok:
            return last  # stays a failure until the probe just started answers
        remaining = self._started + self.timeout - time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=max(0.0, remaining))
        return task.result() if done else self._silent(time.monotonic())

    # ---- calls -------------------------------------------------------------------------------

    def unavailable(self, health: Health) -> BackendUnavailable:
        return BackendUnavailable(self.name, health.reason or self.silence)

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await a daemon call, abandoning it (503) once the daemon stops answering probes."""
        silent = self.silent_now()
        if silent is not None:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never started: no "was never awaited" warning
            raise self.unavailable(silent)
        call = asyncio.ensure_future(awaitable)
        try:
            while True:
                probe = self._kick()
                deadline = self._started + self.timeout
                await asyncio.wait(
                    {call, probe},
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when="FIRST_COMPLETED",
                )
                if call.done():
                    return call.result()
                if not probe.done():
                    raise self.unavailable(self._silent(time.monotonic()))
                answer = probe.result()
                if not answer.ok:
                    raise self.unavailable(answer)
                # the daemon answers: the call is just slow; ask again after a while
                await asyncio.wait({call}, timeout=self.timeout)
                if call.done():
                    return call.result()
        finally:
            if not call.done():  # abandoned (or we were cancelled): the daemon may still act on it
                call.cancel()
                call.add_done_callback(_retrieve)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned call's error is not news
