"""Request bodies and query strings of the metadata API (validated by shoal.web with msgspec)."""

from __future__ import annotations

from typing import Annotated

import msgspec

NonNeg = Annotated[float, msgspec.Meta(ge=0, le=10**9)]


class VideoCreate(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    duration_sec: NonNeg = 0.0
    # optional, not in the spec: a caller-chosen id makes the create idempotent (a retry after a
    # timeout returns the same record instead of creating a second one)
    video_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{8,64}$")] | None = None


class VideoCreated(msgspec.Struct):
    video_id: str
    upload_url: str


class Page(msgspec.Struct):
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    offset: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 0


class FragmentMeta(msgspec.Struct):
    fragment_index: Annotated[int, msgspec.Meta(ge=0, le=64)]
    node_url: str
    size_bytes: Annotated[int, msgspec.Meta(ge=1, le=2 * 1024 * 1024)]
    checksum: str
    fragment_id: str | None = None


class CommitBody(msgspec.Struct):
    node_urls: Annotated[list[str], msgspec.Meta(max_length=64)]
    checksum: str
    size_bytes: Annotated[int, msgspec.Meta(ge=1, le=2 * 1024 * 1024)]
    video_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    sequence_num: Annotated[int, msgspec.Meta(ge=0, le=10**8)]
    redundancy_mode: str = "replication"
    fragments_metadata: Annotated[list[FragmentMeta], msgspec.Meta(max_length=64)] | None = None
    # where the chunk sits in the video's timeline (the uploader sends them; optional)
    start_sec: NonNeg | None = None
    duration_sec: NonNeg | None = None


class CommitResult(msgspec.Struct):
    success: bool
    committed_nodes: list[str]
    message: str
    proposal_won: bool
    redundancy_mode: str
    epoch: int
    ballot: dict
    messages: int
    rounds: int


class Register(msgspec.Struct):
    node_url: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    node_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    version: Annotated[str, msgspec.Meta(max_length=64)] = "1.0.0"
    # beyond the spec: a node id removed by DELETE /nodes/{id} registers again only with rejoin=true
    rejoin: bool = False


class Heartbeat(msgspec.Struct):
    disk_usage_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    chunk_count: Annotated[int, msgspec.Meta(ge=0)] = 0
    corrupt_chunks: Annotated[list[str], msgspec.Meta(max_length=10_000)] = []


class OverrideQuery(msgspec.Struct):
    # the service answers its own message for another value; the schema names the two modes
    mode: Annotated[str, msgspec.Meta(extra_json_schema={"enum": ["replication", "erasure_coding"]})]


# -- video life cycle (beyond the spec) --------------------------------------------------------
StatusName = Annotated[str, msgspec.Meta(pattern=r"^(active|uploading|failed|any)$")]


class VideoList(msgspec.Struct):
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    offset: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 0
    # active (default), uploading, failed, or any (every status but deleted)
    status: StatusName = "active"


class StatusFilter(msgspec.Struct):
    status: StatusName = "active"


class CompleteBody(msgspec.Struct, forbid_unknown_fields=True):
    # the number of chunks the upload made (0..n-1 must all be committed); default: as committed
    total_chunks: Annotated[int, msgspec.Meta(ge=1, le=10**8)] | None = None


class FailBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = "upload failed"
