"""Watch streams, fed from the store's change log.

Every backend keeps a change log (revision -> events) that survives in the same transaction as
the data. One WatchHub per store follows that log: local writes wake it at once, and a cheap
revision check every `poll_interval` seconds picks up writes of other processes sharing the file.
Reading the log (rather than pushing events from the writing code) is what makes delivery
after-commit, in commit order, without loss or duplicates, whoever wrote.

A watcher whose consumer is slow stops buffering after `MAX_BUFFER` events and later re-reads its
backlog from the log; if the log was compacted past it meanwhile, it gets Compacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol

from .errors import Compacted, KvError, StoreBusy
from .model import Event

log = logging.getLogger(__name__)

MAX_BUFFER = 1024  # events buffered per watcher before it falls back to reading the log
READ_BATCH = 512  # revisions read from the log per query


class ChangeSource(Protocol):
    """What a backend provides to the hub (all synchronous and cheap)."""

    poll_interval: float | None

    def _current_revision(self) -> int: ...

    def _oldest_revision(self) -> int: ...

    def _changes(self, after: int, upto: int) -> list[Event]: ...


def read_changes(source: ChangeSource, after: int, upto: int) -> list[Event]:
    """Events of revisions after < r <= upto, or Compacted if the log no longer holds all of them.

    A dense log (every revision has events) proves completeness by its first event; a log with gaps
    (EtcdStore: other namespaces share etcd's revisions) says where it is complete from instead,
    with `_complete_from()`.
    """
    if upto <= after:
        return []
    events = source._changes(after, upto)
    if not events or events[0].revision != after + 1:
        complete_from = getattr(source, "_complete_from", None)
        if complete_from is None or after + 1 < complete_from():
            raise Compacted(after + 1, source._oldest_revision())
    return events


class Watch:
    """An async iterator of Events for one pattern. Close it (or use `async with`) when done."""

    __slots__ = (
        "_buf",
        "_error",
        "_hub",
        "_lagging",
        "_last_rev",
        "_waiter",
        "closed",
        "is_prefix",
        "target",
    )

    def __init__(self, hub: WatchHub, target: str, is_prefix: bool, last_rev: int) -> None:
        self._hub = hub
        self.target = target
        self.is_prefix = is_prefix
        self._last_rev = last_rev  # every event up to this revision has been buffered or skipped
        self._lagging = False
        self._buf: deque[Event] = deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def matches(self, key: str) -> bool:
        return key.startswith(self.target) if self.is_prefix else key == self.target

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._buf:
                return self._buf.popleft()
            if self._error is not None:
                err, self._error = self._error, None
                self.close()
                raise err
            if self.closed:
                raise StopAsyncIteration
            if self._lagging:
                self._hub.catch_up(self)
                continue
            self._hub.ensure_running()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def pending(self) -> list[Event]:
        """Take the events delivered so far without waiting (tests and batch consumers)."""
        if self._lagging and not self.closed:
            self._hub.catch_up(self)
        out = list(self._buf)
        self._buf.clear()
        if not out and self._error is not None:
            err, self._error = self._error, None
            self.close()
            raise err
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub.remove(self)
            self._wake()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, err: BaseException) -> None:
        self._error = err
        self._lagging = False
        self._wake()


class WatchHub:
    """Follows one store's change log and fans events out to its watchers."""

    def __init__(self, source: ChangeSource) -> None:
        self.source = source
        self.last_seen = source._current_revision()
        self.watchers: set[Watch] = set()
        self._kick: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- registration ------------------------------------------------------------------------
    def add(self, target: str, is_prefix: bool, from_revision: int | None) -> Watch:
        current = self.source._current_revision()
        if from_revision is None:
            last = current
        else:
            if from_revision < 1:
                raise ValueError("from_revision starts at 1")
            if from_revision <= current:
                oldest = self.source._oldest_revision()
                if from_revision < oldest:
                    raise Compacted(from_revision, oldest)
            last = from_revision - 1
        w = Watch(self, target, is_prefix, last)
        w._lagging = last < self.last_seen
        self.watchers.add(w)
        with contextlib.suppress(RuntimeError):  # no running loop yet: started on first __anext__
            self.ensure_running()
        return w

    def remove(self, w: Watch) -> None:
        self.watchers.discard(w)
        if not self.watchers:
            self.kick()

    # -- the follower task ---------------------------------------------------------------------
    def kick(self) -> None:
        """Wake the follower now (called after every local commit)."""
        if self._kick is not None:
            self._kick.set()

    def ensure_running(self) -> None:
        if self._task is None and self.watchers and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shoal.kv watch hub")

    async def _run(self) -> None:
        self._kick = kick = asyncio.Event()
        interval = self.source.poll_interval
        try:
            while self.watchers and not self._closed:
                kick.clear()
                self.poll()
                if interval is None:
                    await kick.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await kick.wait()
        finally:
            self._kick = None
            self._task = None

    def poll(self) -> None:
        """Read every revision committed since the last poll and dispatch it."""
        try:
            current = self.source._current_revision()
            while self.last_seen < current:
                upto = min(current, self.last_seen + READ_BATCH)
                events = read_changes(self.source, self.last_seen, upto)
                self._dispatch(events)
                self.last_seen = upto
        except StoreBusy:
            return  # another process is busy: try again on the next tick
        except Compacted as err:
            self.fail_all(err)  # this process fell behind the retained history
            self.last_seen = self.source._current_revision()
        except KvError as err:
            self.fail_all(err)
        except Exception as err:  # a broken store must end the streams, not hang them
            log.exception("watch follower failed")
            self.fail_all(KvError(f"watch failed: {err}"))

    def _dispatch(self, events: list[Event]) -> None:
        n = len(events)
        i = 0
        watchers = [w for w in self.watchers if not w._lagging]
        while i < n:
            rev = events[i].revision
            j = i + 1
            while j < n and events[j].revision == rev:
                j += 1
            group = events[i:j]
            for w in watchers:
                if rev <= w._last_rev or w._lagging:
                    continue
                if len(w._buf) >= MAX_BUFFER:
                    w._lagging = True
                    w._wake()
                    continue
                hit = False
                for ev in group:
                    if w.matches(ev.key):
                        w._buf.append(ev)
                        hit = True
                w._last_rev = rev
                if hit:
                    w._wake()
            i = j

    def catch_up(self, w: Watch) -> None:
        """Fill a lagging watcher's buffer from the log up to what the hub has dispatched."""
        w._lagging = False
        if w._last_rev >= self.last_seen:
            return
        try:
            events = read_changes(self.source, w._last_rev, self.last_seen)
        except KvError as err:
            w._fail(err)
            return
        w._buf.extend(ev for ev in events if w.matches(ev.key))
        w._last_rev = self.last_seen

    def skip_to(self, revision: int, oldest: int) -> None:
        """The log lost every revision up to `revision` unread (etcd compacted them): go on after it.

        Watchers that still needed one of those fail with Compacted; the others are unaffected.
        """
        for w in list(self.watchers):
            if w._last_rev < revision:
                w._fail(Compacted(w._last_rev + 1, oldest))
                self.watchers.discard(w)
        self.last_seen = max(self.last_seen, revision)

    def fail_all(self, err: BaseException) -> None:
        for w in list(self.watchers):
            w._fail(err)

    def close(self) -> None:
        """End every watch (iteration stops) and the follower task."""
        self._closed = True
        for w in list(self.watchers):
            w.close()
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):
                task.cancel()
