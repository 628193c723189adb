"""The State Service's documents as CRDT registers: the journal behind StateStore's write path.

Every local write (StateStore.apply) becomes a signed operation committed in the same kv
transaction as the documents it changes; every remote operation is applied through the same
`_materialize`, so a replica's documents are a function of the set of operations it holds.

Layout in the State Service's kv store, beside shoal.state's keys:

  /crdt/log/<seq, 16 hex>                   frame (signature + canonical op) in arrival order
  /crdt/id/<op id hex>                      its seq (fetch by hash)
  /crdt/shadow/<kind>/<id>                  a live document hidden by a unique-field conflict
  /crdt/claim/<kind>/<field>/<value>/<id>   every live document holding a unique value
  /crdt/meta/log-id                         random id of this log (a peer that lost its data has a new one)
  /crdt/peer/<url, quoted>                  how far we read that peer's log: {since, mark, log_id}
  /crdt/base/meta                           the base: {gen, chunks, heads, seq, source, upto, ...}
  /crdt/base/cover/<gen>/<n>                its covered (id, hlc) records (Dag.export), in chunks
  /crdt/base/pending                        a snapshot adoption is being written (wiped on restart)
  /crdt/resv/<namespace>/<value>            a claim accepted in a reservation round (shoal.crdt.reserve)

Merge by field: a create or a delete is one op on register (kind, id), the whole document; a
partial update is one op per field it names (and one for updated_at), each on its own register
(kind, "<id>#<field>"), so concurrent updates of different fields both survive and the same
field is last-writer-wins in the same (hlc, op id) order as whole documents. A field op counts
only if it is newer than the document op it applies to: a document is its last create, with
each newer field value laid over it (the field stamps are kept in its meta); a partial update
never brings back a deleted document. This equals applying every op in (hlc, op id) order.

Besides the entity kinds, two internal kinds replicate what every node must know alike: "idem"
(an Idempotency-Key's first answer, materialized at /state-idem/<key>) and "revoked" (a logged
out bearer token, at /state-auth/revoked/<key>). Their keys are 64 hex digits.

A base is written by a snapshot adoption (it covers the peer's ops; the winners it came with are
the first log entries) or by compaction (it covers every op known then, and the log entries of
ops that lost their register are dropped). Loading = cover the base, refill the registers from
the covered log entries still there, then replay the rest of the log.

Unique fields across replicas (two nodes create peers with one public key concurrently): every
live document keeps its register, but only the one with the smallest id holds the value: it is
the visible document and the index entry; the others are *shadowed* (hidden from GET and lists)
until the holder is deleted or changes the value, when the next smallest id becomes visible.
References are counted over live documents; a CIDR deleted on one node while an association to
it is created on another stays deleted, and the association keeps a dangling reference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import msgspec
import orjson

from shoal.crdt.clock import to_seconds
from shoal.crdt.replica import Admission, Replica, verify_signatures
from shoal.kv import KvStore, TransactionOp
from shoal.state.entities import SPECS
from shoal.state.store import Operation, StateStore, doc_key, index_key, meta_key, refs_key, valid_id

log = logging.getLogger("shoal.crdt")

LOG = "/crdt/log/"
IDS = "/crdt/id/"
SHADOW = "/crdt/shadow/"
CLAIM = "/crdt/claim/"
PEERS = "/crdt/peer/"
BASE_META = "/crdt/base/meta"
BASE_COVER = "/crdt/base/cover/"
BASE_PENDING = "/crdt/base/pending"
COVER_CHUNK = 12_000  # 40-byte records per kv value (the store's values are at most 1 MiB)
WIPE_PREFIXES = ("/crdt/", "/state/", "/state-meta/", "/state-index/", "/state-refs/")
LOG_ID = "/crdt/meta/log-id"
MAX_TXN_OPS = 65_535
BATCH = 2_000  # ops per kv transaction when applying remote operations
OFFLOAD_VERIFY = 4  # signatures to check before it is worth a hop to the verifier thread
_VERIFIER: ThreadPoolExecutor | None = None


def _verifier() -> ThreadPoolExecutor:
    """One thread for every journal of the process: verification holds the GIL anyway."""
    global _VERIFIER
    if _VERIFIER is None:
        _VERIFIER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdt-verify")
    return _VERIFIER


def cover_key(gen: int, i: int) -> str:
    return f"{BASE_COVER}{gen:06d}/{i:06d}"


def log_key(seq: int) -> str:
    return f"{LOG}{seq:016x}"


def shadow_key(kind: str, entity_id: str) -> str:
    return f"{SHADOW}{kind}/{entity_id}"


def claim_prefix(kind: str, field: str, value: str) -> str:
    return f"{CLAIM}{kind}/{field}/{quote(value, safe='')}/"


INTERNAL = {"idem": "/state-idem/", "revoked": "/state-auth/revoked/"}  # kind -> kv prefix
FIELD_SEP = "#"  # a field op's key: "<entity id>#<field>" (ids never hold '#')
_PATCHES: dict[str, type] = {}


def field_names(spec: Any) -> frozenset[str]:
    """The fields a partial update may write (all but id and created_at)."""
    return frozenset(f.name for f in msgspec.structs.fields(spec.entity)) - {"id", "created_at"}


def _patch_type(spec: Any) -> type:
    """A Struct of every updatable field, each optional: checks one field op's value."""
    t = _PATCHES.get(spec.kind)
    if t is None:
        fields = [
            (f.name, f.type | msgspec.UnsetType, msgspec.UNSET)
            for f in msgspec.structs.fields(spec.entity)
            if f.name in field_names(spec)
        ]
        t = _PATCHES[spec.kind] = msgspec.defstruct(f"{spec.entity.__name__}Field", fields)
    return t


