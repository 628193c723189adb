"""Group commit for durable writes: one writer thread, one transaction and one fsync for every
write that was waiting.

A durable commit waits for fsync (0.1-1.5 ms here). With a transaction per write, N concurrent
writers wait for N fsyncs one after another. The writer thread instead takes every write queued
while the previous commit was syncing (up to `max_batch`) and hands them to the backend's
`commit_batch`, which runs them in one transaction, in queue order, and commits once:

- each write sees exactly the writes queued before it, as if they had committed one by one;
- a write is acknowledged only after the commit that holds it has returned (so it is durable);
- a write whose body raises (a version conflict, a limit) is taken out of the group alone: the
  backend rolls it back (SQLite: to its savepoint; LMDB, which has no nested transactions with
  MDB_WRITEMAP: aborts and runs the group again without it);
- if the commit itself fails, every write of the group gets that error and none took effect.

`call()` runs a plain function alone on the same thread (LMDB parks the thread there to resize
its map; SQLite closes its connection there).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

Item = tuple[Callable[..., Any], tuple]  # (body, args) as handed to commit_batch
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)
_STOP = object()


class GroupCommitter:
    """The writer thread of one store: batches `write()`s into `commit_batch` calls."""

    def __init__(
        self,
        commit_batch: Callable[[list[Item]], list[Outcome]],
        name: str,
        max_batch: int = 128,
        closed: Callable[[], BaseException] = lambda: RuntimeError("the writer thread is closed"),
    ) -> None:
        self._commit_batch = commit_batch
        self.max_batch = max_batch
        self._closed_error = closed
        self._closing = False
        self.batches = 0  # commits made, and writes in them: the grouping, for tests and figures
        self.writes = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    async def write(self, body: Callable[..., Any], *args: Any) -> Any:
        """Run body(txn, *args) in the next group commit; its result once that commit is durable."""
        return await self._submit("w", body, args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) alone on the writer thread, between group commits."""
        return await self._submit("c", fn, args)

    def _submit(self, kind: str, fn: Callable[..., Any], args: tuple) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._closing:
            fut.set_exception(self._closed_error())
        else:
            self._queue.put((kind, fn, args, fut, loop))
        return fut

    def close(self) -> None:
        """Finish what is queued, then stop the thread (blocks until it has); later writes fail."""
        self._closing = True
        self._queue.put(_STOP)
        with contextlib.suppress(RuntimeError):
            self._thread.join()

    def _main(self) -> None:
        held = None  # an item taken while filling a group that could not join it
        while True:
            item = held if held is not None else self._queue.get()
            held = None
            if item is _STOP:
                self._fail_stragglers()
                return
            if item[0] == "c":
                _settle([(item, _run(item[1], item[2]))])
                continue
            group = [item]
            while len(group) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt[0] != "w":
                    held = nxt
                    break
                group.append(nxt)
            try:
                outcomes = self._commit_batch([(g[1], g[2]) for g in group])
            except BaseException as exc:  # the backend's own failure: no write took effect
                outcomes = [(False, exc)] * len(group)
            self.batches += 1
            self.writes += len(group)
            _settle(list(zip(group, outcomes, strict=True)))

    def _fail_stragglers(self) -> None:
        """Items queued after close() raced past its flag: they fail, they are never left waiting."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                _settle([(item, (False, self._closed_error()))])


def _run(fn: Callable[..., Any], args: tuple) -> Outcome:
    try:
        return True, fn(*args)
    except BaseException as exc:
        return False, exc


def _settle(done: list[tuple[tuple, Outcome]]) -> None:
    """Resolve the futures, one wake-up per event loop for the whole group."""
    by_loop: dict[Any, list] = {}
    for item, outcome in done:
        by_loop.setdefault(item[4], []).append((item[3], outcome))
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, results)


def _resolve(results: list[tuple[asyncio.Future, Outcome]]) -> None:
    for fut, (ok, value) in results:
        if fut.done():  # the waiter was cancelled; the write itself happened (or failed) anyway
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
