"""Whether the bucket answers, asked without ever making /health slow.

`shoal up` probes `GET /health` with a 2 s timeout and kills a service that fails it; a hung S3
server must therefore show as `degraded` (HTTP 200, with the reason), never as a slow answer.
One probe (HEAD bucket, one attempt, TIMEOUT s to connect and to read) runs at a time in a
thread; its result is reused for CACHE s. A caller waits at most WAIT s for a probe in flight;
a probe older than TIMEOUT is an answer in itself: S3 does not answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shoal.manager import s3
from shoal.manager.config import Storage

TIMEOUT = 1.0
CACHE = 1.0
WAIT = 0.5


class S3Probe:
    """The last known answer of the bucket: None when it answered, else why not."""

    def __init__(self, storage: Storage, timeout: float = TIMEOUT) -> None:
        self.storage = storage
        self.timeout = timeout
        self._client: Any = None
        self._task: asyncio.Future | None = None
        self._started = 0.0
        self._checked = float("-inf")
        self.problem: str | None = "S3 not probed yet"
        self.ok_at: float | None = None  # monotonic time of the last good answer

    def _head(self) -> None:
        if self._client is None:
            self._client = s3.client(self.storage, timeout=self.timeout, attempts=1)
        self._client.head_bucket(Bucket=self.storage.bucket)

    def _done(self, task: asyncio.Future) -> None:
        self._task = None
        self._checked = time.monotonic()
        exc = None if task.cancelled() else task.exception()
        if task.cancelled():
            self.problem = "S3 probe cancelled"
        elif exc is not None:
            self.problem = (
                f"S3 at {self.storage.endpoint} (bucket {self.storage.bucket}) failed: {_short(exc)}"
            )
        else:
            self.problem = None
            self.ok_at = self._checked

    async def check(self) -> str | None:
        """None when S3 answered within TIMEOUT s (at most CACHE s ago), else the reason."""
        now = time.monotonic()
        if self._task is None and now - self._checked >= CACHE:
            self._started = now
            self._task = asyncio.ensure_future(asyncio.to_thread(self._head))
            self._task.add_done_callback(self._done)
        task = self._task
        if task is not None:
            age = now - self._started
            if age < self.timeout:
                try:
                    await asyncio.wait_for(asyncio.shield(task), min(WAIT, self.timeout - age))
                except (TimeoutError, Exception):  # its outcome is recorded by _done
                    pass
            age = time.monotonic() - self._started
            if self._task is not None and age >= self.timeout:
                return f"S3 at {self.storage.endpoint} has not answered for {age:.1f} s"
        return self.problem


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
