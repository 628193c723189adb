"""What the metadata service stores, as msgspec Structs (JSON in shoal.kv)."""

from __future__ import annotations

import msgspec

from shoal.paxos import Ballot, Placement


class Video(msgspec.Struct):
    video_id: str
    title: str
    duration_sec: float
    status: str
    created_at: str
    created_ns: int
    chunk_duration_sec: float = 10.0


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
