"""The maintenance leader lease: one metadata process on a shared store runs maintenance.

Repair, migration and leftover collection must not run in two processes at once (a repair in
one could re-place a piece on the node whose old copy the other is deleting), so they run only
in the holder of one kv key, written with compare-and-set on the version read:

    /metadata/maintenance/lease   {"holder": "<host>:<pid>:<random>", "expires_at": <unix s>}

A process takes the key when it is absent or expired, renews it while it holds it, and deletes
it (version-checked) on a clean shutdown. A holder killed with -9 is replaced once its lease
expires. The holder trusts its own lease only until `ttl - margin` after the request that wrote
it started (monotonic clock), so a lease read late or a slow store never makes two leaders as
long as the processes' wall clocks agree to within the margin.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import msgspec

from shoal.kv import KvStore, TransactionOp, VersionConflict

log = logging.getLogger("shoal.metadata")

LEASE_KEY = "/metadata/maintenance/lease"


class LeaseValue(msgspec.Struct):
    holder: str
    expires_at: float


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(LeaseValue)


def process_id() -> str:
    """Unique to this process: host, pid and a random part (pids are reused across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """This process's view of the lease; `tick()` acquires or renews it."""

    def __init__(self, kv: KvStore, ttl: float, holder: str | None = None) -> None:
        if ttl <= 0:
            raise ValueError("the lease ttl must be > 0")
        self.kv = kv
        self.ttl = ttl
        self.margin = min(1.0, ttl / 4)  # stop trusting our lease this long before it expires
        self.holder = holder or process_id()
        self.current: LeaseValue | None = None  # as last read or written
        self._version = 0  # kv version of our own lease, 0 when we do not hold it
        self._valid_until = 0.0  # monotonic

    def valid(self) -> bool:
        """Whether this process holds the lease now (with the safety margin)."""
        return self._version > 0 and time.monotonic() < self._valid_until

    async def tick(self) -> bool:
        """Acquire the lease if absent or expired, renew it if ours; True if we hold it now."""
        started = time.monotonic()
        entry = await self.kv.get(LEASE_KEY)
        now = time.time()
        if entry is not None:
            cur = _read(entry.value)
            if cur is not None and cur.holder != self.holder and cur.expires_at > now:
                self._lost(cur)
                return False
        value = LeaseValue(self.holder, now + self.ttl)
        try:
            version = await self.kv.compare_and_set(
                LEASE_KEY, 0 if entry is None else entry.version, _enc.encode(value)
            )
        except VersionConflict:  # another process wrote first: it holds the lease
            latest = await self.kv.get(LEASE_KEY)
            self._lost(None if latest is None else _read(latest.value))
            return False
        if self._version == 0:
            log.info("maintenance lease taken by %s (ttl %.1f s)", self.holder, self.ttl)
        self.current = value
        self._version = version
        self._valid_until = started + self.ttl - self.margin
        return True

    async def release(self) -> None:
        """Delete the lease if it is still ours (clean shutdown: the next holder need not wait)."""
        if self._version == 0:
            return
        version, self._version = self._version, 0
        try:
            await self.kv.transaction(
                [TransactionOp.check_version(LEASE_KEY, version), TransactionOp.delete(LEASE_KEY)]
            )
        except VersionConflict:
            pass  # expired and taken by another process meanwhile: not ours to delete
        self.current = None

    def describe(self) -> dict:
        cur = self.current
        return {
            "holder": cur.holder if cur else None,
            "expires_at": cur.expires_at if cur else None,
            "self": self.holder,
            "ttl_sec": self.ttl,
        }

    def _lost(self, cur: LeaseValue | None) -> None:
        if self._version:
            log.warning("maintenance lease lost to %s", cur.holder if cur else "nobody")
        self._version = 0
        self.current = cur


def _read(raw: bytes) -> LeaseValue | None:
    try:
        return _dec.decode(raw)
    except msgspec.DecodeError:
        return None  # unreadable: treated as absent, and overwritten with the read version
