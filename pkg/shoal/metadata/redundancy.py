"""Adaptive redundancy policy: popular videos are replicated 3x, the rest erasure coded 3+2.

The rule (spec): view_count above `popularity_threshold` (1000) -> replication, otherwise
erasure coding; a manual override wins. Migration uses two kinds of hysteresis so it never
flaps: a band (a replicated video returns to erasure coding only below threshold * (1 - band))
and a dwell time (a new recommendation must hold for `settle` seconds before chunks move).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.paxos import (
    ERASURE,
    ERASURE_DATA,
    ERASURE_PARITY,
    ERASURE_TOTAL,
    REPLICATION,
    REPLICATION_FACTOR,
)

from .records import Totals

CHUNK_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Policy:
    popularity_threshold: int = 1000
    band: float = 0.1
    settle: float = 60.0

    def recommend(self, views: int, override: str | None) -> str:
        if override is not None:
            return override
        return REPLICATION if views > self.popularity_threshold else ERASURE

    def target(self, views: int, override: str | None, current: str | None) -> str:
        """The recommendation with the band applied relative to the mode a video is in now."""
        if override is not None:
            return override
        if current == REPLICATION and views > self.popularity_threshold * (1 - self.band):
            return REPLICATION
        return self.recommend(views, None)

    def config(self) -> dict:
        return {
            "popularity_threshold": self.popularity_threshold,
            "replication_factor": REPLICATION_FACTOR,
            "erasure_data_shards": ERASURE_DATA,
            "erasure_parity_shards": ERASURE_PARITY,
            "erasure_total_shards": ERASURE_TOTAL,
            "hysteresis_band": self.band,
            "settle_seconds": self.settle,
        }


def degraded_mode(preferred: str, healthy_nodes: int) -> tuple[str, str | None]:
    """The mode to store new chunks in now: erasure coding needs 5 distinct healthy nodes (its
    fragments never share a node), so with fewer it is replication (which needs 3), and the
    maintenance pass migrates the chunks to the full code when 5 are healthy again."""
    if preferred == ERASURE and healthy_nodes < ERASURE_TOTAL:
        return REPLICATION, (
            f"erasure coding {ERASURE_DATA}+{ERASURE_PARITY} needs {ERASURE_TOTAL} healthy nodes and "
            f"{healthy_nodes} are healthy: replicated now, migrated to erasure coding when "
            f"{ERASURE_TOTAL} are healthy again"
        )
    return preferred, None


def mode_config(mode: str) -> dict:
    if mode == REPLICATION:
        return {
            "mode": REPLICATION,
            "replication_factor": REPLICATION_FACTOR,
            "total_shards": REPLICATION_FACTOR,
            "min_shards_for_recovery": 1,
        }
    return {
        "mode": ERASURE,
        "data_shards": ERASURE_DATA,
        "parity_shards": ERASURE_PARITY,
        "total_shards": ERASURE_TOTAL,
        "min_shards_for_recovery": ERASURE_DATA,
    }


def efficiency(t: Totals) -> dict:
    """Overhead factors measured from committed placements (real fragment sizes, framing
    included); the theoretical factor for a mode no chunk uses yet."""
    rep = (
        t.physical_replication / t.logical_replication if t.logical_replication else float(REPLICATION_FACTOR)
    )
    ec = t.physical_erasure / t.logical_erasure if t.logical_erasure else ERASURE_TOTAL / ERASURE_DATA
    mb = CHUNK_BYTES / (1 << 20)  # the spec's figures: a 2 MiB chunk is '2 MB'
    return {
        "efficiency": {
            "replication_overhead_factor": round(rep, 3),
            "erasure_coding_overhead_factor": round(ec, 3),
            "storage_savings_percent": round((1 - ec / rep) * 100, 1),
            "measured": {"replication": t.logical_replication > 0, "erasure_coding": t.logical_erasure > 0},
        },
        "mode_comparison": {
            REPLICATION: {
                "storage_per_chunk_mb": round(rep * mb, 2),
                "nodes_required": REPLICATION_FACTOR,
                "failures_tolerated": REPLICATION_FACTOR - 1,
            },
            ERASURE: {
                "storage_per_chunk_mb": round(ec * mb, 2),
                "nodes_required": ERASURE_TOTAL,
                "failures_tolerated": ERASURE_PARITY,
            },
        },
    }


def overhead(t: Totals) -> dict:
    logical = t.logical_replication + t.logical_erasure
    physical = t.physical_replication + t.physical_erasure
    all_replicated = logical * REPLICATION_FACTOR
    return {
        "replication_chunks": t.replication_chunks,
        "erasure_coded_chunks": t.erasure_coded_chunks,
        "total_logical_bytes": logical,
        "total_physical_bytes": physical,
        "storage_savings_percent": round((1 - physical / all_replicated) * 100, 1) if logical else 0.0,
        "replication_overhead_bytes": t.physical_replication,
        "erasure_overhead_bytes": t.physical_erasure,
    }
