"""Background operations, as in Incus: a long action answers 202 with an operation to poll.

`POST /instances?async=1` (or the header `Prefer: respond-async`, RFC 7240) on create, delete,
start, stop, restart and snapshot runs the action as an asyncio task and answers at once with
`202` and `Location: /api/v1/compute/operations/<id>`. `GET /operations/<id>?timeout=S` waits up
to S seconds for it to finish; `DELETE /operations/<id>` cancels it (a cancelled create rolls
back like a failed one). Without either, the call stays synchronous, as the spec's clients expect.

Operations live in this process (compute runs one), are announced on the event bus, and are
kept for `KEEP` seconds after they finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.compute.errors import ComputeError
from shoal.compute.events import EventBus, stamp

KEEP = 300.0
MAX_WAIT = 600.0
# Incus's status codes: 103 Running, 200 Success, 400 Failure, 401 Cancelled
CODES = {"running": 103, "success": 200, "failure": 400, "cancelled": 401}


@dataclass
class Operation:
    id: str
    action: str
    instance_id: str | None
    status: str = "running"
    created_at: str = field(default_factory=stamp)
    updated_at: str = field(default_factory=stamp)
    result: Any = None
    error: dict[str, Any] | None = None
    finished: float | None = None
    task: asyncio.Task | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "class": "task",
            "action": self.action,
            "description": f"{self.action} instance" if self.instance_id else self.action,
            "status": self.status,
            "statusCode": CODES[self.status],
            "resources": {"instances": [self.instance_id] if self.instance_id else []},
            "mayCancel": self.status == "running",
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class Operations:
    def __init__(self, events: EventBus) -> None:
        self.events = events
        self._ops: dict[str, Operation] = {}

    def _prune(self) -> None:
        now = time.monotonic()
        for op_id, op in list(self._ops.items()):
            if op.finished is not None and now - op.finished > KEEP:
                del self._ops[op_id]

    def start(self, action: str, instance_id: str | None, run: Callable[[], Awaitable[Any]]) -> Operation:
        """Run `run()` as a task; its return value (a msgspec Struct or None) is the result."""
        self._prune()
        op = Operation(str(uuid.uuid4()), action, instance_id)
        self._ops[op.id] = op

        async def body() -> None:
            try:
                value = await run()
                op.result = msgspec.to_builtins(value) if value is not None else None
                if isinstance(op.result, dict) and op.instance_id is None:
                    op.instance_id = op.result.get("id")
                op.status = "success"
            except asyncio.CancelledError:
                op.status = "cancelled"
                op.error = {"code": "CANCELLED", "message": "the operation was cancelled", "details": {}}
            except ComputeError as exc:
                op.status = "failure"
                op.error = {
                    "code": exc.code,
                    "message": exc.message,
                    "details": exc.details,
                    "status": exc.status,
                }
            except Exception as exc:
                op.status = "failure"
                op.error = {"code": "INTERNAL", "message": f"{type(exc).__name__}: {exc}", "details": {}}
            finally:
                op.updated_at = stamp()
                op.finished = time.monotonic()
                self.events.publish("operation", op.view())

        op.task = asyncio.ensure_future(body())
        self.events.publish("operation", op.view())
        return op

    def get(self, op_id: str) -> Operation | None:
        self._prune()
        return self._ops.get(op_id)

    def all(self) -> list[Operation]:
        self._prune()
        return list(self._ops.values())

    async def wait(self, op: Operation, timeout: float) -> Operation:
        if op.task is not None and not op.task.done() and timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(timeout, MAX_WAIT)):
                    await asyncio.shield(op.task)
        return op

    async def cancel(self, op: Operation) -> Operation:
        if op.task is not None and not op.task.done():
            op.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(op.task), 60)
        return op

    async def close(self) -> None:
        for op in self._ops.values():
            if op.task is not None and not op.task.done():
                op.task.cancel()
        tasks = [op.task for op in self._ops.values() if op.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
