"""The acceptor's HTTP routes, served by every storage node next to its chunk routes.

    POST /paxos/{chunk_id}/prepare   Prepare -> Promise
    POST /paxos/{chunk_id}/accept    Accept  -> Accepted
    GET  /paxos/{chunk_id}           every instance this node holds for the chunk
    POST /paxos-batch/accept         AcceptBatch -> AcceptedBatch (many instances, one fsync)

State lives in <data-dir>/paxos.lmdb (shoal.kv, fsync per write), opened on first use so the
storage node's own start-up is untouched. The holdings check reads the stored record and
verifies its checksum, so a corrupt copy never votes for a placement.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from shoal.kv import KvStore, LmdbStore
from shoal.web import Api, ApiError, read_raw_body, respond

from .acceptor import MAX_BATCH_ITEMS, Acceptor
from .messages import Accept, AcceptBatch, Accepted, AcceptedBatch, AcceptorState, Prepare, Promise
from .placement import CHUNK_ID

_BAD_ID = "chunk id must be 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'"
BATCH_BODY_LIMIT = 4 << 20  # 256 instances of a 5-fragment placement are ~0.4 MiB
_batch = msgspec.json.Decoder(AcceptBatch)
_enc = msgspec.json.Encoder()


def store_holds(store_of: Any):
    """A holds() check over a shoal.storage ChunkStore (found lazily: the node opens it at start)."""
    from shoal.storage.store import E_SHA256

    async def holds(stored_id: str, checksum: str, verify: bool) -> str | None:
        store = store_of()
        if store is None:
            return f"missing: {stored_id} (store not open)"
        entry = store.stat(stored_id)
        if entry is None:
            return f"missing: {stored_id}"
        if "sha256:" + entry[E_SHA256].hex() != checksum:
            return f"checksum: {stored_id}"
        if stored_id in store.corrupt or (verify and not await asyncio.to_thread(store.intact, entry)):
            return f"corrupt: {stored_id}"
        return None

    return holds


def store_holds_many(store_of: Any):
    """holds() for a whole batch: every stat, checksum and re-read in one thread hop."""
    from shoal.storage.store import E_SHA256

    def check_all(pieces: list[tuple[str, str]], verify: bool) -> dict[tuple[str, str], str | None]:
        store = store_of()
        out: dict[tuple[str, str], str | None] = {}
        for stored_id, checksum in pieces:
            if store is None:
                out[(stored_id, checksum)] = f"missing: {stored_id} (store not open)"
                continue
            entry = store.stat(stored_id)
            if entry is None:
                out[(stored_id, checksum)] = f"missing: {stored_id}"
            elif "sha256:" + entry[E_SHA256].hex() != checksum:
                out[(stored_id, checksum)] = f"checksum: {stored_id}"
            elif stored_id in store.corrupt or (verify and not store.intact(entry)):
                out[(stored_id, checksum)] = f"corrupt: {stored_id}"
            else:
                out[(stored_id, checksum)] = None
        return out

    async def holds_many(pieces: list[tuple[str, str]], verify: bool) -> dict[tuple[str, str], str | None]:
        return await asyncio.to_thread(check_all, pieces, verify)

    return holds_many


class LazyAcceptor:
    """Opens the acceptor's LMDB file on first use, once."""

    def __init__(self, data_dir: Any, store_of: Any, kv: KvStore | None = None) -> None:
        self._data_dir = data_dir
        self._store_of = store_of
        self._kv = kv
        self._acceptor: Acceptor | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Acceptor:
        if self._acceptor is None:
            async with self._lock:
                if self._acceptor is None:
                    kv = self._kv
                    if kv is None:
                        root = Path(self._data_dir() if callable(self._data_dir) else self._data_dir)
                        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
                        kv = await LmdbStore.open(root / "paxos.lmdb", durable=True)
                    self._acceptor = Acceptor(
                        kv, store_holds(self._store_of), store_holds_many(self._store_of)
                    )
        return self._acceptor


def make_acceptor_api(node: Any) -> Api:
    """Acceptor routes for a shoal.storage StorageNode (uses node.store and node.data_dir)."""
    return acceptor_api(LazyAcceptor(lambda: node.data_dir, lambda: node.store))


def acceptor_api(lazy: LazyAcceptor) -> Api:
    api = Api(tags=["paxos"])

    def check(chunk_id: str) -> None:
        if not CHUNK_ID.match(chunk_id):
            raise ApiError(400, _BAD_ID)

    @api.post(
        "/paxos/{chunk_id}/prepare",
        body=Prepare,
        response=Promise,
        summary="ChunkPaxos phase 1: promise (durable before the reply), or nack with the higher ballot",
    )
    async def prepare(request: Any, chunk_id: str, body: Prepare) -> Promise:
        check(chunk_id)
        if body.epoch < 0 or body.ballot.round < 1 or not body.ballot.proposer:
            raise ApiError(400, "epoch must be >= 0, ballot round >= 1 and proposer non-empty")
        return await (await lazy.get()).prepare(chunk_id, body)

    @api.post(
        "/paxos/{chunk_id}/accept",
        body=Accept,
        response=Accepted,
        summary="ChunkPaxos phase 2: accept a placement this node holds its share of (durable)",
    )
    async def accept(request: Any, chunk_id: str, body: Accept) -> Accepted:
        check(chunk_id)
        # round 0: the pin owner's accept without phase 1 (no prepare ever carries round 0)
        if body.epoch < 0 or body.ballot.round < 0 or not body.ballot.proposer:
            raise ApiError(400, "epoch must be >= 0, ballot round >= 0 and proposer non-empty")
        return await (await lazy.get()).accept(chunk_id, body)

    @api.raw(
        "POST",
        "/paxos-batch/accept",
        body=AcceptBatch,
        response=AcceptedBatch,
        summary="ChunkPaxos phase 2 for many instances: one durable write, an answer per instance",
    )
    async def accept_batch(scope: dict, receive: Any, send: Any) -> None:
        # a raw route: this is the steady state's only message, so it skips the router's work
        raw = await read_raw_body(scope, receive, BATCH_BODY_LIMIT)
        try:
            body = _batch.decode(raw)
        except msgspec.ValidationError as exc:
            raise ApiError(422, f"invalid batch: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"invalid JSON: {exc}") from None
        if not 0 < len(body.items) <= MAX_BATCH_ITEMS:
            raise ApiError(400, f"a batch carries 1 to {MAX_BATCH_ITEMS} instances")
        out = await (await lazy.get()).accept_many(body)
        await respond(send, 200, _enc.encode(out), [(b"content-type", b"application/json")])

    @api.get(
        "/paxos/{chunk_id}",
        response=AcceptorState,
        summary="This acceptor's durable state for every instance (epoch) of a chunk",
    )
    async def state(request: Any, chunk_id: str) -> AcceptorState:
        check(chunk_id)
        return await (await lazy.get()).state(chunk_id)

    return api
