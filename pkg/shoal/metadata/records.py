"""What the metadata service stores, as msgspec Structs (JSON in shoal.kv)."""

from __future__ import annotations

import msgspec

from shoal.paxos import Ballot, Placement

UPLOADING, ACTIVE, FAILED, DELETED = "uploading", "active", "failed", "deleted"
VIDEO_STATUSES = (UPLOADING, ACTIVE, FAILED)  # DELETED is a tombstone, never listed


class Video(msgspec.Struct):
    """A video. Life cycle: uploading -> active (every chunk 0..n-1 committed, then completed)
    or uploading -> failed; any of them -> deleted (a tombstone: the id is never reused, since
    the storage nodes' acceptors still remember its chunks' instances)."""

    video_id: str
    title: str
    duration_sec: float
    status: str
    created_at: str
    created_ns: int
    chunk_duration_sec: float = 10.0  # written by older versions; unused (the manifest measures)
    total_chunks: int | None = None  # fixed when the upload completes
    status_at: float = 0.0  # unix time of the last status change (creation included)
    reason: str | None = None  # why it failed


class ChunkRecord(msgspec.Struct):
    """A committed chunk: the placement chosen for its latest epoch, and how it was chosen."""

    chunk_id: str
    video_id: str
    sequence_num: int
    epoch: int
    placement: Placement
    ballot: Ballot
    committed_at: float
    messages: int = 0
    rounds: int = 1
    start_sec: float | None = None  # the chunk's time range, as the first commit gave it
    duration_sec: float | None = None
    # the membership configuration epoch the placement's nodes were checked (and pinned) under
    config_epoch: int | None = None


class NodeRecord(msgspec.Struct):
    node_id: str
    node_url: str
    version: str
    registered_at: float
    last_heartbeat: float
    disk_usage_percent: float = 0.0
    chunk_count: int = 0
    corrupt_chunks: list[str] = []
    heartbeats: int = 0


class Totals(msgspec.Struct):
    """Running sums over every committed chunk, updated in the same transaction as the chunk."""

    replication_chunks: int = 0
    erasure_coded_chunks: int = 0
    logical_replication: int = 0
    logical_erasure: int = 0
    physical_replication: int = 0
    physical_erasure: int = 0
    members: int = 0
    # counters /stats reports, persisted so a restart does not reset them
    commits: int = 0  # placements chosen (first commits, migrations and repairs)
    paxos_messages: int = 0  # messages of every proposal, chosen or not

    def add(self, p: Placement, sign: int) -> None:
        physical = p.physical_bytes()
        self.members += sign * len(p.nodes)
        if p.mode == "replication":
            self.replication_chunks += sign
            self.logical_replication += sign * p.size_bytes
            self.physical_replication += sign * physical
        else:
            self.erasure_coded_chunks += sign
            self.logical_erasure += sign * p.size_bytes
            self.physical_erasure += sign * physical


class ModeState(msgspec.Struct):
    """The redundancy mode a video is moving to, and since when it has been recommended."""

    mode: str
    since: float
