"""The value ChunkPaxos decides: where a chunk's bytes live, and the rules a placement obeys.

Replication: exactly 3 distinct nodes each holding the chunk under its own id.
Erasure coding (Reed-Solomon 3+2): exactly 5 fragments, indexes 0..4, on 5 distinct nodes,
fragment i stored as "<chunk_id>-frag-<i>". Both proposer and acceptor check these rules, so a
placement naming fewer nodes can never be chosen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import msgspec

REPLICATION = "replication"
ERASURE = "erasure_coding"
MODES = (REPLICATION, ERASURE)
REPLICATION_FACTOR = 3
ERASURE_DATA = 3
ERASURE_PARITY = 2
ERASURE_TOTAL = ERASURE_DATA + ERASURE_PARITY

CHUNK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")
NODE_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


class PlacementError(ValueError):
    """A placement that breaks the rules above."""


class Fragment(msgspec.Struct, frozen=True):
    index: int
    node_url: str
    fragment_id: str
    checksum: str
    size_bytes: int


class Placement(msgspec.Struct, frozen=True):
    """A chunk's placement. `checksum`/`size_bytes` describe the whole chunk."""

    mode: str
    checksum: str
    size_bytes: int
    replicas: list[str] = []
    fragments: list[Fragment] = []

    @property
    def nodes(self) -> list[str]:
        """The member nodes, in placement order (fragment index order for erasure coding)."""
        if self.mode == REPLICATION:
            return list(self.replicas)
        return [f.node_url for f in sorted(self.fragments, key=lambda f: f.index)]

    @property
    def quorum(self) -> int:
        """Accept quorum: a majority of the placement's members."""
        return len(self.nodes) // 2 + 1

    def assigned(self, chunk_id: str, node_url: str) -> list[tuple[str, str]]:
        """(stored id, checksum) of what `node_url` must hold under this placement."""
        return [(sid, cks) for url, sid, cks in pieces(self, chunk_id) if url == node_url]

    def physical_bytes(self) -> int:
        if self.mode == REPLICATION:
            return self.size_bytes * len(self.replicas)
        return sum(f.size_bytes for f in self.fragments)


def pieces(p: Placement, chunk_id: str) -> Iterator[tuple[str, str, str]]:
    """(node_url, stored id, checksum) for every stored piece of the placement."""
    if p.mode == REPLICATION:
        for url in p.replicas:
            yield url, chunk_id, p.checksum
    else:
        for f in sorted(p.fragments, key=lambda f: f.index):
            yield f.node_url, f.fragment_id, f.checksum


def fragment_id(chunk_id: str, index: int) -> str:
    return f"{chunk_id}-frag-{index}"


def parse_fragment_id(stored_id: str) -> tuple[str, int | None]:
    """'c-frag-3' -> ('c', 3); a plain chunk id -> (id, None)."""
    head, sep, tail = stored_id.rpartition("-frag-")
    if sep and tail.isdigit():
        return head, int(tail)
    return stored_id, None


def validate(p: Placement, chunk_id: str) -> Placement:
    """The placement if it obeys the mode's rules; PlacementError naming the first broken rule."""
    if not CHUNK_ID.match(chunk_id):
        raise PlacementError("chunk id must be 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'")
    if p.mode not in MODES:
        raise PlacementError(f"redundancy mode must be one of {', '.join(MODES)}, not {p.mode!r}")
    if not CHECKSUM.match(p.checksum):
        raise PlacementError("checksum must be 'sha256:' followed by 64 lowercase hex digits")
    if not 0 < p.size_bytes <= 2 * 1024 * 1024:
        raise PlacementError("size_bytes must be between 1 and 2 MiB")
    for url in p.nodes:
        if not NODE_URL.match(url):
            raise PlacementError(f"node URL {url!r} is not an http(s) URL")
    if p.mode == REPLICATION:
        if p.fragments:
            raise PlacementError("a replicated chunk has no fragments")
        if len(p.replicas) != REPLICATION_FACTOR:
            raise PlacementError(
                f"replication needs exactly {REPLICATION_FACTOR} nodes, got {len(p.replicas)}"
            )
    else:
        if p.replicas:
            raise PlacementError("an erasure-coded chunk lists fragments, not replicas")
        if len(p.fragments) != ERASURE_TOTAL:
            raise PlacementError(
                f"erasure coding {ERASURE_DATA}+{ERASURE_PARITY} needs exactly {ERASURE_TOTAL} "
                f"fragments, got {len(p.fragments)}"
            )
        if sorted(f.index for f in p.fragments) != list(range(ERASURE_TOTAL)):
            raise PlacementError(f"fragment indexes must be 0..{ERASURE_TOTAL - 1}, each once")
        for f in p.fragments:
            if f.fragment_id != fragment_id(chunk_id, f.index):
                raise PlacementError(f"fragment {f.index} must be stored as {fragment_id(chunk_id, f.index)}")
            if not CHECKSUM.match(f.checksum):
                raise PlacementError(f"fragment {f.index} checksum must be 'sha256:' + 64 hex digits")
            if not 0 < f.size_bytes <= 2 * 1024 * 1024:
                raise PlacementError(f"fragment {f.index} size_bytes must be between 1 and 2 MiB")
    if len(set(p.nodes)) != len(p.nodes):
        raise PlacementError("a placement names each node once")
    return p
