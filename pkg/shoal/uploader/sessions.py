"""Upload sessions, kept in shoal.kv so a status outlives a restart of the uploader.

One key per session (/upload/<id>, JSON). Progress is written when the whole-number percentage
or the status changes, so a 100-chunk upload costs about a hundred small commits. At start-up
every session still in flight belongs to the process that died: it is marked failed, never
left "uploading_chunks" forever.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from shoal.kv import KvStore

PREFIX = "/upload/"
TERMINAL = ("completed", "failed")
STATUSES = (
    "uploading",
    "processing",
    "chunking",
    "registering",
    "uploading_chunks",
    "finalizing",
    "completed",
    "failed",
)
# Progress range of each status (spec: "Progress Values").
RANGES = {
    "uploading": (0, 10),
    "processing": (10, 20),
    "chunking": (20, 40),
    "registering": (40, 50),
    "uploading_chunks": (50, 90),
    "finalizing": (90, 100),
    "completed": (100, 100),
}
INTERRUPTED = "interrupted: the uploader service restarted while this upload was in progress"


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Session(msgspec.Struct):
    upload_session_id: str
    title: str
    filename: str
    status: str = "uploading"
    progress: int = 0
    started_at: str = ""
    updated_at: str = ""
    video_id: str | None = None
    total_chunks: int | None = None
    chunks_uploaded: int = 0
    error: str | None = None
    redundancy_mode: str | None = None
    size_bytes: int = 0
    container: str | None = None
    duration_sec: float | None = None
    remux: str | None = None  # copy | audio-aac | transcode
    nodes: list[str] = []  # storage nodes this upload may have written to (for cleanup)
    cleanup: str | None = None
    completed_at: str | None = None
    elapsed_sec: float | None = None
    started_mono: float = 0.0

    def public(self) -> dict[str, Any]:
        """The status body: the spec's fields first, then the extras."""
        out = msgspec.to_builtins(self)
        out.pop("started_mono", None)
        out.pop("nodes", None)
        return out


def progress_in(status: str, fraction: float) -> int:
    """The percentage `fraction` (0..1) of the way through `status`'s range."""
    low, high = RANGES[status]
    return int(low + (high - low) * min(1.0, max(0.0, fraction)))


class SessionStore:
    def __init__(self, kv: KvStore) -> None:
        self.kv = kv
        self.live: dict[str, Session] = {}  # sessions this process is working on

    async def create(self, title: str, filename: str) -> Session:
        now = iso_now()
        s = Session(
            upload_session_id=str(uuid.uuid4()),
            title=title,
            filename=filename,
            started_at=now,
            updated_at=now,
            started_mono=time.monotonic(),
        )
        self.live[s.upload_session_id] = s
        await self.save(s)
        return s

    async def save(self, s: Session) -> None:
        s.updated_at = iso_now()
        await self.kv.set(PREFIX + s.upload_session_id, msgspec.json.encode(s))

    async def get(self, session_id: str) -> Session | None:
        if session_id in self.live:
            return self.live[session_id]
        entry = await self.kv.get(PREFIX + session_id) if _key_ok(session_id) else None
        return None if entry is None else msgspec.json.decode(entry.value, type=Session)

    async def update(
        self, s: Session, status: str | None = None, progress: int | None = None, **fields: Any
    ) -> None:
        """Apply the change; persist it if the status, the percentage or anything else changed."""
        changed = bool(fields)
        for name, value in fields.items():
            setattr(s, name, value)
        if status is not None and status != s.status:
            s.status, changed = status, True
            if progress is None and status in RANGES:
                progress = RANGES[status][0]
        if progress is not None and progress != s.progress:
            s.progress, changed = max(s.progress, progress), True
        if changed:
            await self.save(s)

    async def finish(self, s: Session, error: str | None = None) -> None:
        s.completed_at = iso_now()
        s.elapsed_sec = round(time.monotonic() - s.started_mono, 3)
        if error is None:
            await self.update(s, "completed", 100, error=None)
        else:
            await self.update(s, "failed", error=error)
        self.live.pop(s.upload_session_id, None)

    def active(self) -> int:
        return sum(1 for s in self.live.values() if s.status not in TERMINAL)

    async def recover(self) -> list[Session]:
        """Mark the sessions a previous process left in flight as failed; returns them."""
        stale = []
        for entry in await self.kv.entries(PREFIX):
            s = msgspec.json.decode(entry.value, type=Session)
            if s.status not in TERMINAL and s.upload_session_id not in self.live:
                s.status, s.error, s.completed_at = "failed", INTERRUPTED, iso_now()
                await self.save(s)
                stale.append(s)
        return stale


def _key_ok(session_id: str) -> bool:
    return 0 < len(session_id) <= 64 and all(c.isalnum() or c in "-_" for c in session_id)
