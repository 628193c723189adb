"""How a proposer reaches acceptors: over HTTP (the real thing), or in-process (unit tests
that run real Acceptors on real stores without sockets)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import Protocol

import aiohttp
import msgspec
from yarl import URL

from .acceptor import Acceptor
from .messages import (
    Accept,
    AcceptBatch,
    Accepted,
    AcceptedBatch,
    AcceptItem,
    AcceptorState,
    Prepare,
    Promise,
)


class Unreachable(Exception):
    """The acceptor did not answer (down, timed out, or answered with an error status)."""


class Transport(Protocol):
    async def prepare(self, node_url: str, chunk_id: str, msg: Prepare) -> Promise: ...
    async def accept(self, node_url: str, chunk_id: str, msg: Accept) -> Accepted: ...
    async def state(self, node_url: str, chunk_id: str) -> AcceptorState: ...


class BatchCapable(Transport, Protocol):
    async def accept_many(self, node_url: str, batch: AcceptBatch) -> AcceptedBatch: ...


_enc = msgspec.json.Encoder()
_promise = msgspec.json.Decoder(Promise)
_accepted = msgspec.json.Decoder(Accepted)
_state = msgspec.json.Decoder(AcceptorState)
_accepted_batch = msgspec.json.Decoder(AcceptedBatch)
_JSON = {"content-type": "application/json"}

# (method, request target, body) -> headers that prove the caller is a cluster node
Signer = Callable[[str, str, bytes], Mapping[str, str]]


class HttpTransport:
    """A pooled aiohttp session (created on first use, in the running loop); every failure
    becomes Unreachable: the acceptor simply did not vote.

    aiohttp rather than httpx here: a commit fans out to every acceptor twice, and httpcore's
    pool scans all its connections per request (measured: ~20 ms CPU per commit at 16 commits
    in flight, most of the metadata service's time), while aiohttp's pool is O(1).

    With `signer` (shoal.storage.nodeauth.NodeCredentials.headers) every message is signed: a
    storage node with an auth dir refuses unsigned, forged, expired or replayed prepare/accept.
    `ssl` verifies the acceptors' HTTPS (--tls-ca).
    """

    def __init__(
        self, timeout: float = 2.0, signer: Signer | None = None, ssl: ssl.SSLContext | bool = True
    ) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(1.0, timeout))
        self.signer = signer
        self.ssl = ssl
        self._session: aiohttp.ClientSession | None = None
        self._no_batch: set[str] = set()  # nodes without /paxos-batch (older versions)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(
                    limit=256, limit_per_host=64, keepalive_timeout=30, ssl=self.ssl
                ),
            )
        return self._session

    async def _call(
        self, method: str, url: str, body: bytes | None, decoder: msgspec.json.Decoder, status_of=None
    ):
        headers = dict(_JSON) if body else {}
        if self.signer is not None:
            headers.update(self.signer(method, URL(url).raw_path_qs, body or b""))
        try:
            async with self._client().request(method, url, data=body, headers=headers or None) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{url}: {type(exc).__name__}: {exc}") from None
        if status_of is not None:
            status_of.append(status)
        if status != 200:
            raise Unreachable(f"{url}: HTTP {status}: {raw[:200]!r}")
        try:
            return decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise Unreachable(f"{url}: bad reply: {exc}") from None

    async def prepare(self, node_url: str, chunk_id: str, msg: Prepare) -> Promise:
        url = f"{node_url.rstrip('/')}/paxos/{chunk_id}/prepare"
        return await self._call("POST", url, _enc.encode(msg), _promise)

    async def accept(self, node_url: str, chunk_id: str, msg: Accept) -> Accepted:
        url = f"{node_url.rstrip('/')}/paxos/{chunk_id}/accept"
        return await self._call("POST", url, _enc.encode(msg), _accepted)

    async def state(self, node_url: str, chunk_id: str) -> AcceptorState:
        return await self._call("GET", f"{node_url.rstrip('/')}/paxos/{chunk_id}", None, _state)

    async def accept_many(self, node_url: str, batch: AcceptBatch) -> AcceptedBatch:
        """One POST for many instances; a node that has no batch route (404: an older version)
        gets them one by one from then on."""
        if node_url not in self._no_batch:
            status: list[int] = []
            url = f"{node_url.rstrip('/')}/paxos-batch/accept"
            try:
                out = await self._call("POST", url, _enc.encode(batch), _accepted_batch, status)
            except Unreachable:
                if status != [404]:
                    raise
                self._no_batch.add(node_url)
            else:
                if len(out.results) != len(batch.items):
                    raise Unreachable(f"{url}: {len(out.results)} answers for {len(batch.items)} items")
                return out
        results = await asyncio.gather(
            *(self.accept(node_url, i.chunk_id, _item_accept(i)) for i in batch.items),
            return_exceptions=True,
        )
        return AcceptedBatch(
            results=[
                r if isinstance(r, Accepted) else Accepted(ok=False, reason="no answer") for r in results
            ]
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class LocalTransport:
    """Real Acceptor objects addressed by URL, in this process; `down` URLs do not answer."""

    def __init__(self, acceptors: Mapping[str, Acceptor]) -> None:
        self.acceptors = dict(acceptors)
        self.down: set[str] = set()

    def _get(self, node_url: str) -> Acceptor:
        if node_url in self.down or node_url not in self.acceptors:
            raise Unreachable(node_url)
        return self.acceptors[node_url]

    async def prepare(self, node_url: str, chunk_id: str, msg: Prepare) -> Promise:
        # round-trip through JSON as the wire would
        msg = msgspec.json.decode(_enc.encode(msg), type=Prepare)
        return await self._get(node_url).prepare(chunk_id, msg)

    async def accept(self, node_url: str, chunk_id: str, msg: Accept) -> Accepted:
        msg = msgspec.json.decode(_enc.encode(msg), type=Accept)
        return await self._get(node_url).accept(chunk_id, msg)

    async def state(self, node_url: str, chunk_id: str) -> AcceptorState:
        return await self._get(node_url).state(chunk_id)

    async def accept_many(self, node_url: str, batch: AcceptBatch) -> AcceptedBatch:
        batch = msgspec.json.decode(_enc.encode(batch), type=AcceptBatch)
        return await self._get(node_url).accept_many(batch)


def _item_accept(i: AcceptItem) -> Accept:
    return Accept(epoch=i.epoch, ballot=i.ballot, value=i.value, member=i.member)


class BatchingTransport:
    """Accepts to one acceptor that are issued while a batch to it is on the wire wait and go
    together in the next one (at most `max_inflight` batches per acceptor, `max_batch`
    instances each): no added delay when idle, one message and one fsync per batch under load.
    Prepare and state go straight through. Counts messages on the wire and per instance.
    """

    def __init__(self, inner: BatchCapable, max_batch: int = 128, max_inflight: int = 2) -> None:
        self.inner = inner
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._queues: dict[str, list[tuple[AcceptItem, asyncio.Future[Accepted]]]] = {}
        self._inflight: dict[str, int] = {}
        self.batches = 0  # accept batches sent (each one message out, one back)
        self.batched = 0  # instances they carried

    async def prepare(self, node_url: str, chunk_id: str, msg: Prepare) -> Promise:
        return await self.inner.prepare(node_url, chunk_id, msg)

    async def state(self, node_url: str, chunk_id: str) -> AcceptorState:
        return await self.inner.state(node_url, chunk_id)

    async def accept(self, node_url: str, chunk_id: str, msg: Accept) -> Accepted:
        fut: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        item = AcceptItem(
            chunk_id=chunk_id, epoch=msg.epoch, ballot=msg.ballot, value=msg.value, member=msg.member
        )
        self._queues.setdefault(node_url, []).append((item, fut))
        if self._inflight.get(node_url, 0) < self.max_inflight:
            self._inflight[node_url] = self._inflight.get(node_url, 0) + 1
            asyncio.get_running_loop().create_task(self._send(node_url))
        return await fut

    async def _send(self, node_url: str) -> None:
        try:
            queue = self._queues[node_url]
            while queue:
                batch, queue[:] = queue[: self.max_batch], queue[self.max_batch :]
                self.batches += 1
                self.batched += len(batch)
                try:
                    out = await self.inner.accept_many(node_url, AcceptBatch(items=[i for i, _ in batch]))
                    failure: Exception | None = None
                except Exception as exc:  # Unreachable, or anything else: no answer for any item
                    failure = exc if isinstance(exc, Unreachable) else Unreachable(f"{node_url}: {exc}")
                for k, (_, fut) in enumerate(batch):
                    if fut.done():
                        continue
                    if failure is not None:
                        fut.set_exception(failure)
                    else:
                        fut.set_result(out.results[k])
        finally:
            self._inflight[node_url] -= 1

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()
