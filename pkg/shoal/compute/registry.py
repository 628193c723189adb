"""The instances shoal created, kept in shoal.kv so ids, uuids, names and labels survive restarts.

One key per instance (`/compute/instances/<id>`, JSON), so every write is a single-key write
the store makes durable before it returns. The name index lives in memory, rebuilt at load:
the compute service runs as one process (MAX_WORKERS = 1), and creates take a lock, so names
stay unique across both backends without a second key to keep consistent.
"""

from __future__ import annotations

import secrets
import uuid as uuidlib
from typing import Any, Protocol

PREFIX = "/compute/instances/"


class Store(Protocol):
    """The part of shoal.kv's store interface the registry uses."""

    async def get_json(self, key: str, default: Any = None) -> Any: ...

    async def set_json(self, key: str, obj: Any) -> int: ...

    async def delete(self, key: str) -> bool: ...

    async def list(self, prefix: str = "") -> list[str]: ...


def new_identity() -> tuple[str, str]:
    """A fresh (id, uuid): the id is short and URL-safe, the uuid is what libvirt and clients key on."""
    return f"inst-{secrets.token_hex(6)}", str(uuidlib.uuid4())


class InstanceRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_id: dict[str, dict[str, Any]] = {}
        self._by_name: dict[str, str] = {}

    async def load(self) -> InstanceRegistry:
        for key in await self.store.list(PREFIX):
            record = await self.store.get_json(key)
            if isinstance(record, dict) and "id" in record and "name" in record:
                self._index(record)
        return self

    def _index(self, record: dict[str, Any]) -> None:
        old = self._by_id.get(record["id"])
        if old is not None and old["name"] != record["name"]:
            self._by_name.pop(old["name"], None)
        self._by_id[record["id"]] = record
        self._by_name[record["name"]] = record["id"]

    def get(self, instance_id: str) -> dict[str, Any] | None:
        return self._by_id.get(instance_id)

    def by_name(self, name: str) -> dict[str, Any] | None:
        instance_id = self._by_name.get(name)
        return None if instance_id is None else self._by_id.get(instance_id)

    def name_taken(self, name: str) -> bool:
        return name in self._by_name

    def all(self) -> list[dict[str, Any]]:
        return sorted(self._by_id.values(), key=lambda r: (r.get("seq", 0), r.get("createdAt", ""), r["id"]))

    async def put(self, record: dict[str, Any]) -> None:
        """Write through: the store first (durable), then the in-memory index."""
        await self.store.set_json(PREFIX + record["id"], record)
        self._index(record)

    async def remove(self, instance_id: str) -> None:
        await self.store.delete(PREFIX + instance_id)
        record = self._by_id.pop(instance_id, None)
        if record is not None and self._by_name.get(record["name"]) == instance_id:
            del self._by_name[record["name"]]
