"""The metadata service's state in shoal.kv: key layout and the transactions that keep it whole.

/video/{id}                    Video (status uploading | active | failed | deleted: a tombstone)
/vorder/{created_ns}/{id}      listing order (creation time), every status but deleted
/vstatus/{status}/{created_ns}/{id}  the same per status (listing ?status=, the upload reaper)
/collect/{id}                  a failed or deleted video whose chunks are still to be collected
/views/{id}                    view count (decimal)
/vchunk/{id}/{seq:08d}         ChunkRecord (a manifest is one range scan)
/chunk/{chunk_id}              -> its /vchunk key
/placed/{node url}/{chunk_id}  which chunks have a piece on a node (repair)
/totals, /vtotals/{id}         running sums (stats, overhead, commit and message counters, chunks per video)
/node/{node_id}                NodeRecord
/override/{id}, /modestate/{id}  redundancy override and hysteresis state
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

import msgspec

from shoal.kv import KvStore, TransactionOp, VersionConflict

from .records import ACTIVE, DELETED, FAILED, UPLOADING, ChunkRecord, ModeState, NodeRecord, Totals, Video

ANY = "any"  # a listing of every status but deleted

_enc = msgspec.json.Encoder()
_video = msgspec.json.Decoder(Video)
_chunk = msgspec.json.Decoder(ChunkRecord)
_node = msgspec.json.Decoder(NodeRecord)
_totals = msgspec.json.Decoder(Totals)
_mode = msgspec.json.Decoder(ModeState)


class SlotTaken(Exception):
    """Another chunk id is already committed at this (video, sequence number)."""


class VideoIdTaken(Exception):
    """A create named a video id that exists with another title or duration (or was deleted)."""


class UnknownVideo(Exception):
    """No such video (or it was deleted)."""


class StatusConflict(Exception):
    """The video's status does not allow the change (complete a failed upload, fail an active video)."""

    def __init__(self, video: Video, message: str) -> None:
        super().__init__(message)
        self.video = video


class Incomplete(Exception):
    """A completion found chunks missing (or committed beyond the declared count)."""

    def __init__(
        self, video_id: str, n: int, missing: list[int], extra: list[int], missing_count: int | None = None
    ) -> None:
        parts = []
        count = len(missing) if missing_count is None else missing_count
        if n == 0:
            parts.append("no chunk is committed")
        if missing:
            more = f" (and {count - 20} more)" if count > 20 else ""
            parts.append(f"{count} of {n} chunks are not committed: {missing[:20]}{more}")
        if extra:
            parts.append(f"chunks beyond {n - 1} are committed: {extra[:20]}")
        super().__init__(f"video {video_id} cannot be completed: " + "; ".join(parts))
        self.missing = missing
        self.extra = extra


class VideoNotWritable(Exception):
    """A chunk was committed for a video that is not (or no longer) taking chunks."""


def _status_key(video: Video) -> str:
    return f"/vstatus/{video.status}/{video.created_ns:020d}/{video.video_id}"