def field_value(op_value: bytes) -> Any:
    return orjson.loads(op_value)["v"]


def _field_op_reason(spec: Any, op: Any) -> str | None:
    entity_id, _, field = op.key.partition(FIELD_SEP)
    if not valid_id(entity_id) or FIELD_SEP in entity_id or field not in field_names(spec):
        return "bad field op key"
    if op.value is None:
        return "a field op carries a value"
    try:
        doc = orjson.loads(op.value)
        if not isinstance(doc, dict) or set(doc) != {"v"}:
            return "malformed value"
        msgspec.convert({field: doc["v"]}, _patch_type(spec))
    except Exception:
        return "malformed value"
    if orjson.dumps({"v": doc["v"]}) != op.value:
        return "malformed value"
    return None


def _internal_value(op: Any) -> str | None:
    if len(op.key) != 64 or any(c not in "0123456789abcdef" for c in op.key):
        return "bad internal key"
    if op.value is None:
        return None
    try:
        doc = orjson.loads(op.value)
    except orjson.JSONDecodeError:
        return "malformed value"
    if not isinstance(doc, dict) or not isinstance(doc.get("expires_at"), int):
        return "malformed value"
    return None


def validate_value(op: Any) -> str | None:
    """Why a remote op's value is not a document the State Service could have written, or None."""
    if op.kind in INTERNAL:
        return _internal_value(op)
    spec = SPECS.get(op.kind)
    if spec is None:
        return "unknown kind"
    if FIELD_SEP in op.key:
        return _field_op_reason(spec, op)
    if not valid_id(op.key):
        return "bad entity id"
    if op.value is None:
        return None
    try:
        doc = orjson.loads(op.value)
        if not isinstance(doc, dict) or doc.get("id") != op.key:
            return "malformed value"
        normal = msgspec.to_builtins(msgspec.convert(spec.check(dict(doc)), spec.entity))
    except Exception:
        return "malformed value"
    if orjson.dumps(normal) != op.value:  # one encoding per document, exactly as GET serves it
        return "malformed value"
    return None


