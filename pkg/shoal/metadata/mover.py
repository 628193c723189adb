"""Moving chunk bytes between storage nodes for migration and repair, over their public API.

Every byte read is checked against the checksum the committed placement records, so a
corrupt copy is never propagated; writes send X-Chunk-Checksum so the node verifies too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import httpx

from shoal.paxos import ERASURE_DATA, REPLICATION, Fragment, Placement
from shoal.paxos.placement import fragment_id, pieces

log = logging.getLogger("shoal.metadata")


def sha256_tag(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def erasure():
    """shoal.erasure (Reed-Solomon 3+2 over pyeclib); imported when first needed."""
    import shoal.erasure

    return shoal.erasure


class Mover:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def fetch(self, node_url: str, stored_id: str, checksum: str) -> bytes | None:
        try:
            r = await self.client.get(f"{node_url}/chunk/{stored_id}")
        except httpx.HTTPError:
            return None
        if r.status_code != 200 or sha256_tag(r.content) != checksum:
            return None
        return r.content

    async def put(self, node_url: str, stored_id: str, data: bytes, checksum: str) -> bool:
        try:
            r = await self.client.put(
                f"{node_url}/chunk/{stored_id}", content=data, headers={"x-chunk-checksum": checksum}
            )
        except httpx.HTTPError as exc:
            log.warning("put %s to %s failed: %s", stored_id, node_url, exc)
            return False
        return r.status_code in (200, 201)

    async def delete(self, node_url: str, stored_id: str) -> bool:
        try:
            r = await self.client.delete(f"{node_url}/chunk/{stored_id}")
        except httpx.HTTPError:
            return False
        return r.status_code in (204, 404)

    async def read_chunk(self, chunk_id: str, p: Placement, avoid: set[str] = frozenset()) -> bytes | None:  # type: ignore[assignment]
        """The chunk's bytes from its placement (any replica, or any 3 fragments), verified."""
        if p.mode == REPLICATION:
            for url in p.replicas:
                if url in avoid:
                    continue
                data = await self.fetch(url, chunk_id, p.checksum)
                if data is not None:
                    return data
            return None
        frags = [f for f in p.fragments if f.node_url not in avoid]
        got = await asyncio.gather(*(self.fetch(f.node_url, f.fragment_id, f.checksum) for f in frags))
        have = [g for g in got if g is not None]
        if len(have) < ERASURE_DATA:
            return None
        data = await asyncio.to_thread(erasure().decode, have)
        return data if sha256_tag(data) == p.checksum else None

    async def write_replicas(self, chunk_id: str, data: bytes, checksum: str, urls: list[str]) -> bool:
        done = await asyncio.gather(*(self.put(u, chunk_id, data, checksum) for u in urls))
        return all(done)

    async def write_fragments(
        self, chunk_id: str, data: bytes, checksum: str, urls: list[str], only: set[int] | None = None
    ) -> list[Fragment] | None:
        """Encode and store fragments (all, or the indexes in `only`) on urls[i]; None on failure."""
        frags = await asyncio.to_thread(erasure().encode, data)
        out = []
        jobs = []
        for i, (url, frag) in enumerate(zip(urls, frags, strict=True)):
            f = Fragment(i, url, fragment_id(chunk_id, i), sha256_tag(frag), len(frag))
            out.append(f)
            if only is None or i in only:
                jobs.append(self.put(url, f.fragment_id, frag, f.checksum))
        if not all(await asyncio.gather(*jobs)):
            return None
        return out

    async def remove_unused(self, chunk_id: str, old: Placement, new: Placement) -> int:
        """Delete the old placement's pieces the new one does not use (best effort: a down
        node keeps its orphan copy). Returns how many were deleted."""
        keep = set((u, s) for u, s, _ in pieces(new, chunk_id))
        gone = [(u, s) for u, s, _ in pieces(old, chunk_id) if (u, s) not in keep]
        done = await asyncio.gather(*(self.delete(u, s) for u, s in gone))
        return sum(done)