def _placed_key(node_url: str, chunk_id: str) -> str:
    return f"/placed/{quote(node_url, safe='')}/{chunk_id}"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MetadataStore:
    def __init__(self, kv: KvStore) -> None:
        self.kv = kv
        self._chunk_lock = asyncio.Lock()  # serializes read-modify-write of the running sums

    # -- videos -------------------------------------------------------------------------------
    async def create_video(self, title: str, duration_sec: float, video_id: str | None = None) -> Video:
        """A new video record, `uploading` until its upload completes. With a caller-chosen
        `video_id` the create is idempotent: a replay with the same title and duration returns
        the existing record (VideoIdTaken otherwise, or when the id was deleted), so a client
        whose request timed out can send it again without making a second video."""
        now = time.time()
        ns = time.time_ns()
        video = Video(
            video_id=video_id or str(uuid.uuid4()),
            title=title,
            duration_sec=duration_sec,
            status=UPLOADING,
            created_at=iso(now),
            created_ns=ns,
            status_at=now,
        )
        ops = [
            TransactionOp.set(f"/video/{video.video_id}", _enc.encode(video)),
            TransactionOp.set(f"/vorder/{ns:020d}/{video.video_id}", b""),
            TransactionOp.set(_status_key(video), b""),
        ]
        if video_id is None:
            await self.kv.transaction(ops)
            return video
        try:
            await self.kv.transaction([TransactionOp.check_version(f"/video/{video_id}", 0), *ops])
        except VersionConflict:
            existing = await self.video(video_id, deleted=True)
            if existing is not None and existing.status == DELETED:
                raise VideoIdTaken(f"{video_id} was deleted; a deleted id is never reused") from None
            if existing is None or (existing.title, existing.duration_sec) != (title, duration_sec):
                raise VideoIdTaken(f"{video_id} exists with another title or duration") from None
            return existing
        return video

    async def video(self, video_id: str, deleted: bool = False) -> Video | None:
        """The video (None if unknown; a deleted one only with `deleted`)."""
        entry = await self.kv.get(f"/video/{video_id}")
        if entry is None:
            return None
        video = _video.decode(entry.value)
        return video if deleted or video.status != DELETED else None

    async def videos(self, limit: int, offset: int, status: str = ACTIVE) -> list[Video]:
        """Videos in creation order: one status (an index scan) or every status ("any")."""
        prefix = "/vorder/" if status == ANY else f"/vstatus/{status}/"
        keys = await self.kv.list(prefix, limit=offset + limit)
        out = []
        for key in keys[offset:]:
            video = await self.video(key.rsplit("/", 1)[1])
            if video is not None:
                out.append(video)
        return out

    async def all_video_ids(self) -> list[str]:
        return [k.rsplit("/", 1)[1] for k in await self.kv.list("/vorder/")]

    async def count_videos(self, status: str = ACTIVE) -> int:
        return len(await self.kv.list("/vorder/" if status == ANY else f"/vstatus/{status}/"))

    async def total_chunks(self, video_id: str) -> int:
        entry = await self.kv.get(f"/vtotals/{video_id}")
        return 0 if entry is None else int(entry.value)

    async def build_status_index(self) -> None:
        """Index the videos an older version wrote (no /vstatus keys yet), once."""
        if await self.kv.get("/config/vstatus-index") is not None:
            return
        for video_id in await self.all_video_ids():
            video = await self.video(video_id)
            if video is not None:
                await self.kv.set(_status_key(video), b"")
        await self.kv.set("/config/vstatus-index", b"1")

    async def _change(
        self,
        video_id: str,
        change: Callable[[Video], Video | None],
        checks: list[TransactionOp] | None = None,
    ) -> tuple[Video, bool]:
        """Apply `change` to the stored video with a version check (retried on a conflict, or
        raised when `checks`, the caller's own version checks, are given).

        `change` returns the new record, or None to leave it as it is; returns (record, changed).
        The status index moves in the same transaction."""
        key = f"/video/{video_id}"
        while True:
            entry = await self.kv.get(key)
            if entry is None:
                raise UnknownVideo(video_id)
            old = _video.decode(entry.value)
            if old.status == DELETED:
                raise UnknownVideo(video_id)
            new = change(old)
            if new is None:
                return old, False
            ops = [
                TransactionOp.check_version(key, entry.version),
                TransactionOp.set(key, _enc.encode(new)),
                TransactionOp.delete(_status_key(old)),
            ]
            if new.status == DELETED:
                ops += [
                    TransactionOp.delete(f"/vorder/{old.created_ns:020d}/{video_id}"),
                    TransactionOp.delete(f"/views/{video_id}"),
                    TransactionOp.delete(f"/override/{video_id}"),
                    TransactionOp.delete(f"/modestate/{video_id}"),
                ]
            else:
                ops.append(TransactionOp.set(_status_key(new), b""))
            if new.status in (FAILED, DELETED):
                ops.append(TransactionOp.set(f"/collect/{video_id}", b""))
            try:
                await self.kv.transaction([*ops, *(checks or [])])
            except VersionConflict:
                if checks:
                    raise
                continue
            return new, True

    async def complete_video(self, video_id: str, total_chunks: int | None = None) -> Video:
        """uploading -> active, only when chunks 0..n-1 (n = `total_chunks`, or as many as are
        committed) are all committed and no other: Incomplete names what is missing. Idempotent
        for an active video with the same n; StatusConflict for a failed one."""

        def change(v: Video) -> Video | None:
            if v.status == ACTIVE and total_chunks in (None, v.total_chunks):
                return None
            if v.status != UPLOADING:
                raise StatusConflict(v, f"video {video_id} is {v.status}: it cannot be completed")
            n = len(seqs) if total_chunks is None else total_chunks
            missing_count = n - sum(1 for i in seqs if i < n)
            missing = list(itertools.islice((i for i in range(n) if i not in seqs), 1000))  # named: 1000
            extra = sorted(i for i in seqs if i >= n)
            if n == 0 or missing or extra:
                raise Incomplete(video_id, n, missing, extra, missing_count)
            return msgspec.structs.replace(v, status=ACTIVE, total_chunks=n, status_at=time.time())

        while True:
            # no chunk may land between the check and the switch: the chunk count's version
            count = await self.kv.get(f"/vtotals/{video_id}")
            guard = TransactionOp.check_version(f"/vtotals/{video_id}", count.version if count else 0)
            seqs = {r.sequence_num for r in await self.video_chunks(video_id)}
            try:
                video, _ = await self._change(video_id, change, [guard])
                return video
            except VersionConflict:
                continue

    async def fail_video(self, video_id: str, reason: str) -> Video:
        """uploading -> failed (its chunks are then collected); idempotent for a failed video;
        StatusConflict for an active one (delete it instead)."""

        def change(v: Video) -> Video | None:
            if v.status == FAILED:
                return None
            if v.status != UPLOADING:
                raise StatusConflict(v, f"video {video_id} is {v.status}: only an upload can fail")
            return msgspec.structs.replace(v, status=FAILED, reason=reason[:500], status_at=time.time())

        return (await self._change(video_id, change))[0]

    async def delete_video(self, video_id: str) -> Video:
        """Any status -> deleted: the record goes (a tombstone keeps the id from being reused),
        and the video is queued for collection (its chunks' pieces and records). Returns the
        record as it was."""

        prior: list[Video] = []

        def change(v: Video) -> Video:
            prior.append(v)
            return msgspec.structs.replace(v, status=DELETED, status_at=time.time())

        await self._change(video_id, change)
        return prior[-1]

    async def to_collect(self) -> list[str]:
        """Failed or deleted videos whose chunks are still to be collected."""
        return [k.rsplit("/", 1)[1] for k in await self.kv.list("/collect/")]

    async def collected(self, video_id: str) -> None:
        await self.kv.delete(f"/collect/{video_id}")

    async def uploading(self) -> list[Video]:
        """Videos whose upload has not completed (nor failed)."""
        out = []
        for key in await self.kv.list(f"/vstatus/{UPLOADING}/"):
            video = await self.video(key.rsplit("/", 1)[1])
            if video is not None and video.status == UPLOADING:
                out.append(video)
        return out

    # -- views ----------------------------------------------------------------------------------
    async def add_view(self, video_id: str) -> int:
        key = f"/views/{video_id}"
        while True:
            entry = await self.kv.get(key)
            count = (0 if entry is None else int(entry.value)) + 1
            try:
                await self.kv.compare_and_set(key, 0 if entry is None else entry.version, b"%d" % count)
                return count
            except VersionConflict:
                continue

    async def views(self, video_id: str) -> int:
        entry = await self.kv.get(f"/views/{video_id}")
        return 0 if entry is None else int(entry.value)

    # -- chunks ---------------------------------------------------------------------------------
    async def chunk(self, chunk_id: str) -> ChunkRecord | None:
        ptr = await self.kv.get(f"/chunk/{chunk_id}")
        if ptr is None:
            return None
        entry = await self.kv.get(ptr.value.decode())
        return None if entry is None else _chunk.decode(entry.value)

    async def chunk_at(self, video_id: str, seq: int) -> ChunkRecord | None:
        entry = await self.kv.get(f"/vchunk/{video_id}/{seq:08d}")
        return None if entry is None else _chunk.decode(entry.value)

    async def video_chunks(self, video_id: str) -> list[ChunkRecord]:
        return [_chunk.decode(e.value) for e in await self.kv.entries(f"/vchunk/{video_id}/")]

    async def chunks_on(self, node_url: str) -> list[str]:
        prefix = f"/placed/{quote(node_url, safe='')}/"
        return [k[len(prefix) :] for k in await self.kv.list(prefix)]

    async def save_chunk(self, record: ChunkRecord) -> ChunkRecord | None:
        """Store a newly chosen placement (a new chunk or a later epoch); returns the one it replaced.

        Refuses (SlotTaken) a new chunk at a sequence number another chunk holds; ignores a
        record older than the one stored (a slower writer of an earlier epoch). Refuses
        (VideoNotWritable) a new chunk of a video that is not `uploading`, and any epoch of a
        failed or deleted one (its chunks are being collected), checked in the same transaction.
        """
        vkey = f"/vchunk/{record.video_id}/{record.sequence_num:08d}"
        async with self._chunk_lock:
            while True:  # the lock orders this process's writers; version checks, other processes'
                try:
                    return await self._save_chunk(record, vkey)
                except VersionConflict:
                    continue  # another metadata process on the same store (etcd) wrote first

    async def _save_chunk(self, record: ChunkRecord, vkey: str) -> ChunkRecord | None:
        old_entry = await self.kv.get(vkey)
        old = None if old_entry is None else _chunk.decode(old_entry.value)
        if old is not None and old.chunk_id != record.chunk_id:
            raise SlotTaken(f"sequence {record.sequence_num} already holds chunk {old.chunk_id}")
        if old is not None and old.epoch >= record.epoch:
            return old
        video_entry = await self.kv.get(f"/video/{record.video_id}")
        status = None if video_entry is None else _video.decode(video_entry.value).status
        allowed = (UPLOADING,) if old is None else (UPLOADING, ACTIVE)
        if status not in allowed:
            what = "no such video" if status is None else f"the video is {status}"
            raise VideoNotWritable(f"chunk {record.chunk_id} of video {record.video_id}: {what}")
        assert video_entry is not None
        totals_entry = await self.kv.get("/totals")
        totals = Totals() if totals_entry is None else _totals.decode(totals_entry.value)
        totals.commits += 1
        totals.paxos_messages += record.messages
        ops = [
            TransactionOp.check_version(f"/video/{record.video_id}", video_entry.version),
            TransactionOp.check_version(vkey, 0 if old_entry is None else old_entry.version),
            TransactionOp.check_version("/totals", 0 if totals_entry is None else totals_entry.version),
            TransactionOp.set(vkey, _enc.encode(record)),
        ]
        if old is None:
            ops.append(TransactionOp.set(f"/chunk/{record.chunk_id}", vkey.encode()))
            count_entry = await self.kv.get(f"/vtotals/{record.video_id}")
            count = 0 if count_entry is None else int(count_entry.value)
            version = 0 if count_entry is None else count_entry.version
            ops.append(TransactionOp.check_version(f"/vtotals/{record.video_id}", version))
            ops.append(TransactionOp.set(f"/vtotals/{record.video_id}", b"%d" % (count + 1)))
        else:
            totals.add(old.placement, -1)
            for url in set(old.placement.nodes) - set(record.placement.nodes):
                ops.append(TransactionOp.delete(_placed_key(url, record.chunk_id)))
        totals.add(record.placement, +1)
        for url in record.placement.nodes:
            ops.append(TransactionOp.set(_placed_key(url, record.chunk_id), b""))
        ops.append(TransactionOp.set("/totals", _enc.encode(totals)))
        await self.kv.transaction(ops)
        return old

    async def save_chunks(self, records: list[ChunkRecord]) -> list[ChunkRecord | Exception | None]:
        """save_chunk() for many records at once (concurrent commits): new chunks of uploading
        videos share transactions (one fsync for as many as the store's op limit allows, and
        one update of the running sums) instead of one fsync each behind the lock. Each result
        is what save_chunk would return for that record, or the exception it would raise;
        anything else (a later epoch, a slot seen twice in the batch) goes through save_chunk."""
        out: list[ChunkRecord | Exception | None] = [None] * len(records)
        simple: list[int] = []
        seen: set[str] = set()
        others: list[int] = []
        async with self._chunk_lock:
            for i, r in enumerate(records):
                vkey = f"/vchunk/{r.video_id}/{r.sequence_num:08d}"
                if r.epoch != 0 or vkey in seen or r.chunk_id in seen:
                    others.append(i)
                else:
                    seen.update((vkey, r.chunk_id))
                    simple.append(i)
            limit = max(16, getattr(getattr(self.kv, "limits", None), "max_txn_ops", 128))
            while simple:
                group, ops_n, videos = [], 2, set()
                while simple:
                    r = records[simple[0]]
                    cost = 3 + len(r.placement.nodes) + (0 if r.video_id in videos else 3)
                    if group and ops_n + cost > limit:
                        break
                    ops_n += cost
                    videos.add(r.video_id)
                    group.append(simple.pop(0))
                while True:
                    try:
                        await self._save_new_chunks(records, group, out)
                        break
                    except VersionConflict:
                        continue  # another metadata process wrote the sums first: read again
        for i in others:
            try:
                out[i] = await self.save_chunk(records[i])
            except Exception as exc:
                out[i] = exc
        return out

    async def _save_new_chunks(
        self, records: list[ChunkRecord], group: list[int], out: list[ChunkRecord | Exception | None]
    ) -> None:
        totals_entry = await self.kv.get("/totals")
        totals = Totals() if totals_entry is None else _totals.decode(totals_entry.value)
        ops = [TransactionOp.check_version("/totals", 0 if totals_entry is None else totals_entry.version)]
        videos: dict[str, tuple[int, int]] = {}  # video id -> (chunk count, /vtotals version)
        saved: list[int] = []
        for i in group:
            r = records[i]
            vkey = f"/vchunk/{r.video_id}/{r.sequence_num:08d}"
            old_entry = await self.kv.get(vkey)
            if old_entry is not None:
                old = _chunk.decode(old_entry.value)
                out[i] = SlotTaken(f"sequence {r.sequence_num} already holds chunk {old.chunk_id}")
                if old.chunk_id == r.chunk_id:
                    out[i] = old  # stored already (epoch 0 of the same chunk): as save_chunk
                continue
            if r.video_id not in videos:
                video_entry = await self.kv.get(f"/video/{r.video_id}")
                status = None if video_entry is None else _video.decode(video_entry.value).status
                if status != UPLOADING:
                    what = "no such video" if status is None else f"the video is {status}"
                    out[i] = VideoNotWritable(f"chunk {r.chunk_id} of video {r.video_id}: {what}")
                    continue
                assert video_entry is not None
                count_entry = await self.kv.get(f"/vtotals/{r.video_id}")
                count = 0 if count_entry is None else int(count_entry.value)
                videos[r.video_id] = (count, 0 if count_entry is None else count_entry.version)
                ops.append(TransactionOp.check_version(f"/video/{r.video_id}", video_entry.version))
            count, version = videos[r.video_id]
            videos[r.video_id] = (count + 1, version)
            totals.commits += 1
            totals.paxos_messages += r.messages
            totals.add(r.placement, +1)
            ops += [
                TransactionOp.check_version(vkey, 0),
                TransactionOp.set(vkey, _enc.encode(r)),
                TransactionOp.set(f"/chunk/{r.chunk_id}", vkey.encode()),
            ]
            ops += [TransactionOp.set(_placed_key(u, r.chunk_id), b"") for u in r.placement.nodes]
            saved.append(i)
        if not saved:
            return
        for video_id, (count, version) in videos.items():
            ops.append(TransactionOp.check_version(f"/vtotals/{video_id}", version))
            ops.append(TransactionOp.set(f"/vtotals/{video_id}", b"%d" % count))
        ops.append(TransactionOp.set("/totals", _enc.encode(totals)))
        await self.kv.transaction(ops)
        for i in saved:
            out[i] = None

    async def remove_chunk(self, record: ChunkRecord) -> bool:
        """Drop a collected chunk's record (its pieces are deleted): the placement's keys, the
        running sums and the video's chunk count in one transaction. False if it moved on."""
        vkey = f"/vchunk/{record.video_id}/{record.sequence_num:08d}"
        async with self._chunk_lock:
            while True:
                entry = await self.kv.get(vkey)
                if entry is None or _chunk.decode(entry.value).epoch != record.epoch:
                    return False
                totals_entry = await self.kv.get("/totals")
                totals = Totals() if totals_entry is None else _totals.decode(totals_entry.value)
                totals.add(record.placement, -1)
                count_entry = await self.kv.get(f"/vtotals/{record.video_id}")
                count = 0 if count_entry is None else int(count_entry.value)
                ops = [
                    TransactionOp.check_version(vkey, entry.version),
                    TransactionOp.check_version(
                        "/totals", 0 if totals_entry is None else totals_entry.version
                    ),
                    TransactionOp.check_version(
                        f"/vtotals/{record.video_id}", 0 if count_entry is None else count_entry.version
                    ),
                    TransactionOp.delete(vkey),
                    TransactionOp.delete(f"/chunk/{record.chunk_id}"),
                    TransactionOp.set("/totals", _enc.encode(totals)),
                    TransactionOp.set(f"/vtotals/{record.video_id}", b"%d" % max(0, count - 1)),
                ]
                ops += [TransactionOp.delete(_placed_key(u, record.chunk_id)) for u in record.placement.nodes]
                try:
                    await self.kv.transaction(ops)
                except VersionConflict:
                    continue
                return True

    async def count_messages(self, messages: int) -> None:
        """Add the messages of a proposal that chose nothing to the persisted counter."""
        if messages <= 0:
            return
        async with self._chunk_lock:
            while True:
                entry = await self.kv.get("/totals")
                totals = Totals() if entry is None else _totals.decode(entry.value)
                totals.paxos_messages += messages
                try:
                    await self.kv.compare_and_set(
                        "/totals", 0 if entry is None else entry.version, _enc.encode(totals)
                    )
                    return
                except VersionConflict:
                    continue

    async def totals(self) -> Totals:
        entry = await self.kv.get("/totals")
        return Totals() if entry is None else _totals.decode(entry.value)

    # -- nodes ----------------------------------------------------------------------------------
    async def save_node(self, node: NodeRecord) -> int:
        """Store a node record; its new kv version (the registry's cache orders updates by it)."""
        return await self.kv.set(f"/node/{node.node_id}", _enc.encode(node))

    async def nodes(self) -> list[NodeRecord]:
        return [_node.decode(e.value) for e in await self.kv.entries("/node/")]

    async def node_versions(self) -> list[tuple[NodeRecord, int]]:
        return [(_node.decode(e.value), e.version) for e in await self.kv.entries("/node/")]

    @staticmethod
    def decode_node(value: bytes) -> NodeRecord:
        return _node.decode(value)

    # -- redundancy -----------------------------------------------------------------------------
    async def override(self, video_id: str) -> str | None:
        entry = await self.kv.get(f"/override/{video_id}")
        return None if entry is None else entry.value.decode()

    async def set_override(self, video_id: str, mode: str | None) -> None:
        if mode is None:
            await self.kv.delete(f"/override/{video_id}")
        else:
            await self.kv.set(f"/override/{video_id}", mode.encode())

    async def mode_state(self, video_id: str) -> ModeState | None:
        entry = await self.kv.get(f"/modestate/{video_id}")
        return None if entry is None else _mode.decode(entry.value)

    async def set_mode_state(self, video_id: str, state: ModeState) -> None:
        await self.kv.set(f"/modestate/{video_id}", _enc.encode(state))

    async def get_text(self, key: str) -> str | None:
        entry = await self.kv.get(key)
        return None if entry is None else entry.value.decode()

    async def set_text(self, key: str, value: str) -> None:
        await self.kv.set(key, value.encode())

    async def proposer_identity(self, base: str | None) -> tuple[str, int]:
        """(proposer id base, a new incarnation number), unique to this start even when several
        metadata processes share the store (etcd): the number is taken with compare-and-set."""
        if base is None:
            await self.kv.create_if_not_exists("/config/proposer", f"meta-{uuid.uuid4().hex[:8]}".encode())
            base = await self.get_text("/config/proposer")
            assert base is not None
        while True:
            entry = await self.kv.get("/config/incarnation")
            incarnation = (0 if entry is None else int(entry.value)) + 1
            try:
                await self.kv.compare_and_set(
                    "/config/incarnation", 0 if entry is None else entry.version, b"%d" % incarnation
                )
                return base, incarnation
            except VersionConflict:
                continue
