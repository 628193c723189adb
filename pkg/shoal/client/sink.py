"""Write the reassembled stream, in order, to a file or a pipe (e.g. `| ffplay -`).

Chunks arrive out of order from parallel downloads; each is written once everything before it
is written. Writes run on a thread, so a full pipe (a player reading at its own pace) holds up
only the writer, never the downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import BinaryIO


class OrderedWriter:
    def __init__(self, target: str) -> None:
        """`target` is a path, or "-" for standard output."""
        self.target = target
        self._file: BinaryIO | None = None
        self._pending: dict[int, bytes] = {}
        self.next_seq = 0
        self.written = 0
        self.broken = False  # the reader went away (a closed pipe): stop writing, keep playing
        self._lock = asyncio.Lock()

    def _open(self) -> BinaryIO:
        if self._file is None:
            if self.target == "-":
                self._file = sys.stdout.buffer
            else:
                self._file = open(self.target, "wb")
        return self._file

    async def put(self, seq: int, data: bytes) -> None:
        self._pending[seq] = data
        async with self._lock:
            while self.next_seq in self._pending:
                data = self._pending.pop(self.next_seq)
                if not self.broken:
                    try:
                        await asyncio.to_thread(self._write, data)
                    except (BrokenPipeError, OSError):
                        self.broken = True
                self.next_seq += 1

    def _write(self, data: bytes) -> None:
        f = self._open()
        f.write(data)
        f.flush()
        self.written += len(data)

    async def close(self) -> None:
        async with self._lock:
            if self._file is not None and self._file is not sys.stdout.buffer:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self._sync_close, self._file)
            self._file = None

    @staticmethod
    def _sync_close(f: BinaryIO) -> None:
        f.flush()
        os.fsync(f.fileno())
        f.close()
