"""This compute node's claim on its node id in the shared registry.

Every record names the node that owns it, and only that node acts on it. Two hosts started with
one node id (a copied data dir, a reused `--node-id`) would both act on the same instances, so
each process claims `/compute/nodes/<id>` at start and renews it every `interval` seconds:

    {"hostname", "dataDir", "url", "pid", "heartbeatAt"}

A start is refused when the key holds a live claim (renewed within `ttl`) of *another* node,
told apart by hostname and data dir. The same hostname and data dir is the same node: a restart
after kill -9 (its old claim still looks live) or another worker of one service. A clean stop
deletes the claim, so the id is free at once; a crashed node's claim lapses after `ttl`.
Claims are written with compare-and-set, so of two hosts starting at once exactly one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from shoal.kv import TransactionOp, VersionConflict

PREFIX = "/compute/nodes/"
log = logging.getLogger("shoal.compute")


class NodeIdInUse(Exception):
    """Another live compute node holds this node id."""


class NodeClaim:
    """Claims, renews and releases `/compute/nodes/<id>` for this process."""

    def __init__(
        self,
        store: Any,
        node_id: str,
        data_dir: Path,
        url: str | None,
        *,
        ttl: float = 30.0,
        interval: float = 10.0,
    ) -> None:
        self.store = store
        self.key = PREFIX + node_id
        self.node_id = node_id
        self.me = {"hostname": socket.gethostname(), "dataDir": str(Path(data_dir).resolve()), "url": url}
        self.ttl = ttl
        self.interval = interval
        self.conflict: dict[str, Any] | None = None  # another node's live claim seen while running
        self._task: asyncio.Task | None = None

    def _same_node(self, claim: dict[str, Any]) -> bool:
        return claim.get("hostname") == self.me["hostname"] and claim.get("dataDir") == self.me["dataDir"]

    def _live(self, claim: dict[str, Any], now: float) -> bool:
        return now - float(claim.get("heartbeatAt", 0)) < self.ttl

    def _describe(self, claim: dict[str, Any], now: float) -> str:
        where = f" ({claim['url']})" if claim.get("url") else ""
        return (
            f"compute node id {self.node_id!r} is in use by host {claim.get('hostname')!r}{where}, "
            f"data dir {claim.get('dataDir')!r}, pid {claim.get('pid')}, "
            f"renewed {now - float(claim.get('heartbeatAt', 0)):.0f}s ago"
        )

    async def _write(self) -> bool:
        """Renew or take the claim; False when another node's live claim is there."""
        for _ in range(5):
            entry = await self.store.get(self.key)
            now = time.time()
            claim = orjson.loads(entry.value) if entry is not None else None
            if claim and not self._same_node(claim) and self._live(claim, now):
                self.conflict = claim
                return False
            value = orjson.dumps({**self.me, "pid": os.getpid(), "heartbeatAt": now})
            try:
                await self.store.compare_and_set(self.key, entry.version if entry else 0, value)
            except VersionConflict:
                continue  # someone wrote in between: look again
            self.conflict = None
            return True
        raise NodeIdInUse(f"compute node id {self.node_id!r}: the claim keeps changing under us")

    async def claim(self) -> None:
        """Take the id at start, or raise NodeIdInUse naming the node that holds it."""
        if not await self._write():
            assert self.conflict is not None
            raise NodeIdInUse(
                self._describe(self.conflict, time.time())
                + "; give this node its own --node-id (a copied data dir shares one), or stop that node"
            )
        self._task = asyncio.create_task(self._renew(), name="compute-node-claim")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not await self._write():
                    log.error(
                        "%s: this node must not act on its instances",
                        self._describe(self.conflict or {}, time.time()),
                    )
            except Exception as exc:  # the store is down: keep serving, try again next time
                log.warning("compute node claim not renewed: %s", exc)

    async def release(self) -> None:
        """Stop renewing and delete the claim if it is still ours (a clean stop frees the id at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            entry = await self.store.get(self.key)
            if entry is not None and self._same_node(orjson.loads(entry.value)):
                await self.store.transaction(
                    [TransactionOp.check_version(self.key, entry.version), TransactionOp.delete(self.key)]
                )
