"""Histories: every client operation as an invocation and a completion, with its outcome.

An outcome is `ok` (the service acknowledged it), `fail` (it certainly did not happen: a 409,
a refused connection) or `unknown` (a timeout, a reset, a 5xx: it may or may not have been
applied, and a checker must allow both). Times are time.monotonic() seconds of the test process,
the one clock every client shares.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


@dataclass
class Op:
    process: int  # the client (one op in flight per client)
    f: str  # read | write | cas | create | update | upload | play | fault
    key: str
    value: Any = None  # write: value; cas: [expected_version, value]; update: the fields
    invoke: float = 0.0
    complete: float | None = None
    outcome: str = UNKNOWN
    result: Any = None  # read: [value, version]; write/cas: the new version; cas fail: version found
    node: str = ""  # which service answered (or was asked)
    error: str = ""
    index: int = field(default=-1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)


class History:
    """A thread-safe, append-only list of operations."""

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        for op in ops:
            self._append(op)

    def _append(self, op: Op) -> Op:
        with self._lock:
            op.index = len(self.ops)
            self.ops.append(op)
        return op

    def invoke(self, process: int, f: str, key: str, value: Any = None, node: str = "") -> Op:
        return self._append(Op(process, f, key, value, time.monotonic(), node=node))

    def complete(self, op: Op, outcome: str, result: Any = None, error: str = "") -> Op:
        op.complete = time.monotonic()
        op.outcome, op.result, op.error = outcome, result, error[:300]
        return op

    def __iter__(self) -> Iterator[Op]:
        return iter(list(self.ops))

    def __len__(self) -> int:
        return len(self.ops)

    def counts(self) -> dict[str, int]:
        out = {OK: 0, FAIL: 0, UNKNOWN: 0}
        for op in self.ops:
            out[op.outcome] = out.get(op.outcome, 0) + 1
        return out

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(op.to_json() + "\n" for op in self.ops))
        return path

    @classmethod
    def read(cls, path: str | Path) -> History:
        ops = []
        for line in Path(path).read_text().splitlines():
            d = json.loads(line)
            d.pop("index", None)
            ops.append(Op(**d))
        return cls(ops)
