"""Replication between State Service nodes: configuration, routes, push and anti-entropy.

Flags (added to `shoal serve state`):

  --peer URL          a node to replicate with (repeat); every write is pushed to it at once,
                      and anti-entropy runs with it every --sync-interval seconds
  --trust-node KEY    an Ed25519 node public key (base64 or hex) whose operations are accepted
                      (repeat); this node's own key is always trusted. Keys are configured, never
                      learned from the network: a peer URL alone grants nothing.
  --node-key-dir DIR  where node_identity.pem lives (default: the data dir); keep it outside the
                      data dir to let a node that lost its data rejoin under the same key
  --sync-interval S   seconds between anti-entropy rounds (default 1)
  --bootstrap MODE    log (default): an empty node replays a peer's whole log, every op verified;
                      snapshot: it adopts a trusted peer's snapshot (winner ops verified, the ops
                      it covers trusted), then reads that peer's log after it
  --compact-interval S  seconds between log compactions (default 0: never)

Routes (every request and reply signed with the sender's node key, see shoal.crdt.signing):

  POST /replication/push    {ops}                       -> {applied, buffered, duplicate, rejected, missing}
  POST /replication/fetch   {ids}                       -> {ops}
  POST /replication/sync    {heads, bloom, since, limit} -> {heads, ops, upto, more, seq, log_id}
  POST /replication/snapshot {}                         -> {records, heads, winners, upto, log_id}
  GET  /replication/status  heads, peers, lag, buffered and rejected counts (no signature needed)

A sync round with a peer: send our heads and a Bloom filter of the ops we added since the last
round with it, plus how far we read its log last time; it answers with the ops of its log after
that point that our filter lacks, plus every op built on those (so a false positive costs one
fetch, not a lost op), in pages. Then we fetch by hash whatever its heads or our buffered ops
still miss, and push it what its heads show it lacks. Read positions are kept in the kv store
(with the peer's log id: a peer that lost its data has a new log, read from 0 again). A new or
emptied node bootstraps the same way (its read position is 0, so the peer streams its whole log,
page by page), or with --bootstrap snapshot from a snapshot and the log after it (docs/crdt.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from shoal.crdt.replica import Replica
from shoal.crdt.reserve import Reservations, ReserveReply, ReserveRequest
from shoal.crdt.signing import (
    AUDIENCE_HEADER,
    KEY_HEADER,
    NONCE_HEADER,
    SIG_HEADER,
    TIME_HEADER,
    WINDOW,
    Signer,
    parse_key,
    reply_message,
    request_message,
    verify,
)
from shoal.crdt.statedb import StateJournal, validate_value
from shoal.web import Api, ApiError, read_raw_body, respond

log = logging.getLogger("shoal.crdt")

MAX_BODY = 16 << 20
PAGE = 2_000
FETCH_BATCH = 1_000
PUSH_BATCH = 500
MSGPACK = [(b"content-type", b"application/msgpack")]


class PushRequest(msgspec.Struct):
    ops: list[bytes]


class PushReply(msgspec.Struct):
    applied: int
    buffered: int
    duplicate: int
    rejected: int
    missing: list[bytes]


class FetchRequest(msgspec.Struct):
    ids: list[bytes]


class FetchReply(msgspec.Struct):
    ops: list[bytes]


class SnapshotRequest(msgspec.Struct):
    pass


class SnapshotReply(msgspec.Struct):
    records: bytes  # 40 bytes per covered op: id, hlc (Dag.export)
    heads: list[bytes]
    winners: list[bytes]  # the op ids holding the registers (fetched by hash next, each verified)
    upto: int  # the server's log seq the snapshot covers
    log_id: bytes


class SyncRequest(msgspec.Struct):
    heads: list[bytes]
    bloom: bytes
    since: int = 0
    limit: int = PAGE


class SyncReply(msgspec.Struct):
    heads: list[bytes]
    ops: list[bytes]
    upto: int
    more: bool
    seq: int
    log_id: bytes = b""  # which log `upto` and `seq` count in (new when a node lost its data)


def add_replication_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("replication (BFT-CRDT, see docs/crdt.md)")
    g.add_argument("--peer", action="append", default=[], metavar="URL", help="replicate with this node")
    g.add_argument(
        "--trust-node", action="append", default=[], metavar="KEY", help="accept ops signed by this node key"
    )
    g.add_argument("--node-key-dir", default=None, help="directory of node_identity.pem (default: data dir)")
    g.add_argument("--sync-interval", type=float, default=1.0, help="seconds between anti-entropy rounds")
    g.add_argument(
        "--cluster-id",
        default="shoal",
        help="name of this cluster: every signed request and replication request names it "
        "(a request signed for another cluster is refused)",
    )
    g.add_argument(
        "--catch-up-grace",
        type=float,
        default=10.0,
        help="seconds after start a peer may stay unreachable before this node stops waiting for "
        "it to catch up (a node is catching_up, refusing writes and lists, until then)",
    )
    g.add_argument(
        "--compact-interval",
        type=float,
        default=0.0,
        help="seconds between log compactions (0: never): drop ops that lost their register once "
        "every peer has them (a node that lost its data then needs --bootstrap snapshot)",
    )
    g.add_argument(
        "--bootstrap",
        choices=("log", "snapshot"),
        default="log",
        help="how an empty node catches up: replay a peer's whole log (every op verified), or adopt a "
        "trusted peer's snapshot (winner ops verified, the ops it covers trusted) and the log after it",
    )


@dataclass
class PeerState:
    url: str
    key: str | None = None  # base64 node key, learned from its signed replies (must be trusted)
    since: int = 0  # its log read up to this seq
    mark: int = 0  # our seq at the last completed round with it
    remote_seq: int = 0
    last_sync: float | None = None
    last_error: str | None = None
    rounds: int = 0
    log_id: bytes = b""  # its log's id, from its replies: our `since` counts in that log
    restored: int | None = None  # `since` as loaded from the kv store at start
    saved: tuple = ()
    received: int = 0  # ops it sent us by anti-entropy since start
    caught_up: bool = False  # we have read its whole log once since we started
    queue: list[bytes] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class PeerError(Exception):
    pass


class ReplicationNode:
    """This node's replica, journal, routes and background sync with its peers."""

    def __init__(self, options: dict[str, Any], signer: Signer) -> None:
        self.signer = signer
        try:
            trusted = {parse_key(k) for k in options.get("trust_node") or []}
        except ValueError as exc:
            raise SystemExit(f"--trust-node: {exc}") from None
        self.trusted = trusted | {signer.public}
        self.trusted_b64 = {base64.b64encode(k).decode() for k in self.trusted}
        self.cluster_id: str = options.get("cluster_id") or "shoal"
        self.catch_up_grace = float(options.get("catch_up_grace") or 10.0)
        self.started_at = time.monotonic()
        self.ready = not options.get("peer")  # a node without peers has nobody to catch up with
        self.seen_nonces: dict[str, float] = {}  # replication request nonces within the window
        self.reservations = Reservations(self)
        self.peers = [PeerState(url.rstrip("/")) for url in options.get("peer") or []]
        self.interval = float(options.get("sync_interval") or 1.0)
        self.bootstrap = options.get("bootstrap") or "log"
        self.compact_interval = float(options.get("compact_interval") or 0.0)
        self.compacted = 0
        self.snapshot_refused: dict[str, str] = {}  # peer url -> why its snapshot was not adopted
        self.bootstrapping = asyncio.Lock()  # one snapshot adoption at a time, whatever the peer
        self.replica = Replica(signer, self.trusted, validate_value)
        self.journal: StateJournal | None = None
        self.off: str | None = None  # why replication is off (--store etcd), or None
        self.http: httpx.AsyncClient | None = None
        self.tasks: list[asyncio.Task] = []

    @property
    def core(self) -> Any:
        return self.replica.core

    async def start(self, store: Any) -> None:
        self.started_at = time.monotonic()
        self.journal = await StateJournal.attach(store, self.replica)
        self.journal.on_local.append(self._queue_push)
        for peer in self.peers:  # where we stopped reading each peer's log (kept in the kv store)
            pos = await self.journal.load_position(peer.url)
            if isinstance(pos, dict):
                with contextlib.suppress(TypeError, ValueError):
                    peer.since, peer.mark = int(pos["since"]), min(int(pos["mark"]), self.journal.seq)
                    peer.log_id = bytes.fromhex(pos["log_id"])
                    peer.restored = peer.since
                    peer.saved = (peer.since, peer.mark, peer.log_id)
        if self.compact_interval > 0:
            self.tasks.append(asyncio.create_task(self._compact_forever()))
        if self.peers:
            logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per sync round otherwise
            self.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))
            for peer in self.peers:
                self.tasks.append(asyncio.create_task(self._sync_forever(peer)))
                self.tasks.append(asyncio.create_task(self._push_forever(peer)))

    def disable(self, reason: str) -> None:
        """No journal and no peers: the store itself is shared by every State Service (etcd)."""
        self.off = reason
        self.ready = True

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        if self.http is not None:
            await self.http.aclose()

    # -- outgoing ----------------------------------------------------------------------------
    def _queue_push(self, frame: bytes) -> None:
        for peer in self.peers:
            if len(peer.queue) < 10 * PUSH_BATCH:  # a peer that is down catches up by anti-entropy
                peer.queue.append(frame)
            peer.wake.set()

    async def _discover(self, peer: PeerState) -> str:
        """The peer's node key, from its public status (a request then names it as its audience)."""
        assert self.http is not None
        try:
            r = await self.http.get(peer.url + "/replication/status", timeout=2.0)
            key = r.json()["node_key"] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise PeerError(f"status: {type(exc).__name__}: {exc}") from None
        if key not in self.trusted_b64:
            raise PeerError("its node key is not trusted (--trust-node)")
        peer.key = key
        return key

    async def call(self, peer: PeerState, path: str, message: msgspec.Struct, reply_type: type) -> Any:
        """A signed request to a peer (audience: this cluster and that node), its verified reply."""
        return await self._call(peer, path, message, reply_type)

    async def _call(self, peer: PeerState, path: str, message: msgspec.Struct, reply_type: type) -> Any:
        assert self.http is not None
        target = peer.key or await self._discover(peer)
        body = msgspec.msgpack.encode(message)
        now = int(time.time())
        audience, nonce = f"{self.cluster_id}:{target}", secrets.token_hex(16)
        signature = self.signer.sign(request_message("POST", path, body, now, audience, nonce))
        headers = {
            KEY_HEADER: self.signer.public_b64,
            TIME_HEADER: str(now),
            SIG_HEADER: signature.hex(),
            AUDIENCE_HEADER: audience,
            NONCE_HEADER: nonce,
            "content-type": "application/msgpack",
        }
        try:
            r = await self.http.post(peer.url + path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise PeerError(f"{type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            raise PeerError(f"{path}: HTTP {r.status_code} {r.text[:200]}")
        try:
            key = parse_key(r.headers.get(KEY_HEADER, ""))
            sig = bytes.fromhex(r.headers.get(SIG_HEADER, ""))
        except ValueError:
            raise PeerError(f"{path}: unsigned reply") from None
        if key not in self.trusted or not verify(key, reply_message(signature, r.content), sig):
            raise PeerError(f"{path}: reply not signed by a trusted node")
        if r.headers[KEY_HEADER] != peer.key:
            peer.key = None  # another node answers at that URL now: learn its key again
            raise PeerError(f"{path}: reply signed by another node than the one addressed")
        try:
            return msgspec.msgpack.decode(r.content, type=reply_type)
        except msgspec.DecodeError as exc:
            raise PeerError(f"{path}: bad reply: {exc}") from None

    async def _push_forever(self, peer: PeerState) -> None:
        while True:
            await peer.wake.wait()
            peer.wake.clear()
            while peer.queue:
                batch, peer.queue = peer.queue[:PUSH_BATCH], peer.queue[PUSH_BATCH:]
                try:
                    await self._push(peer, batch)
                except PeerError as exc:
                    peer.last_error = str(exc)
                    peer.queue.clear()  # anti-entropy delivers them when it is back
                except Exception:
                    log.exception("push to %s failed", peer.url)
                    peer.queue.clear()

    async def _push(self, peer: PeerState, frames: list[bytes]) -> None:
        """Push frames; then whatever of their past the peer says it misses, a few rounds deep."""
        assert self.journal is not None
        for _ in range(64):
            reply = await self._call(peer, "/replication/push", PushRequest(frames), PushReply)
            wanted = [i for i in reply.missing if i in self.replica.known][:FETCH_BATCH]
            if not wanted:
                return
            frames = await self.journal.frames_by_id(wanted)

    async def _sync_forever(self, peer: PeerState) -> None:
        while True:
            try:
                await self.sync_with(peer)
                peer.last_error = None
                peer.caught_up = True
            except PeerError as exc:
                if peer.last_error != str(exc):
                    log.warning("anti-entropy with %s: %s", peer.url, exc)
                peer.last_error = str(exc)
            except Exception as exc:
                log.exception("anti-entropy with %s failed", peer.url)
                peer.last_error = f"{type(exc).__name__}: {exc}"
            self.replica.expire_buffer()
            self._check_ready()
            await asyncio.sleep(self.interval)

    async def sync_with(self, peer: PeerState) -> None:
        """One anti-entropy round (see the module docstring)."""
        journal = self.journal
        assert journal is not None
        if (
            self.bootstrap == "snapshot"
            and journal.seq == 0
            and not len(self.replica.dag)
            and peer.url not in self.snapshot_refused
        ):
            await self._bootstrap_from(peer)
        mark = journal.seq
        bloom = self.core.bloom_build(journal.ids_after(peer.mark))
        while True:
            heads = self.replica.dag.heads()
            reply = await self._call(
                peer, "/replication/sync", SyncRequest(heads, bloom, peer.since), SyncReply
            )
            if reply.log_id != peer.log_id:
                known_log, peer.log_id = peer.log_id, reply.log_id
                if known_log and peer.since:  # not the log we read before (it lost its data)
                    peer.since = 0
                    continue
            peer.received += len(reply.ops)
            if reply.ops:
                await journal.apply_frames(reply.ops)
            peer.since, peer.remote_seq = reply.upto, reply.seq
            if not reply.more:
                break
        await self._fetch_missing(peer, reply.heads)
        theirs = set(reply.heads)
        if any(h not in theirs for h in self.replica.heads):  # they may lack ours: push our heads
            ours = [h for h in self.replica.heads if h not in theirs]
            await self._push(peer, await journal.frames_by_id(ours))
        peer.mark = mark
        peer.last_sync = time.time()
        peer.rounds += 1
        position = (peer.since, peer.mark, peer.log_id)
        if position != peer.saved:
            await journal.save_position(
                peer.url, {"since": peer.since, "mark": peer.mark, "log_id": peer.log_id.hex()}
            )
            peer.saved = position

    def _check_ready(self) -> None:
        """Ready once every peer's log was read to its end since start; a peer still unreachable
        after --catch-up-grace seconds is not waited for (it catches up from us instead)."""
        if self.ready:
            return
        late = time.monotonic() - self.started_at > self.catch_up_grace
        if all(p.caught_up or (late and p.rounds == 0) for p in self.peers):
            self.ready = True
            log.info("caught up with the peers: serving writes and lists")

    def progress(self) -> dict:
        """How far catching up is (for /health while catching_up)."""
        return {
            "peers_caught_up": sum(p.caught_up for p in self.peers),
            "peers": len(self.peers),
            "ops": len(self.replica.known),
            "received": sum(p.received for p in self.peers),
            "behind": {p.url: max(0, p.remote_seq - p.since) for p in self.peers if not p.caught_up},
            "seconds": round(time.monotonic() - self.started_at, 1),
        }

    def stable_seq(self) -> int:
        """Our log position every peer has caught up to: the ops before it are in every peer's
        DAG (a completed round pushes a peer everything we held when it started)."""
        assert self.journal is not None
        if any(p.rounds == 0 and p.mark == 0 for p in self.peers):
            return 0
        return min([p.mark for p in self.peers], default=self.journal.seq)

    async def _compact_forever(self) -> None:
        while True:
            await asyncio.sleep(self.compact_interval)
            try:
                if self.journal is not None:
                    self.compacted += await self.journal.compact(self.stable_seq())
            except Exception:
                log.exception("log compaction failed")

    async def _bootstrap_from(self, peer: PeerState) -> None:
        """Adopt the peer's snapshot, then read its log after the point the snapshot covers."""
        journal = self.journal
        assert journal is not None
        async with self.bootstrapping:
            if journal.seq or len(self.replica.dag):
                return  # another peer's snapshot (or a pushed op) came first
            try:
                await self._adopt_from(peer, journal)
            except PeerError as exc:  # e.g. a peer without the route: replay its log instead
                log.warning("no snapshot from %s: %s (replaying its log instead)", peer.url, exc)
                self.snapshot_refused[peer.url] = str(exc)

    async def _adopt_from(self, peer: PeerState, journal: StateJournal) -> None:
        snap = await self._call(peer, "/replication/snapshot", SnapshotRequest(), SnapshotReply)
        if not snap.records:
            return  # it has nothing yet: nothing to adopt, ask again next round
        frames: list[bytes] = []
        for i in range(0, len(snap.winners), FETCH_BATCH):
            reply = await self._call(
                peer, "/replication/fetch", FetchRequest(snap.winners[i : i + FETCH_BATCH]), FetchReply
            )
            frames += reply.ops
        why = await journal.adopt_snapshot(snap.records, snap.heads, frames, peer.url, snap.upto)
        if why is not None:
            log.warning("snapshot from %s refused: %s (replaying its log instead)", peer.url, why)
            self.snapshot_refused[peer.url] = why
            return
        log.info("bootstrapped from the snapshot of %s: %d ops covered", peer.url, len(snap.records) // 40)
        peer.since, peer.log_id = snap.upto, snap.log_id

    async def _fetch_missing(self, peer: PeerState, heads: list[bytes]) -> None:
        journal = self.journal
        assert journal is not None
        wanted = [h for h in heads if h not in self.replica.known]
        for _ in range(10_000):
            wanted = [i for i in dict.fromkeys(wanted + self.replica.missing(FETCH_BATCH))
                      if i not in self.replica.known and i not in self.replica.buffer][:FETCH_BATCH]  # fmt: skip
            if not wanted:
                return
            reply = await self._call(peer, "/replication/fetch", FetchRequest(wanted), FetchReply)
            if not reply.ops:
                return  # it does not have them either
            admission = await journal.apply_frames(reply.ops)
            if not admission.applied and not admission.buffered:
                return
            wanted = []

    # -- incoming ----------------------------------------------------------------------------
    async def _read_signed(self, scope: dict, receive: Any, message_type: type) -> tuple[Any, bytes]:
        body = await read_raw_body(scope, receive, MAX_BODY)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            key = parse_key(headers.get(KEY_HEADER, ""))
            sig = bytes.fromhex(headers.get(SIG_HEADER, ""))
            ts = int(headers.get(TIME_HEADER, ""))
        except ValueError:
            raise ApiError(401, "replication requests are signed with a node key", "UNSIGNED") from None
        if key not in self.trusted:
            raise ApiError(403, "this node key is not trusted (--trust-node)", "UNTRUSTED_NODE")
        if abs(ts - time.time()) > WINDOW:
            raise ApiError(401, f"request time is more than {WINDOW} s off", "STALE_REQUEST")
        audience, nonce = headers.get(AUDIENCE_HEADER, ""), headers.get(NONCE_HEADER, "")
        if not verify(key, request_message(scope["method"], scope["path"], body, ts, audience, nonce), sig):
            raise ApiError(401, "bad replication request signature", "SIGNATURE_MISMATCH")
        if audience != f"{self.cluster_id}:{self.signer.public_b64}":
            raise ApiError(
                401, "this replication request is addressed to another cluster or node", "WRONG_AUDIENCE"
            )
        if not 16 <= len(nonce) <= 64 or not self._fresh_nonce(nonce):
            raise ApiError(401, "this replication request nonce was already used (replay)", "REPLAYED_NONCE")
        try:
            return msgspec.msgpack.decode(body, type=message_type), sig
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"bad {message_type.__name__}: {exc}", "BAD_MESSAGE") from None

    def _fresh_nonce(self, nonce: str) -> bool:
        """True the first time a nonce is seen within the window (kept in memory: a request names
        this node as its audience, so no other node would accept it anyway)."""
        now = time.monotonic()
        seen = self.seen_nonces
        if len(seen) > 200_000:
            for n in [n for n, t in seen.items() if t < now]:
                del seen[n]
        if nonce in seen and seen[nonce] >= now:
            return False
        seen[nonce] = now + 2 * WINDOW
        return True

    async def _reply(self, send: Any, request_sig: bytes, message: msgspec.Struct) -> None:
        body = msgspec.msgpack.encode(message)
        sig = self.signer.sign(reply_message(request_sig, body))
        headers = [
            *MSGPACK,
            (KEY_HEADER.encode(), self.signer.public_b64.encode()),
            (SIG_HEADER.encode(), sig.hex().encode()),
        ]
        await respond(send, 200, body, headers)

    def api(self) -> Api:
        api = Api(tags=["replication"])
        node = self

        def journal() -> StateJournal:
            if node.off is not None:
                raise ApiError(409, f"replication is off: {node.off}", "REPLICATION_OFF")
            if node.journal is None:
                raise ApiError(503, "replication is starting", "STARTING")
            return node.journal

        @api.raw("POST", "/replication/push", summary="Receive operations (signed by a trusted node)")
        async def push(scope: dict, receive: Any, send: Any) -> None:
            msg, sig = await node._read_signed(scope, receive, PushRequest)
            if len(msg.ops) > 10 * PUSH_BATCH:
                raise ApiError(413, f"at most {10 * PUSH_BATCH} ops per push", "TOO_MANY")
            a = await journal().apply_frames(msg.ops)
            missing = node.replica.missing(FETCH_BATCH)
            await node._reply(
                send, sig, PushReply(len(a.applied), a.buffered, a.duplicate, len(a.rejected), missing)
            )

        @api.raw("POST", "/replication/fetch", summary="Operations by id")
        async def fetch(scope: dict, receive: Any, send: Any) -> None:
            msg, sig = await node._read_signed(scope, receive, FetchRequest)
            ids = [i for i in msg.ids[:FETCH_BATCH] if len(i) == 32]
            await node._reply(send, sig, FetchReply(await journal().frames_by_id(ids)))

        @api.raw(
            "POST", "/replication/sync", summary="Anti-entropy: heads + Bloom filter in, missing ops out"
        )
        async def sync(scope: dict, receive: Any, send: Any) -> None:
            msg, sig = await node._read_signed(scope, receive, SyncRequest)
            j = journal()
            limit = max(1, min(msg.limit, PAGE))
            since = max(0, msg.since)
            frames, upto = await j.frames_after(since, limit)
            ops, _ = node.core.parse_frames(frames)
            try:
                absent = set(node.core.bloom_missing(msg.bloom, [op.id for op in ops])) if msg.bloom else None
            except ValueError:
                raise ApiError(400, "bad Bloom filter", "BAD_MESSAGE") from None
            out, sent = [], set()
            for i, op in enumerate(ops):
                if absent is None or i in absent or any(d in sent for d in op.deps):
                    out.append(frames[i])
                    sent.add(op.id)
            reply = SyncReply(node.replica.dag.heads(), out, upto, len(frames) >= limit, j.seq, j.log_id)
            await node._reply(send, sig, reply)

        @api.raw("POST", "/replication/snapshot", summary="A snapshot for a bootstrapping node")
        async def snapshot(scope: dict, receive: Any, send: Any) -> None:
            _, sig = await node._read_signed(scope, receive, SnapshotRequest)
            j = journal()
            records, heads, winners, upto = await j.snapshot()
            await node._reply(send, sig, SnapshotReply(records, heads, winners, upto, j.log_id))

        @api.raw("POST", "/replication/reserve", summary="Claim unique values or nonces (reservation round)")
        async def reserve(scope: dict, receive: Any, send: Any) -> None:
            msg, sig = await node._read_signed(scope, receive, ReserveRequest)
            journal()
            if len(msg.claims) > 64:
                raise ApiError(413, "at most 64 claims per request", "TOO_MANY")
            verdicts = await node.reservations.accept(msg.claims, msg.release)
            await node._reply(send, sig, ReserveReply(verdicts))

        @api.get("/replication/status", summary="Replication state: heads, peers, lag, buffered, rejected")
        async def status(request: Any) -> dict:
            return node.status()

        return api

    def status(self) -> dict:
        r = self.replica
        seq = self.journal.seq if self.journal else 0
        return {
            "node_key": self.signer.public_b64,
            "replication": "on" if self.off is None else f"off: {self.off}",
            "ops": len(r.known),
            "seq": seq,
            "heads": [h.hex() for h in r.dag.heads()[:64]],
            "head_count": len(r.heads),
            "registers": r.dag.register_count,
            "buffered": len(r.buffer),
            "missing": len(r.missing(10_000)),
            "dropped": r.dropped,
            "rejected": sum(r.rejected.values()),
            "rejected_by_reason": dict(r.rejected),
            "bootstrap": self.bootstrap,
            "compacted": self.compacted,
            "stable_seq": self.stable_seq() if self.journal is not None else 0,
            "base": None
            if self.journal is None or self.journal.base is None
            else {k: self.journal.base[k] for k in ("source", "upto", "winners")},
            "snapshot_refused": self.snapshot_refused,
            "trusted_nodes": sorted(base64.b64encode(k).decode() for k in self.trusted),
            "cluster_id": self.cluster_id,
            "ready": self.ready,
            "reservations": {
                "rounds": self.reservations.rounds,
                "refused": self.reservations.refused,
                "no_quorum": self.reservations.no_quorum,
            },
            "peers": [
                {
                    "url": p.url,
                    "node_key": p.key,
                    "lag": max(0, p.remote_seq - p.since),
                    "since": p.since,
                    "since_restored": p.restored,
                    "received": p.received,
                    "last_sync": p.last_sync,
                    "last_sync_age": None if p.last_sync is None else round(time.time() - p.last_sync, 3),
                    "rounds": p.rounds,
                    "last_error": p.last_error,
                    "queued": len(p.queue),
                    "caught_up": p.caught_up,
                }
                for p in self.peers
            ],
        }


def load_signer(options: dict[str, Any], data_dir: Path) -> Signer:
    """The node key shoal.state's NodeIdentity keeps in node_identity.pem (created if absent)."""
    from shoal.state.auth.node_identity import NodeIdentity

    identity = NodeIdentity.load_or_create(options.get("node_key_dir") or data_dir)
    return Signer.from_pem(identity.private_pem())
