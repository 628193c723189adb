"""A small asyncio client for etcd's v3 gRPC API: endpoints, failover, retries, error mapping.

The protobuf stubs come from `aetcd` (a maintained asyncio etcd client whose generated code works
with current protobuf); its Client is not used because EtcdStore needs raw response headers,
several endpoints with failover and a watch stream it drives itself.

Retry rule: a read is retried on another endpoint until `timeout`. A write is retried only when
it certainly was not applied (no connection, no leader, too many requests); any other failure
after sending is *ambiguous* and raised as Ambiguous, for the store to resolve by its commit id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from .errors import KvError, StoreClosed, StoreUnavailable

log = logging.getLogger(__name__)

RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Failures that prove a request was never applied, so a write may be sent again.
NOT_SENT = ("failed to connect", "connection refused", "no leader", "too many requests", "not capable")
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),  # etcd's default enforcement minimum is 5 s
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class Ambiguous(Exception):
    """A write failed after it was sent: etcd may or may not have applied it."""


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """Endpoints as "http://h1:2379,h2:2379" or a list, as gRPC targets ("h1:2379", "h2:2379")."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        url = urlsplit(item if "://" in item else "http://" + item)
        if url.scheme != "http":
            raise ValueError(f"etcd endpoint {item!r}: only http:// is supported (no TLS yet)")
        if not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"etcd endpoint {item!r} is not host:port or http://host:port")
        try:
            port = url.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {item!r}: bad port") from None
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        out.append(f"{host}:{port}")
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


def describe(err: grpc.aio.AioRpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def _not_sent(err: grpc.aio.AioRpcError) -> bool:
    details = (err.details() or "").lower()
    return any(s in details for s in NOT_SENT)


class EtcdClient:
    """One channel per endpoint, made on first use; calls go to the current one and move on failure."""

    def __init__(self, endpoints: str | Sequence[str], *, call_timeout: float = 5.0, timeout: float = 30.0):
        self.targets = parse_endpoints(endpoints)
        self.call_timeout = call_timeout
        self.timeout = timeout
        self.index = 0
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._kv: dict[int, rpc.KVStub] = {}
        self.closed = False

    def channel(self, index: int | None = None) -> grpc.aio.Channel:
        i = self.index if index is None else index
        ch = self._channels.get(i)
        if ch is None:
            ch = self._channels[i] = grpc.aio.insecure_channel(self.targets[i], options=CHANNEL_OPTIONS)
        return ch

    def rotate(self, failed: int) -> None:
        """Move to the next endpoint, unless another call already did."""
        if self.index == failed and len(self.targets) > 1:
            self.index = (failed + 1) % len(self.targets)
            log.info("etcd: %s failed, now using %s", self.targets[failed], self.targets[self.index])

    def _stub(self, i: int) -> rpc.KVStub:
        stub = self._kv.get(i)
        if stub is None:
            stub = self._kv[i] = rpc.KVStub(self.channel(i))
        return stub

    async def call(self, method: str, request: Any, *, write: bool = False) -> Any:
        """KV.<method>(request) with failover; Ambiguous for a write that may have been applied."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = 0.02
        while True:
            if self.closed:
                raise StoreClosed()
            i = self.index
            try:
                return await getattr(self._stub(i), method)(request, timeout=self.call_timeout)
            except grpc.aio.AioRpcError as err:
                if self.closed:
                    raise StoreClosed() from None
                if err.code() not in RETRY:
                    raise error(err) from None
                if write and not _not_sent(err):
                    self.rotate(i)
                    raise Ambiguous(describe(err)) from None
                if loop.time() + delay > deadline:
                    raise StoreUnavailable(
                        f"etcd unavailable for {self.timeout:g}s at {', '.join(self.targets)}: {describe(err)}"
                    ) from None
                self.rotate(i)
            except asyncio.CancelledError:
                raise
            except (grpc.aio.UsageError, RuntimeError) as err:  # a channel closed under the call
                if self.closed:
                    raise StoreClosed() from None
                raise KvError(f"etcd client error: {err}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def close(self) -> None:
        self.closed = True
        channels, self._channels = list(self._channels.values()), {}
        self._kv.clear()
        for ch in channels:
            await ch.close()


def error(err: grpc.aio.AioRpcError) -> KvError:
    """A non-retryable etcd answer as a store error that says what happened."""
    details = err.details() or ""
    if "request is too large" in details:
        return KvError(f"etcd rejected the request as too large (raise etcd --max-request-bytes): {details}")
    if "too many operations" in details:
        return KvError(f"etcd rejected the transaction (raise etcd --max-txn-ops): {details}")
    if "space exceeded" in details:
        return KvError(f"etcd is out of space (compact and defragment, or raise its quota): {details}")
    return KvError(f"etcd error {describe(err)}")
