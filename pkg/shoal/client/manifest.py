"""A video's manifest as the client uses it: chunks in order, where each one lives, how long it plays.

The metadata service's `GET /manifest/{id}` gives each chunk's replicas (or, erasure coded, its
5 fragments) and SHA-256, and the `start_sec`/`duration_sec` the uploader committed it with,
which are used as they are. Chunks committed without them (null) get their share of the
video's bytes times the video's duration (exact for constant-bitrate content).

A manifest that cannot be played whole is refused (ManifestError, the reason says what): a
status other than `active`, a sequence number missing from 0..n-1 (n = `total_chunks`), or
chunks whose times cover clearly less than the video's duration. Playing such a video to a
silent early end is what it must never do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPLICATION = "replication"
ERASURE = "erasure_coding"


class ManifestError(ValueError):
    """The manifest is missing something the client needs."""


@dataclass(frozen=True)
class FragmentRef:
    index: int
    node_url: str
    fragment_id: str
    checksum: str
    size_bytes: int


@dataclass
class ChunkRef:
    chunk_id: str
    sequence_num: int
    size_bytes: int
    checksum: str
    mode: str = REPLICATION
    replicas: list[str] = field(default_factory=list)
    fragments: list[FragmentRef] = field(default_factory=list)
    start_sec: float = 0.0
    duration_sec: float = 0.0

    @property
    def end_sec(self) -> float:
        return self.start_sec + self.duration_sec

    @property
    def nodes(self) -> list[str]:
        if self.mode == ERASURE:
            return [f.node_url for f in self.fragments]
        return list(self.replicas)


@dataclass
class Manifest:
    video_id: str
    title: str
    duration_sec: float
    chunks: list[ChunkRef]

    @property
    def nodes(self) -> list[str]:
        """Every node that holds a piece of this video, in first-seen order."""
        seen: dict[str, None] = {}
        for c in self.chunks:
            for n in c.nodes:
                seen.setdefault(n.rstrip("/"), None)
        return list(seen)

    @property
    def total_bytes(self) -> int:
        return sum(c.size_bytes for c in self.chunks)


def _fragment(raw: dict, chunk_id: str) -> FragmentRef:
    index = int(raw.get("fragment_index", raw.get("index", -1)))
    return FragmentRef(
        index=index,
        node_url=str(raw["node_url"]).rstrip("/"),
        fragment_id=str(raw.get("fragment_id") or f"{chunk_id}-frag-{index}"),
        checksum=str(raw["checksum"]),
        size_bytes=int(raw.get("size_bytes", 0)),
    )


def parse_manifest(raw: dict[str, Any]) -> Manifest:
    """Build a Manifest from the metadata service's JSON; chunks sorted by sequence number."""
    try:
        chunks: list[ChunkRef] = []
        for c in raw["chunks"]:
            mode = c.get("redundancy_mode", REPLICATION)
            chunk_id = str(c["chunk_id"])
            ref = ChunkRef(
                chunk_id=chunk_id,
                sequence_num=int(c["sequence_num"]),
                size_bytes=int(c["size_bytes"]),
                checksum=str(c["checksum"]),
                mode=mode,
                replicas=[str(u).rstrip("/") for u in c.get("replicas") or []],
                fragments=sorted(
                    (_fragment(f, chunk_id) for f in c.get("fragments") or []), key=lambda f: f.index
                ),
            )
            if "duration_sec" in c and c.get("duration_sec") is not None:
                ref.start_sec = float(c.get("start_sec") or 0.0)
                ref.duration_sec = float(c["duration_sec"])
            if mode == ERASURE and len(ref.fragments) < 3:
                raise ManifestError(
                    f"chunk {chunk_id}: erasure coded but {len(ref.fragments)} fragments listed"
                )
            if mode != ERASURE and not ref.replicas:
                raise ManifestError(f"chunk {chunk_id}: no replicas listed")
            chunks.append(ref)
        chunks.sort(key=lambda c: c.sequence_num)
        m = Manifest(
            video_id=str(raw["video_id"]),
            title=str(raw.get("title", "")),
            duration_sec=float(raw.get("duration_sec") or 0.0),
            chunks=chunks,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"malformed manifest: {exc!r}") from None
    if not m.chunks:
        raise ManifestError(f"video {m.video_id} has no chunks")
    _check_whole(m, raw)
    _fill_times(m)
    return m


def _check_whole(m: Manifest, raw: dict[str, Any]) -> None:
    """ManifestError unless every chunk 0..n-1 is listed (and the video is active, when the
    manifest says), and the chunks' times cover the video's duration."""
    status = raw.get("status")
    if status is not None and status != "active":
        raise ManifestError(f"video {m.video_id} is {status}, not active: it cannot be played")
    seqs = [c.sequence_num for c in m.chunks]
    total = raw.get("total_chunks")
    n = max(int(total), len(seqs)) if isinstance(total, int) and total >= 0 else len(seqs)
    n = max(n, seqs[-1] + 1)
    missing = sorted(set(range(n)) - set(seqs))
    if missing or len(set(seqs)) != len(seqs):
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ManifestError(
            f"video {m.video_id}: chunk(s) {missing[:10]}{more} missing from the manifest "
            f"({len(set(seqs))} of {n} listed)"
        )
    if m.duration_sec > 0 and all(c.duration_sec > 0 for c in m.chunks):
        covered = sum(c.duration_sec for c in m.chunks)
        if covered < m.duration_sec - max(1.0, 0.05 * m.duration_sec):
            raise ManifestError(
                f"video {m.video_id}: its {len(seqs)} chunks cover {covered:.1f} s of its "
                f"{m.duration_sec:.1f} s (chunks missing from the end)"
            )


def _fill_times(m: Manifest) -> None:
    """Give chunks without a time range their byte share of the duration, back to back."""
    if all(c.duration_sec > 0 for c in m.chunks):
        return
    total = m.total_bytes or 1
    duration = m.duration_sec if m.duration_sec > 0 else 10.0 * len(m.chunks)
    t = 0.0
    for c in m.chunks:
        c.start_sec = t
        c.duration_sec = duration * c.size_bytes / total
        t += c.duration_sec
