"""The dashboard's response shapes (spec: "Smart Client API"), for OpenAPI and for the tests.

The handlers return the Player's dicts; tests convert them into these Structs, and
schemathesis checks live answers against the schemas generated from them. Fields beyond the
spec's (state, strategy, stall time, failovers, ...) are additions, never renames.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec


class BufferStatus(msgspec.Struct):
    state: str
    buffer_level_sec: float
    target_buffer_sec: float
    buffer_health_percent: float
    current_position: int
    position_sec: float
    duration_sec: float


class BufferStats(msgspec.Struct):
    total_chunks_played: int
    rebuffering_events: int
    total_stall_sec: float
    average_buffer_level: float


class SchedulerStats(msgspec.Struct):
    strategy: str
    total_downloads: int
    successful: int
    failed: int
    success_rate: float
    failover_count: int
    hedged_requests: int
    retry_rounds: int
    bytes: int


class NodeNetwork(msgspec.Struct):
    latency_ms: float
    bandwidth_mbps: float
    success_rate: float
    inflight: int
    reachable: bool | None
    last_ping_ms: float | None


class Status(msgspec.Struct):
    video_id: str | None
    playing: bool
    state: str
    strategy: str
    startup_latency: float | None
    playback_duration: float
    buffer: BufferStatus
    buffer_stats: BufferStats
    scheduler_stats: SchedulerStats
    network_stats: dict[str, NodeNetwork]
    node_scores: dict[str, float]
    error: str | None


class SessionStats(msgspec.Struct):
    video_id: str | None
    strategy: str
    startup_latency: float | None
    playback_duration: float
    total_chunks_played: int
    total_chunks: int


class BufferSummary(msgspec.Struct):
    current_level_sec: float
    target_sec: float
    health_percent: float
    rebuffering_events: int
    total_stall_sec: float


class Downloads(msgspec.Struct):
    total: int
    successful: int
    failed: int
    success_rate: float
    failovers: int
    hedged_requests: int


class NodeStats(msgspec.Struct):
    score: float
    downloads: int
    failures: int
    latency_ms: float
    bandwidth_mbps: float
    success_rate: float
    inflight: int
    reachable: bool | None
    last_ping_ms: float | None


class FailoverEvent(msgspec.Struct):
    sequence_num: int
    failed_node: str
    reason: str
    served_by: str
    seconds: float


class Stats(msgspec.Struct):
    session: SessionStats
    buffer: BufferSummary
    downloads: Downloads
    nodes: dict[str, NodeStats]
    failovers: list[FailoverEvent]


class LevelPoint(msgspec.Struct):
    timestamp: float
    level: float


class RatePoint(msgspec.Struct):
    timestamp: float
    mbps: float


class ScorePoint(msgspec.Struct):
    timestamp: float
    score: float


class Metrics(msgspec.Struct):
    buffer_history: list[LevelPoint]
    throughput_history: list[RatePoint]
    node_score_history: dict[str, list[ScorePoint]]


class Performance(msgspec.Struct):
    startup_latency_sec: float | None
    average_throughput_mbps: float
    rebuffering_events: int
    total_stall_sec: float
    average_buffer_level_sec: float
    playback_duration_sec: float
    chunks_played: int
    download_success_rate: float
    failover_count: int
    strategy: str


class Stream(msgspec.Struct):
    """What the page's MediaSource needs: the codec type and which segments exist."""

    video_id: str | None
    mime: str | None
    total_chunks: int
    available: int  # segments 0..available-1 can be fetched (in order, no gap)
    first_kept: int  # older segments were dropped from memory
    duration_sec: float
    finished: bool


def _declared(**schema: Any) -> msgspec.Meta:
    """What the dashboard's play route checks itself (its own messages), stated in the schema."""
    return msgspec.Meta(extra_json_schema=schema)


class PlayRequest(msgspec.Struct, forbid_unknown_fields=True):
    video_id: Annotated[str, _declared(pattern=r"^(?!\.{1,2}$)[A-Za-z0-9_.:-]{1,128}$")]
    strategy: Annotated[str, _declared(enum=["smart", "round-robin"])] = "smart"
    speed: Annotated[float, _declared(minimum=0.1, maximum=100)] = 1.0
