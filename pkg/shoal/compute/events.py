"""Instance and operation events, fanned out to every `GET /events` stream (as Incus's /1.0/events).

An event is `{"type": "lifecycle" | "operation", "timestamp": ..., "metadata": {...}}`:
lifecycle events name an `action` (`instance-created`, `instance-started`, `instance-stopped`,
`instance-restarted`, `instance-paused`, `instance-resumed`, `instance-updated`,
`instance-deleted`, `instance-snapshot-created`, `instance-restored`) and the instance;
operation events carry the operation as `GET /operations/{id}` shows it.

Publishing never waits: each subscriber has a bounded queue, and one that does not keep up
loses its oldest events (and is told so by a `"type": "overflow"` event) rather than slowing
the API down. Events come from this node's own actions; a container exiting by itself shows
up in the next GET, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

QUEUE = 1000
PREFIX = "/api/v1/compute"


def stamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, kind: str, metadata: dict[str, Any]) -> None:
        event = {"type": kind, "timestamp": stamp(), "metadata": metadata}
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait({"type": "overflow", "timestamp": event["timestamp"], "metadata": {}})
                continue
            queue.put_nowait(event)

    def lifecycle(self, action: str, record: dict[str, Any], **extra: Any) -> None:
        self.publish(
            "lifecycle",
            {
                "action": action,
                "source": f"{PREFIX}/instances/{record['id']}",
                "instance": {"id": record["id"], "name": record["name"], "backend": record["backend"]},
                **extra,
            },
        )

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE + 1)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
