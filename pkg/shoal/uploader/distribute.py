"""Store each chunk on storage nodes and commit its placement through the metadata service.

Replication puts the chunk on 3 nodes; erasure coding puts its 5 framed fragments
(shoal.erasure) on 5 nodes. Nodes are picked by health and free space, spreading one upload's
pieces evenly. A piece that cannot be stored after retries marks its node bad for the rest of
the upload and goes to the next best node; a chunk is committed (ChunkPaxos) only once every
piece is stored. Everything stored is remembered, so a failed upload can be cleaned up.

Erasure coding needs 5 distinct healthy nodes (two fragments of one stripe never share a node):
with fewer at the start, or once a node fails mid-upload and no spare is left, chunks are
stored 3x replicated instead (the metadata service migrates them to the full code when nodes
return), so an upload replication could serve never fails for want of a fifth node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from shoal.uploader.metaclient import MetadataClient, MetadataError

log = logging.getLogger("shoal.uploader")

REPLICATION = "replication"
ERASURE = "erasure_coding"
REPLICAS = 3
FRAGMENTS = 5


class DistributionError(RuntimeError):
    """A chunk could not be stored or committed; the message says which and why."""


class NoSpareNode(DistributionError):
    """A piece's node failed and every other usable node already holds a piece of the chunk."""


def chunk_id_for(video_id: str, seq: int) -> str:
    return f"{video_id}-chunk-{seq:03d}"


def fragment_id_for(chunk_id: str, index: int) -> str:
    return f"{chunk_id}-frag-{index}"


