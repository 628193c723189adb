"""Log capture for the supervised app, supervisord-style: its stdout and stderr go through pipes
the manager reads, into size-rotated files (`TMP_DIR/logs/process.stdout.log`, `.1` … `.N`),
and are still forwarded to the manager's own stdout and stderr (the spec asks for that).

Why this shape:
- The pipes are plain os.pipe()s read by the event loop (connect_read_pipe), not asyncio's
  subprocess pipes: those make `Process.wait()` wait for EOF too, so a grandchild holding the
  pipe would hide the app's exit from the supervisor.
- The loop only copies bytes into bounded queues; a thread per destination writes them (file,
  forward). A full disk or a slow reader of the manager's stdout fills its queue, and then
  bytes for that destination are dropped and counted (`dropped_bytes`): the app is never
  blocked for longer than it takes to fill the pipe buffer, and never by the other destination.
- Rotation happens at a line boundary when one fits: every byte goes to exactly one file, so
  the files read oldest (`.N`) to newest (no suffix) are the output in order, nothing lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("shoal.manager.applog")

QUEUE_BYTES = 4 * 1024 * 1024  # per destination: what may wait for a slow disk or reader
TAIL_LINES = 1000  # kept in memory for GET /process/logs
MAX_LINE = 16 * 1024  # a longer line is cut into pieces in the tail


class RotatingFile:
    """Append to `path`; past `max_bytes` it becomes `.1` (`.1` → `.2` …, at most `backups`).
    max_bytes 0: never rotate."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _write_all(self, data: bytes) -> None:
        fd = self._open()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            self._size += n
            view = view[n:]

    def rotate(self) -> None:
        self.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.path, 0)
        self.rotations += 1

    def write(self, data: bytes) -> None:
        while data:
            self._open()
            room = self.max_bytes - self._size if self.max_bytes > 0 else len(data)
            if len(data) <= room:
                self._write_all(data)
                return
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1
            if cut == 0:
                if self._size > 0:
                    self.rotate()  # the next line starts a fresh file
                    continue
                cut = room  # one line longer than a whole file: split it
            self._write_all(data[:cut])
            data = data[cut:]
            self.rotate()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Drain:
    """A bounded byte queue emptied by one thread into `sink`; overflow is dropped and counted."""

    def __init__(self, name: str, sink: Any, limit: int = QUEUE_BYTES) -> None:
        self.name = name
        self.sink = sink
        self.limit = limit
        self.queued = 0
        self.dropped = 0
        self.written = 0
        self.error: str | None = None
        self._q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"applog {name}", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        with self._lock:
            if self.queued + len(data) > self.limit:
                if not self.dropped:
                    log.warning("%s cannot keep up; dropping app output", self.name)
                self.dropped += len(data)
                return
            self.queued += len(data)
        self._q.put(data)

    def _run(self) -> None:
        while True:
            data = self._q.get()
            if data is None:
                return
            try:
                self.sink(data)
                self.written += len(data)
                self.error = None
            except OSError as exc:  # ENOSPC, EPIPE...: lose this chunk, keep the app running
                if self.error is None:
                    log.error("%s: %s; app output is dropped", self.name, exc)
                self.error = str(exc)
                self.dropped += len(data)
            finally:
                with self._lock:
                    self.queued -= len(data)

    def close(self, timeout: float = 2.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        return {"written_bytes": self.written, "dropped_bytes": self.dropped, "error": self.error}


def _write_fd(fd: int) -> Any:
    def sink(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return sink


class _Reader(asyncio.Protocol):
    def __init__(self, capture: AppLog, stream: str, done: asyncio.Future) -> None:
        self.capture, self.stream, self.done = capture, stream, done

    def data_received(self, data: bytes) -> None:
        self.capture.feed(self.stream, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.capture.flush_partial(self.stream)
        if not self.done.done():
            self.done.set_result(None)


class AppLog:
    """Both streams of the app: rotated files, forwarding to the manager's fds, an in-memory tail."""

    def __init__(self, log_dir: Path, max_bytes: int, backups: int, forward: bool = True) -> None:
        self.log_dir = log_dir
        self.files = {
            s: RotatingFile(log_dir / f"process.{s}.log", max_bytes, backups) for s in ("stdout", "stderr")
        }
        self.drains: dict[str, list[Drain]] = {}
        for stream, fd in (("stdout", 1), ("stderr", 2)):
            self.drains[stream] = [Drain(f"{stream} log file", self.files[stream].write)]
            if forward:
                self.drains[stream].append(Drain(f"{stream} forwarding", _write_fd(fd)))
        self._tail: collections.deque[dict[str, Any]] = collections.deque(maxlen=TAIL_LINES)
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._transports: list[asyncio.BaseTransport] = []

    async def pipes(self) -> tuple[int, int, asyncio.Future]:
        """Fresh pipes for one start of the app: (stdout write fd, stderr write fd, a future
        done at EOF of both). The caller passes the fds to the child and closes them."""
        loop = asyncio.get_running_loop()
        waits = []
        fds = []
        for stream in ("stdout", "stderr"):
            r, w = os.pipe()
            done = loop.create_future()
            transport, _ = await loop.connect_read_pipe(
                lambda s=stream, d=done: _Reader(self, s, d), os.fdopen(r, "rb", buffering=0)
            )
            self._transports.append(transport)
            done.add_done_callback(lambda _f, t=transport: self._forget(t))
            waits.append(done)
            fds.append(w)
        return fds[0], fds[1], asyncio.ensure_future(asyncio.gather(*waits))

    def _forget(self, transport: asyncio.BaseTransport) -> None:
        with contextlib.suppress(ValueError):
            self._transports.remove(transport)

    def feed(self, stream: str, data: bytes) -> None:
        for drain in self.drains[stream]:
            drain.put(data)
        buf = self._partial[stream] + data
        *lines, rest = buf.split(b"\n")
        now = time.time()
        for line in lines:
            self._add(stream, line, now)
        while len(rest) > MAX_LINE:
            self._add(stream, rest[:MAX_LINE], now)
            rest = rest[MAX_LINE:]
        self._partial[stream] = rest

    def flush_partial(self, stream: str) -> None:
        if self._partial[stream]:
            self._add(stream, self._partial[stream], time.time())
            self._partial[stream] = b""

    def _add(self, stream: str, line: bytes, at: float) -> None:
        self._tail.append({"stream": stream, "line": line.decode(errors="replace"), "at": round(at, 3)})

    def tail(self, n: int, stream: str | None = None) -> list[dict[str, Any]]:
        lines = [e for e in self._tail if stream is None or e["stream"] == stream]
        return lines[-n:] if n > 0 else []

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"dir": str(self.log_dir)}
        for stream, f in self.files.items():
            drains = self.drains[stream]
            info[stream] = {
                "path": str(f.path),
                "max_bytes": f.max_bytes,
                "backups": f.backups,
                "rotations": f.rotations,
                **drains[0].status(),
                "forward_dropped_bytes": sum(d.dropped for d in drains[1:]),
            }
        return info

    def close(self) -> None:
        for transport in list(self._transports):
            transport.close()
        for drains in self.drains.values():
            for d in drains:
                d.close()
        for f in self.files.values():
            f.close()
