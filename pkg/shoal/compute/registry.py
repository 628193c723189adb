"""The instances shoal created, kept in shoal.kv so ids, uuids, names and labels survive restarts.

Keys (JSON values):

    /compute/instances/<id>   the record, including `node`: the compute node that owns it
    /compute/names/<name>     {"id": <id>}: who holds the name

Several compute processes (on several hosts, each with its own dockerd and libvirt) may share
one store (`--store etcd`). Names stay unique across all of them because a create claims the
name key and writes the record in one transaction that checks both keys are absent, and a
delete removes both in one transaction: there is no moment at which a name is held without a
record, or a record exists without its name. The same code runs on LMDB and SQLite.

Reads go to the store every time instead of to an in-memory cache kept fresh by a watch: a
watched cache is always a little behind, so process B could call a name free just after A
took it, or leave A's acknowledged instance out of its list. Reading through is simpler and
linearizable, and costs one local LMDB read (or one etcd round trip) next to the daemon call
that every view makes anyway.
"""

from __future__ import annotations

import secrets
import uuid as uuidlib
from typing import Any, Protocol

import orjson

from shoal.kv import Entry, TransactionOp, TxnResult, VersionConflict

PREFIX = "/compute/instances/"
NAMES = "/compute/names/"


class Store(Protocol):
    """The part of shoal.kv's store interface the registry uses."""

    async def get(self, key: str) -> Entry | None: ...

    async def entries(self, prefix: str = "") -> list[Entry]: ...

    async def set(self, key: str, value: bytes) -> int: ...

    async def transaction(self, ops: list[TransactionOp]) -> TxnResult: ...


class NameTaken(Exception):
    """The name is held by another instance (possibly created by another compute process)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class IdTaken(Exception):
    """The fresh id collided with an existing one (48 random bits: retry with a new identity)."""


def new_identity() -> tuple[str, str]:
    """A fresh (id, uuid): the id is short and URL-safe, the uuid is what libvirt and clients key on."""
    return f"inst-{secrets.token_hex(6)}", str(uuidlib.uuid4())


def _record(entry: Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    record = orjson.loads(entry.value)
    return record if isinstance(record, dict) and "id" in record and "name" in record else None


def _order(record: dict[str, Any]) -> tuple:
    return (record.get("seq", 0), record.get("createdAt", ""), record["id"])


class InstanceRegistry:
    """Instance records and their name claims in one shoal.kv store (local or shared)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def load(self) -> InstanceRegistry:
        """Claim the name of every record written before name keys existed (registries of older versions)."""
        for entry in await self.store.entries(PREFIX):
            record = _record(entry)
            if record is None or await self.store.get(NAMES + record["name"]) is not None:
                continue
            ops = [
                TransactionOp.check_version(entry.key, entry.version),
                TransactionOp.check_version(NAMES + record["name"], 0),
                TransactionOp.set(NAMES + record["name"], orjson.dumps({"id": record["id"]})),
            ]
            try:
                await self.store.transaction(ops)
            except VersionConflict:  # changed or claimed meanwhile: that write is the newer truth
                pass
        return self

    async def get(self, instance_id: str) -> dict[str, Any] | None:
        return _record(await self.store.get(PREFIX + instance_id))

    async def holder(self, name: str) -> str | None:
        """The id of the instance holding `name`, if any."""
        entry = await self.store.get(NAMES + name)
        return None if entry is None else orjson.loads(entry.value).get("id")

    async def by_name(self, name: str) -> dict[str, Any] | None:
        instance_id = await self.holder(name)
        return None if instance_id is None else await self.get(instance_id)

    async def name_taken(self, name: str) -> bool:
        return await self.store.get(NAMES + name) is not None

    async def all(self) -> list[dict[str, Any]]:
        """Every record, in creation order (one consistent range read)."""
        records = [r for r in map(_record, await self.store.entries(PREFIX)) if r is not None]
        return sorted(records, key=_order)

    async def claim(self, record: dict[str, Any]) -> None:
        """Create the record and take its name, atomically; NameTaken / IdTaken if either exists."""
        name_key, key = NAMES + record["name"], PREFIX + record["id"]
        ops = [
            TransactionOp.check_version(name_key, 0),
            TransactionOp.check_version(key, 0),
            TransactionOp.set(name_key, orjson.dumps({"id": record["id"]})),
            TransactionOp.set(key, orjson.dumps(record)),
        ]
        try:
            await self.store.transaction(ops)
        except VersionConflict as exc:
            if exc.key == name_key:
                raise NameTaken(record["name"]) from None
            raise IdTaken(record["id"]) from None

    async def put(self, record: dict[str, Any]) -> None:
        """Replace an existing record (its name does not change); durable when this returns.

        Only the owning node writes a record, under its per-instance lock, so a plain set is enough.
        """
        await self.store.set(PREFIX + record["id"], orjson.dumps(record))

    async def remove(self, instance_id: str) -> None:
        """Delete the record and release its name in one transaction (the name only if it is ours)."""
        for _ in range(8):
            entry = await self.store.get(PREFIX + instance_id)
            if entry is None:
                return
            ops = [TransactionOp.check_version(entry.key, entry.version), TransactionOp.delete(entry.key)]
            record = _record(entry)
            if record is not None:
                name_key = NAMES + record["name"]
                claim = await self.store.get(name_key)
                if claim is not None and orjson.loads(claim.value).get("id") == instance_id:
                    ops += [
                        TransactionOp.check_version(name_key, claim.version),
                        TransactionOp.delete(name_key),
                    ]
            try:
                await self.store.transaction(ops)
                return
            except VersionConflict:  # written between the reads and the commit: read again
                continue
        raise RuntimeError(f"instance {instance_id!r} kept changing while being removed")
