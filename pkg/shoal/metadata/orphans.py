"""Collect copies of chunks that were never committed (an upload whose client gave up).

Such a copy has no committed record, so nothing will ever name it. It may also be an upload
still on its way to its commit, so it is deleted only when all of these hold:

- the node says it was stored at least `grace` seconds ago (`stored_at` of GET /chunks; a
  node that does not report it is never collected from);
- neither the chunk nor the stored id has a committed record;
- no proposal for the chunk runs in this process (nor failed here less than `grace` ago);
- the node's acceptor holds no state for the chunk, or the same state has been seen here for
  `grace` seconds (a proposal newer than that may still be finished by its proposer, and the
  acceptor keeps no times of its own);
- all of the above still hold right before the delete (record, proposals, acceptor state,
  the copy's stored time, and this process's maintenance lease).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import msgspec

from .chunks import ChunkService
from .store import MetadataStore


class OrphanCollector:
    """Judges and deletes the never-committed copies one node lists (see the module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        chunks: ChunkService,
        client: httpx.AsyncClient,
        *,
        grace: float,
        allowed: Callable[[], bool],
    ) -> None:
        self.store = store
        self.chunks = chunks
        self.client = client
        self.grace = grace
        self.allowed = allowed
        self.seen: dict[tuple[str, str], tuple[float, bytes]] = {}  # -> (first seen, acceptor state)
        self.due: dict[tuple[str, str], float] = {}  # copies waiting: when to look at them again
        self.deleted = 0

    def forget(self, node_url: str, listed: set[str]) -> None:
        """Drop what we track on the node for copies it no longer lists (or that got committed)."""
        for table in (self.seen, self.due):
            for key in [k for k in table if k[0] == node_url and k[1] not in listed]:
                del table[key]

    def waiting(self) -> int:
        return len(self.due)

    async def collect(self, node_url: str, chunk_id: str, stored: dict[str, float | None]) -> int:
        """Delete the chunk's copies on the node that are safe to delete now; how many were."""
        now = time.time()
        old = []
        for s, at in stored.items():
            if at is None:
                continue  # the node cannot tell its age
            if now - at < self.grace:
                self.due[(node_url, s)] = at + self.grace
            else:
                old.append(s)
        if not old or self._busy(chunk_id, now) or await self._recorded(chunk_id, old):
            return 0
        state = await self._acceptor(node_url, chunk_id)
        if state is None:
            return 0
        ready = []
        for s in old:
            first, seen_state = self.seen.get((node_url, s), (now, state))
            if seen_state != state:
                first = now  # a proposal touched the chunk since: its clock starts again
            self.seen[(node_url, s)] = (first, state)
            if state == _NO_STATE or now - first >= self.grace:
                ready.append(s)
            else:
                self.due[(node_url, s)] = first + self.grace
        if not ready:
            return 0
        # the re-check, right before deleting
        if not self.allowed() or self._busy(chunk_id, time.time()) or await self._recorded(chunk_id, ready):
            return 0
        if await self._acceptor(node_url, chunk_id) != state:
            return 0
        deleted = 0
        for s in ready:
            if await self._delete_if_unchanged(node_url, s, stored[s]):
                self.seen.pop((node_url, s), None)
                self.due.pop((node_url, s), None)
                deleted += 1
        self.deleted += deleted
        return deleted

    def _busy(self, chunk_id: str, now: float) -> bool:
        phase = self.chunks.phases.get(chunk_id)
        if phase is not None and (phase.phase != "failed" or now - phase.at < self.grace):
            return True
        return self.chunks.lock(chunk_id).locked()

    async def _recorded(self, chunk_id: str, stored_ids: list[str]) -> bool:
        for cid in {chunk_id, *stored_ids}:
            if await self.store.chunk(cid) is not None:
                return True
        return False

    async def _acceptor(self, node_url: str, chunk_id: str) -> bytes | None:
        """The acceptor's state for the chunk as canonical bytes; None if it cannot be read."""
        try:
            r = await self.client.get(f"{node_url}/paxos/{chunk_id}")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        instances = r.json().get("instances", [])
        return msgspec.json.encode(sorted(instances, key=lambda i: i.get("epoch", 0)), order="sorted")

    async def _delete_if_unchanged(self, node_url: str, stored_id: str, stored_at: float | None) -> bool:
        """Delete the copy unless it was stored again since it was listed (a retried upload)."""
        try:
            head = await self.client.head(f"{node_url}/chunk/{stored_id}")
            if head.status_code != 200 or _float(head.headers.get("x-stored-at")) != stored_at:
                return False
            r = await self.client.delete(f"{node_url}/chunk/{stored_id}")
        except httpx.HTTPError:
            return False
        return r.status_code in (204, 404)


_NO_STATE = msgspec.json.encode([])


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
