"""StateStore: the one place every State Service write goes through.

Layout in shoal.kv (one kv transaction per write, so a crash leaves all of it or none):

  /state/<kind>/<id>                    the document, exactly as GET returns it (JSON)
  /state-meta/<kind>/<id>               last operation: timestamp, author, op id, deleted (tombstone)
  /state-index/<kind>/<field>/<value>   unique secondary index -> id (peer key, CIDR, domain, ...)
  /state-refs/<kind>/<id>               how many documents point at this one (CIDRs from associations)
  /state-idem/<sha256 of caller + key>  a create's Idempotency-Key record (request hash + first answer)

`apply(write)` reads what it needs, builds an `Operation` (kind, id, new document or tombstone,
author, timestamp, op id) and commits the document, its meta, index and reference keys in one
transaction guarded by version checks on everything it read; a concurrent writer makes the
check fail and the write is planned again. Listeners see each committed Operation: the hook
where replication between nodes (the BFT-CRDT) plugs in, alongside the kv watch on /state*.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import msgspec
import orjson

from shoal.kv import KvStore, TransactionOp, VersionConflict, open_store
from shoal.state.auth.eth import looks_like_address
from shoal.state.entities import SPECS, EntitySpec, merged_document, new_document, new_id
from shoal.state.errors import StateError, bad_request, conflict, not_found

log = logging.getLogger("shoal.state")

MAX_ATTEMPTS = 20
FILES = {"lmdb": "state.lmdb", "sqlite": "state.sqlite3"}  # in the data dir
SNAPSHOT_MAX_DOCS = 50_000
IDEM = "/state-idem/"  # + sha256 hex of caller and Idempotency-Key: the first answer  # lists of kinds larger than this read the store on every call
Guard = Callable[[dict | None, dict | None], Awaitable[None]]


def doc_key(kind: str, entity_id: str) -> str:
    return f"/state/{kind}/{entity_id}"


def meta_key(kind: str, entity_id: str) -> str:
    return f"/state-meta/{kind}/{entity_id}"


def index_key(kind: str, field: str, value: str) -> str:
    return f"/state-index/{kind}/{field}/{quote(value, safe='')}"


def refs_key(kind: str, entity_id: str) -> str:
    return f"/state-refs/{kind}/{entity_id}"


def valid_id(entity_id: str) -> bool:
    """Ids that can name a stored document (anything else is simply not found)."""
    return 0 < len(entity_id) <= 128 and "/" not in entity_id and "\0" not in entity_id


class Operation(msgspec.Struct, frozen=True):
    """One committed change: what replication ships and merges (value None is a tombstone)."""

    kind: str
    id: str
    value: dict[str, Any] | None
    author: str
    timestamp: float
    op_id: str = ""

    @staticmethod
    def make(kind: str, entity_id: str, value: dict | None, author: str, timestamp: float) -> Operation:
        canonical = orjson.dumps([kind, entity_id, value, author, timestamp], option=orjson.OPT_SORT_KEYS)
        return Operation(
            kind, entity_id, value, author, timestamp, hashlib.sha256(canonical).hexdigest()[:32]
        )


@dataclass
class Write:
    """A requested change. create: `body` (a create Struct); update: `changes`; delete: neither."""

    kind: str
    action: Literal["create", "update", "delete"]
    author: str
    id: str | None = None
    body: msgspec.Struct | None = None
    changes: dict[str, Any] | None = None
    guard: Guard | None = None  # authorization, given (current, new) documents; raises to refuse
    idempotency_key: str | None = None  # sha256 hex naming the Idempotency-Key record (IDEM + it)
    idempotency_record: Callable[[Operation], bytes] | None = None
    generated: bool = False  # `id` was generated here (not named by the caller)
    reserve: bool = True  # claim new unique values on a majority first (when replicated)


class IdempotentReplay(Exception):
    """The Idempotency-Key was used before: the stored record, for the caller to answer with."""

    def __init__(self, record: bytes) -> None:
        super().__init__("idempotent replay")
        self.record = record


class _Snapshot:
    """A kind's stored documents at one store revision (parsed only when a filter needs them)."""

    __slots__ = ("_docs", "raws", "revision")

    def __init__(self, revision: int, raws: list[bytes]) -> None:
        self.revision = revision
        self.raws = raws
        self._docs: list[dict] | None = None

    def docs(self) -> list[dict]:
        if self._docs is None:
            self._docs = [orjson.loads(raw) for raw in self.raws]
        return self._docs


