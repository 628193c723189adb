"""The four ChunkPaxos messages (and the acceptor's state report) as they travel in JSON."""

from __future__ import annotations

import msgspec

from .ballot import Ballot
from .placement import Placement


class Prepare(msgspec.Struct, forbid_unknown_fields=True):
    """Phase 1a: promise to ignore ballots below `ballot` for instance (chunk, epoch).

    `value`/`member` (optional) ask the acceptor, in the same message, whether it holds its
    share of the value the proposer means to propose: a placement whose data a majority of
    its members do not hold is then never sent to phase 2, where a minority accepting it
    could block the instance.
    """

    epoch: int
    ballot: Ballot
    value: Placement | None = None
    member: str | None = None


class Promise(msgspec.Struct):
    """Phase 1b. ok=False is a nack: `promised` is the higher ballot already promised."""

    ok: bool
    promised: Ballot | None = None
    accepted: Ballot | None = None
    value: Placement | None = None
    holds: str | None = None  # "ok", or why this node does not hold its share of Prepare.value


class Accept(msgspec.Struct, forbid_unknown_fields=True):
    """Phase 2a: accept `value` at `ballot`. `member` is the node URL this acceptor has in the value.

    Round 0 is the instance's first proposer's (the one that created its pin): it is sent with
    no phase 1 (the steady state: 2n messages), see docs/metadata.md "Multi-Paxos steady state".
    """

    epoch: int
    ballot: Ballot
    value: Placement
    member: str


class Accepted(msgspec.Struct):
    """Phase 2b. ok=False with reason "ballot" (a higher promise), "not_member", "invalid: ...",
    "missing: <id>" or "checksum: <id>" (this node does not hold what the value says it holds)."""

    ok: bool
    promised: Ballot | None = None
    reason: str | None = None


class AcceptItem(msgspec.Struct, forbid_unknown_fields=True):
    """One instance's Accept inside a batch."""

    chunk_id: str
    epoch: int
    ballot: Ballot
    value: Placement
    member: str


class AcceptBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Phase 2a for many instances in one message (concurrent commits to one acceptor): the
    acceptor persists them in one durable write and answers each one."""

    items: list[AcceptItem]


class AcceptedBatch(msgspec.Struct):
    """Phase 2b for each item of an AcceptBatch, in order."""

    results: list[Accepted]


class InstanceState(msgspec.Struct):
    """What one acceptor durably holds for one instance."""

    epoch: int
    promised: Ballot | None = None
    accepted: Ballot | None = None
    value: Placement | None = None


class AcceptorState(msgspec.Struct):
    chunk_id: str
    instances: list[InstanceState]
