"""WAL checkpoints off the commit path, for SqliteStore.

SQLite's default (wal_autocheckpoint=1000) makes the commit that fills 1000 WAL pages copy
them back into the database file and fsync, inside that commit. A store write dirties two
pages (its record and its change-log row), so it reaches that point twice as often as a bare
upsert, and those checkpoints were most of the difference between the two (bench/kv: an
upsert + log row took 75 µs with autocheckpoints, 47 µs without; a bare upsert 35 µs).

So the store's connections raise the threshold to a backstop (BACKSTOP pages, only reached
if checkpoints fall behind) and one thread per store, with its own connection, runs a PASSIVE
checkpoint at most every `interval` seconds after this process committed. PASSIVE never
blocks readers or writers. Durability is unchanged: a commit is in the WAL, and the WAL is the
database, whether or not it has been copied back yet. (Litestream's tips recommend the same
for write-heavy servers: no checkpoints in the commit path.)
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("shoal.kv")

BACKSTOP = 16384  # pages (64 MiB of WAL at 4 KiB): commits checkpoint themselves only past this


class Checkpointer:
    """One daemon thread that checkpoints the WAL of one database file after commits."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], interval: float = 0.2) -> None:
        self.dirty = False  # set by the store after each commit (a plain store: no lock needed)
        self.interval = interval
        self.runs = 0
        self._connect = connect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="shoal-kv-checkpoint", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        db = self._connect()
        try:
            while not self._stop.wait(self.interval):
                if self.dirty:
                    self._checkpoint(db)
            if self.dirty:
                self._checkpoint(db)
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        self.dirty = False
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.runs += 1
        except sqlite3.Error as exc:  # busy or I/O: the next commit marks it dirty again
            self.dirty = True
            log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        """Stop the thread after a last checkpoint of what this process wrote."""
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join()
