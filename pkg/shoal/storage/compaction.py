"""Online compaction: rewrite a sealed superblock whose garbage passed a threshold.

Current records (the live chunks and the tombstones still needed) are copied, bytes as
they are on disk, to the active superblock through the writer's ordinary group commit, a
few MiB per batch so PUTs keep flowing between batches. A copy is kept only if the record
is still current when the writer reaches it, so a chunk deleted or re-put meanwhile is
not resurrected. Then the superblock is retired (index entry, unlink). Reads go on
throughout: a reader that looked up the old location retries at the new one.

A tombstone is dropped once no other superblock holds an older live record of its chunk
(checked by a framing scan of the others); until then it is carried forward.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from shoal.storage.files import sb
from shoal.storage.store import E_LEN, ChunkStore

log = logging.getLogger("shoal.storage")

BATCH_BYTES = 8 << 20


@dataclass
class CompactionResult:
    superblock: int
    moved: int
    dropped_tombstones: int
    reclaimed_bytes: int


def candidates(store: ChunkStore, threshold: float) -> list[int]:
    """Sealed superblocks whose garbage share is above `threshold` (0..1), most garbage first."""
    found = []
    for sb_id, (used, end) in store.garbage().items():
        body = end - sb.FILE_HEADER_SIZE
        if body <= 0:
            found.append((1.0, sb_id))
            continue
        share = 1.0 - used / body
        if share >= threshold:
            found.append((share, sb_id))
    return [sb_id for _, sb_id in sorted(found, reverse=True)]


def _older_live(store: ChunkStore, sb_id: int) -> tuple[dict[str, int], bool]:
    """{chunk id: lowest seq of a live record} over the other superblocks, and whether any had damage."""
    lowest: dict[str, int] = {}
    damaged = False
    for f in list(store.files.values()):
        if f.id == sb_id:
            continue
        records, bad, _ = sb.scan(f.fd, sb.FILE_HEADER_SIZE, f.end)
        damaged = damaged or bool(bad)
        for rec in records:
            if rec[1] == sb.FLAG_LIVE:
                cid, seq = rec[7], rec[3]
                if seq < lowest.get(cid, 1 << 64):
                    lowest[cid] = seq
    return lowest, damaged


def compact(store: ChunkStore, sb_id: int) -> CompactionResult:
    """Rewrite superblock `sb_id` (not the active one) and retire it."""
    f = store.files.get(sb_id)
    if f is None or sb_id == store.active.id:
        raise ValueError(f"superblock {sb_id} is not a sealed superblock")
    size_before = f.end
    live = list(store.records(sb.FLAG_LIVE, sb_id))
    tombs = list(store.records(sb.FLAG_TOMBSTONE, sb_id))
    keep_tombs, dropped = [], 0
    if tombs:
        lowest, damaged = _older_live(store, sb_id)
        for k, t in tombs:
            if damaged or lowest.get(k, 1 << 64) < t[2]:
                keep_tombs.append((k, t))
            else:
                dropped += 1
    moved = 0
    futures = []
    pending = 0
    work = [(k, e, False) for k, e in live] + [(k, t, True) for k, t in keep_tombs]
    for k, loc, tomb in work:
        size = sb.record_size(len(k), 0 if tomb else loc[E_LEN])
        raw = os.pread(f.fd, size, loc[1])
        futures.append(store.submit_move(k, raw, loc, tomb))
        pending += size
        if pending >= BATCH_BYTES:
            moved += sum(1 for fut in futures if fut.result())
            futures, pending = [], 0
    moved += sum(1 for fut in futures if fut.result())
    store.submit_retire(sb_id).result()
    log.info("compacted superblock %d: %d records moved, %d tombstones dropped", sb_id, moved, dropped)
    return CompactionResult(sb_id, moved, dropped, size_before)


class Compactor:
    """A background thread that compacts superblocks past the garbage threshold."""

    def __init__(self, store: ChunkStore, threshold: float = 0.5, interval: float = 30.0) -> None:
        self.store = store
        self.threshold = threshold
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.results: list[CompactionResult] = []

    def run_once(self) -> list[CompactionResult]:
        done = []
        for sb_id in candidates(self.store, self.threshold):
            if self._stop.is_set():
                break
            try:
                done.append(compact(self.store, sb_id))
            except Exception:
                log.exception("compaction of superblock %d failed", sb_id)
        self.results.extend(done)
        return done

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shoal-compactor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