class StateStore:
    """Documents of every kind over one KvStore; see the module docstring for the layout."""

    def __init__(self, kv: KvStore, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.clock = clock
        self.listeners: list[Callable[[Operation], None]] = []
        self.journal: Any = None  # shoal.crdt.statedb.StateJournal: writes become replicated ops
        # shoal.crdt.reserve: claims new unique values on a majority of the nodes before a write
        self.reserver: Callable[[EntitySpec, str, dict[str, str]], Awaitable[None]] | None = None
        self._snapshots: dict[str, _Snapshot] = {}

    @classmethod
    async def open(
        cls,
        data_dir: str | Path | None,
        backend: str = "lmdb",
        durable: bool = True,
        etcd: str | None = None,
        namespace: str | None = None,
    ) -> StateStore:
        """The store of `backend` (shoal.kv.open_store): a file in data_dir, or namespace
        `namespace` (default "state") of the etcd cluster at `etcd`."""
        if backend not in ("lmdb", "sqlite", "etcd"):
            raise ValueError(f"unknown store {backend!r} (lmdb, sqlite or etcd)")
        kv = await open_store(
            backend, data_dir, etcd, name="state", namespace=namespace, durable=durable, files=FILES
        )
        return cls(kv)

    async def close(self) -> None:
        await self.kv.close()

    # -- reads ------------------------------------------------------------------------------
    async def get_raw(self, kind: str, entity_id: str) -> bytes | None:
        """The stored JSON document (what GET answers), or None."""
        if not valid_id(entity_id):
            return None
        entry = await self.kv.get(doc_key(kind, entity_id))
        return None if entry is None else entry.value

    async def get(self, kind: str, entity_id: str) -> dict | None:
        raw = await self.get_raw(kind, entity_id)
        return None if raw is None else orjson.loads(raw)

    async def lookup(self, kind: str, field: str, value: str) -> str | None:
        """The id holding `value` in a unique field, or None."""
        norm = SPECS[kind].unique[field]
        entry = await self.kv.get(index_key(kind, field, norm(value)))
        return None if entry is None else entry.value.decode()

    async def find_raw(self, kind: str, field: str, value: str) -> bytes | None:
        """The oldest stored document whose `field` equals `value` (a lookup by a non-unique field)."""
        cached = await self._snapshot(kind)
        for raw, doc in zip(cached.raws, cached.docs(), strict=True):
            if doc.get(field) == value:
                return raw
        return None

    async def list(
        self, kind: str, filters: dict[str, Any] | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[bytes]]:
        """(total matching, one page of stored documents), in id (creation) order."""
        cached = await self._snapshot(kind)
        if not filters:
            return len(cached.raws), cached.raws[offset : offset + limit]
        spec = SPECS[kind]

        def norm(f: str, v: Any) -> Any:  # the normalisation of writes, for both sides
            if not isinstance(v, str):
                return v
            if f in spec.addresses and looks_like_address(v):
                v = v.lower()  # EIP-55 on write; one case for either side is the same comparison
            v = spec.lookup_form(f, v)  # ?domain=MyApp.Example. finds myapp.example, as GET does
            return spec.unique[f](v) if f in spec.unique else v

        wanted = {f: norm(f, v) for f, v in filters.items()}
        matched = []
        for raw, doc in zip(cached.raws, cached.docs(), strict=True):
            if all(norm(f, doc.get(f)) == v for f, v in wanted.items()):
                matched.append(raw)
        return len(matched), matched[offset : offset + limit]

    async def _snapshot(self, kind: str) -> _Snapshot:
        """Every document of a kind, reused while the store's revision has not moved.

        The revision is read before the documents, so a write racing the read only makes the
        snapshot look older than it is (rebuilt on the next call), never newer.
        """
        revision = await self.kv.revision()
        cached = self._snapshots.get(kind)
        if cached is not None and cached.revision == revision:
            return cached
        entries = await self.kv.entries(f"/state/{kind}/")
        snap = _Snapshot(revision, [e.value for e in entries])
        if len(entries) <= SNAPSHOT_MAX_DOCS:
            self._snapshots[kind] = snap
        return snap

    async def count(self, kind: str) -> int:
        return len(await self.kv.list(f"/state/{kind}/"))

    async def meta(self, kind: str, entity_id: str) -> dict | None:
        return await self.kv.get_json(meta_key(kind, entity_id))

    # -- the one write path -----------------------------------------------------------------
    async def apply(self, write: Write) -> Operation:
        """Validate, authorize (write.guard), index and commit one write; the committed Operation."""
        spec = SPECS[write.kind]
        if self.reserver is not None and spec.unique and write.action != "delete" and write.reserve:
            await self._reserve(spec, write)
        for _ in range(MAX_ATTEMPTS):
            try:
                op = await self._attempt(spec, write)
            except VersionConflict:
                continue
            for listener in self.listeners:
                try:
                    listener(op)
                except Exception:
                    log.exception("state listener failed", extra={"op": op.op_id})
            return op
        raise conflict(f"{spec.name} is being changed by other requests; retry", "CONTENTION")

    async def _reserve(self, spec: EntitySpec, write: Write) -> None:
        """Claim the unique values this write takes on a majority of the nodes (409 if taken,
        503 without a majority), before anything is written."""
        current: dict | None = None
        if write.action == "create":
            if write.id is None:
                write.id, write.generated = new_id(spec.prefix), True
            assert write.body is not None
            new = new_document(spec, write.body, write.id, 0)
        else:
            current = await self.get(spec.kind, write.id or "")
            if current is None:
                return  # _attempt answers 404
            new = merged_document(spec, current, write.changes or {}, 0)
        if write.guard is not None:
            await write.guard(current, new)
        values = {}
        for field, norm in spec.unique.items():
            value = norm(new[field])
            if current is None or norm(current[field]) != value:
                values[field] = value
        if values:
            assert self.reserver is not None
            await self.reserver(spec, write.id or "", values)

    async def _attempt(self, spec: EntitySpec, write: Write) -> Operation:
        kv = self.kv
        checks: list[TransactionOp] = []
        writes: list[TransactionOp] = []
        if write.idempotency_key is not None:
            idem_key = IDEM + write.idempotency_key
            seen = await kv.get(idem_key)
            if seen is not None:
                raise IdempotentReplay(seen.value)
            checks.append(TransactionOp.check_version(idem_key, 0))
        timestamp = self.clock()
        now = int(timestamp)

        current: dict | None = None
        new: dict | None
        if write.action == "create":
            entity_id = write.id or new_id(spec.prefix)
            key = doc_key(spec.kind, entity_id)
            if await kv.version(key):
                if write.id and not write.generated:
                    raise conflict(f"{spec.name} {entity_id!r} already exists", "DUPLICATE")
                raise VersionConflict(key, 0, 1)  # a generated id collided: plan again
            checks.append(TransactionOp.check_version(key, 0))
            assert write.body is not None
            new = new_document(spec, write.body, entity_id, now)
        else:
            entity_id = write.id or ""
            key = doc_key(spec.kind, entity_id)
            entry = await kv.get(key) if valid_id(entity_id) else None
            if entry is None:
                raise not_found(spec.name, entity_id)
            current = orjson.loads(entry.value)
            checks.append(TransactionOp.check_version(key, entry.version))
            new = (
                merged_document(spec, current, write.changes or {}, now) if write.action == "update" else None
            )

        if write.guard is not None:
            await write.guard(current, new)
        if spec.kind == "association" and new is not None:
            await self._refuse_duplicate_association(entity_id, current, new)
        await self._plan_indexes(spec, entity_id, current, new, checks, writes)
        await self._plan_refs(spec, entity_id, current, new, checks, writes)
        if self.journal is not None:  # replicated: a signed op, committed with what it changes
            return await self.journal.commit(spec.kind, entity_id, write, new, checks)

        op = Operation.make(spec.kind, entity_id, new, write.author, timestamp)
        if new is None:
            writes.append(TransactionOp.delete(key))
        else:
            writes.append(TransactionOp.set(key, orjson.dumps(new)))
        meta = {"ts": timestamp, "author": write.author, "op": op.op_id, "deleted": new is None}
        writes.append(TransactionOp.set(meta_key(spec.kind, entity_id), orjson.dumps(meta)))
        if write.idempotency_key is not None and write.idempotency_record is not None:
            writes.append(TransactionOp.set(IDEM + write.idempotency_key, write.idempotency_record(op)))
        await kv.transaction(checks + writes)
        return op

    async def _refuse_duplicate_association(self, entity_id: str, current: dict | None, new: dict) -> None:
        """409 if another association joins the same CIDRs in the same direction (either
        direction when one of the two is bidirectional)."""
        pair = (new["source_cidr"], new["target_cidr"])
        if current is not None and (current["source_cidr"], current["target_cidr"]) == pair:
            if current["allow_bidirectional"] == new["allow_bidirectional"]:
                return
        for doc in (await self._snapshot("association")).docs():
            if doc["id"] == entity_id:
                continue
            other = (doc["source_cidr"], doc["target_cidr"])
            both_ways = doc["allow_bidirectional"] or new["allow_bidirectional"]
            if other == pair or (both_ways and other == pair[::-1]):
                raise conflict(
                    f"association {doc['id']!r} already joins {pair[0]!r} and {pair[1]!r}", "DUPLICATE"
                )

    async def _plan_indexes(
        self,
        spec: EntitySpec,
        entity_id: str,
        current: dict | None,
        new: dict | None,
        checks: list[TransactionOp],
        writes: list[TransactionOp],
    ) -> None:
        for field, norm in spec.unique.items():
            old_value = norm(current[field]) if current else None
            new_value = norm(new[field]) if new else None
            if old_value == new_value:
                continue
            if new_value is not None:
                ikey = index_key(spec.kind, field, new_value)
                holder = await self.kv.get(ikey)
                if holder is not None and holder.value.decode() != entity_id:
                    raise conflict(
                        f"a {spec.name} with {field} {new[field]!r} already exists ({holder.value.decode()})",  # type: ignore[index]
                        "DUPLICATE",
                    )
                checks.append(TransactionOp.check_version(ikey, holder.version if holder else 0))
                writes.append(TransactionOp.set(ikey, entity_id.encode()))
            if old_value is not None:
                writes.append(TransactionOp.delete(index_key(spec.kind, field, old_value)))

    async def _plan_refs(
        self,
        spec: EntitySpec,
        entity_id: str,
        current: dict | None,
        new: dict | None,
        checks: list[TransactionOp],
        writes: list[TransactionOp],
    ) -> None:
        kv = self.kv
        if new is None:  # deleting: refused while anything points here
            rkey = refs_key(spec.kind, entity_id)
            refs = await kv.get(rkey)
            count = int(refs.value) if refs else 0
            if count > 0:
                raise conflict(
                    f"{spec.name} {entity_id!r} is referenced by {count} other document(s); delete those first",
                    "IN_USE",
                )
            checks.append(TransactionOp.check_version(rkey, refs.version if refs else 0))
        deltas: dict[tuple[str, str], int] = {}
        for field, target_kind in spec.refs.items():
            old_ref = current[field] if current else None
            new_ref = new[field] if new else None
            if old_ref == new_ref:
                continue
            if old_ref is not None:
                deltas[(target_kind, old_ref)] = deltas.get((target_kind, old_ref), 0) - 1
            if new_ref is not None:
                deltas[(target_kind, new_ref)] = deltas.get((target_kind, new_ref), 0) + 1
                target = await kv.get(doc_key(target_kind, new_ref)) if valid_id(new_ref) else None
                if target is None:
                    raise bad_request(
                        f"{field} {new_ref!r}: no such {SPECS[target_kind].name}", "UNKNOWN_REFERENCE"
                    )
                checks.append(TransactionOp.check_version(doc_key(target_kind, new_ref), target.version))
        for (target_kind, target_id), delta in deltas.items():
            if delta == 0:
                continue
            rkey = refs_key(target_kind, target_id)
            refs = await kv.get(rkey)
            count = (int(refs.value) if refs else 0) + delta
            checks.append(TransactionOp.check_version(rkey, refs.version if refs else 0))
            writes.append(
                TransactionOp.set(rkey, str(count).encode()) if count > 0 else TransactionOp.delete(rkey)
            )


def read_document(spec: EntitySpec, raw: bytes) -> msgspec.Struct:
    """A stored document as its typed Struct."""
    try:
        return msgspec.json.decode(raw, type=spec.entity)
    except msgspec.ValidationError as exc:  # only if the stored data was damaged by hand
        raise StateError(500, f"stored {spec.name} is malformed: {exc}", "CORRUPT") from None
