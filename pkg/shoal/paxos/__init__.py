"""ChunkPaxos: one single-decree Paxos instance per (chunk, epoch) deciding where the chunk lives.

Acceptors run on the storage nodes (acceptor_api.py) with durable per-instance state; the
metadata service is the proposer. See docs/metadata.md for the design and its quorum rule.
"""

from .ballot import Ballot
from .placement import (
    ERASURE,
    ERASURE_DATA,
    ERASURE_PARITY,
    ERASURE_TOTAL,
    REPLICATION,
    REPLICATION_FACTOR,
    Fragment,
    Placement,
    PlacementError,
)

__all__ = [
    "ERASURE",
    "ERASURE_DATA",
    "ERASURE_PARITY",
    "ERASURE_TOTAL",
    "REPLICATION",
    "REPLICATION_FACTOR",
    "Ballot",
    "Fragment",
    "Placement",
    "PlacementError",
]
