"""The application database: one SQLite file in WAL mode (litestream needs WAL).

Copies use SQLite's online backup API, so a checkpoint taken while the application writes is
a consistent snapshot, and a restore into the live file is one write transaction: a crash in
the middle rolls back and leaves the previous database in place.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS shoal_manager (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


def connect(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def ensure(path: Path) -> None:
    """Create the database (WAL mode) and the manager's tables if they are missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{path}: cannot switch to WAL mode (got {mode})")
        conn.executescript(SCHEMA)
        conn.execute(
            "INSERT INTO shoal_manager(key, value, updated_at) VALUES ('created_at', ?, ?) "
            "ON CONFLICT(key) DO NOTHING",
            (str(time.time()), time.time()),
        )
    finally:
        conn.close()


def backup(src: Path, dst: Path) -> None:
    """A consistent copy of `src` at `dst` (online backup, one pass, fsynced)."""
    source = connect(src)
    target = connect(dst)
    try:
        source.backup(target)
        target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        target.close()
        source.close()


def restore_into(snapshot: Path, live: Path) -> None:
    """Replace the contents of the live database with `snapshot`, in one transaction."""
    source = connect(snapshot)
    target = connect(live)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def status(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"path": str(path), "exists": False, "ok": False}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {"path": str(path), "exists": True, "ok": False, "error": str(exc)}
    return {
        "path": str(path),
        "exists": True,
        "ok": True,
        "journal_mode": mode,
        "tables": len(tables),
        "size_bytes": path.stat().st_size,
    }
