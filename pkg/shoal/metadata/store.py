"""The metadata service's state in shoal.kv: key layout and the transactions that keep it whole.

/video/{id}                    Video
/vorder/{created_ns}/{id}      listing order (creation time)
/views/{id}                    view count (decimal)
/vchunk/{id}/{seq:08d}         ChunkRecord (a manifest is one range scan)
/chunk/{chunk_id}              -> its /vchunk key
/placed/{node url}/{chunk_id}  which chunks have a piece on a node (repair)
/totals, /vtotals/{id}         running sums (stats, overhead, total_chunks)
/node/{node_id}                NodeRecord
/override/{id}, /modestate/{id}  redundancy override and hysteresis state
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import msgspec

from shoal.kv import KvStore, TransactionOp, VersionConflict

from .records import ChunkRecord, ModeState, NodeRecord, Totals, Video

_enc = msgspec.json.Encoder()
_video = msgspec.json.Decoder(Video)
_chunk = msgspec.json.Decoder(ChunkRecord)
_node = msgspec.json.Decoder(NodeRecord)
_totals = msgspec.json.Decoder(Totals)
_mode = msgspec.json.Decoder(ModeState)


class SlotTaken(Exception):
    """Another chunk id is already committed at this (video, sequence number)."""


class VideoIdTaken(Exception):
    """A create named a video id that exists with another title or duration."""


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
        """A new video record. With a caller-chosen `video_id` the create is idempotent: a replay
        with the same title and duration returns the existing record (VideoIdTaken otherwise), so
        a client whose request timed out can send it again without making a second video."""
        now = time.time()
        ns = time.time_ns()
        video = Video(
            video_id=video_id or str(uuid.uuid4()),
            title=title,
            duration_sec=duration_sec,
            status="active",
            created_at=iso(now),
            created_ns=ns,
        )
        ops = [
            TransactionOp.set(f"/video/{video.video_id}", _enc.encode(video)),
            TransactionOp.set(f"/vorder/{ns:020d}/{video.video_id}", b""),
        ]
        if video_id is None:
            await self.kv.transaction(ops)
            return video
        try:
            await self.kv.transaction([TransactionOp.check_version(f"/video/{video_id}", 0), *ops])
        except VersionConflict:
            existing = await self.video(video_id)
            if existing is None or (existing.title, existing.duration_sec) != (title, duration_sec):
                raise VideoIdTaken(video_id) from None
            return existing
        return video

    async def video(self, video_id: str) -> Video | None:
        entry = await self.kv.get(f"/video/{video_id}")
        return None if entry is None else _video.decode(entry.value)

    async def videos(self, limit: int, offset: int) -> list[Video]:
        keys = await self.kv.list("/vorder/", limit=offset + limit)
        out = []
        for key in keys[offset:]:
            video = await self.video(key.rsplit("/", 1)[1])
            if video is not None:
                out.append(video)
        return out

    async def all_video_ids(self) -> list[str]:
        return [k.rsplit("/", 1)[1] for k in await self.kv.list("/vorder/")]

    async def count_videos(self) -> int:
        return len(await self.kv.list("/vorder/"))

    async def total_chunks(self, video_id: str) -> int:
        entry = await self.kv.get(f"/vtotals/{video_id}")
        return 0 if entry is None else int(entry.value)

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
        record older than the one stored (a slower writer of an earlier epoch).
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
        totals_entry = await self.kv.get("/totals")
        totals = Totals() if totals_entry is None else _totals.decode(totals_entry.value)
        ops = [
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
