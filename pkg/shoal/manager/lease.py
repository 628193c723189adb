"""A single-writer lease kept as one object in the bucket, changed only by conditional PUTs.

    <key_prefix>/lease.json = {"holder", "token", "renewed_at", "released", "ttl_seconds"}

- Acquire an absent lease with `If-None-Match: *`; take over an expired or released one, and
  renew our own, with `If-Match: <etag>`. A 412 means someone else wrote first: we lost.
- The fencing token grows by one at every change of holder (a release keeps it, so it never
  goes back); writers can hand it to whatever they write so stale writers are refused.
- Expiry does not trust clocks across machines: a candidate takes over a lease only when it
  has seen the same ETag, unchanged, for a whole TTL on its own monotonic clock (or the
  holder marked it released). The holder renews every TTL/3 and counts itself the writer only
  until its last successful renewal + TTL.
- The body also names `replica`: the fencing token of the newest replica lineage (litestream
  writes under `litestream/t<token>/`, one path per holder, so a stale holder can only ever
  write to its own path, which nobody restores from once a successor has published its own).
  A new holder restores from the lineage it finds there, and publishes its own (conditional
  PUT, `publish_replica`) only once its replica has caught up, before its app starts.
- Some S3 servers check the condition and store the object in two steps (moto does), so two
  racing takeovers could both get 200. After every acquisition we wait `settle` seconds and
  read the object back: only the writer whose body is there holds the lease.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shoal.manager import s3
from shoal.manager.config import Storage

log = logging.getLogger("shoal.manager.lease")


class ConditionalWritesUnsupported(RuntimeError):
    """The S3 server ignores If-None-Match: a lease on it would not be exclusive."""


@dataclass
class Observed:
    etag: str | None
    body: dict[str, Any] | None
    since: float  # monotonic time this etag was first seen


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class Lease:
    """The lease as seen by one manager (`holder`). Methods block: call them in a thread."""

    def __init__(self, storage: Storage, holder: str, ttl: float = 15.0, settle: float = 0.3) -> None:
        self.storage = storage
        self.holder = holder
        self.ttl = ttl
        self.settle = settle
        self.key = s3.key(storage, "lease.json")
        # a renewal that S3 stalls must end well within the TTL, so `held` stays honest
        self.client = s3.client(storage, timeout=max(1.0, min(ttl / 4, 5.0)), attempts=2)
        self.token = 0
        self.etag: str | None = None
        self.valid_until = 0.0  # monotonic
        self.observed: Observed | None = None
        self.last_error: str | None = None
        self.released = False
        self.replica: int | None = None  # the lineage named in the lease body we hold

    # -- reading and writing -------------------------------------------------------------
    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            obj = self.client.get_object(Bucket=self.storage.bucket, Key=self.key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None, None
            raise
        return json.loads(obj["Body"].read()), obj["ETag"]

    def _put(self, body: dict[str, Any], *, if_match: str | None = None, create: bool = False) -> str | None:
        """PUT with a condition; the new ETag, or None when the condition failed (412/409)."""
        args: dict[str, Any] = {
            "Bucket": self.storage.bucket,
            "Key": self.key,
            "Body": json.dumps(body).encode(),
        }
        if create:
            args["IfNoneMatch"] = "*"
        if if_match:
            args["IfMatch"] = if_match
        try:
            return self.client.put_object(**args)["ETag"]
        except ClientError as exc:
            if _status(exc) in (409, 412):
                return None
            raise

    def _body(self, token: int, released: bool = False) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "token": token,
            "renewed_at": time.time(),
            "ttl_seconds": self.ttl,
            "released": released,
            "replica": self.replica,
            "nonce": uuid.uuid4().hex,  # every write has a distinct body, so a distinct ETag
        }

    # -- the protocol --------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self.etag is not None and time.monotonic() < self.valid_until

    def writer_ok(self, margin: float) -> bool:
        """Held with at least `margin` seconds left: writers may run (they must be stopped
        before the lease can expire, and stopping them takes time)."""
        return self.etag is not None and time.monotonic() < self.valid_until - margin

    def publish_replica(self, token: int) -> bool:
        """Name our lineage in the lease (a conditional renewal); False if we lost the lease."""
        if self.etag is None:
            return False
        started = time.monotonic()
        previous, self.replica = self.replica, token
        try:
            new = self._put(self._body(self.token), if_match=self.etag)
        except (ClientError, OSError) as exc:
            self.replica = previous
            self.last_error = str(exc)
            return False
        if new is None:
            self.replica = previous
            self._lose("publishing the replica was refused")
            return False
        self.etag, self.valid_until = new, started + self.ttl
        return True

    def check_conditional_writes(self) -> None:
        """Refuse to run a lease on a server that ignores If-None-Match."""
        probe = s3.key(self.storage, f".lease-probe-{uuid.uuid4().hex}")
        args = {"Bucket": self.storage.bucket, "Key": probe, "IfNoneMatch": "*"}
        try:
            self.client.put_object(Body=b"1", **args)
            try:
                self.client.put_object(Body=b"2", **args)
            except ClientError as exc:
                if _status(exc) in (409, 412):
                    return
                raise
            raise ConditionalWritesUnsupported(
                f"S3 server at {self.storage.endpoint} accepted a second If-None-Match: * PUT"
            )
        finally:
            try:
                self.client.delete_object(Bucket=self.storage.bucket, Key=probe)
            except ClientError:
                pass

    def _expired(self, body: dict[str, Any], etag: str) -> bool:
        now = time.monotonic()
        if self.observed is None or self.observed.etag != etag:
            self.observed = Observed(etag, body, now)
        if body.get("released"):
            return True
        return now - self.observed.since >= float(body.get("ttl_seconds") or self.ttl)

    def _won(self, etag: str, token: int, started: float) -> bool:
        time.sleep(self.settle)
        body, current = self.read()
        if current != etag or not body or body.get("holder") != self.holder or body.get("token") != token:
            log.warning("lease write was overtaken", extra={"key": self.key})
            return False
        self.token, self.etag, self.valid_until = token, etag, started + self.ttl
        log.info("lease acquired", extra={"holder": self.holder, "token": token})
        return True

    def acquire_or_renew(self) -> bool:
        """One step of the protocol; True while we hold the lease."""
        started = time.monotonic()
        try:
            body, etag = self.read()
            if body is None:
                self.replica = None
                new = self._put(self._body(1), create=True)
                return new is not None and self._won(new, 1, started)
            assert etag is not None
            if self.etag is not None and etag == self.etag:  # ours: renew
                new = self._put(self._body(self.token), if_match=etag)
                if new is None:
                    self._lose("renewal refused")
                    return False
                self.etag, self.valid_until = new, started + self.ttl
                return True
            if self.etag is not None:
                self._lose(f"lease now held by {body.get('holder')}")
            mine = body.get("holder") == self.holder and not body.get("released")
            if mine or self._expired(body, etag):  # a previous run of ours, or a dead/released holder
                token = int(body.get("token") or 0) + 1
                self.replica = body.get("replica")  # the lineage to restore from, kept until ours
                new = self._put(self._body(token), if_match=etag)
                return new is not None and self._won(new, token, started)
            return False
        except (ClientError, OSError, ValueError) as exc:
            self.last_error = str(exc)
            log.warning("lease step failed: %s", exc)
            return self.held
        finally:
            if self.held:
                self.last_error = None

    def _lose(self, why: str) -> None:
        log.warning("lease lost: %s", why)
        self.etag = None
        self.valid_until = 0.0

    def release(self) -> bool:
        """Give the lease up now (keeping its token); True when we held it."""
        if self.etag is None:
            return False
        ok = self._put(self._body(self.token, released=True), if_match=self.etag) is not None
        self._lose("released")
        self.released = True
        return ok

    def status(self) -> dict[str, Any]:
        other = self.observed.body if self.observed else None
        return {
            "key": self.key,
            "holder": self.holder,
            "held": self.held,
            "role": "writer" if self.held else ("released" if self.released else "standby"),
            "token": self.token if self.held else None,
            "ttl_seconds": self.ttl,
            "expires_in": round(self.valid_until - time.monotonic(), 3) if self.held else None,
            "current_holder": self.holder if self.held else (other or {}).get("holder"),
            "replica_token": self.replica,
            "error": self.last_error,
        }