class _Overlay:
    """Pending writes of one kv transaction, read back by later operations of the same batch."""

    def __init__(self, kv: KvStore) -> None:
        self.kv = kv
        self.writes: dict[str, bytes | None] = {}
        self.claims: dict[str, dict[str, bool]] = {}  # claim prefix -> {key: present}

    async def get(self, key: str) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        entry = await self.kv.get(key)
        return None if entry is None else entry.value

    def put(self, key: str, value: bytes | None) -> None:
        self.writes[key] = value
        if key.startswith(CLAIM):
            self.claims.setdefault(key[: key.rindex("/") + 1], {})[key] = value is not None

    async def keys(self, prefix: str) -> set[str]:
        """Claim keys under `prefix` (a claim_prefix), pending writes included."""
        found = set(await self.kv.list(prefix))
        for key, present in self.claims.get(prefix, {}).items():
            if present:
                found.add(key)
            else:
                found.discard(key)
        return found

    def ops(self) -> list[TransactionOp]:
        return [
            TransactionOp.delete(k) if v is None else TransactionOp.set(k, v) for k, v in self.writes.items()
        ]


class StateJournal:
    """Owns the Replica of a StateStore: commits local writes as ops, applies remote ones."""

    def __init__(self, store: StateStore, replica: Replica) -> None:
        self.store = store
        self.kv = store.kv
        self.replica = replica
        self.core = replica.core
        self.lock = asyncio.Lock()
        self.seq = 0
        self.log_ids: list[bytes] = []  # op id of seq i + 1
        self.log_id = b""  # identifies this log (and its seq numbers) to peers
        self.base: dict | None = None  # the snapshot this node was bootstrapped from, if any
        self.on_local: list[Callable[[bytes], None]] = []  # frames of new local ops (push to peers)
        kv = self.kv
        if kv.limits.max_txn_ops < MAX_TXN_OPS:  # a batch of remote ops commits in one transaction
            kv.limits = dataclasses.replace(kv.limits, max_txn_ops=MAX_TXN_OPS)

    @classmethod
    async def attach(cls, store: StateStore, replica: Replica) -> StateJournal:
        journal = cls(store, replica)
        await journal.load()
        store.journal = journal
        return journal

    async def load(self) -> None:
        """Rebuild the replica (known ops, heads, registers) from the persisted log."""
        if await self.kv.exists(BASE_PENDING):  # a snapshot adoption died half-written: start empty
            log.warning("an interrupted snapshot adoption is wiped; this node bootstraps again")
            await self._wipe()
        await self.kv.create_if_not_exists(LOG_ID, os.urandom(16))
        self.log_id = (await self.kv.require(LOG_ID)).value
        entries = await self.kv.entries(LOG)
        frames = [e.value for e in entries]
        base = None
        meta = await self.kv.get_json(BASE_META)
        if meta is not None:
            gen = meta["gen"]
            chunks = [(await self.kv.require(cover_key(gen, i))).value for i in range(meta["chunks"])]
            base = (b"".join(chunks), [bytes.fromhex(h) for h in meta["heads"]])
        self.base = meta
        ids = self.core.digest_many(frames, self.core.SIG_LEN)
        self.replica.restore(frames, ids, base)
        seqs = [int(e.key[len(LOG) :], 16) for e in entries]
        self.seq = max(seqs[-1] if seqs else 0, meta["seq"] if meta else 0)
        if meta is None and self.seq != len(entries):
            raise RuntimeError(f"operation log has gaps: {len(entries)} entries up to seq {self.seq}")
        self.log_ids = [b""] * self.seq  # b"": dropped by compaction
        for seq, op_id in zip(seqs, ids, strict=True):
            self.log_ids[seq - 1] = op_id

    # -- local writes (called by StateStore._attempt) ------------------------------------------
    async def commit(
        self, kind: str, entity_id: str, write: Any, new: dict | None, checks: list[TransactionOp]
    ) -> Operation:
        """Commit a checked local write (a shoal.state.store.Write) as a signed op, with the documents
        it changes and its idempotency record, in one transaction."""
        actor = write.author.encode()[:255].decode(errors="ignore")
        async with self.lock:
            if write.action == "update" and new is not None:  # one op per named field: merge by field
                named = [f for f in new if f in (write.changes or {}) or f == "updated_at"]
                ops = [
                    self.replica.create(
                        kind, f"{entity_id}{FIELD_SEP}{f}", actor, orjson.dumps({"v": new[f]})
                    )
                    for f in sorted(named)
                ]
                op = ops[-1]
            else:
                op = self.replica.create(kind, entity_id, actor, None if new is None else orjson.dumps(new))
                ops = [op]
            state_op = Operation(kind, entity_id, new, write.author, to_seconds(op.hlc), op.id.hex())
            if write.idempotency_key is not None and write.idempotency_record is not None:
                self.replica.admit(ops, trusted_source=True)  # the record's op follows them
                record = write.idempotency_record(state_op)
                ops.append(self.replica.create("idem", write.idempotency_key, actor, record))
            try:
                await self._commit_local(ops, checks)
            except BaseException:
                if len(ops) > 1:
                    await self.load()  # the first op was admitted in memory only: rebuild
                raise
        return state_op

    async def put_internal(self, kind: str, key: str, value: bytes | None) -> None:
        """Replicate an internal record (see INTERNAL) from this node."""
        async with self.lock:
            op = self.replica.create(kind, key, "system", value)
            await self._commit_local([op], [])

    async def _commit_local(self, ops: list[Any], checks: list[TransactionOp]) -> None:
        """Materialize, log and commit this node's new ops in one transaction, then push them."""
        overlay = _Overlay(self.kv)
        for i, op in enumerate(ops):
            await self._materialize(overlay, op)
            self._append(overlay, op, self.seq + 1 + i)
        await self.kv.transaction(checks + overlay.ops())
        self.seq += len(ops)
        self.log_ids += [op.id for op in ops]
        self.replica.admit(ops, trusted_source=True)
        for op in ops:
            frame = op.sig + op.blob
            for listener in self.on_local:
                listener(frame)

    # -- remote operations ---------------------------------------------------------------------
    async def apply_frames(self, frames: list[bytes]) -> Admission:
        """Check, order and apply operations from a peer; persist what was applied.

        Signatures are verified on a worker thread first (a sync of thousands of ops costs
        ~80 us each), so the event loop keeps serving; the verdicts are then used by the same
        admission code as ever, under the lock, so what is accepted or rejected is unchanged."""
        ops, malformed = self.core.parse_frames(frames)
        todo = self.replica.to_verify(ops)
        signatures = None
        if len(todo) >= OFFLOAD_VERIFY:
            signatures = await asyncio.get_running_loop().run_in_executor(
                _verifier(), verify_signatures, todo
            )
        async with self.lock:
            admission = self.replica.admit_parsed(ops, malformed, signatures)
            try:
                await self._persist(admission)
            except Exception:
                log.exception("persisting replicated operations failed; reloading the log")
                await self.load()
                raise
        return admission

    async def _persist(self, admission: Admission) -> None:
        applied, won = admission.applied, admission.won
        for start in range(0, len(applied), BATCH):
            overlay = _Overlay(self.kv)
            seq = self.seq
            for op, wins in zip(applied[start : start + BATCH], won[start : start + BATCH], strict=True):
                if wins:
                    await self._materialize(overlay, op)
                seq += 1
                self._append(overlay, op, seq)
            await self.kv.transaction(overlay.ops())
            self.log_ids += [op.id for op in applied[start : start + BATCH]]
            self.seq = seq

    def _append(self, overlay: _Overlay, op: Any, seq: int) -> None:
        overlay.put(log_key(seq), op.sig + op.blob)
        overlay.put(IDS + op.id.hex(), str(seq).encode())

    async def _materialize(self, ov: _Overlay, op: Any) -> None:
        """Make the documents reflect `op`, which just won its register."""
        kind, entity_id = op.kind, op.key
        if kind in INTERNAL:
            ov.put(INTERNAL[kind] + entity_id, op.value)
            return
        if FIELD_SEP in entity_id:
            await self._materialize_field(ov, op)
            return
        raw_meta = await ov.get(meta_key(kind, entity_id))
        meta = orjson.loads(raw_meta) if raw_meta else {}
        stamp = [op.hlc, op.id.hex()]
        if "hlc" in meta and [meta["hlc"], meta["op"]] >= stamp:
            return  # an older document op than the one in force (a snapshot's winners, any order)
        fields = {f: v for f, v in meta.get("fields", {}).items() if v[:2] > stamp}  # newer fields stay
        value = op.value
        if value is not None and fields:
            doc = orjson.loads(value)
            doc.update({f: v[2] for f, v in fields.items()})
            value = self._encode(SPECS[kind], doc)
        await self._set_document(ov, kind, entity_id, value, op.hlc, op.id.hex(), op.actor, fields)

    async def _materialize_field(self, ov: _Overlay, op: Any) -> None:
        """A field op: laid over the document if newer than its document op and its field."""
        kind = op.kind
        entity_id, _, field = op.key.partition(FIELD_SEP)
        raw_meta = await ov.get(meta_key(kind, entity_id))
        meta = orjson.loads(raw_meta) if raw_meta else {}
        stamp = [op.hlc, op.id.hex()]
        fields = meta.get("fields", {})
        if ("hlc" in meta and [meta["hlc"], meta["op"]] >= stamp) or (
            field in fields and fields[field][:2] >= stamp
        ):
            return
        value = field_value(op.value)
        fields = {**fields, field: [op.hlc, op.id.hex(), value]}
        raw = await ov.get(doc_key(kind, entity_id)) or await ov.get(shadow_key(kind, entity_id))
        if raw is None or "hlc" not in meta:  # no document (yet, or deleted): keep the stamp only
            meta = {**meta, "fields": fields}
            ov.put(meta_key(kind, entity_id), orjson.dumps(meta))
            return
        doc = orjson.loads(raw)
        doc[field] = value
        await self._set_document(
            ov,
            kind,
            entity_id,
            self._encode(SPECS[kind], doc),
            meta["hlc"],
            meta["op"],
            meta["author"],
            fields,
        )

    @staticmethod
    def _encode(spec: Any, doc: dict) -> bytes:
        """A merged document in the one encoding GET serves (field order of the entity type)."""
        try:
            return orjson.dumps(msgspec.to_builtins(msgspec.convert(doc, spec.entity)))
        except msgspec.ValidationError:
            return orjson.dumps(doc)

    async def _set_document(
        self, ov: _Overlay, kind: str, entity_id: str, value: bytes | None, hlc: int, op_hex: str,
        actor: str, fields: dict,
    ) -> None:  # fmt: skip
        """Write a document's new state: visibility, unique claims, references and meta."""
        spec = SPECS[kind]
        raw_old = await ov.get(doc_key(kind, entity_id)) or await ov.get(shadow_key(kind, entity_id))
        old = None if raw_old is None else orjson.loads(raw_old)
        new = None if value is None else orjson.loads(value)
        visible = new is not None
        for field, norm in spec.unique.items():
            ov_val = norm(old[field]) if old else None
            nv_val = norm(new[field]) if new else None
            if ov_val is not None and ov_val != nv_val:
                ov.put(claim_prefix(kind, field, ov_val) + entity_id, None)
                rest = await self._claimants(ov, kind, field, ov_val)
                if rest:
                    await self._move(ov, kind, min(rest), visible=True)
                    ov.put(index_key(kind, field, ov_val), min(rest).encode())
                else:
                    ov.put(index_key(kind, field, ov_val), None)
            if nv_val is not None:
                ov.put(claim_prefix(kind, field, nv_val) + entity_id, b"")
                holder = min(await self._claimants(ov, kind, field, nv_val))
                current = await ov.get(index_key(kind, field, nv_val))
                if current is not None and current.decode() not in (holder, entity_id):
                    await self._move(ov, kind, current.decode(), visible=False)
                ov.put(index_key(kind, field, nv_val), holder.encode())
                visible = visible and holder == entity_id
        if new is None:
            ov.put(doc_key(kind, entity_id), None)
            ov.put(shadow_key(kind, entity_id), None)
        elif visible:
            ov.put(doc_key(kind, entity_id), value)
            ov.put(shadow_key(kind, entity_id), None)
        else:
            ov.put(doc_key(kind, entity_id), None)
            ov.put(shadow_key(kind, entity_id), value)
        for field, target in spec.refs.items():
            old_ref = old.get(field) if old else None
            new_ref = new.get(field) if new else None
            if old_ref != new_ref:
                for ref, delta in ((old_ref, -1), (new_ref, 1)):
                    if ref is not None and valid_id(ref):
                        key = refs_key(target, ref)
                        count = int(await ov.get(key) or 0) + delta
                        ov.put(key, str(count).encode() if count > 0 else None)
        meta = {"ts": to_seconds(hlc), "author": actor, "op": op_hex, "deleted": new is None, "hlc": hlc}
        if fields:
            meta["fields"] = fields
        ov.put(meta_key(kind, entity_id), orjson.dumps(meta))

    async def _claimants(self, ov: _Overlay, kind: str, field: str, value: str) -> list[str]:
        prefix = claim_prefix(kind, field, value)
        return [k[len(prefix) :] for k in await ov.keys(prefix)]

    async def _move(self, ov: _Overlay, kind: str, entity_id: str, visible: bool) -> None:
        """Show a shadowed document, or shadow a visible one."""
        src, dst = (
            (shadow_key(kind, entity_id), doc_key(kind, entity_id))
            if visible
            else (doc_key(kind, entity_id), shadow_key(kind, entity_id))
        )
        doc = await ov.get(src)
        if doc is not None:
            ov.put(dst, doc)
            ov.put(src, None)

    # -- reads for sync --------------------------------------------------------------------------
    async def frames_after(self, since: int, limit: int) -> tuple[list[bytes], int]:
        """Up to `limit` log frames after seq `since`, and the seq of the last one."""
        entries = await self.kv.entries(LOG, start_after=log_key(since) if since > 0 else None, limit=limit)
        upto = int(entries[-1].key[len(LOG) :], 16) if entries else since
        return [e.value for e in entries], upto

    async def frames_by_id(self, ids: list[bytes]) -> list[bytes]:
        out = []
        for op_id in ids:
            entry = await self.kv.get(IDS + op_id.hex()) if op_id in self.replica.known else None
            if entry is not None:
                frame = await self.kv.get(log_key(int(entry.value)))
                if frame is not None:
                    out.append(frame.value)
        return out

    # -- snapshots ------------------------------------------------------------------------------
    async def snapshot(self) -> tuple[bytes, list[bytes], list[bytes], int]:
        """What a bootstrapping peer needs: (covered records, heads, winner op ids, our seq)."""
        async with self.lock:
            dag = self.replica.dag
            return dag.export(), dag.heads(), [op_id for _, op_id in dag.registers().values()], self.seq

    async def adopt_snapshot(
        self, records: bytes, heads: list[bytes], frames: list[bytes], source: str, upto: int
    ) -> str | None:
        """Become the state of a trusted peer's snapshot (this node must be empty); why not, or None.

        Written in this order: a pending mark, the covered records, then the winners (log entries
        and the documents they make) in batches, and last the base record, which drops the mark.
        A node that dies half-way wipes the partial state at its next start and bootstraps again."""
        ops, malformed = self.core.parse_frames(frames)
        if malformed:
            return f"malformed winner: {malformed[0][1]}"
        signatures = await asyncio.get_running_loop().run_in_executor(_verifier(), verify_signatures, ops)
        async with self.lock:
            if self.seq or len(self.replica.dag):
                return "this node is not empty any more"
            dag, why = self.replica.check_snapshot(records, heads, ops, signatures)
            if why is not None:
                return why
            await self.kv.set(BASE_PENDING, b"")
            self.replica.reset(dag)
            meta = await self._write_cover(records, heads)
            meta.update(winners=len(ops), source=source, upto=upto, seq=len(ops))
            try:
                await self._persist_winners(ops, meta)
            except Exception:
                log.exception("adopting a snapshot failed; wiping it")
                await self._wipe()
                await self.load()
                raise
            self.base = meta
        return None

    async def _persist_winners(self, ops: list[Any], meta: dict) -> None:
        for start in range(0, max(1, len(ops)), BATCH):
            overlay = _Overlay(self.kv)
            seq = self.seq
            for op in ops[start : start + BATCH]:
                await self._materialize(overlay, op)
                seq += 1
                self._append(overlay, op, seq)
            last = start + BATCH >= len(ops)
            extra = [TransactionOp.set(BASE_META, orjson.dumps(meta)), TransactionOp.delete(BASE_PENDING)]
            extra += self._old_cover()
            await self.kv.transaction(overlay.ops() + (extra if last else []))
            self.log_ids += [op.id for op in ops[start : start + BATCH]]
            self.seq = seq

    async def _write_cover(self, records: bytes, heads: list[bytes]) -> dict:
        """Write the records of a new base generation; the caller writes its meta (which makes it
        the base) and deletes the old generation's chunks (_old_cover) in one transaction."""
        gen = (self.base or {}).get("gen", 0) + 1
        chunk = COVER_CHUNK * 40
        parts = [records[i : i + chunk] for i in range(0, len(records), chunk)]
        for i, part in enumerate(parts):
            await self.kv.set(cover_key(gen, i), part)
        return {"gen": gen, "chunks": len(parts), "heads": [h.hex() for h in heads]}

    def _old_cover(self) -> list[TransactionOp]:
        if self.base is None:
            return []
        return [TransactionOp.delete(cover_key(self.base["gen"], i)) for i in range(self.base["chunks"])]

    async def compact(self, stable_seq: int) -> int:
        """Drop the log entries up to `stable_seq` (every peer has those ops) of ops that no longer
        hold their register; a new base covers every op known now. How many were dropped.

        Winners stay (snapshots serve them); peers behind read the rest of the log as before, and
        a node that lost its data bootstraps from a snapshot (--bootstrap snapshot)."""
        async with self.lock:
            dag = self.replica.dag
            winners = {op_id for _, op_id in dag.registers().values()}
            stable_seq = min(stable_seq, self.seq)
            drop = [(seq, op_id) for seq, op_id in enumerate(self.log_ids[:stable_seq], 1)
                    if op_id and op_id not in winners]  # fmt: skip
            if not drop:
                return 0
            meta = await self._write_cover(dag.export(), dag.heads())
            meta.update(
                seq=self.seq,
                source="compaction",
                upto=self.seq,
                dropped=(self.base or {}).get("dropped", 0) + len(drop),
                winners=(self.base or {}).get("winners", 0),
            )
            await self.kv.transaction([TransactionOp.set(BASE_META, orjson.dumps(meta)), *self._old_cover()])
            self.base = meta
            for i in range(0, len(drop), 10_000):
                txn = []
                for seq, op_id in drop[i : i + 10_000]:
                    txn += [TransactionOp.delete(log_key(seq)), TransactionOp.delete(IDS + op_id.hex())]
                    self.log_ids[seq - 1] = b""
                await self.kv.transaction(txn)
        return len(drop)

    async def _wipe(self) -> None:
        """Delete this node's replicated state (only ever on a node that was empty before)."""
        for prefix in WIPE_PREFIXES:
            keys = await self.kv.list(prefix)
            for i in range(0, len(keys), 10_000):
                await self.kv.transaction([TransactionOp.delete(k) for k in keys[i : i + 10_000]])

    # -- per-peer sync positions (durable, so a restart does not start reading peers from 0) ----
    async def load_position(self, url: str) -> dict[str, Any] | None:
        return await self.kv.get_json(PEERS + quote(url, safe=""))

    async def save_position(self, url: str, position: dict[str, Any]) -> None:
        await self.kv.set_json(PEERS + quote(url, safe=""), position)

    def ids_after(self, mark: int) -> list[bytes]:
        return [i for i in self.log_ids[mark:] if i]
