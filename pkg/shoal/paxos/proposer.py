"""The proposer: runs one ChunkPaxos instance to a decision and counts its messages.

Quorums (Flexible Paxos, Howard et al. 2016: only phase-1 and phase-2 quorums must intersect):
- phase 2 (accept) goes to the members of the value's placement; the value is chosen when a
  majority of them accept, each having checked that it holds its piece (3 replicas: 2; 5
  fragments: 3);
- phase 1 (prepare) goes to every node of the cluster U and needs |U| - 1 promises, so it
  meets every possible accept quorum (the smallest is 2 of a 3-replica placement) of every
  placement any proposer could name, even one over different nodes.
When the placement spans the whole cluster (3 nodes and replication, 5 nodes and 3+2), both
quorums are plain majorities and the message count is classic Paxos's 4n.

`fixed=True` (what the metadata service uses): the instance's acceptor set was pinned before
any proposal (shoal.metadata.membership), every value of the instance names exactly those
nodes, so both phases need only a majority of them: classic Paxos over the placement. A
proposer whose own placement differs from the pin passes `value=None` and can only adopt
(and finish) what the instance accepted already.

`fast=True` (the steady state, 2n messages): the caller is the instance's first proposer, the
one whose create-if-absent made its pin, so it alone owns round 0 of the instance; it sends
its value straight to phase 2 at ballot (0, proposer id), once. Safe with no phase 1 because no
ballot lies below round 0, and every other proposer uses rounds >= 1 with a full phase 1, which
finds the round-0 value if it may have been chosen (Mencius's "simple consensus", where each
instance's pre-assigned coordinator skips phase 1; here the pin assigns it). If round 0 does
not reach a majority (an acceptor down, or a higher ballot promised) the proposal goes on as
classic Paxos from round 1.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .ballot import Ballot
from .messages import Accept, Accepted, Prepare, Promise
from .placement import REPLICATION_FACTOR, Placement, PlacementError, validate
from .transport import Transport, Unreachable

MIN_ACCEPT_QUORUM = REPLICATION_FACTOR // 2 + 1


def prepare_quorum(cluster_size: int) -> int:
    """Promises needed so phase 1 meets every accept quorum of any placement in the cluster."""
    return max(cluster_size - MIN_ACCEPT_QUORUM + 1, cluster_size // 2 + 1)


@dataclass
class Outcome:
    """How an instance ended. `value` is the chosen placement when `chosen`."""

    chosen: bool
    value: Placement | None
    ballot: Ballot | None
    own: bool
    messages: int
    rounds: int
    reason: str = ""
    promised: Ballot | None = None
    votes: dict[str, str] = field(default_factory=dict)
    kind: str = "chosen"  # or "unavailable" (no quorum answered), "refused" (data), "contention"


class Proposer:
    """Proposes placements. `proposer_id` must be unique per process incarnation."""

    def __init__(
        self,
        proposer_id: str,
        transport: Transport,
        *,
        max_rounds: int = 12,
        backoff: float = 0.01,
    ) -> None:
        self.proposer_id = proposer_id
        self.transport = transport
        self.max_rounds = max_rounds
        self.backoff = backoff

    async def propose(
        self,
        chunk_id: str,
        epoch: int,
        value: Placement | None,
        cluster: Sequence[str],
        *,
        skip: set[str] | frozenset[str] = frozenset(),
        on_phase: Callable[[str, Ballot], None] | None = None,
        fixed: bool = False,
        fast: bool = False,
    ) -> Outcome:
        """Run instance (chunk_id, epoch) until a value is chosen or it cannot be.

        `cluster` is every registered storage node (down ones included: they count against the
        quorum), or with `fixed` the instance's pinned acceptor set; `skip` are nodes known to be
        down, not contacted. Raises PlacementError for a placement that breaks the mode's rules
        or names a node outside the cluster (with `fixed`: not exactly the pinned set).
        `value=None` (only with `fixed`) adopts what was accepted, else ends with kind "empty".
        `fast` (only with `fixed` and a value, and only by the proposer that created the pin, at
        most once per instance): round 0 without phase 1, see the module docstring.
        """
        cluster = list(dict.fromkeys(cluster))
        if value is None and not fixed:
            raise PlacementError("a proposal without a value needs a fixed acceptor set")
        if value is not None:
            validate(value, chunk_id)
            outside = [u for u in value.nodes if u not in cluster]
            if outside:
                raise PlacementError(f"placement names nodes that are not registered: {', '.join(outside)}")
            if fixed and len(cluster) != len(value.nodes):
                raise PlacementError("with a fixed acceptor set the placement names exactly those nodes")
        q1 = len(cluster) // 2 + 1 if fixed else prepare_quorum(len(cluster))
        messages = 0
        ballot = Ballot(1, self.proposer_id)
        highest_seen: Ballot | None = None
        votes: dict[str, str] = {}
        reason = ""
        if fast and fixed and value is not None:
            zero = Ballot(0, self.proposer_id)
            if on_phase:
                on_phase("accepting", zero)
            ok, msgs, highest, _ = await self._phase2(chunk_id, epoch, zero, value, votes, skip)
            messages += msgs
            if ok >= value.quorum:
                return Outcome(True, value, zero, True, messages, 1, "chosen", highest, votes)
            highest_seen = highest
            if highest_seen is not None and highest_seen >= ballot:
                ballot = highest_seen.next(self.proposer_id)
        for attempt in range(1, self.max_rounds + 1):
            if on_phase:
                on_phase("preparing", ballot)
            reachable = [u for u in cluster if u not in skip]
            messages += len(reachable)
            members_own = set(value.nodes) if value is not None else set()
            replies = await asyncio.gather(
                *(
                    self._prepare(u, chunk_id, epoch, ballot, value if u in members_own else None)
                    for u in reachable
                )
            )
            promises: list[Promise] = []
            holders = 0
            missing: list[str] = []
            for url, r in zip(reachable, replies, strict=True):
                if r is None:
                    votes[url] = "no answer"
                    continue
                messages += 1
                if r.ok:
                    promises.append(r)
                    votes[url] = "promised"
                    if url in members_own:
                        if r.holds == "ok":
                            holders += 1
                        else:
                            missing.append(f"{url}: {r.holds}")
                else:
                    votes[url] = f"nack {r.promised}"
                    if r.promised is not None and (highest_seen is None or r.promised > highest_seen):
                        highest_seen = r.promised
            if len(promises) < q1:
                if highest_seen is not None and highest_seen >= ballot:
                    reason = f"outbid by ballot {highest_seen}"
                    ballot = highest_seen.next(self.proposer_id)
                    await self._pause(attempt)
                    continue
                return Outcome(
                    False, None, ballot, False, messages, attempt,
                    f"only {len(promises)} of {len(cluster)} acceptors promised; {q1} needed",
                    highest_seen, votes, "unavailable",
                )  # fmt: skip
            prior = [p for p in promises if p.accepted is not None and p.value is not None]
            chosen_value = max(prior, key=lambda p: p.accepted).value if prior else value  # type: ignore[arg-type,return-value]
            if chosen_value is None:  # adopt-only, and nothing was accepted by this majority
                return Outcome(
                    False, None, ballot, False, messages, attempt,
                    "nothing accepted in this instance yet", highest_seen, votes, "empty",
                )  # fmt: skip
            if not prior and value is not None and holders < value.quorum:
                # nothing was accepted yet and our placement is not backed by data: stop here,
                # before any acceptor accepts it
                reason = (
                    f"{holders} of {len(value.nodes)} members hold their share; {value.quorum} needed"
                    + (f" ({'; '.join(missing)})" if missing else "")
                )
                for m in missing:
                    votes[m.split(": ", 1)[0]] = f"refused ({m.split(': ', 1)[1]})"
                return Outcome(
                    False, None, ballot, False, messages, attempt, reason, highest_seen, votes, "refused"
                )
            if on_phase:
                on_phase("accepting", ballot)
            members = chosen_value.nodes
            ok, msgs, highest, refused = await self._phase2(chunk_id, epoch, ballot, chosen_value, votes)
            messages += msgs
            if highest is not None and (highest_seen is None or highest > highest_seen):
                highest_seen = highest
            if ok >= chosen_value.quorum:
                return Outcome(
                    True, chosen_value, ballot, chosen_value == value, messages, attempt,
                    "chosen", highest_seen, votes,
                )  # fmt: skip
            if highest_seen is not None and highest_seen > ballot:
                reason = f"outbid by ballot {highest_seen}"
                ballot = highest_seen.next(self.proposer_id)
                await self._pause(attempt)
                continue
            reason = f"{ok} of {len(members)} members accepted; {chosen_value.quorum} needed" + (
                f" (refused: {'; '.join(refused)})" if refused else ""
            )
            kind = "refused" if refused else "unavailable"
            return Outcome(False, None, ballot, False, messages, attempt, reason, highest_seen, votes, kind)
        return Outcome(
            False, None, ballot, False, messages, self.max_rounds, reason, highest_seen, votes, "contention"
        )

    async def _phase2(
        self,
        chunk_id: str,
        epoch: int,
        ballot: Ballot,
        value: Placement,
        votes: dict[str, str],
        skip: set[str] | frozenset[str] = frozenset(),
    ) -> tuple[int, int, Ballot | None, list[str]]:
        """Send Accept to the value's members: (accepted, messages, highest ballot a refusal
        named, refusals for other reasons). Members in `skip` (known down) are not sent to."""
        members = [u for u in value.nodes if u not in skip]
        messages = len(members)
        acks = await asyncio.gather(*(self._accept(u, chunk_id, epoch, ballot, value) for u in members))
        ok = 0
        highest: Ballot | None = None
        refused: list[str] = []
        for url in value.nodes:
            if url not in members:
                votes[url] = "down"
        for url, a in zip(members, acks, strict=True):
            if a is None:
                votes[url] = "no answer"
                continue
            messages += 1
            if a.ok:
                ok += 1
                votes[url] = "accepted"
            else:
                votes[url] = f"refused ({a.reason})"
                if a.reason == "ballot" and a.promised is not None:
                    if highest is None or a.promised > highest:
                        highest = a.promised
                else:
                    refused.append(f"{url}: {a.reason}")
        return ok, messages, highest, refused

    async def learn(
        self, chunk_id: str, epoch: int, members: Sequence[str]
    ) -> tuple[Ballot, Placement] | None:
        """The value chosen in the instance, if a majority of `members` report accepting the same
        (ballot, value): read-only (no ballot), so it never disturbs a proposer in flight."""

        async def one(url: str):
            try:
                st = await self.transport.state(url, chunk_id)
            except Unreachable:
                return None
            return next((i for i in st.instances if i.epoch == epoch), None)

        seen: dict[tuple, int] = {}
        values: dict[tuple, Placement] = {}
        for inst in await asyncio.gather(*(one(u) for u in members)):
            if inst is None or inst.accepted is None or inst.value is None:
                continue
            key = (inst.accepted.round, inst.accepted.proposer)
            seen[key] = seen.get(key, 0) + 1
            values[key] = inst.value
        for key, count in seen.items():
            if count >= len(members) // 2 + 1:
                return Ballot(*key), values[key]
        return None

    async def _pause(self, attempt: int) -> None:
        """Randomized backoff so two duelling proposers stop outbidding each other."""
        await asyncio.sleep(random.uniform(0, self.backoff * (2 ** min(attempt, 6))))

    async def _prepare(
        self, url: str, chunk_id: str, epoch: int, ballot: Ballot, value: Placement | None
    ) -> Promise | None:
        msg = Prepare(epoch=epoch, ballot=ballot, value=value, member=url if value is not None else None)
        try:
            return await self.transport.prepare(url, chunk_id, msg)
        except Unreachable:
            return None

    async def _accept(
        self, url: str, chunk_id: str, epoch: int, ballot: Ballot, value: Placement
    ) -> Accepted | None:
        try:
            msg = Accept(epoch=epoch, ballot=ballot, value=value, member=url)
            return await self.transport.accept(url, chunk_id, msg)
        except Unreachable:
            return None