def sha256_tag(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class NodePicker:
    """Chooses distinct nodes per chunk: fewest pieces from this upload first, then free space."""

    nodes: list[dict]
    assigned: dict[str, int] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        seen: dict[str, dict] = {}
        for n in self.nodes:
            url = str(n.get("node_url", "")).rstrip("/")
            if url and url not in seen and n.get("status", "healthy") == "healthy":
                seen[url] = n
        self.by_url = seen

    @property
    def usable(self) -> list[str]:
        return [u for u in self.by_url if u not in self.bad]

    def _rank(self, url: str) -> tuple:
        n = self.by_url[url]
        return (
            self.assigned.get(url, 0),
            float(n.get("disk_usage_percent") or 0.0),
            n.get("chunk_count") or 0,
            url,
        )

    def pick(self, count: int, exclude: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        candidates = sorted((u for u in self.usable if u not in exclude), key=self._rank)
        chosen = candidates[:count]
        for url in chosen:
            self.assigned[url] = self.assigned.get(url, 0) + 1
        return chosen


@dataclass
class Stored:
    """What one chunk left on the nodes: (node_url, stored id) pairs, and whether it is committed."""

    chunk_id: str
    pieces: list[tuple[str, str]] = field(default_factory=list)  # every PUT attempted
    placed: list[tuple[str, str]] = field(default_factory=list)  # the pieces that form the placement
    committed: bool = False

    def orphans(self) -> list[tuple[str, str]]:
        """Pieces tried on a node that then failed: maybe stored, not part of the placement."""
        return [p for p in self.pieces if p not in self.placed]


class Distributor:
    def __init__(
        self,
        metadata: MetadataClient,
        http: httpx.AsyncClient,
        nodes: list[dict],
        mode: str,
        *,
        concurrency: int = 4,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        if mode not in (REPLICATION, ERASURE):
            raise DistributionError(f"unknown redundancy mode {mode!r}")
        self.metadata = metadata
        self.http = http
        self.mode = mode
        self.requested = mode
        self.fallback: str | None = None  # why erasure coding fell back to replication
        self.picker = NodePicker(nodes)
        self.retries = retries
        self.backoff = backoff
        self.limit = asyncio.Semaphore(concurrency)
        self.stored: dict[str, Stored] = {}
        self.bytes_sent = 0
        self._degrade_if_needed()
        if len(self.picker.usable) < self.width:
            raise DistributionError(
                f"{mode} needs {self.width} healthy storage nodes; the metadata service lists "
                f"{len(self.picker.usable)}"
            )

    @property
    def width(self) -> int:
        return REPLICAS if self.mode == REPLICATION else FRAGMENTS

    def _degrade_if_needed(self) -> None:
        """Erasure coding with fewer than 5 usable nodes: replicate from now on."""
        usable = len(self.picker.usable)
        if self.mode == ERASURE and usable < FRAGMENTS and usable >= REPLICAS:
            self.mode = REPLICATION
            self.fallback = (
                f"erasure coding needs {FRAGMENTS} healthy storage nodes and {usable} are usable: "
                "chunks stored 3x replicated (migrated to erasure coding when nodes return)"
            )
            log.warning(self.fallback)

    async def put(self, node: str, stored_id: str, data: bytes, checksum: str) -> None:
        """PUT one piece, retrying network errors and 5xx; DistributionError when it cannot be stored."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = await self.http.put(
                    f"{node}/chunk/{stored_id}",
                    content=data,
                    headers={"content-type": "application/octet-stream", "x-chunk-checksum": checksum},
                )
            except httpx.HTTPError as exc:
                last = f"{node}: {exc!r}"
                continue
            if r.status_code in (200, 201):
                self.bytes_sent += len(data)
                return
            last = f"{node} answered {r.status_code} to PUT {stored_id}: {r.text[:200]}"
            if r.status_code < 500 and r.status_code != 429:
                break
        raise DistributionError(last)

    async def _place(
        self, stored: Stored, node: str, stored_id: str, data: bytes, checksum: str, taken: set[str]
    ) -> str:
        """Store one piece on `node`, or on the next best node if that one fails; returns where."""
        errors = []
        while True:
            stored.pieces.append((node, stored_id))
            try:
                await self.put(node, stored_id, data, checksum)
            except DistributionError as exc:
                errors.append(str(exc))
                self.picker.bad.add(node)
                log.warning("storage node %s failed; marked bad for this upload: %s", node, exc)
                spare = self.picker.pick(1, exclude=taken)
                if not spare:
                    raise NoSpareNode(
                        f"cannot store {stored_id}: no healthy node left ({'; '.join(errors)})"
                    ) from None
                taken.add(spare[0])
                node = spare[0]
                continue
            stored.placed.append((node, stored_id))
            return node

    async def store_chunk(
        self,
        video_id: str,
        seq: int,
        data: bytes,
        times: tuple[float, float] | None = None,
        checksum: str | None = None,
    ) -> dict:
        """Store and commit chunk `seq`; returns the commit answer."""
        chunk_id = chunk_id_for(video_id, seq)
        stored = self.stored.setdefault(chunk_id, Stored(chunk_id))
        checksum = checksum or sha256_tag(data)
        async with self.limit:
            while True:
                self._degrade_if_needed()
                mode = self.mode
                try:
                    body = await self._store_pieces(stored, chunk_id, seq, data, checksum, mode)
                    break
                except NoSpareNode:
                    self._degrade_if_needed()
                    if mode != ERASURE or self.mode != REPLICATION:
                        raise
                    stored.placed = []  # the fragments become orphans, deleted after the upload
            body.update(video_id=video_id, sequence_num=seq)
            if times is not None:
                body["start_sec"], body["duration_sec"] = times
        # the commit runs outside the PUT slot: the next chunk's bytes go out meanwhile
        try:
            answer = await self.metadata.commit(chunk_id, body)
        except MetadataError as exc:
            raise DistributionError(f"commit of chunk {seq} failed: {exc}") from None
        if sorted(answer.get("committed_nodes", [])) != sorted(body["node_urls"]):
            raise DistributionError(
                f"chunk {seq} was committed elsewhere ({answer.get('committed_nodes')}): "
                f"{answer.get('message')}"
            )
        stored.committed = True
        return answer

    async def _store_pieces(
        self, stored: Stored, chunk_id: str, seq: int, data: bytes, checksum: str, mode: str
    ) -> dict:
        """Store the chunk's pieces for `mode` on distinct nodes; the commit body's placement part."""
        width = REPLICAS if mode == REPLICATION else FRAGMENTS
        nodes = self.picker.pick(width)
        if len(nodes) < width:
            raise DistributionError(
                f"chunk {seq}: {mode} needs {width} nodes, only {len(self.picker.usable)} usable"
            )
        taken = set(nodes)
        body: dict = {
            "checksum": checksum,
            "size_bytes": len(data),
            "redundancy_mode": mode,
            "fragments_metadata": None,
        }
        if mode == REPLICATION:
            placed = await _all(self._place(stored, n, chunk_id, data, checksum, taken) for n in nodes)
            body["node_urls"] = list(placed)
        else:
            from shoal.erasure import encode

            frags, sums = await asyncio.to_thread(lambda: _encode(encode, data))
            ids = [fragment_id_for(chunk_id, i) for i in range(len(frags))]
            placed = await _all(
                self._place(stored, n, ids[i], frags[i], sums[i], taken) for i, n in enumerate(nodes)
            )
            body["node_urls"] = list(placed)
            body["fragments_metadata"] = [
                {
                    "fragment_index": i,
                    "node_url": placed[i],
                    "size_bytes": len(frags[i]),
                    "checksum": sums[i],
                    "fragment_id": ids[i],
                }
                for i in range(len(frags))
            ]
        return body

    async def cleanup(self, keep_committed: bool) -> int:
        """Delete what this upload stored; with `keep_committed`, all but committed placements.

        After a success this removes only the orphans a failed node may hold; returns how many."""
        targets = [
            piece
            for s in self.stored.values()
            for piece in (s.orphans() if keep_committed and s.committed else s.pieces)
        ]
        return await delete_pieces(self.http, targets)


async def _all(jobs) -> list:
    """Every job's result, after every job ended (none left running to race a retry)."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _encode(encode: Callable[[bytes], list[bytes]], data: bytes) -> tuple[list[bytes], list[str]]:
    frags = encode(data)
    return frags, [sha256_tag(f) for f in frags]


async def delete_pieces(http: httpx.AsyncClient, targets: list[tuple[str, str]], concurrency: int = 8) -> int:
    """DELETE each (node, stored id); 404 counts as gone. Returns how many were deleted."""
    limit = asyncio.Semaphore(concurrency)
    deleted = 0

    async def one(node: str, sid: str) -> None:
        nonlocal deleted
        async with limit:
            try:
                r = await http.delete(f"{node}/chunk/{sid}")
            except httpx.HTTPError as exc:
                log.warning("cleanup: cannot reach %s to delete %s: %r", node, sid, exc)
                return
            if r.status_code in (200, 204):
                deleted += 1

    await asyncio.gather(*(one(n, s) for n, s in targets))
    return deleted


ProgressFn = Callable[[int, int], Awaitable[None]]
