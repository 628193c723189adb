"""Reservation rounds: a value is taken only once a majority of the trusted nodes agreed to it.

Replication alone is eventually consistent: two nodes can each accept a create of one DNS domain
and learn of the other's only afterwards, when one of the two records has to lose. For values
that must be unique (a domain, a CIDR, a public key, an account address) and for single-use
request nonces, the node that serves the request first *claims* the value on every trusted node
(itself included) and answers only once a majority accepted the claim:

- a node accepts a claim unless it already holds the value for someone else: a live document in
  its index, a claim by another holder that is still pending (its document has not reached this
  node yet) and not expired, or, for nonces, any earlier claim;
- two majorities always share a node, so two holders can never both get one;
- claims that collide while both are pending are settled by priority: the smaller holder id
  (an entity id starts with its creation tick) keeps asking, the other releases its claims and
  answers 409; a claim refused because the value is already taken answers 409 at once;
- when fewer than a majority answer (a minority partition, nodes down) the request answers
  503 NO_QUORUM, and nothing was written: never a 200 that later vanishes.

Claims live in the kv store under /crdt/resv/<namespace>/<value> with an expiry; a claim whose
document has arrived is resolved by the index from then on. A single node (no peers) skips the
round: its kv transaction is the whole check, as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
import orjson

from shoal.kv import TransactionOp, VersionConflict
from shoal.state.errors import StateError, conflict
from shoal.state.store import index_key, meta_key

if TYPE_CHECKING:
    from shoal.crdt.node import PeerState, ReplicationNode

log = logging.getLogger("shoal.crdt")

RESV = "/crdt/resv/"
UNIQUE_TTL = 300  # seconds a pending claim on a unique value holds if its document never arrives
ROUND_TIMEOUT = 2.0  # seconds to wait for each peer's answer
DEADLINE = 5.0  # seconds a claim with priority keeps asking while lower-priority claims clear


class Claim(msgspec.Struct, array_like=True):
    ns: str  # "u/<kind>/<field>" for a unique value, "nonce" for a request nonce
    value: str
    holder: str  # entity id (unique values) or who|request digest (nonces)
    ttl: int = UNIQUE_TTL


class Verdict(msgspec.Struct, array_like=True):
    ok: bool
    holder: str = ""  # who holds it instead (when refused)
    taken: bool = False  # refused because the value is taken for good (not merely pending)


class ReserveRequest(msgspec.Struct):
    claims: list[Claim]
    release: bool = False


class ReserveReply(msgspec.Struct):
    verdicts: list[Verdict]


def resv_key(ns: str, value: str) -> str:
    return f"{RESV}{ns}/{quote(value, safe='')}"


def unique_claim(kind: str, field: str, value: str, entity_id: str) -> Claim:
    return Claim(f"u/{kind}/{field}", value, entity_id)


class Reservations:
    """This node's table of claims (acceptor) and the rounds it runs for its own writes."""

    def __init__(self, node: ReplicationNode) -> None:
        self.node = node
        self.lock = asyncio.Lock()
        self.rounds = 0
        self.refused = 0
        self.no_quorum = 0

    @property
    def kv(self) -> Any:
        assert self.node.journal is not None
        return self.node.journal.kv

    # -- acceptor --------------------------------------------------------------------------------
    async def accept(self, claims: list[Claim], release: bool = False) -> list[Verdict]:
        """Accept every claim or none (the verdicts say which ones were refused)."""
        async with self.lock:
            if release:
                await self._release(claims)
                return [Verdict(True) for _ in claims]
            verdicts = [await self._judge(c) for c in claims]
            if all(v.ok for v in verdicts):
                now = int(time.time())
                ops = [
                    TransactionOp.set(
                        resv_key(c.ns, c.value),
                        orjson.dumps({"holder": c.holder, "expires_at": now + min(max(c.ttl, 1), 3600)}),
                    )
                    for c in claims
                ]
                await self.kv.transaction(ops)
            elif any(v.ok for v in verdicts):
                verdicts = [v if not v.ok else Verdict(False, "", False) for v in verdicts]
            return verdicts

    async def _judge(self, c: Claim) -> Verdict:
        kv = self.kv
        if c.ns.startswith("u/"):
            _, kind, field = c.ns.split("/", 2)
            held = await kv.get(index_key(kind, field, c.value))
            if held is not None and held.value.decode() != c.holder:
                return Verdict(False, held.value.decode(), True)
        entry = await kv.get_json(resv_key(c.ns, c.value))
        if entry is None or entry["holder"] == c.holder or entry["expires_at"] <= time.time():
            return Verdict(True)
        if c.ns == "nonce":
            return Verdict(False, entry["holder"], True)
        _, kind, _ = c.ns.split("/", 2)
        if await kv.exists(meta_key(kind, entry["holder"])):  # its document arrived: the index decides
            return Verdict(True)
        return Verdict(False, entry["holder"], False)

    async def _release(self, claims: list[Claim]) -> None:
        for c in claims:
            key = resv_key(c.ns, c.value)
            entry = await self.kv.get(key)
            if entry is not None and orjson.loads(entry.value)["holder"] == c.holder:
                try:
                    await self.kv.transaction(
                        [TransactionOp.check_version(key, entry.version), TransactionOp.delete(key)]
                    )
                except VersionConflict:
                    pass

    async def sweep(self) -> int:
        """Delete expired claims."""
        now = time.time()
        stale = [e for e in await self.kv.entries(RESV) if orjson.loads(e.value)["expires_at"] <= now]
        for e in stale:
            try:
                await self.kv.transaction(
                    [TransactionOp.check_version(e.key, e.version), TransactionOp.delete(e.key)]
                )
            except VersionConflict:
                pass
        return len(stale)

    # -- coordinator -----------------------------------------------------------------------------
    def quorum(self) -> int:
        return len(self.node.trusted) // 2 + 1

    async def _ask(self, peer: PeerState, claims: list[Claim], release: bool = False) -> list[Verdict] | None:
        try:
            reply = await asyncio.wait_for(
                self.node.call(peer, "/replication/reserve", ReserveRequest(claims, release), ReserveReply),
                ROUND_TIMEOUT,
            )
        except Exception as exc:  # unreachable, untrusted, timed out: no vote
            log.debug("reservation round with %s: %s", peer.url, exc)
            return None
        if len(reply.verdicts) != len(claims):
            return None
        return reply.verdicts

    async def reserve_unique(self, spec: Any, entity_id: str, values: dict[str, str]) -> None:
        """StateStore.reserver: claim a write's new unique values for `entity_id`."""
        claims = [unique_claim(spec.kind, f, v, entity_id) for f, v in values.items()]
        what = ", ".join(f"{spec.name} {f} {v!r}" for f, v in values.items())
        await self.reserve(claims, what=what)

    async def reserve(self, claims: list[Claim], *, what: str = "value") -> None:
        """Return once a majority of the trusted nodes accepted every claim; else raise (409/503)."""
        node = self.node
        if not node.peers or not claims:
            return
        self.rounds += 1
        quorum = self.quorum()
        deadline = time.monotonic() + DEADLINE
        accepted: dict[str, PeerState | None] = {}  # node key -> peer (None: this node)
        nonce = claims[0].ns == "nonce"
        me = node.signer.public_b64
        while True:
            ask_self = me not in accepted
            pending = [p for p in node.peers if p.key is None or p.key not in accepted]
            coros = [self.accept(claims)] if ask_self else []
            coros += [self._ask(p, claims) for p in pending]
            answers = list(await asyncio.gather(*coros))
            refusals: list[Verdict] = []
            if ask_self:
                local = answers.pop(0)
                if all(v.ok for v in local):
                    accepted[me] = None
                else:
                    refusals += [v for v in local if not v.ok]
            for peer, verdicts in zip(pending, answers, strict=True):
                if verdicts is None or peer.key is None or peer.key not in node.trusted_b64:
                    continue
                if all(v.ok for v in verdicts):
                    accepted[peer.key] = peer
                else:
                    refusals += [v for v in verdicts if not v.ok]
            if len(accepted) >= quorum:
                return
            mine = claims[0].holder
            lost = nonce or any(v.taken or (v.holder and v.holder < mine) for v in refusals)
            if lost or not refusals or time.monotonic() > deadline:
                await self._release_all(claims, accepted)
                if refusals:
                    self.refused += 1
                    if nonce:
                        raise StateError(
                            401, "this request nonce was already used (replay)", "REPLAYED_NONCE"
                        )
                    holder = next((v.holder for v in refusals if v.holder), "")
                    raise conflict(f"{what} is already taken{f' ({holder})' if holder else ''}", "DUPLICATE")
                self.no_quorum += 1
                raise StateError(
                    503,
                    f"only {len(accepted)} of the {len(node.trusted)} trusted nodes accepted the claim on "
                    f"{what} ({quorum} needed): this node cannot reach a majority (partitioned, or nodes "
                    "down); nothing was written, retry later",
                    "NO_QUORUM",
                    headers={"Retry-After": "2"},
                )
            await asyncio.sleep(random.uniform(0.01, 0.05))

    async def _release_all(self, claims: list[Claim], accepted: dict[str, PeerState | None]) -> None:
        waits = []
        for peer in accepted.values():
            waits.append(self.accept(claims, release=True) if peer is None else self._ask(peer, claims, True))
        await asyncio.gather(*waits, return_exceptions=True)
